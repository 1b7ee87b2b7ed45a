"""Thinking models: their reasoning is activity, never an answer, however it arrives."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fakes.openai_server import ScriptedVLMServer
from workers.reasoning import OpenAICompatibleBackend, Reasoner, VLMBadResponse
from workers.reasoning.backends import Retracted, Thinking, ThinkSplitter


def _split(pieces: list, *, starts_thinking: bool) -> tuple[str, str]:
    """(answer, thinking) as a reader of the splitter's output ends up with them."""
    splitter = ThinkSplitter(starts_thinking=starts_thinking)
    out = [p for piece in pieces for p in splitter.feed(piece)] + splitter.finish()
    answer, thinking = "", ""
    for p in out:
        if isinstance(p, Retracted):
            # the answer so far was reasoning: it moves over, whole
            assert p.text == answer
            answer, thinking = "", thinking + p.text
        elif isinstance(p, Thinking):
            thinking += p.text
        else:
            answer += p
    return answer, thinking


@pytest.mark.parametrize(
    "pieces, starts_thinking, answer, thinking",
    [
        # no parser, a thinking model: the template opened <think>, the text closes it
        (["I see a mug.", "</think>", "\n\nA red mug."], True, "A red mug.", "I see a mug."),
        # the closing tag split across pieces
        (["hmm</th", "ink>A cup"], True, "A cup", "hmm"),
        # an inline block from a model that was not expected to think
        (["<think>why</think>", "A cup"], False, "A cup", "why"),
        (["A <", "b>cup</b>"], False, "A <b>cup</b>", ""),  # a tag-like prefix that is not one
        # the server's reasoning parser: reasoning in its own field, the text is all answer
        ([Thinking("why"), "A cup"], True, "A cup", "why"),
        # a budget spent thinking: no answer at all
        (["still thinking..."], True, "", "still thinking..."),
        (["A plain answer."], False, "A plain answer.", ""),
        # a thinking model taken for a plain one, without a reasoning parser: only the closing
        # tag is in the text, and everything before it (already given as answer) was thinking
        (["I see", " a mug.", "</think>", "\n\nA red mug."], False, "A red mug.", "I see a mug."),
        (["I see a mug.</th", "ink>\n\nA red mug."], False, "A red mug.", "I see a mug."),
        (["<think>a</think>b</think>c"], False, "c", "ab"),
    ],
)
def test_splits(pieces: list, starts_thinking: bool, answer: str, thinking: str) -> None:
    assert _split(pieces, starts_thinking=starts_thinking) == (answer, thinking)


@given(
    st.text(alphabet="ab<>/thinkc \n", max_size=40),
    st.text(alphabet="ab<>/c \n", max_size=40),
    st.lists(st.integers(min_value=0, max_value=90), max_size=8),
    st.booleans(),
)
def test_any_way_of_cutting_the_stream_gives_the_same_split(
    thought: str, answer: str, cuts: list[int], template_opens: bool
) -> None:
    thought = thought.replace("</think>", "")  # the reasoning itself never closes the block
    text = (
        (thought + "</think>" + answer) if template_opens else f"<think>{thought}</think>{answer}"
    )
    whole = _split([text], starts_thinking=template_opens)
    bounds = sorted({c for c in cuts if c < len(text)} | {0, len(text)})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    assert _split(pieces, starts_thinking=template_opens) == whole
    assert whole[1] == thought
    assert whole[0] == answer.lstrip() or (not thought and whole[0] == answer)


FRAME = np.zeros((120, 160, 3), np.uint8)
MASK = np.zeros((120, 160), bool)
MASK[40:80, 50:110] = True


async def test_a_thinking_models_reasoning_is_never_the_description_nor_grounded() -> None:
    requests: list[dict] = []
    answer = _by_step(
        requests,
        # relative 0-1000 box of the mask: x 50..110 of 160, y 40..80 of 120
        locate=["The phrase is about the mug.", "</think>", '[{"bbox_2d": [312, 333, 687, 667]}]'],
        other=["Dark pixels everywhere; the outline", " is a mug.", "</think>\n\n", "A mug."],
    )
    with ScriptedVLMServer(answer=answer, model="Qwen/Qwen3-VL-8B-Thinking") as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, None), max_tokens=64)
        events = [e async for e in reasoner.describe_verified(FRAME, MASK)]
        await reasoner.backend.aclose()
    tokens = "".join(e.text for e in events if e.type == "token")
    verdict = events[-1]
    assert tokens == "A mug." and verdict.description == "A mug."
    assert verdict.verdict == "verified" and verdict.iou > 0.9
    grounding = requests[1]["messages"][-1]["content"][-1]["text"]
    assert '"A mug."' in grounding and "outline" not in grounding  # only the answer is grounded
    # the budget leaves room to think on top of the answer's own
    assert requests[0]["max_tokens"] == 64 + (await reasoner.family()).thinking_tokens


async def test_a_budget_spent_thinking_says_so() -> None:
    with ScriptedVLMServer(answer=[["hmm", " hmm"]], model="Qwen/Qwen3-VL-8B-Thinking") as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, None))
        with pytest.raises(VLMBadResponse, match="thought for its whole budget"):
            _ = [p async for p in reasoner.describe(FRAME, MASK)]
        await reasoner.backend.aclose()


@pytest.mark.parametrize(
    "finish, says, not_said",
    [
        ("length", "thought for its whole budget", "--reasoning-parser"),
        # it stopped of itself: the server's parser kept the answer as reasoning, not the budget
        ("stop", "--reasoning-parser", "budget"),
    ],
)
async def test_an_answer_all_in_reasoning_says_why(finish: str, says: str, not_said: str) -> None:
    reasoning = [{"reasoning": "The outline is a mug."}, {"reasoning": " A red mug."}]
    with ScriptedVLMServer(
        answer=[reasoning], model="Qwen/Qwen3-VL-8B-Thinking", finish_reason=finish
    ) as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, None))
        with pytest.raises(VLMBadResponse, match=re.escape(says)) as refused:
            _ = [p async for p in reasoner.describe(FRAME, MASK)]
        await reasoner.backend.aclose()
    assert not_said not in str(refused.value) and "A red mug" not in str(refused.value)


async def test_an_inline_think_block_from_a_non_thinking_model_is_dropped() -> None:
    answer = ["<think>", "the user wants", "</think>", "A", " mug."]
    with ScriptedVLMServer(answer=[answer]) as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, None))
        text = "".join([p async for p in reasoner.chat(FRAME, MASK, [], "what is it?")])
        await reasoner.backend.aclose()
    assert text == "A mug."


def _by_step(requests: list[dict], locate: list[str], other: list[str]):
    """A scripted answer per request, kept in `requests`: `locate` to the grounding step (its
    prompt starts "Locate"), `other` to the rest."""

    def answer(body: dict) -> list[str]:
        requests.append(body)
        prompt = body["messages"][-1]["content"][-1]["text"]
        return locate if prompt.startswith("Locate") else other

    return answer


def _thinking_without_parser(requests: list[dict]):
    """A Qwen3-VL Thinking model served without --reasoning-parser: its template opened <think>
    in the prompt, so the text holds the reasoning, a closing </think>, then the answer."""
    return _by_step(
        requests,
        locate=[
            "Earlier I thought",
            " [0, 0, 1000, 1000].",
            "</think>\n\n",
            '[{"bbox_2d": [312, 333, 687, 667]}]',
        ],
        other=["The outline", " is a mug;", " describe its colour.", "</think>\n\n", "A red mug."],
    )


async def test_a_thinking_model_behind_a_short_alias_thinks() -> None:
    # vllm serve Qwen/Qwen3-VL-8B-Thinking --served-model-name qwen3-vl: /v1/models gives the
    # alias first, the root second; the alias alone would pass for the plain Qwen3-VL family.
    requests: list[dict] = []
    with ScriptedVLMServer(answer=_thinking_without_parser(requests), model="qwen3-vl") as srv:
        srv.root = "Qwen/Qwen3-VL-8B-Thinking"
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, None), max_tokens=64)
        status = await reasoner.family_status()
        events = [e async for e in reasoner.describe_verified(FRAME, MASK)]
        await reasoner.backend.aclose()
    assert status["family"] == "qwen3-vl-thinking" and status["thinks"] is True
    assert "Qwen/Qwen3-VL-8B-Thinking" in status["family_reason"]
    tokens = "".join(e.text for e in events if e.type == "token")
    verdict = events[-1]
    assert tokens == "A red mug." and verdict.description == "A red mug."
    assert verdict.verdict == "verified" and verdict.iou > 0.9
    assert requests[0]["max_tokens"] > 64  # room to think


async def test_reasoning_before_an_unopened_close_tag_never_becomes_the_description() -> None:
    # The same model with its family set wrongly (--vlm-family qwen3-vl): its reasoning, closed
    # by a </think> nothing opened, is neither the description nor the phrase grounded.
    requests: list[dict] = []
    with ScriptedVLMServer(answer=_thinking_without_parser(requests), model="qwen3-vl") as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, None), family="qwen3-vl")
        events = [e async for e in reasoner.describe_verified(FRAME, MASK)]
        await reasoner.backend.aclose()
    verdict = events[-1]
    assert verdict.description == "A red mug."
    assert verdict.verdict == "verified" and verdict.iou > 0.9  # the box after </think> counts
    grounding = requests[1]["messages"][-1]["content"][-1]["text"]
    assert '"A red mug."' in grounding and "outline" not in grounding


async def test_reasoning_before_an_unopened_close_tag_is_not_the_chat_answer_kept() -> None:
    # The answer the object keeps (its history, and chat_done, which the page shows in place of
    # the streamed text) leaves out what turned out to be reasoning.
    from streamer.objects import vlm
    from streamer.objects.events import ChatDoneMessage
    from streamer.objects.table import ObjectTable

    table = ObjectTable(4, "image")
    oid = table.add("click").id
    with ScriptedVLMServer(answer=_thinking_without_parser([]), model="qwen3-vl") as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, None), family="qwen3-vl")
        events = [e async for e in vlm.chat(table, oid, reasoner, FRAME, MASK, "what colour?")]
        await reasoner.backend.aclose()
    done = events[-1]
    assert isinstance(done, ChatDoneMessage) and done.answer == "A red mug."
    assert list(table.get(oid).history)[-1] == {"role": "assistant", "content": "A red mug."}


def _sampling_of(body: dict) -> tuple:
    return (body["temperature"], body["top_p"], body.get("top_k"))


async def test_a_thinking_model_samples_every_request_as_its_authors_recommend() -> None:
    # Qwen's model cards: no greedy decoding in thinking mode (it repeats itself endlessly).
    requests: list[dict] = []
    answer = _thinking_without_parser(requests)
    with ScriptedVLMServer(answer=answer, model="Qwen/Qwen3-VL-8B-Thinking") as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, None), seed=5)
        _ = [e async for e in reasoner.describe_verified(FRAME, MASK)]
        await reasoner.check_match(FRAME, MASK, "a mug")
        _ = [p async for p in reasoner.chat(FRAME, MASK, [], "what colour?")]
        await reasoner.backend.aclose()
    assert len(requests) == 4  # describe, ground, check, chat
    assert all(_sampling_of(b) == (0.6, 0.95, 20) for b in requests), requests
    assert all(isinstance(b.get("seed"), int) for b in requests)  # --vlm-seed reproduces them


async def test_a_plain_model_answers_greedily_until_a_retry() -> None:
    def answer(body: dict) -> str:
        prompt = body["messages"][-1]["content"][-1]["text"]
        return '[{"bbox_2d": [312, 333, 687, 667]}]' if prompt.startswith("Locate") else "A mug."

    with ScriptedVLMServer(answer=answer, model="Qwen/Qwen3-VL-8B-Instruct") as srv:
        reasoner = Reasoner(OpenAICompatibleBackend(srv.url, None))
        _ = [e async for e in reasoner.describe_verified(FRAME, MASK)]
        await reasoner.check_match(FRAME, MASK, "a mug")
        await reasoner.backend.aclose()
    assert len(srv.requests) == 3  # verified at once: describe, ground, check
    assert all(_sampling_of(b) == (0.0, 1.0, None) for b in srv.requests), srv.requests
