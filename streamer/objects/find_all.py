"""Find all / count as one coroutine, the same events in every mode: the VLM classifies regions.

Find-all ("find all cups", "how many cups?") proposes regions with SAM2's automatic mask generator
on the frame's cached features, shows their Spotlights to the VLM in batches to classify against
the phrase, and tracks every accepted one: the count is how many it accepted. It is bounded
(proposals, VLM requests and their concurrency per query, the object cap) and cancellable (the
consumer stops iterating; nothing is tracked before classification ends, so a stop before then
applies nothing). The mode's side is find.py's FindSite, as for Find.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, fields
from typing import Any

from streamer.objects.events import Event, FindProgressMessage, FindResultMessage, FoundObject
from streamer.objects.find import RESET_NOTE, FindSite, as_box, keep_candidate
from streamer.objects.share import VLMShare
from streamer.objects.table import ObjectRefused
from workers.reasoning.errors import VLMError
from workers.vision.proposals import ProposalGrid
from workers.words import plural, quoted


@dataclass(frozen=True)
class FindAllLimits:
    """Find-all's bounds per query (Settings.find_all_*)."""

    grid: ProposalGrid = ProposalGrid()  # the regions proposed (each one shown to the VLM)
    regions_per_request: int = 4  # Spotlights per VLM request
    max_requests: int = 3  # VLM requests per query
    concurrency: int = 2  # VLM requests at once per query


def limits_from(settings: Any) -> FindAllLimits:
    """The find-all bounds of the service's settings: each field NAME of FindAllLimits and of
    its ProposalGrid is --find-all-NAME."""

    def named(cls: Any) -> dict[str, Any]:
        return {
            f.name: getattr(settings, f"find_all_{f.name}") for f in fields(cls) if f.name != "grid"
        }

    return FindAllLimits(grid=ProposalGrid(**named(ProposalGrid)), **named(FindAllLimits))


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


async def find_all(
    site: FindSite, reasoner: Any, phrase: str, limits: FindAllLimits
) -> AsyncIterator[Event]:
    """Find all / count: propose regions, classify their Spotlights in batches, track the
    accepted ones. Yields find_progress as it goes, then the object list and find_result with
    `count`. A VLM failure refuses the query (ObjectRefused) with nothing tracked."""
    table = site.table
    resets = table.resets  # one more: a reset came, and the Find adds nothing after it
    phrase = count_phrase(phrase)
    yield FindProgressMessage(phrase=phrase, stage="proposing")
    try:
        proposals = [p for p in await site.propose(limits.grid) if p.mask.any()]
    except ValueError as exc:
        raise ObjectRefused("no_frame", f"could not propose regions: {exc}") from None
    batches = [
        proposals[i : i + limits.regions_per_request]
        for i in range(0, len(proposals), limits.regions_per_request)
    ][: limits.max_requests]
    asked = sum(len(b) for b in batches)
    yield FindProgressMessage(phrase=phrase, stage="classifying", total=asked)
    answers: dict[int, list[bool | None]] = {}
    classify = _classify(
        table.vlm_share, reasoner, site.frame, phrase, batches, limits.concurrency,
        until=table.reset_since(resets),
    )  # fmt: skip
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
    if table.resets != resets:  # Clear objects: the requests still at the VLM were stopped
        done = sum(len(batches[j]) for j in answers)
        yield table.message(added=None)
        yield FindResultMessage(
            phrase=phrase,
            objects=[],
            message=f"stopped after {done} of {plural(asked, 'region')}; {RESET_NOTE}",
            frame_index=site.frame_index,
            count=sum(bool(m) for ms in answers.values() for m in ms),  # of those asked
            proposals=len(proposals),
            requests=len(answers),
            cleared=True,
        )
        return
    verdicts = [m for i in range(len(batches)) for m in answers[i]]
    accepted_regions = [p for p, m in zip(proposals, verdicts, strict=False) if m]
    unclear = sum(m is None for m in verdicts)
    found: list[FoundObject] = []
    unsegmented = 0
    for p in accepted_regions:
        if table.full() or table.resets != resets:  # at the cap the count says how many more
            break
        box = as_box(p.box)
        try:
            _, _, handle = await site.segment(box)
        except ValueError:
            unsegmented += 1  # counted, not tracked (the note says so)
            continue
        if (kept := await keep_candidate(site, resets, phrase, box, handle, "match")) is None:
            break
        oid, result = kept
        found.append(
            FoundObject(
                object_id=oid, box=box, label=phrase, score=None, result=result, check="match"
            )
        )
    fewer = [f"SAM2 could not segment {unsegmented}"] if unsegmented else []
    if cleared := table.resets != resets:  # the reset takes all it made, if it has not yet
        found, fewer = [], [RESET_NOTE]
    elif table.full():
        fewer.append(f"at most {table.cap} objects")
    yield table.message(added=found[0].object_id if found else None)
    count = len(accepted_regions)
    note = _count_note(phrase, count, len(found), len(proposals), asked, unclear, fewer)
    yield FindResultMessage(
        phrase=phrase,
        objects=found,
        message=note,
        frame_index=site.frame_index,
        count=count,
        proposals=len(proposals),
        requests=len(batches),
        cleared=cleared,
    )


@contextlib.asynccontextmanager
async def _classify(
    share: VLMShare,
    reasoner: Any,
    frame: Any,
    phrase: str,
    batches: list[list[Any]],
    concurrency: int,
    until: Awaitable[None],
) -> AsyncIterator[AsyncIterator[tuple[int, list[bool | None]]]]:
    """The batches' answers as they come, at most `concurrency` requests at once, each a request
    of the table's VLM `share`, until `until` is done (a reset); the requests still running are
    cancelled then and when the caller stops (a stop, a failure)."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(i: int, batch: list[Any]) -> tuple[int, list[bool | None]]:
        async with gate:
            try:
                async with share.request():
                    out = await reasoner.classify_regions(frame, [p.mask for p in batch], phrase)
            except VLMError as exc:
                raise ObjectRefused(
                    "vlm_error", f"could not classify the regions for {quoted(phrase)}: {exc}"
                ) from None
        return i, list(out.matches)

    tasks = [asyncio.ensure_future(one(i, b)) for i, b in enumerate(batches)]
    stop = asyncio.ensure_future(until)

    async def results() -> AsyncIterator[tuple[int, list[bool | None]]]:
        for next_done in asyncio.as_completed(tasks):
            answer = asyncio.ensure_future(next_done)
            await asyncio.wait((answer, stop), return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():
                answer.cancel()
                await asyncio.gather(answer, return_exceptions=True)
                return
            yield answer.result()

    try:
        yield results()
    finally:
        for t in (*tasks, stop):
            t.cancel()
        await asyncio.gather(*tasks, stop, return_exceptions=True)


def _count_note(
    phrase: str,
    count: int,
    tracked: int,
    proposals: int,
    asked: int,
    unclear: int,
    fewer: list[str],
) -> str:
    """The answer to "how many": the count, and what bounded or clouded it (`fewer`: why fewer
    were tracked than counted)."""
    if not proposals:
        return f"no regions proposed in the frame, so no {quoted(phrase)} found"
    if unclear == asked:
        return (
            f"the VLM's answers about the {plural(asked, 'region')} were neither yes nor no; "
            "nothing was tracked (try again, or a clearer phrase)"
        )
    notes = [f"{count} of {plural(asked, 'proposed region')} accepted as {quoted(phrase)}"]
    if asked < proposals:
        notes.append(f"{proposals - asked} more proposals not checked (the request limit)")
    if unclear:
        notes.append(f"{plural(unclear, 'region')} without a clear answer, not counted")
    if tracked < count:
        notes.append(f"tracked {tracked}: {', '.join(fewer)}")
    return "; ".join(notes)
