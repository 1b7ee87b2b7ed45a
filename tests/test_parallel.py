"""tests/parallel.py's scheduler, driven as pytest-xdist drives it, with two stand-in workers:
every collected test runs once (ids that repeat included), and a unit stays on one worker."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from xdist.remote import Producer

from tests.parallel import ByUnit

COLLECTION = [
    # as each worker sorts it under xdist: the vLLM unit first, the Ray one second
    "tests/test_reasoning_vllm.py::test_a",
    "tests/test_reasoning_vllm.py::test_b",
    "tests/test_eval_vllm.py::test_c",
    "tests/test_track_ray.py::test_d",
    "tests/test_track_ray_room.py::test_e",
    "tests/test_app.py::test_f",
    "tests/test_app.py::test_g",
    # schemathesis: one id for every case
    *["tests/test_fuzz_http.py::test_no_route_answers_500"] * 4,
    "tests/test_fuzz_http.py::test_the_server_is_up_after_the_fuzz",
    "tests/test_objects.py::test_h",
]


class Worker:
    def __init__(self, name: str) -> None:
        self.gateway = SimpleNamespace(id=name)
        self.shutting_down = False
        self.queue: list[int] = []
        self.ran: list[int] = []

    def send_runtest_some(self, indices: list[int]) -> None:
        self.queue.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def run(collection: list[str]) -> tuple[ByUnit, list[Worker]]:
    config: Any = SimpleNamespace(
        getvalue=lambda name: ["2*popen"] if name == "tx" else None,
        option=SimpleNamespace(loadscopereorder=False),
    )
    sched = ByUnit(config, Producer("sched", enabled=False))
    workers = [Worker("gw0"), Worker("gw1")]
    for w in workers:
        sched.add_node(w)  # type: ignore[arg-type]
    for w in workers:
        sched.add_node_collection(w, collection)  # type: ignore[arg-type]
    sched.schedule()
    while any(w.queue for w in workers):  # each worker finishes one test in turn
        for w in workers:
            if w.queue:
                index = w.queue.pop(0)
                w.ran.append(index)
                sched.mark_test_complete(w, index)  # type: ignore[arg-type]
    return sched, workers


def test_every_test_runs_once_repeated_ids_too() -> None:
    sched, workers = run(COLLECTION)
    ran = sorted(i for w in workers for i in w.ran)
    assert ran == list(range(len(COLLECTION)))  # the 4 alike fuzz cases: 4 runs, not 1
    assert sched.tests_finished and all(w.shutting_down for w in workers)


def test_the_vllm_tests_share_a_worker_and_so_do_the_ray_tests() -> None:
    _, workers = run(COLLECTION)

    def worker_of(part: str) -> set[str]:
        return {w.gateway.id for w in workers for i in w.ran if part in COLLECTION[i]}

    assert len(worker_of("_vllm")) == 1 and len(worker_of("test_track_ray")) == 1
    assert len(worker_of("test_fuzz_http")) == 1  # a module is one unit: its fixtures once
    vllm = next(w for w in workers if w.gateway.id in worker_of("_vllm"))
    assert [COLLECTION[i] for i in vllm.ran[:3]] == COLLECTION[:3]  # the longest unit first
