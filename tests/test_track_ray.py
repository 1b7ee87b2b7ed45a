"""`fmu-live track --ray`: a local Ray cluster (2 CPUs) started here, the same clips as the local run.

SAM2 with seeded random weights at 128 px, one torch thread everywhere, so the local run and every
actor compute exactly the same masks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import random_sam2_args
from tests.test_clip_media import write_clip

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
SAM2 = random_sam2_args(128, threads=1)
# The local run, with a look at whether anything of Ray was imported on the way.
LOCAL = (
    "import sys, main; rc = main.cli(sys.argv[1:]); "
    "print('ray imported:', any(m == 'ray' or m.startswith('ray.') for m in sys.modules)); "
    "sys.exit(rc)"
)


def test_ray_options_are_checked_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import main

    def refused(*args: str) -> str:
        with pytest.raises(SystemExit) as stopped:
            main.cli(["track", str(tmp_path), "--point", "1,1", *args])
        assert stopped.value.code == 2
        return capsys.readouterr().err

    # --ray's address is optional: a folder after it is a clip put in the wrong place.
    assert "put the clips before --ray" in refused("--out", "o", "--ray", str(tmp_path))
    assert "need --ray" in refused("--out", "o", "--ray-actors", "2")
    assert "--out as a URL needs --ray" in refused("--out", "s3://bucket/x")
    assert "--ray-actors must be more than 0" in refused(
        "--out", "o", "--ray=auto", "--ray-actors=0"
    )


@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    from streamer.clip import cluster

    ray.init(
        address="local",  # a Ray of its own, whatever other Ray this machine runs
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 2**20,
        runtime_env=cluster.runtime_env(),
        logging_level="WARNING",
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def track(
    *args: str, local: bool = False, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    head = ["-c", LOCAL] if local else [str(ROOT / "main.py")]
    return subprocess.run(
        [sys.executable, *head, "track", "--no-progress", "--no-video", *SAM2, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def masks(export: Path) -> list[list[Any]]:
    doc = json.loads(export.read_text())
    return [[(f["frame"], f["rle"], f["box"]) for f in o["frames"]] for o in doc["objects"]]


def archive(folder: Path) -> Path:
    folder.mkdir()
    write_clip(folder / "a_h264.mp4", frames=8, width=96, height=64, codec="libx264")
    write_clip(folder / "b_vp9.webm", frames=8, width=96, height=64, codec="libvpx-vp9")
    whole = write_clip(folder.parent / "whole.mp4", frames=20, width=96, height=64)
    (folder / "c_broken.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return folder


@pytest.mark.slow
def test_ray_run_gives_the_local_masks_skips_the_broken_clip_and_resumes(
    tmp_path: Path, ray_cluster: str
) -> None:
    clips = archive(tmp_path / "clips")
    prompts = ["--point", "12,32", "--box", "50,10,90,50@3"]

    local = track(str(clips), "--out", str(tmp_path / "local"), *prompts, local=True)
    assert local.returncode == 1, local.stderr
    assert "ray imported: False" in local.stdout  # without --ray, nothing of Ray

    out = tmp_path / "ray"
    run = track(str(clips), "--out", str(out), *prompts, "--ray", ray_cluster)
    assert run.returncode == 1, run.stderr
    (failed,) = [line for line in run.stdout.splitlines() if line.startswith("failed: ")]
    assert "c_broken.mp4" in failed and "not a video we can read" in failed
    assert "2 of 3 clips done or already done, 1 failed" in run.stdout
    for name in ("a_h264.mp4", "b_vp9.webm"):
        ours, theirs = (
            masks(out / name / "export.json"),
            masks(tmp_path / "local" / name / "export.json"),
        )
        assert len(ours) == 2 and [len(o) for o in ours] == [8, 8]
        assert ours == theirs, f"{name}: the Ray run's masks differ from the local run's"

    before = {n: (out / n / "export.json").stat().st_mtime_ns for n in ("a_h264.mp4", "b_vp9.webm")}
    again = track(str(clips), "--out", str(out), *prompts, "--ray", ray_cluster)
    assert again.returncode == 1
    assert again.stdout.count("skipped: ") == 2 and again.stdout.count("failed: ") == 1
    assert {n: (out / n / "export.json").stat().st_mtime_ns for n in before} == before


@pytest.mark.slow
def test_a_prompt_that_does_not_fit_fails_its_clip_in_the_local_runs_words(
    tmp_path: Path, ray_cluster: str
) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clip(clips / "a.mp4", frames=8, width=96, height=64)
    run = track(
        str(clips), "--out", str(tmp_path / "out"), "--point", "12,32@50", "--ray", ray_cluster
    )
    assert run.returncode == 1, run.stderr
    (failed,) = [line for line in run.stdout.splitlines() if line.startswith("failed: ")]
    assert failed.endswith("a.mp4: prompt frame 50 is outside the clip (0..7)")  # no "ValueError:"


@pytest.mark.slow
def test_a_worker_killed_mid_clip_its_clip_still_finishes_at_an_fsspec_url(
    tmp_path: Path, ray_cluster: str
) -> None:
    from streamer.clip.cluster import RayPlan, track_on_ray
    from streamer.clip.track_prompts import parse_point

    clips = tmp_path / "clips"
    clips.mkdir()
    paths = [
        write_clip(clips / f"{n}.mp4", frames=30, width=96, height=64) for n in ("first", "second")
    ]
    settings = ray_settings()
    killed: dict[str, Any] = {}

    def kill_mid_clip(actors: list[dict[str, Any]]) -> None:
        for a in actors:
            if not killed and a["clip"] and 0 < a["done"] < a["total"] - 10:
                os.kill(a["pid"], signal.SIGKILL)
                killed.update(a)

    outcomes = track_on_ray(
        settings,
        paths,
        out=f"file://{tmp_path / 'out'}",  # an fsspec URL: staged, then copied there
        prompts=[parse_point("12,32")],
        video=False,
        progress=False,
        plan=RayPlan(actors=2),
        on_progress=kill_mid_clip,
    )
    assert killed, "no actor was seen mid-clip"
    by_name = {o.clip.name: o for o in outcomes}
    victim = by_name[killed["clip"]]
    assert victim.state == "done" and victim.attempts == 2, victim
    assert all(o.state == "done" for o in outcomes), outcomes
    for p in paths:
        (frames,) = masks(tmp_path / "out" / p.name / "export.json")
        assert [f[0] for f in frames] == list(range(30))


def test_an_unreachable_cluster_is_named_at_once(tmp_path: Path, monkeypatch: Any) -> None:
    from tests.conftest import free_port

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "clips").mkdir()
    write_clip(tmp_path / "clips" / "a.mp4", frames=4)
    # Nothing listens there: Ray itself would retry for ever, printing only its own warnings.
    for address in (f"127.0.0.1:{free_port()}", f"ray://127.0.0.1:{free_port()}"):
        proc = track(
            str(tmp_path / "clips"), "--point", "1,1", "--out", str(tmp_path / "out"),
            "--ray", address,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert f"error: no Ray cluster answers at {address}" in proc.stderr
        assert "ray start --head" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_ray_address_in_the_environment_is_checked_with_auto_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--ray auto` joins the cluster RAY_ADDRESS names when it is set (ray.init's rule): one that
    does not answer is named at once, not left to Ray's endless retries."""
    from streamer.clip import cluster
    from tests.conftest import free_port

    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)

    def init(**kwargs: Any) -> None:
        raise AssertionError(f"ray.init was called, to retry {address} for ever")

    monkeypatch.setattr(ray, "init", init)
    for given in ("auto", "local"):  # local: `--ray` alone
        with pytest.raises(cluster.ActorStartError, match=f"no Ray cluster answers at {address}"):
            cluster.connect(given)


def test_ray_alone_starts_its_own_ray_not_the_one_ray_start_left_here(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--ray` alone starts a Ray of its own (README): ray.init() with no address would join
    whatever cluster `ray start` last recorded under /tmp/ray, even a stale one."""
    from streamer.clip import cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    asked: list[Any] = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: asked.append(kwargs["address"]))
    cluster.connect("local")
    cluster.connect(None)
    assert asked == ["local", "local"]


def test_an_actor_on_a_ray_gpu_uses_the_gpu_ray_gave_it() -> None:
    from streamer.clip.cluster import actor_device

    # Ray shows an actor only its own GPU, as cuda:0: --device cuda:1 would name none there.
    assert actor_device("cuda:1", [3]) == "cuda"
    assert actor_device("cuda", [3]) == "cuda"
    assert actor_device("cuda:1", []) == "cuda:1"  # no GPU from Ray: as given (then why it fails)
    assert actor_device("cpu", []) == "cpu" and actor_device("auto", [0]) == "auto"


def ray_settings(**overrides: Any) -> Any:
    from streamer.settings import Settings

    base = {"weights": "random", "sam2_image_size": 128, "device": "cpu", "torch_threads": 1}
    return Settings(**{**base, **overrides})


@pytest.mark.slow
@pytest.mark.timeout(300, method="thread")  # the old driver waited for ever (in ray.get)
def test_actors_the_cluster_cannot_hold_are_refused_or_left_behind(
    tmp_path: Path, ray_cluster: str
) -> None:
    from streamer.clip.cluster import ActorStartError, RayPlan, track_on_ray
    from streamer.clip.track_prompts import parse_point

    clips = tmp_path / "clips"
    clips.mkdir()
    paths = [write_clip(clips / f"{n}.mp4", frames=4, width=96, height=64) for n in "abc"]
    run = {"prompts": [parse_point("12,32")], "video": False, "progress": False}

    # No node has 4 CPUs (the cluster has 2): said before any actor is asked for.
    with pytest.raises(ActorStartError, match=r"no node of the cluster can hold .*4 CPU"):
        track_on_ray(ray_settings(), paths, out=tmp_path / "o", plan=RayPlan(4, 4.0), **run)
    assert not (tmp_path / "o" / "a.mp4").exists()

    # Three 1-CPU actors asked for, room for two: the two track every clip, the third never starts.
    outcomes = track_on_ray(ray_settings(), paths, out=tmp_path / "o", plan=RayPlan(3), **run)
    assert [o.state for o in outcomes] == ["done"] * 3, outcomes
    for p in paths:
        assert (tmp_path / "o" / p.name / "export.json").is_file()


@pytest.mark.slow
def test_actors_that_cannot_load_sam2_say_why(tmp_path: Path, ray_cluster: str) -> None:
    from streamer.clip.cluster import ActorStartError, RayPlan, track_on_ray
    from streamer.clip.track_prompts import parse_point

    clip = write_clip(tmp_path / "a.mp4", frames=4, width=96, height=64)
    with pytest.raises(
        ActorStartError,
        match=r"could not start: SAM2LoadError: no SAM2 checkpoint at .*missing\.pt",
    ):
        track_on_ray(
            ray_settings(weights=str(tmp_path / "missing.pt")),
            [clip],
            out=tmp_path / "o",
            prompts=[parse_point("12,32")],
            video=False,
            progress=False,
            plan=RayPlan(1),
        )


@pytest.mark.slow
def test_what_a_node_cannot_share_with_the_driver_is_not_counted_done(
    tmp_path: Path, ray_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamer.clip.cluster import RayPlan, track_on_ray
    from streamer.clip.track_prompts import parse_point

    clip = write_clip(tmp_path / "a.mp4", frames=4, width=96, height=64)
    gone = tmp_path / "only_on_the_driver.mp4"  # listed here, absent where the actor runs
    # One relative --out names two folders, from the actors' working directory and from the
    # driver's: as an --out on a disk the nodes do not share, the driver finds no results there.
    actors_cwd = ray.get(ray.remote(lambda: os.getcwd()).remote())
    out = os.path.relpath(tmp_path / "actor-side", actors_cwd)
    driver_cwd = tmp_path / "driver"
    driver_cwd.mkdir()
    monkeypatch.chdir(driver_cwd)

    def run() -> list[Any]:
        return track_on_ray(
            ray_settings(),
            [clip, gone],
            out=out,
            prompts=[parse_point("12,32")],
            video=False,
            progress=False,
            plan=RayPlan(1),
        )

    outcomes = run()
    written, missing = outcomes
    assert written.state == "failed" and "not there as this machine sees it" in written.detail
    assert missing.state == "failed" and "no such file on node" in missing.detail
    for o in outcomes:
        assert "every node shares" in o.detail, o
    assert (tmp_path / "actor-side" / "a.mp4" / "export.json").is_file()  # where the node wrote
    assert not (driver_cwd / out / "a.mp4" / "export.json").exists()
    # Run again: the actor finds its own disk's export.json and skips the clip, which is no
    # more here than before (it was reported 'skipped: already done').
    again, _ = run()
    assert again.state == "failed" and "not there as this machine sees it" in again.detail


class LoadKiller:
    """Once armed, SIGKILLs each tracker actor's worker of this test's Ray while it loads SAM2 (Ray
    titles that process `ray::ClipTracker.load`): a real death while starting, as a segfault or
    the OOM killer would. `pids`: those it killed."""

    def __init__(self) -> None:
        self.armed = threading.Event()
        self.pids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = psutil.Process()  # the Ray of the fixture: its raylet and workers are ours
        while not self._stop.wait(0.02):
            if not self.armed.is_set():
                continue
            for proc in me.children(recursive=True):
                with contextlib.suppress(psutil.Error, IndexError):
                    if proc.pid not in self.pids and proc.cmdline()[0] == "ray::ClipTracker.load":
                        proc.kill()
                        self.pids.append(proc.pid)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def load_killer() -> Iterator[LoadKiller]:
    killer = LoadKiller()
    try:
        yield killer
    finally:
        killer.close()


@pytest.mark.slow
@pytest.mark.timeout(420, method="thread")  # the old driver showed "starting" for ever
def test_workers_that_die_while_loading_sam2_are_given_up_with_rays_word_on_it(
    tmp_path: Path, ray_cluster: str, load_killer: LoadKiller
) -> None:
    from streamer.clip.cluster_dispatch import START_RETRIES

    clips = tmp_path / "clips"
    clips.mkdir()
    for n in "ab":
        write_clip(clips / f"{n}.mp4", frames=4, width=96, height=64)
    load_killer.armed.set()
    run = track(
        str(clips), "--point", "12,32", "--out", str(tmp_path / "out"), "--ray", ray_cluster,
        "--ray-actors", "2", timeout=360,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout
    # Each of the two actors was started again START_RETRIES times, then given up.
    assert len(load_killer.pids) == 2 * (START_RETRIES + 1)
    assert run.stderr.count(f"a tracker actor is given up (started {START_RETRIES + 1} times)") == 2
    (error,) = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith("error: the tracker actors could not start: its worker (pid ")
    assert "died (SYSTEM_ERROR: " in error and "out of memory or crashed?" in error
    assert str(load_killer.pids[-1]) in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out" / "a.mp4").exists()


def track_breaking_mid_clip(
    tmp_path: Path,
    plan: Any,
    names: str,
    act: Callable[[dict[str, Any]], None],
    victim: Callable[[list[dict[str, Any]], dict[str, Any]], bool] = lambda busy, a: True,
) -> tuple[list[Any], dict[str, Any]]:
    """30-frame clips, one per letter of `names`, tracked on Ray with `plan`: `act(it)` is done
    once, to the first actor seen mid-clip that `victim(busy actors, it)` picks. The outcomes,
    and that actor as it was seen."""
    from streamer.clip.cluster import track_on_ray
    from streamer.clip.track_prompts import parse_point

    clips = tmp_path / "clips"
    clips.mkdir()
    paths = [write_clip(clips / f"{n}.mp4", frames=30, width=96, height=64) for n in names]
    hit: dict[str, Any] = {}

    def on_progress(busy: list[dict[str, Any]]) -> None:
        for a in busy:
            if not hit and a["clip"] and 0 < a["done"] < a["total"] - 10 and victim(busy, a):
                hit.update(a)
                act(a)

    outcomes = track_on_ray(
        ray_settings(),
        paths,
        out=tmp_path / "out",
        prompts=[parse_point("12,32")],
        video=False,
        progress=False,
        plan=plan,
        on_progress=on_progress,
    )
    assert hit, "no actor was seen mid-clip as the test needs"
    return outcomes, hit


def track_killing_mid_clip(
    tmp_path: Path,
    load_killer: LoadKiller,
    actors: int,
    victim: Callable[[list[dict[str, Any]], dict[str, Any]], bool],
) -> list[tuple[Any, bool]]:
    """Three clips on `actors` tracker actors: the first actor seen mid-clip that `victim` picks
    is SIGKILLed, and from then on every worker loading SAM2. Each outcome, and whether its clip
    was the one killed."""
    from streamer.clip.cluster import RayPlan

    def kill(a: dict[str, Any]) -> None:
        load_killer.armed.set()  # the new worker in its place dies loading, every time
        os.kill(a["pid"], signal.SIGKILL)

    outcomes, killed = track_breaking_mid_clip(
        tmp_path, RayPlan(actors=actors), "abc", kill, victim
    )
    return [(o, o.clip.name == killed["clip"]) for o in outcomes]


@pytest.mark.slow
@pytest.mark.timeout(420, method="thread")  # the old driver waited for ever for a new worker
def test_when_the_last_actor_cannot_come_back_the_clips_not_run_are_failed(
    tmp_path: Path, ray_cluster: str, load_killer: LoadKiller, caplog: pytest.LogCaptureFixture
) -> None:
    from streamer.clip.cluster_dispatch import START_RETRIES

    # One actor: killed on the second clip, and its place given up: no actor is left.
    outcomes = track_killing_mid_clip(
        tmp_path, load_killer, 1, lambda busy, a: a["clip"] == "b.mp4"
    )
    (first, _), (second, was_killed), (third, _) = outcomes
    assert first.state == "done" and was_killed, outcomes
    for o in (second, third):
        assert o.state == "failed", o
        assert o.detail.startswith(
            "not run: no tracker actor is left; the last one given up: its worker (pid "
        )
    assert (tmp_path / "out" / "a.mp4" / "export.json").is_file()
    assert f"a tracker actor is given up (started {START_RETRIES + 1} times)" in caplog.text


@pytest.mark.slow
@pytest.mark.timeout(420, method="thread")
def test_the_clip_of_an_actor_that_cannot_come_back_is_finished_by_one_still_up(
    tmp_path: Path, ray_cluster: str, load_killer: LoadKiller, caplog: pytest.LogCaptureFixture
) -> None:
    from streamer.clip.cluster_dispatch import START_RETRIES

    # Two actors, one killed while both track: every worker started in its place dies loading
    # SAM2, so the clip it held can only be finished by the other actor, which does the rest.
    outcomes = track_killing_mid_clip(tmp_path, load_killer, 2, lambda busy, a: len(busy) == 2)
    assert [o.state for o, _ in outcomes] == ["done"] * 3, outcomes
    assert [o.attempts for o, was_killed in outcomes if was_killed] == [2]
    # The run ends when the clips are done, not when the dying place is given up: on a fast
    # machine that is before its last start (CI saw 3 of 4), so either count is right, and a
    # place given up is so after exactly START_RETRIES starts again.
    restarts = caplog.text.count("a tracker actor died while starting, started again")
    assert restarts <= START_RETRIES, caplog.text
    if "a tracker actor is given up" in caplog.text:
        assert restarts == START_RETRIES, caplog.text
        assert f"given up (started {START_RETRIES + 1} times)" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("where", ["path", "url"])
def test_a_ray_rerun_with_another_point_is_refused_then_redone(
    tmp_path: Path, ray_cluster: str, where: str
) -> None:
    from streamer.clip.cluster import RayPlan, track_on_ray
    from streamer.clip.track_prompts import parse_point

    clip = write_clip(tmp_path / "a.mp4", frames=4, width=96, height=64)
    out = tmp_path / "out"

    def run(point: str, *, redo: bool = False) -> Any:
        (outcome,) = track_on_ray(
            ray_settings(),
            [clip],
            out=f"file://{out}" if where == "url" else out,
            prompts=[parse_point(point)],
            video=False,
            progress=False,
            plan=RayPlan(1),
            redo=redo,
        )
        return outcome

    def clicked() -> Any:
        (obj,) = json.loads((out / "a.mp4" / "export.json").read_text())["objects"]
        return obj["prompts"][0]["points"]

    assert run("12,32").state == "done"
    assert run("12,32").detail == "already done"
    other = run("60,20")
    assert other.state == "failed" and "pass --redo to track it again" in other.detail
    assert clicked() == [[12.0, 32.0]]
    redone = run("60,20", redo=True)
    assert redone.state == "done" and "(replaced the results of other prompts" in redone.detail
    assert clicked() == [[60.0, 20.0]]
    assert run("60,20").detail == "already done"


def test_results_published_to_a_url_replace_every_output_of_the_earlier_run(
    tmp_path: Path,
) -> None:
    """A --redo --no-video to a URL output: the earlier overlay.mp4, made from the old prompts,
    goes with the old export (it stayed beside the new one)."""
    from streamer.clip.track_output import publish

    out = tmp_path / "out"
    earlier = out / "a.mp4"
    earlier.mkdir(parents=True)
    for name in ("export.json", "run.json", "overlay.mp4"):
        (earlier / name).write_text(f"earlier {name}")
    staged = tmp_path / "staged"
    staged.mkdir()
    for name in ("export.json", "run.json"):
        (staged / name).write_text(f"new {name}")
    publish(staged, f"file://{out}", "a.mp4")
    assert sorted(p.name for p in earlier.iterdir()) == ["export.json", "run.json"]
    assert (earlier / "export.json").read_text() == "new export.json"
