"""What the service asks a VLM about one object: describe, chat, describe a track, ground, verify.

The Reasoner turns frames and masks into chat requests (Spotlight images, resized to a known size)
and model answers into tokens, boxes and verdicts. It knows nothing about sessions or the network;
all model traffic goes through its backend (any VLMBackend). Pixel work (Spotlight, resize, JPEG:
about 2 ms at 720p) runs in a worker thread, so the event loop only moves bytes.

Verification (docs/architecture.md, decision 7): a description is grounded back to a box on the
ORIGINAL frame (not the spotlit one, where the outline would give the answer away); the IoU of that
box with the mask's box decides. Below the threshold the description is regenerated with a "look again" prompt
and the family's recommended sampling (with a seed of its own per attempt), up to max_attempts; the
best attempt is reported with its verdict and IoU either way.

The model's family (families.py) fixes the box coordinates, the image grid and whether it thinks.
A thinking model's reasoning never becomes a description, an answer or a phrase to ground: every
request's pieces go through a ThinkSplitter, and budgets grow by the family's thinking allowance.
A thinking model samples every request as its authors recommend (greedy decoding makes it repeat
itself endlessly); the others answer greedily, except the regenerated descriptions.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np

from workers.masks import Box, box_iou, mask_to_box
from workers.reasoning import prompts
from workers.reasoning.answers import (
    Done,
    parse_click,
    parse_region_answers,
    parse_yes_no,
    to_frame_point,
)
from workers.reasoning.backends import Retracted, Thinking, ThinkSplitter, VLMBackend
from workers.reasoning.errors import VLMBadResponse, VLMError, VLMMisconfigured
from workers.reasoning.families import (
    FamilyChoice,
    Sampling,
    UnknownFamily,
    VLMFamily,
    choose_family,
)
from workers.reasoning.grounding import GroundedBox, parse_grounding
from workers.reasoning.images import PreparedImage, prepare_image
from workers.reasoning.spotlight import render_spotlight

log = logging.getLogger("fmu.vlm")


@dataclass(frozen=True)
class TokenEvent:
    """A piece of description text; a new attempt number means the text starts over."""

    text: str
    attempt: int
    type: Literal["token"] = "token"


@dataclass(frozen=True)
class VerdictEvent:
    """The end of a verified description: the text kept, its verdict, and the IoU behind it."""

    description: str
    verdict: Literal["verified", "unverified"]
    iou: float | None  # None: the description was never checked (grounding it failed)
    attempts: int
    box: Box | None  # the grounded box in frame pixels that gave `iou`, if any
    note: str = ""  # why it is unverified without all its attempts (a later request failed)
    # each finished attempt's description in order, reasoning left out (the streamed tokens
    # may hold some, taken back later): what an evaluation records of the attempts
    tried: tuple[str, ...] = ()
    type: Literal["verdict"] = "verdict"


DescribeEvent = TokenEvent | VerdictEvent


@dataclass(frozen=True)
class MatchCheck:
    """Checked Find: the model's yes (True), no (False) or neither (None), and its words."""

    match: bool | None
    answer: str


@dataclass(frozen=True)
class RegionAnswers:
    """Find-all: the model's yes (True), no (False) or neither (None) per region, and its words."""

    matches: list[bool | None]
    answer: str


@dataclass(frozen=True)
class NextClick:
    """Auto-refine's step: a click in frame pixels, done, or `unclear` (the answer was junk)."""

    action: Literal["positive", "negative", "done", "unclear"]
    point: tuple[float, float] | None  # frame pixels, for positive / negative
    answer: str  # the model's words, for the message when it is unclear
    model_point: tuple[float, float] | None = None  # as the model wrote it (for the history)


@dataclass(frozen=True)
class _Attempt:
    description: str
    iou: float | None  # None: not checked
    box: Box | None


def _mask_box(mask: np.ndarray) -> Box:
    box = mask_to_box(mask)
    if box is None:
        raise ValueError("mask is empty: there is no object to describe or verify")
    return box


def _check_track(keyframes: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> None:
    if not keyframes or len(keyframes) != len(masks):
        raise ValueError(
            f"describe_track needs as many masks as keyframes (at least one), got "
            f"{len(keyframes)} keyframes and {len(masks)} masks"
        )


def _check_history(history: Sequence[dict[str, str]]) -> None:
    for i, turn in enumerate(history):
        if turn.get("role") not in ("user", "assistant") or not isinstance(
            turn.get("content"), str
        ):
            raise ValueError(
                f"history[{i}] must be {{'role': 'user'|'assistant', 'content': str}}, got {turn!r}"
            )


def _best_match(boxes: Sequence[GroundedBox], target: Box) -> tuple[float, Box | None]:
    # Several boxes can come back ("a cup" where there are two): the description is right if any
    # of them is the object, so the best-overlapping one counts.
    best_iou, best_box = 0.0, None
    for g in boxes:
        iou = box_iou(g.box, target)
        if best_box is None or iou > best_iou:
            best_iou, best_box = iou, g.box
    return best_iou, best_box


async def answer_text(stream: AsyncIterator[str | Retracted]) -> str:
    """The whole text of an answer stream (chat's, or _stream's), without the text a Retracted
    took back: what a caller keeps when it does not show the answer as it streams."""
    pieces: list[str] = []
    async with aclosing(stream) as parts:
        async for part in parts:
            if isinstance(part, Retracted):
                pieces.clear()
            else:
                pieces.append(part)
    return "".join(pieces)


class Reasoner:
    """Describe, chat about, track-describe, ground and verify objects through one VLM backend."""

    def __init__(
        self,
        backend: VLMBackend,
        *,
        verify_iou_threshold: float = 0.5,
        max_attempts: int = 3,
        max_side: int = 768,
        track_max_side: int = 448,
        family: str | VLMFamily = "auto",
        max_tokens: int = 256,
        ground_max_tokens: int = 384,
        seed: int | None = None,
        rgb: bool = True,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if not 0.0 <= verify_iou_threshold <= 1.0:
            raise ValueError(f"verify_iou_threshold must be in [0, 1], got {verify_iou_threshold}")
        self.backend = backend
        self.verify_iou_threshold = verify_iou_threshold
        self.max_attempts = max_attempts
        self.max_side = max_side
        self.track_max_side = track_max_side
        self.family_setting = family.name if isinstance(family, VLMFamily) else family
        self._family: FamilyChoice | None = None
        if isinstance(family, VLMFamily):
            self._family = FamilyChoice(family, "given")
        elif family != "auto":
            self._family = choose_family(family, [])  # raises on an unknown name, at start
        self.max_tokens = max_tokens
        self.ground_max_tokens = ground_max_tokens
        self.seed = seed  # None: a fresh random seed for every sampled attempt
        self.rgb = rgb

    # -- the model's family --------------------------------------------------------------------

    async def family_choice(self) -> FamilyChoice:
        """The family and why; in auto mode asked of the backend once (until it answers)."""
        if self._family is None:
            info = await self.backend.model_info()
            try:
                self._family = choose_family("auto", info.names)
            except UnknownFamily as exc:
                raise VLMMisconfigured(str(exc)) from None
        return self._family

    async def family(self) -> VLMFamily:
        return (await self.family_choice()).family

    async def family_status(self) -> dict[str, Any]:
        """For /readyz and the start-up log: the family, why, or why it is not known; never raises."""
        try:
            choice = await asyncio.wait_for(self.family_choice(), timeout=5.0)
        except (VLMError, TimeoutError) as exc:
            return {"family": None, "family_reason": str(exc) or type(exc).__name__}
        return {
            "family": choice.family.name,
            "family_reason": choice.reason,
            "thinks": choice.family.thinks,
            "coords": choice.family.coords,
        }

    @property
    def _known_family(self) -> VLMFamily:
        # Message builders are sync (they run in a worker thread); the async operations resolve
        # the family before building, so it is known by then.
        if self._family is None:
            raise RuntimeError("the VLM family is not resolved yet: await reasoner.family() first")
        return self._family.family

    # -- building requests ---------------------------------------------------------------------

    def _prepare(self, image: np.ndarray, max_side: int | None = None) -> PreparedImage:
        return prepare_image(
            image,
            max_side or self.max_side,
            multiple=self._known_family.grid_multiple,
            rgb=self.rgb,
        )

    def spotlight_parts(
        self, frame: np.ndarray, mask: np.ndarray
    ) -> tuple[list[dict[str, Any]], bool]:
        """Image parts for one spotlit object (full view, plus the zoom for a small object)."""
        spot = render_spotlight(frame, mask)
        parts = [self._prepare(img).part() for img in spot.images]
        return parts, spot.crop is not None

    def describe_messages(
        self, frame: np.ndarray, mask: np.ndarray, previous: str | None = None
    ) -> list[dict[str, Any]]:
        parts, zoom = self.spotlight_parts(frame, mask)
        text = prompts.describe(zoom=zoom, previous=previous)
        return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]

    def track_messages(
        self,
        keyframes: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        previous: str | None = None,
    ) -> list[dict[str, Any]]:
        _check_track(keyframes, masks)
        # Full views only, smaller than a single image's: n images cost n times the tokens.
        parts = [
            self._prepare(render_spotlight(f, m).image, self.track_max_side).part()
            for f, m in zip(keyframes, masks, strict=True)
        ]
        text = prompts.describe_track(len(parts), previous)
        return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]

    def chat_messages(
        self, frame: np.ndarray, mask: np.ndarray, history: Sequence[dict[str, str]], question: str
    ) -> list[dict[str, Any]]:
        _check_history(history)
        parts, _ = self.spotlight_parts(frame, mask)
        turns: list[dict[str, Any]] = [
            {"role": t["role"], "content": t["content"]} for t in history
        ]
        turns.append({"role": "user", "content": question})
        if turns[0]["role"] != "user":
            turns.insert(0, {"role": "user", "content": prompts.CHAT_OPENING})
        # The images go with the first user turn, so every later turn refers back to them.
        turns[0] = {
            "role": "user",
            "content": [*parts, {"type": "text", "text": turns[0]["content"]}],
        }
        return [{"role": "system", "content": prompts.CHAT_SYSTEM}, *turns]

    # -- operations ----------------------------------------------------------------------------

    async def _stream(
        self,
        messages: list[dict[str, Any]],
        *,
        max_tokens: int,
        sampling: Sampling | None = None,
    ) -> AsyncIterator[str | Retracted]:
        """The answer's text pieces; a thinking model's reasoning is consumed here, never passed
        on, and a budget spent wholly on thinking is an error that says so. Retracted: the text
        given so far was reasoning after all (drop it). `sampling` None: the family's own."""
        family = await self.family()
        budget = max_tokens + family.thinking_tokens
        if sampling is None:
            sampling = self._request_sampling(family)
        splitter = ThinkSplitter(starts_thinking=family.thinks)
        answered = False
        async with aclosing(
            self.backend.stream_chat(messages, max_tokens=budget, sampling=sampling)
        ) as pieces:
            async for piece in pieces:
                for part in splitter.feed(piece):
                    if isinstance(part, Retracted):
                        log.warning(
                            "the model closed a </think> that nothing had opened: it thinks, but "
                            "its family %r does not; pass --vlm-family qwen3-vl-thinking",
                            family.name,
                        )
                    if not isinstance(part, Thinking):
                        answered = isinstance(part, str)
                        yield part
        for part in splitter.finish():
            if not isinstance(part, Thinking):
                answered = True
                yield part
        if splitter.thought and not answered:
            raise VLMBadResponse(
                f"the model thought for its whole budget ({budget} tokens) and gave no answer; "
                "serve it with a larger --max-model-len, or use a non-thinking model"
            )

    async def _text(self, messages: list[dict[str, Any]], *, max_tokens: int) -> AsyncIterator[str]:
        """_stream for a caller that streams the text on as it comes: what was already passed on
        cannot be taken back, so a retraction is only logged (by _stream)."""
        async with aclosing(self._stream(messages, max_tokens=max_tokens)) as stream:
            async for part in stream:
                if not isinstance(part, Retracted):
                    yield part

    async def _answer(self, messages: list[dict[str, Any]], *, max_tokens: int) -> str:
        """The whole answer of one request, without any text that turned out to be reasoning."""
        return await answer_text(self._stream(messages, max_tokens=max_tokens))

    def _request_sampling(self, family: VLMFamily) -> Sampling:
        # Greedy for most (the model's one best answer); a thinking family's own sampling, with
        # --vlm-seed as its seed so that a run can be reproduced.
        s = family.sampling
        if s.greedy:
            return s
        return Sampling(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, seed=self.seed)

    def _attempt_sampling(self, family: VLMFamily, attempt: int) -> Sampling:
        # The first answer is the family's usual (greedy, unless it thinks); later ones sample,
        # each with a seed of its own, so a retry is a new answer and not the same text again.
        if attempt == 1 and family.sampling.greedy:
            return family.sampling
        r = family.retry_sampling
        seed = self.seed + attempt if self.seed is not None else secrets.randbelow(2**31)
        return Sampling(temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, seed=seed)

    async def describe(self, frame: np.ndarray, mask: np.ndarray) -> AsyncIterator[str]:
        """Stream a description of the masked object."""
        await self.family()
        messages = await asyncio.to_thread(self.describe_messages, frame, mask)
        async with aclosing(self._text(messages, max_tokens=self.max_tokens)) as stream:
            async for piece in stream:
                yield piece

    async def description(self, frame: np.ndarray, mask: np.ndarray) -> str:
        """describe's whole text at once, reasoning left out even where it showed only at the end
        (a `</think>` nothing opened): for callers that keep the text (eval, the dataset)."""
        await self.family()
        messages = await asyncio.to_thread(self.describe_messages, frame, mask)
        return (await self._answer(messages, max_tokens=self.max_tokens)).strip()

    async def chat(
        self, frame: np.ndarray, mask: np.ndarray, history: list[dict[str, str]], question: str
    ) -> AsyncIterator[str | Retracted]:
        """Stream an answer to `question` about the masked object, given the conversation so far.
        Retracted: the text so far was reasoning after all; the answer kept leaves it out."""
        _check_history(history)
        await self.family()
        messages = await asyncio.to_thread(self.chat_messages, frame, mask, history, question)
        async with aclosing(self._stream(messages, max_tokens=self.max_tokens)) as stream:
            async for piece in stream:
                yield piece

    async def describe_track(
        self, keyframes: list[np.ndarray], masks: list[np.ndarray]
    ) -> AsyncIterator[str]:
        """Stream what the object looks like and does over the keyframes (one request)."""
        await self.family()
        messages = await asyncio.to_thread(self.track_messages, keyframes, masks)
        async with aclosing(self._text(messages, max_tokens=self.max_tokens)) as stream:
            async for piece in stream:
                yield piece

    async def ground(
        self, frame: np.ndarray, phrase: str, *, one: bool = False
    ) -> list[GroundedBox]:
        """Boxes (frame pixels) for `phrase` on the frame as it is; [] when the model finds none."""
        if not phrase.strip():
            return []
        family = await self.family()
        image = await asyncio.to_thread(self._prepare, frame)
        text = prompts.ground(phrase, coords=family.coords, size=image.size, one=one)
        messages = [{"role": "user", "content": [image.part(), {"type": "text", "text": text}]}]
        answer = await self._answer(messages, max_tokens=self.ground_max_tokens)
        return parse_grounding(
            answer, image_size=image.size, frame_size=image.source_size, coords=family.coords
        )

    async def check_match(self, frame: np.ndarray, mask: np.ndarray, phrase: str) -> MatchCheck:
        """Checked Find: is the object under `mask` what `phrase` says? Shown as its Spotlight."""
        _mask_box(mask)
        await self.family()

        def build() -> list[dict[str, Any]]:
            parts, zoom = self.spotlight_parts(frame, mask)
            text = prompts.match(phrase, zoom=zoom)
            return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]

        messages = await asyncio.to_thread(build)
        answer = (await self._answer(messages, max_tokens=16)).strip()
        return MatchCheck(parse_yes_no(answer), answer)

    async def classify_regions(
        self, frame: np.ndarray, masks: Sequence[np.ndarray], phrase: str
    ) -> RegionAnswers:
        """Find-all: one request showing each mask's Spotlight (full view, in order) and asking
        which are `phrase`; a yes / no / None per mask, and the model's words."""
        if not masks:
            return RegionAnswers([], "")
        for m in masks:
            _mask_box(m)
        await self.family()

        def build() -> list[dict[str, Any]]:
            parts = [
                self._prepare(render_spotlight(frame, m).image, self.track_max_side).part()
                for m in masks
            ]
            text = prompts.classify_regions(phrase, len(parts))
            return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]

        messages = await asyncio.to_thread(build)
        budget = 16 + 6 * len(masks)
        answer = (await self._answer(messages, max_tokens=budget)).strip()
        return RegionAnswers(parse_region_answers(answer, len(masks)), answer)

    async def next_click(
        self,
        frame: np.ndarray,
        mask: np.ndarray,
        target: str | None = None,
        clicks: Sequence[tuple[str, tuple[float, float]]] = (),
    ) -> NextClick:
        """Auto-refine: the click that improves `mask` next, or done. The model sees the Spotlight
        of the current mask and the original frame; its point is in its family's convention on
        the original frame's image and comes back in frame pixels. `clicks` are the earlier ones
        (kind, model point), so it does not repeat itself."""
        family = await self.family()
        h, w = frame.shape[:2]

        def build() -> tuple[list[dict[str, Any]], tuple[int, int]]:
            spot = self._prepare(render_spotlight(frame, mask).image)
            original = self._prepare(frame)
            history = [(k, (round(p[0]), round(p[1]))) for k, p in clicks]
            text = prompts.next_click(
                target, coords=family.coords, size=original.size, clicks=history
            )
            content = [spot.part(), original.part(), {"type": "text", "text": text}]
            return [{"role": "user", "content": content}], original.size

        messages, image_size = await asyncio.to_thread(build)
        answer = (await self._answer(messages, max_tokens=64)).strip()
        parsed = parse_click(answer)
        if isinstance(parsed, Done):
            return NextClick("done", None, answer)
        if parsed is not None:
            point = to_frame_point(
                parsed.point, convention=family.coords, image_size=image_size, frame_size=(w, h)
            )
            if point is not None:
                return NextClick(parsed.kind, point, answer, parsed.point)
        return NextClick("unclear", None, answer)

    def describe_verified(
        self, frame: np.ndarray, mask: np.ndarray
    ) -> AsyncIterator[DescribeEvent]:
        """Describe, ground the description on the original frame, regenerate while it misses."""
        build = partial(self.describe_messages, frame, mask)
        return self._verified(build, lambda: (frame, mask))

    def describe_track_verified(
        self, keyframes: list[np.ndarray], masks: list[np.ndarray]
    ) -> AsyncIterator[DescribeEvent]:
        """describe_track, verified on the last keyframe (where the object is now)."""

        def now() -> tuple[np.ndarray, np.ndarray]:
            _check_track(keyframes, masks)
            return keyframes[-1], masks[-1]

        return self._verified(partial(self.track_messages, keyframes, masks), now)

    async def _verified(
        self,
        build: Callable[[str | None], list[dict[str, Any]]],
        view: Callable[[], tuple[np.ndarray, np.ndarray]],
    ) -> AsyncIterator[DescribeEvent]:
        """The verify loop of a description: `build(previous)` makes each attempt's request,
        `view()` gives the frame and mask it is checked on (called here, so a bad mask is an
        error of the stream, as every other failure of it is)."""
        frame, mask = view()
        target = _mask_box(mask)
        family = await self.family()
        best: _Attempt | None = None
        previous: str | None = None
        tried: list[str] = []
        for attempt in range(1, self.max_attempts + 1):
            pieces: list[str] = []
            description: str | None = None  # None until the attempt's stream has ended
            try:
                messages = await asyncio.to_thread(build, previous)
                async with aclosing(
                    self._stream(
                        messages,
                        max_tokens=self.max_tokens,
                        sampling=self._attempt_sampling(family, attempt),
                    )
                ) as stream:
                    async for piece in stream:
                        if isinstance(piece, Retracted):
                            # The text streamed so far was reasoning: the verdict's description,
                            # which replaces the streamed text, leaves it out.
                            pieces.clear()
                            continue
                        pieces.append(piece)
                        yield TokenEvent(piece, attempt)
                description = "".join(pieces).strip()
                tried.append(description)
                boxes = await self.ground(frame, description, one=True) if description else []
            except VLMError as exc:
                # A finished description is not lost to a later failure: the best one so far is
                # kept, unverified. With none finished, the failure is the answer.
                if description and (best is None or not best.description):
                    best = _Attempt(description, None, None)
                if best is None or not best.description:
                    raise
                failed = "grounding it" if description is not None else f"attempt {attempt}"
                note = f"{failed} failed: {exc}"
                log.warning("describe: %s; keeping the best description so far, unverified", note)
                yield VerdictEvent(
                    best.description,
                    "unverified",
                    best.iou,
                    attempt,
                    best.box,
                    note=note,
                    tried=tuple(tried),
                )
                return
            iou, box = _best_match(boxes, target)
            if best is None or best.iou is None or iou > best.iou:
                best = _Attempt(description, iou, box)
            if iou >= self.verify_iou_threshold and description:
                yield VerdictEvent(description, "verified", iou, attempt, box, tried=tuple(tried))
                return
            previous = description
        assert best is not None
        yield VerdictEvent(
            best.description,
            "unverified",
            best.iou,
            self.max_attempts,
            best.box,
            tried=tuple(tried),
        )
