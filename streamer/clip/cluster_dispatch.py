"""`track --ray`'s driver loop: clips handed to tracker actors, and actors whose workers die.

Ray never restarts a tracker actor itself (`max_restarts=0`): this loop starts a new one in its
place, so it knows what Ray cannot tell a waiting caller, that a worker died while loading SAM2.
A worker that dies under a clip is replaced and its clip rerun (up to `retries` more times); a
worker that dies while starting is started again START_RETRIES times, then its place is given up
with Ray's word on the death. Ray's own restarts (`max_restarts=-1`) retried such a worker for ever
and the run showed "starting" all night. Actors that wait for room on the cluster (more asked for
than fit, another job holding it, the node that had it gone) wait as long as others run; once none
runs, for `room_wait_s`, then they are given up too: Ray would keep them pending for ever.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from streamer.clip.batch import ClipOutcome
from workers.words import plural

log = logging.getLogger("fmu.track.ray")

# Starts again after a worker died while loading SAM2. A passing cause (its node lost, another
# job's memory spike) gets a few chances; a load that kills its process every time (a segfault,
# SAM2 alone out of memory, a CUDA fault) is said after four loads, not retried for ever.
START_RETRIES = 3


class ActorStartError(RuntimeError):
    """The cluster cannot run the archive: it cannot be reached, no node fits a tracker actor, or
    the actors could not start (SAM2 would not load, the VLM is not configured...)."""


@dataclass(eq=False)
class Place:
    """One tracker actor's place in the run, kept across the actors started in it."""

    actor: Any
    deaths: int = 0  # its workers' deaths while starting, since one was last up
    was_up: bool = False  # an actor of this place held SAM2 once
    gone: bool = False  # given up
    placed: bool = False  # its actor is on a node (loading SAM2, or up), not waiting for room


def _root_cause(exc: Exception) -> str:
    """What Ray's error says last (the actor's own exception, after its traceback), bare."""
    last = ([s.strip() for s in str(exc).splitlines() if s.strip()] or [type(exc).__name__])[-1]
    return re.sub(r"^(?:\w+\.)+(?=\w+: )", "", last)  # workers.vision.X: ... -> X: ...


def death_cause(exc: RayActorError) -> str:
    """One line on why an actor is gone: its own exception when its __init__ raised, else what
    Ray says of its worker's death (exit type and detail: killed, out of memory, node gone)."""
    if exc.actor_init_failed:
        return _root_cause(exc)
    text = str(exc)
    pid = re.search(r"^\s*pid: (\d+)", text, re.M)
    ip = re.search(r"^\s*ip: (\S+)", text, re.M)
    where = f" (pid {pid[1]}{f' on {ip[1]}' if ip else ''})" if pid else ""
    said = re.search(
        r"Worker exit type: (\w+) Worker exit detail: (.*?)\.?(?: Some common|$)", text
    )
    what = f"{said[1]}: {said[2]}" if said else text.strip().splitlines()[0].rstrip(" .")
    hint = "killed, out of memory or crashed? See that node's Ray logs"
    return f"its worker{where} died ({what}); {hint}"


def dispatch(
    start: Callable[[], Any],
    count: int,
    clips: list[Path],
    queue: deque[tuple[int, int]],
    outcomes: dict[int, ClipOutcome],
    retries: int,
    bar: Any,
    on_progress: Callable[[list[dict[str, Any]]], None] | None,
    *,
    room_wait_s: float,
    no_room: Callable[[], str],
) -> float | None:
    """Start `count` actors (`start()` makes one) and hand out clips until none is left; when
    every place had an actor up or was given up (perf_counter), if that happened.

    ActorStartError when not one actor ever started; when every place is given up after some
    worked, the clips not run are failed with the reason. Actors still waiting for room after
    `room_wait_s` with none running are given up, with what `no_room()` says of the cluster."""
    places = [Place(start()) for _ in range(count)]
    free: list[Place] = []
    running: dict[Any, tuple[Place, int, int]] = {}  # task ref -> (place, clip index, attempt)
    asking: dict[Any, Place] = {}  # progress ref -> place
    starting: dict[Any, Place] = {}  # placed (then load) ref -> a place starting
    ready_at = None
    failures: list[str] = []  # why places were given up
    last: dict[Place, dict[str, Any]] = {}
    next_poll = 0.0
    shown = ""
    roomless_since: float | None = None  # since when none runs and every starting one waits

    def launch(place: Place) -> None:
        place.placed = False
        starting[place.actor.placed.remote()] = place

    def restart(place: Place) -> None:
        with contextlib.suppress(Exception):  # gone already; or unreachable: free its room
            ray.kill(place.actor)
        place.actor = start()
        launch(place)

    for place in places:
        launch(place)
    while queue or running:
        if free or running or any(p.placed for p in starting.values()):
            roomless_since = None
        elif starting:
            roomless_since = roomless_since or time.monotonic()
            if time.monotonic() - roomless_since >= room_wait_s:
                why = (
                    f"no room on the cluster for {plural(len(starting), 'tracker actor')} in "
                    f"{room_wait_s:g} s with none running: {no_room()}"
                )
                log.warning("waiting tracker actors are given up: %s", why)
                failures.append(why)
                for place in starting.values():
                    with contextlib.suppress(Exception):  # its request for room withdrawn
                        ray.kill(place.actor)
                    place.gone = True
                starting.clear()
                ready_at = ready_at or time.perf_counter()
        if not free and not running and not starting:
            if not any(p.was_up for p in places):  # not one actor ever held SAM2: say why
                raise ActorStartError(f"the tracker actors could not start: {failures[0]}")
            for i, attempt in queue:
                why = f"not run: no tracker actor is left; the last one given up: {failures[-1]}"
                outcomes[i] = ClipOutcome(clips[i], "failed", why, attempts=attempt - 1)
                bar.update(1)
            queue.clear()
            break
        while free and queue:
            place = free.pop(0)
            i, attempt = queue.popleft()
            running[place.actor.track.remote(str(clips[i]))] = (place, i, attempt)
        if time.monotonic() >= next_poll:
            busy = {p for p, _, _ in running.values()} - set(asking.values())
            asking.update({p.actor.progress.remote(): p for p in busy})
            next_poll = time.monotonic() + 0.5
        ready, _ = ray.wait([*running, *asking, *starting], num_returns=1, timeout=0.5)
        for ref in ready:
            if ref in asking:
                place = asking.pop(ref)
                with contextlib.suppress(RayActorError, ActorUnavailableError):
                    last[place] = ray.get(ref)
                continue
            if ref in starting:
                place = starting.pop(ref)
                try:
                    ray.get(ref)
                    if not place.placed:  # on a node: now SAM2, with nothing else asked of it
                        place.placed = True
                        starting[place.actor.load.remote()] = place
                        continue
                    free.append(place)  # up, with SAM2 loaded
                    place.was_up, place.deaths = True, 0
                except ActorUnavailableError:  # reached once, unreachable now: ask again shortly
                    time.sleep(0.2)
                    place.placed = True
                    starting[place.actor.load.remote()] = place  # a load begun is awaited again
                    continue
                except RayTaskError as exc:  # its own error (no SAM2 checkpoint...): no retry
                    why = _root_cause(exc)
                    log.warning("a tracker actor is given up: %s", why)
                    failures.append(why)
                    place.gone = True
                    with contextlib.suppress(Exception):  # alive, holding room it cannot use
                        ray.kill(place.actor)
                except RayActorError as exc:
                    why = death_cause(exc)
                    place.deaths += 1
                    if not exc.actor_init_failed and place.deaths <= START_RETRIES:
                        log.warning("a tracker actor died while starting, started again: %s", why)
                        restart(place)
                        continue
                    again = f" (started {place.deaths} times)" if place.deaths > 1 else ""
                    log.warning("a tracker actor is given up%s: %s", again, why)
                    failures.append(why)
                    place.gone = True
                if ready_at is None and all(p.was_up or p.gone for p in places):
                    ready_at = time.perf_counter()
                continue
            place, i, attempt = running.pop(ref)
            last.pop(place, None)
            try:
                outcome = ray.get(ref)
                outcome.attempts = attempt
                free.append(place)
            except (RayActorError, ActorUnavailableError) as exc:
                # The worker died under this clip: a new actor takes its place, and the clip goes
                # back to the front of the queue for the next actor that is free.
                why = death_cause(exc) if isinstance(exc, RayActorError) else str(exc)[:200]
                restart(place)
                if attempt <= retries:
                    log.warning("the worker tracking %s died (%s); rerunning it", clips[i], why)
                    queue.appendleft((i, attempt + 1))
                    continue
                outcome = ClipOutcome(
                    clips[i], "failed", f"its worker died {attempt} times: {why}", attempts=attempt
                )
            outcomes[i] = outcome
            bar.update(1)
        frames = sum(p.get("done", 0) for p in last.values())
        status = f"{len(running)} running, {frames} frames into them"
        loading = sum(p.placed for p in starting.values())
        if loading:
            status += f"; {plural(loading, 'tracker')} loading SAM2"
        if len(starting) > loading:
            status += f"; {len(starting) - loading} waiting for room on the cluster"
        if status != shown:
            bar.set_postfix_str(status, refresh=True)
            shown = status
        if on_progress is not None and last:
            on_progress([s for p, s in last.items() if any(p is r[0] for r in running.values())])
    return ready_at
