"""How the suite shares the machine's cores: pytest-xdist workers (scripts/test.sh runs two).

Loaded by tests/conftest.py as a plugin. The work goes out in units, each whole to one worker:
- the tests of a real vLLM server (the files named `*_vllm*.py`, which tests/vllm_server.py
  checks) are one unit: one server runs at a time and each starts once a session;
- the Ray tests (RAY_MODULES) are one unit: each starts a local Ray cluster that takes both
  cores, and `ray.init()` with no address joins the one last started on the machine;
- every other module is a unit, so its module fixtures are built once, as in a serial run.
The units go out in the workers' collection order, where the vLLM unit, the longest, comes first
and the Ray one second: they run beside the rest rather than after it.

(Not `--dist loadgroup` and `xdist_group` marks: with pytest 9.2 xdist 3.8 drops the groups
silently, pytest-xdist#1386.)

Each worker's OpenMP (torch, and the servers the tests start) gets its share of the cores: two
workers each spinning two threads on two cores stall each other badly. A serial run (no xdist,
or `-n 0`) is untouched.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

RAY_MODULES = ("test_track_ray.py", "test_track_ray_room.py")

WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
if WORKERS > 1:
    # Before torch reads it: tests/conftest.py loads this plugin before anything imports torch.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))


def is_vllm_module(name: str) -> bool:
    return "_vllm" in name


def unit(nodeid: str) -> str:
    """The work unit of a test, from its id ("tests/test_x.py::test_y[z]")."""
    path = nodeid.split("::", 1)[0]
    name = path.rsplit("/", 1)[-1]
    if is_vllm_module(name):
        return "vllm"
    if name in RAY_MODULES:
        return "ray"
    return path


def under_xdist() -> bool:
    return bool(os.environ.get("PYTEST_XDIST_WORKER"))


class ByUnit(LoadScopeScheduling):
    """xdist's scope scheduling, with unit() as the scope. It keys a unit's tests by their ids,
    and ids repeat (schemathesis gives every case of tests/test_fuzz_http.py one id): each
    repeat gets a `#n` tag here, or all but one of them would silently never run."""

    def add_node_collection(self, node: Any, collection: Sequence[str]) -> None:
        seen: Counter[str] = Counter()
        tagged = []
        for nodeid in collection:
            seen[nodeid] += 1
            tagged.append(nodeid if seen[nodeid] == 1 else f"{nodeid}#{seen[nodeid]}")
        super().add_node_collection(node, tagged)

    def _split_scope(self, nodeid: str) -> str:
        return unit(nodeid)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> ByUnit:
    config.option.loadscopereorder = False  # collection order: the longest units first
    return ByUnit(config, log)


@pytest.hookimpl(trylast=True)  # after tests/vllm_server.py has grouped its tests by server
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if under_xdist():
        first = {"vllm": 0, "ray": 1}
        items.sort(key=lambda item: first.get(unit(item.nodeid), 2))


# FMU_TEST_TIMELINE=file: each test's worker, start and end (seconds since the epoch) and id, one
# line each, appended; to see which unit holds up the run's end (`sort -k2 -n file`).
TIMELINE = os.environ.get("FMU_TEST_TIMELINE")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Any:
    if not TIMELINE:
        yield
        return
    import time

    start = time.time()
    yield
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(TIMELINE, "a") as f:
        f.write(f"{worker} {start:.1f} {time.time():.1f} {item.nodeid}\n")
