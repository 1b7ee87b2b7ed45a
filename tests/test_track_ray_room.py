"""`track --ray` when the cluster has no room left for its actors: a Ray of two nodes started here,
a head with no CPU and one 1-CPU node, which is lost mid-run (as a GPU node of a real cluster).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.test_track_ray import track_breaking_mid_clip

ray = pytest.importorskip("ray")


@pytest.fixture
def two_nodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """(the cluster, its only node with a CPU)."""
    from ray.cluster_utils import Cluster

    from streamer.clip import cluster

    # Its own temp folder: Cluster names itself there as "the Ray of this machine" (/tmp/ray's
    # ray_current_cluster), where any other ray.init() here would join it.
    own = tempfile.mkdtemp(prefix="fmu-ray-", dir="/tmp")  # short: Ray's socket paths are in it
    monkeypatch.setenv("RAY_TMPDIR", own)

    small = {"object_store_memory": 80 * 2**20}
    quick_death = {  # a lost node is marked dead in about a second and a half, not 30 s
        "health_check_initial_delay_ms": 0,
        "health_check_period_ms": 500,
        "health_check_failure_threshold": 3,
    }
    head = {"num_cpus": 0, "include_dashboard": False, "_system_config": quick_death, **small}
    nodes = Cluster(initialize_head=True, head_node_args=head)
    try:
        worker = nodes.add_node(num_cpus=1, **small)
        ray.init(
            address=nodes.address,
            runtime_env=cluster.runtime_env(),
            logging_level="WARNING",
            log_to_driver=False,
        )
        yield nodes, worker
    finally:
        ray.shutdown()
        nodes.shutdown()
        shutil.rmtree(own, ignore_errors=True)


def lose(nodes: Any, node: Any) -> None:
    """The node gone with everything on it, as when its machine is lost; back when Ray says so."""
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    workers = raylet.children(recursive=True)
    nodes.remove_node(node, allow_graceful=False)
    for proc in workers:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    node_id = node.node_id
    while any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes()):
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(300, method="thread")  # the old driver waited for ever for room
def test_actors_left_waiting_for_room_end_the_run_with_the_reason(
    tmp_path: Path, two_nodes: tuple[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    from streamer.clip.cluster import RayPlan

    nodes, worker = two_nodes
    # Two actors asked for, room for one: the second waits. Then the node is lost mid-clip: both
    # are started again, and neither can be placed anywhere. Ray would keep them pending for ever.
    plan = RayPlan(actors=2, room_wait_s=30)  # long enough for a worker to start here
    outcomes, lost = track_breaking_mid_clip(tmp_path, plan, "ab", lambda a: lose(nodes, worker))
    first, second = outcomes
    for o in outcomes:
        assert o.state == "failed", o
        assert o.detail.startswith(
            "not run: no tracker actor is left; the last one given up: no room on the cluster "
            "for 2 tracker actors in 30 s with none running: each needs 1 CPU, 0 GPU; "
            "free now: 0 CPU, 0 GPU (its live nodes have: 0 CPU, 0 GPU)"
        ), o.detail
    assert lost["clip"] == "a.mp4" and (first.attempts, second.attempts) == (1, 0)
    assert not (tmp_path / "out" / "a.mp4" / "export.json").exists()
    assert "waiting tracker actors are given up: no room on the cluster" in caplog.text
