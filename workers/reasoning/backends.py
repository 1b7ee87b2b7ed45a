"""The one async interface every VLM backend speaks (OpenAI chat messages in, text pieces out),
and the split of a thinking model's output into its thinking and its answer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from workers.reasoning.families import GREEDY, Sampling

__all__ = [
    "ModelInfo",
    "Retracted",
    "Thinking",
    "ThinkSplitter",
    "VLMBackend",
]  # the errors are workers.reasoning.errors' (or the package's)


@dataclass(frozen=True)
class Thinking:
    """A piece of a thinking model's reasoning: activity, never part of an answer."""

    text: str


@dataclass(frozen=True)
class ModelInfo:
    """What a backend knows about the model it serves: the name to send, and every other name it
    goes by (vLLM's `root` is the real path or hub id behind a --served-model-name alias)."""

    name: str
    aliases: tuple[str, ...] = ()

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys([self.name, *self.aliases]))


@dataclass(frozen=True)
class Retracted:
    """The answer text given so far was reasoning after all: a `</think>` closed it that nothing
    had opened (a thinking model taken for a plain one). Whoever collects the answer drops it."""

    text: str


Piece = str | Thinking


@runtime_checkable
class VLMBackend(Protocol):
    """A vision-language model behind an OpenAI-style streaming chat call.

    messages use the OpenAI chat format; an image part is
    ``{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}``.
    stream_chat is an async generator of answer text (str) and reasoning (Thinking) pieces: close
    it (``contextlib.aclosing``) when you stop early, so its in-flight slot is released at once.
    Text may still carry inline <think>...</think>; ThinkSplitter takes it out.
    """

    def stream_chat(
        self, messages: list[dict[str, Any]], *, max_tokens: int = 512, sampling: Sampling = GREEDY
    ) -> AsyncIterator[Piece]: ...

    async def model_info(self) -> ModelInfo:
        """The served model's names; raises VLMError when the backend cannot say."""
        ...

    async def health(self) -> dict[str, Any]:
        """{"reachable": bool, "detail": str, "model": str | None}; never raises."""
        ...

    async def aclose(self) -> None: ...


_OPEN, _CLOSE = "<think>", "</think>"


class ThinkSplitter:
    """Splits a stream of pieces into answer text and Thinking, whatever way the model thinks.

    - A server with a reasoning parser (vLLM --reasoning-parser) sends reasoning in its own field;
      the backend turns that into Thinking and the text is all answer.
    - Without one, a thinking model's text is its reasoning up to `</think>` (the chat template
      already opened `<think>` in the prompt), then the answer: `starts_thinking=True`.
    - Any model may write a whole `<think>...</think>` block inline: it is taken out too.
    - A `</think>` that nothing opened means the text before it was reasoning too (a thinking
      model taken for a plain one): what was already given as answer comes back as Retracted,
      and the rest of the text before the tag as Thinking.
    Tags split across pieces are held back until they can be told apart from text.
    """

    def __init__(self, *, starts_thinking: bool = False) -> None:
        self.thinking = starts_thinking
        self.thought = False  # any thinking seen at all
        self._held = ""
        self._answer = ""  # the answer text given so far (what an unopened </think> retracts)
        self._answer_started = False

    def feed(self, piece: Piece) -> list[Piece | Retracted]:
        if isinstance(piece, Thinking):
            # The server separates reasoning itself: whatever text follows is the answer.
            self.thinking = False
            self.thought = True
            return [piece]
        text, self._held = self._held + piece, ""
        out: list[Piece | Retracted] = []
        while text:
            tags = (_CLOSE,) if self.thinking else (_OPEN, _CLOSE)
            found = [(text.find(t), t) for t in tags if t in text]
            if not found:
                keep = max(_partial_tag_suffix(text, t) for t in tags)
                body, self._held = text[: len(text) - keep], text[len(text) - keep :]
                self._emit(body, out)
                break
            at, tag = min(found)
            if tag == _CLOSE and not self.thinking:
                self._retract(text[:at], out)
            else:
                self._emit(text[:at], out)
                self.thinking = not self.thinking
            text = text[at + len(tag) :]
            self.thought = True
        return out

    def finish(self) -> list[Piece | Retracted]:
        """Whatever was held back at the end of the stream."""
        out: list[Piece | Retracted] = []
        text, self._held = self._held, ""
        self._emit(text, out)
        return out

    def _retract(self, before: str, out: list[Piece | Retracted]) -> None:
        # An unopened </think>: the answer so far and `before` were reasoning; the answer follows.
        if self._answer:
            out.append(Retracted(self._answer))
        self._answer, self._answer_started = "", False
        if before:
            out.append(Thinking(before))

    def _emit(self, text: str, out: list[Piece | Retracted]) -> None:
        if not text:
            return
        if self.thinking:
            self.thought = True
            out.append(Thinking(text))
            return
        if not self._answer_started:
            # "</think>\n\n" leaves blank lines before the answer; they are not part of it.
            text = text.lstrip() if self.thought else text
            if not text:
                return
            self._answer_started = True
        self._answer += text
        out.append(text)


def _partial_tag_suffix(text: str, tag: str) -> int:
    """How many characters at the end of `text` could be the start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
