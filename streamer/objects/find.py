"""Find and find-all as one coroutine each, the same events in every mode: the VLM checks the masks.

Find grounds a phrase, segments each box and shows each mask's Spotlight to the VLM with the
phrase (checked Find). Find-all ("find all cups", "how many cups?") proposes regions with SAM2's
automatic mask generator on the frame's cached features, shows their Spotlights to the VLM in
batches to classify against the phrase, and tracks every accepted one: the count is how many it
accepted. Both are bounded (the object cap; proposals, VLM requests and their concurrency per
query) and cancellable (the consumer stops iterating; nothing is tracked before classification
ends, so a stop before then applies nothing).

What differs per mode is a small adapter, a FindSite: the frame, how a box becomes a mask, how a
kept candidate becomes a tracked object, and how regions are proposed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from typing import Any, Protocol

from streamer.objects.events import (
    Box,
    Event,
    FindCheck,
    FindProgressMessage,
    FindResultMessage,
    FoundObject,
    ObjectResult,
    RejectedCandidate,
)
from streamer.objects.share import VLMShare
from streamer.objects.table import ObjectRefused, ObjectTable
from workers.reasoning.errors import VLMError


@dataclass(frozen=True)
class FindAllLimits:
    """Find-all's bounds per query (Settings.find_all_*)."""

    points_per_side: int = 4  # the proposal grid: points_per_side**2 single-point prompts
    max_proposals: int = 12  # the best proposals kept (each one is a region shown to the VLM)
    regions_per_request: int = 4  # Spotlights per VLM request
    max_requests: int = 3  # VLM requests per query
    concurrency: int = 2  # VLM requests at once per query
    min_iou: float = 0.7  # SAM2's predicted IoU a proposal needs
    min_stability: float = 0.85  # and its stability score

    def proposal_options(self) -> dict[str, Any]:
        return {
            "points_per_side": self.points_per_side,
            "max_proposals": self.max_proposals,
            "pred_iou_thresh": self.min_iou,
            "stability_score_thresh": self.min_stability,
        }


def limits_from(settings: Any) -> FindAllLimits:
    """The find-all bounds of the service's settings: each field NAME is --find-all-NAME."""
    return FindAllLimits(
        **{f.name: getattr(settings, f"find_all_{f.name}") for f in fields(FindAllLimits)}
    )


# A request to count rather than find one: "Find all: cups", "How many cups?", "count the cups"
# (not "counter", "how manyfold"). Its pattern is also the page's (capabilities: count_pattern),
# which sends such a request to Find all.
ASKS_COUNT = r"^\s*(?:find\s+all\b\s*:?|how\s+many\b|count\b(?:\s+the\b)?\s*:?)\s*"
_ASKS = re.compile(ASKS_COUNT, re.I)


def count_phrase(text: str) -> str:
    """What to count in "Find all: cups" / "How many cups?" / "cups": the thing itself."""
    core = _ASKS.sub("", text).strip()
    core = re.sub(
        r"\s*(?:are\s+there|do\s+you\s+see|can\s+you\s+see)?\s*\??\s*$", "", core, flags=re.I
    )
    return core.strip() or text.strip()


class FindSite(Protocol):
    """A mode's side of Find: where the frame comes from and how objects are made there."""

    table: ObjectTable
    frame: Any  # H x W x 3 RGB: grounded on and shown to the VLM
    frame_index: int | None

    async def segment(self, box: Box) -> tuple[Any, Any, Any]:
        """(the box's mask, the frame it is on, a handle for track/discard); ValueError when the
        box cannot be segmented (the Find goes on with the next)."""
        ...

    async def discard(self, handle: Any) -> None:
        """Undo segment() for a candidate that is not kept (Live: leave the tracker)."""
        ...

    async def track(
        self, label: str, box: Box, handle: Any, check: FindCheck
    ) -> tuple[int, ObjectResult | None]:
        """Make the kept candidate an object (`handle` from segment, or None: start from `box`)
        with the VLM's `check` of it; (its id, its result when the mode shows it at once)."""
        ...

    async def propose(self, options: dict[str, Any]) -> list[Any]:
        """Find-all's regions (workers.vision.proposals.Proposal) on the frame; may move the
        site to a newer frame (Live), setting frame and frame_index."""
        ...


async def ground(table: ObjectTable, reasoner: Any, frame: Any, phrase: str) -> list[Any]:
    """Boxes for `phrase` on the frame, a request of the table's VLM share; a VLM failure is
    refused as vlm_error."""
    try:
        async with table.vlm_share.request():
            return list(await reasoner.ground(frame, phrase))
    except VLMError as exc:
        raise ObjectRefused("vlm_error", f"could not find {phrase!r}: {exc}") from None


async def check_candidate(
    table: ObjectTable, reasoner: Any, frame: Any, mask: Any, phrase: str
) -> tuple[FindCheck, str]:
    """Checked Find: the candidate's Spotlight shown to the VLM with the phrase, a request of the
    table's VLM share.

    An empty mask is no object at all; an answer that is neither yes nor no is `unclear` and kept
    (flagged), since only a clear no drops a candidate. A VLM failure refuses the whole Find."""
    if mask is None or not mask.any():
        return "no_match", "SAM2 found no object in this box"
    try:
        async with table.vlm_share.request():
            check = await reasoner.check_match(frame, mask, phrase)
    except VLMError as exc:
        raise ObjectRefused(
            "vlm_error", f"could not check the candidates for {phrase!r}: {exc}"
        ) from None
    verdict: FindCheck = (
        "unclear" if check.match is None else "match" if check.match else "no_match"
    )
    return verdict, check.answer


def _box(values: Any) -> Box:
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


async def find(
    site: FindSite, reasoner: Any, phrase: str, *, all_candidates: bool = False
) -> AsyncIterator[Event]:
    """Checked Find: ground, segment each box, show its Spotlight to the VLM; the rejected ones
    are dropped (or kept, flagged, with all_candidates). Yields the object list, then
    find_result. A VLM failure refuses the Find (ObjectRefused) when nothing was kept yet;
    after that it ends the Find there, and find_result says so beside what was kept."""
    table = site.table
    boxes = await ground(table, reasoner, site.frame, phrase)
    found: list[FoundObject] = []
    dropped: list[RejectedCandidate] = []
    note = failed = None
    # The object cap bounds the candidates, and with them the VLM requests of one Find.
    checked = boxes[: max(0, table.cap - len(table))]
    for g in checked:
        if table.full():  # a click or another Find took the room meanwhile
            break
        box = _box(g.box)
        handle = None
        try:
            try:
                mask, frame, handle = await site.segment(box)
            except ValueError as exc:
                note = str(exc)
                continue
            try:
                check, answer = await check_candidate(table, reasoner, frame, mask, phrase)
            except ObjectRefused as exc:
                if not found:
                    raise
                failed = f"{exc}; the other candidates were not checked"
                break
            label = g.label or phrase
            if not (all_candidates or check != "no_match"):
                dropped.append(
                    RejectedCandidate(box=box, label=label, check=check, check_answer=answer)
                )
                continue
            try:
                oid, result = await site.track(label, box, handle, check)
            except ObjectRefused as exc:
                if exc.code != "too_many_objects":  # the room went while the VLM checked it
                    raise
                break
            handle = None
            found.append(
                FoundObject(
                    object_id=oid,
                    box=box,
                    label=label,
                    score=g.score,
                    result=result,
                    check=check,
                    check_answer=answer,
                )
            )
        finally:
            if handle is not None:  # rejected, a VLM failure or a cancel mid-check: it goes
                await site.discard(handle)
    yield table.message(added=found[0].object_id if found else None)
    yield FindResultMessage(
        phrase=phrase,
        objects=found,
        message=failed
        or _find_note(phrase, len(boxes), len(checked), len(found), table, dropped)
        or note,
        frame_index=site.frame_index,
        rejected=dropped,
    )


async def last_result(events: AsyncIterator[Event]) -> FindResultMessage:
    """A find's find_result, for an HTTP answer that is the result alone (Clip, Image find)."""
    result = None
    async for event in events:
        if isinstance(event, FindResultMessage):
            result = event
    assert result is not None, "find ends with find_result"
    return result


def _find_note(
    phrase: str,
    n_boxes: int,
    n_checked: int,
    found: int,
    table: ObjectTable,
    dropped: list[RejectedCandidate],
) -> str | None:
    """Why a find tracked fewer objects than it found boxes, if it did."""
    if not n_boxes:
        return f"nothing matching {phrase!r} in the frame"
    notes = []
    if dropped:
        notes.append(
            f"{_plural(len(dropped), 'candidate')} the VLM did not accept as {phrase!r} "
            "(ask for all candidates to keep them)"
        )
    if found + len(dropped) < n_boxes and table.full():
        notes.append(f"stopped at {table.cap} objects (the maximum)")
    elif n_checked < n_boxes:  # room is left: they were past what the Find had room for
        notes.append(
            f"{_plural(n_boxes - n_checked, 'more candidate')} not checked (a Find checks as many "
            "as there is room for under the object limit): find again for them"
        )
    return "; ".join(notes) or None


async def find_all(
    site: FindSite, reasoner: Any, phrase: str, limits: FindAllLimits
) -> AsyncIterator[Event]:
    """Find all / count: propose regions, classify their Spotlights in batches, track the
    accepted ones. Yields find_progress as it goes, then the object list and find_result with
    `count`. A VLM failure refuses the query (ObjectRefused) with nothing tracked."""
    table = site.table
    phrase = count_phrase(phrase)
    yield FindProgressMessage(phrase=phrase, stage="proposing")
    try:
        proposals = [p for p in await site.propose(limits.proposal_options()) if p.mask.any()]
    except ValueError as exc:
        raise ObjectRefused("no_frame", f"could not propose regions: {exc}") from None
    batches = [
        proposals[i : i + limits.regions_per_request]
        for i in range(0, len(proposals), limits.regions_per_request)
    ][: limits.max_requests]
    asked = sum(len(b) for b in batches)
    yield FindProgressMessage(phrase=phrase, stage="classifying", total=asked)
    answers: dict[int, list[bool | None]] = {}
    classify = _classify(table.vlm_share, reasoner, site.frame, phrase, batches, limits.concurrency)
    async with classify as results:
        async for i, matches in results:
            answers[i] = matches
            accepted = sum(bool(m) for ms in answers.values() for m in ms)
            yield FindProgressMessage(
                phrase=phrase,
                stage="classifying",
                done=sum(len(batches[j]) for j in answers),
                total=asked,
                accepted=accepted,
                requests=len(answers),
            )
    verdicts = [m for i in range(len(batches)) for m in answers[i]]
    accepted_regions = [p for p, m in zip(proposals, verdicts, strict=False) if m]
    unclear = sum(m is None for m in verdicts)
    found: list[FoundObject] = []
    for p in accepted_regions:
        box = _box(p.box)
        try:
            oid, result = await site.track(phrase, box, None, "match")
        except ObjectRefused as exc:
            if exc.code != "too_many_objects":
                raise
            break  # at the cap: the count says how many more there were
        found.append(
            FoundObject(
                object_id=oid, box=box, label=phrase, score=None, result=result, check="match"
            )
        )
    yield table.message(added=found[0].object_id if found else None)
    count = len(accepted_regions)
    yield FindResultMessage(
        phrase=phrase,
        objects=found,
        message=_count_note(phrase, count, len(found), len(proposals), asked, unclear, table),
        frame_index=site.frame_index,
        count=count,
        proposals=len(proposals),
        requests=len(batches),
    )


@contextlib.asynccontextmanager
async def _classify(
    share: VLMShare,
    reasoner: Any,
    frame: Any,
    phrase: str,
    batches: list[list[Any]],
    concurrency: int,
) -> AsyncIterator[AsyncIterator[tuple[int, list[bool | None]]]]:
    """The batches' answers as they come, at most `concurrency` requests at once, each a request
    of the table's VLM `share`; the requests still running are cancelled when the caller stops
    (a stop, a failure)."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(i: int, batch: list[Any]) -> tuple[int, list[bool | None]]:
        async with gate:
            try:
                async with share.request():
                    out = await reasoner.classify_regions(frame, [p.mask for p in batch], phrase)
            except VLMError as exc:
                raise ObjectRefused(
                    "vlm_error", f"could not classify the regions for {phrase!r}: {exc}"
                ) from None
        return i, list(out.matches)

    tasks = [asyncio.ensure_future(one(i, b)) for i, b in enumerate(batches)]

    async def results() -> AsyncIterator[tuple[int, list[bool | None]]]:
        for next_done in asyncio.as_completed(tasks):
            yield await next_done

    try:
        yield results()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _count_note(
    phrase: str,
    count: int,
    tracked: int,
    proposals: int,
    asked: int,
    unclear: int,
    table: ObjectTable,
) -> str:
    """The answer to "how many": the count, and what bounded or clouded it."""
    if not proposals:
        return f"no regions proposed in the frame, so no {phrase!r} found"
    if unclear == asked:
        return (
            f"the VLM's answers about the {_plural(asked, 'region')} were neither yes nor no; "
            "nothing was tracked (try again, or a clearer phrase)"
        )
    notes = [f"{count} of {_plural(asked, 'proposed region')} accepted as {phrase!r}"]
    if asked < proposals:
        notes.append(f"{proposals - asked} more proposals not checked (the request limit)")
    if unclear:
        notes.append(f"{_plural(unclear, 'region')} without a clear answer, not counted")
    if tracked < count:
        notes.append(f"tracked {tracked}: at most {table.cap} objects")
    return "; ".join(notes)
