"""Find as one coroutine, the same events in every mode: the VLM checks the masks.

Find grounds a phrase, segments each box and shows each mask's Spotlight to the VLM with the
phrase (checked Find); find_all.py proposes regions instead and counts them. Both are bounded (the
object cap, the VLM requests of one query) and cancellable (the consumer stops iterating), and a
reset while either runs stops it: it adds nothing after the reset (ObjectTable.reset).

What differs per mode is a small adapter, a FindSite: the frame, how a box becomes a mask, how a
kept candidate becomes a tracked object, and how regions are proposed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from streamer.objects.events import (
    Box,
    Event,
    FindCheck,
    FindResultMessage,
    FoundObject,
    ObjectResult,
    RejectedCandidate,
)
from streamer.objects.table import ObjectRefused, ObjectTable
from workers.reasoning.errors import VLMError
from workers.vision.proposals import ProposalGrid
from workers.words import plural, quoted


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
        """Make the kept candidate an object (`handle` from segment, with no await before the
        object is added) with the VLM's `check` of it; (its id, its result when the mode shows
        it at once)."""
        ...

    async def propose(self, grid: ProposalGrid) -> list[Any]:
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
        raise ObjectRefused("vlm_error", f"could not find {quoted(phrase)}: {exc}") from None


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
            "vlm_error", f"could not check the candidates for {quoted(phrase)}: {exc}"
        ) from None
    verdict: FindCheck = (
        "unclear" if check.match is None else "match" if check.match else "no_match"
    )
    return verdict, check.answer


RESET_NOTE = "the objects were cleared while it ran (find again)"


async def keep_candidate(
    site: FindSite, resets: int, label: str, box: Box, handle: Any, check: FindCheck
) -> tuple[int, ObjectResult | None] | None:
    """A kept candidate tracked as an object, or None when it cannot be: the objects were reset
    since the Find began (table.resets moved from `resets`; no await between this check and the
    site's add), or a click took the last place. It leaves nothing behind then, nor cancelled."""
    try:
        if site.table.resets == resets:
            kept = await site.track(label, box, handle, check)
            handle = None
            return kept
    except ObjectRefused as exc:
        if exc.code != "too_many_objects":
            raise
    finally:
        if handle is not None:
            await site.discard(handle)
    return None


def as_box(values: Any) -> Box:
    return tuple(float(v) for v in values)  # type: ignore[return-value]


async def find(
    site: FindSite, reasoner: Any, phrase: str, *, all_candidates: bool = False
) -> AsyncIterator[Event]:
    """Checked Find: ground, segment each box, show its Spotlight to the VLM; the rejected ones
    are dropped (or kept, flagged, with all_candidates). Yields the object list, then
    find_result. A VLM failure refuses the Find (ObjectRefused) when nothing was kept yet;
    after that it ends the Find there, and find_result says so beside what was kept."""
    table = site.table
    resets = table.resets  # one more: a reset came, and the Find adds nothing after it
    boxes = await ground(table, reasoner, site.frame, phrase)
    found: list[FoundObject] = []
    dropped: list[RejectedCandidate] = []
    note = failed = None
    # The object cap bounds the candidates, and with them the VLM requests of one Find.
    checked = boxes[: max(0, table.cap - len(table))]
    for g in checked:
        if table.full() or table.resets != resets:  # a click or a Find took the room, a reset
            break
        box = as_box(g.box)
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
            candidate, handle = handle, None  # _keep's now
            if (kept := await keep_candidate(site, resets, label, box, candidate, check)) is None:
                break
            oid, result = kept
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
    cleared = table.resets != resets
    found = [] if cleared else found  # the reset takes all it made, if it has not yet
    yield table.message(added=found[0].object_id if found else None)
    yield FindResultMessage(
        phrase=phrase,
        objects=found,
        message=(f"stopped: {RESET_NOTE}" if cleared else failed)
        or _find_note(phrase, len(boxes), len(checked), len(found), table, dropped)
        or note,
        frame_index=site.frame_index,
        rejected=dropped,
        cleared=cleared,
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
        return f"nothing matching {quoted(phrase)} in the frame"
    notes = []
    if dropped:
        notes.append(
            f"{plural(len(dropped), 'candidate')} the VLM did not accept as {quoted(phrase)} "
            "(ask for all candidates to keep them)"
        )
    if found + len(dropped) < n_boxes and table.full():
        notes.append(f"stopped at {table.cap} objects (the maximum)")
    elif n_checked < n_boxes:  # room is left: they were past what the Find had room for
        notes.append(
            f"{plural(n_boxes - n_checked, 'more candidate')} not checked (a Find checks as many "
            "as there is room for under the object limit): find again for them"
        )
    return "; ".join(notes) or None
