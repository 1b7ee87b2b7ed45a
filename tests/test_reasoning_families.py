"""The VLM family table: which family a model is, from a setting, its names or its folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.reasoning.families import FAMILIES, UnknownFamily, choose_family


@pytest.mark.parametrize(
    "names, family",
    [
        (["Qwen/Qwen2.5-VL-3B-Instruct"], "qwen2.5-vl"),
        (["Qwen/Qwen2.5-VL-72B-Instruct-AWQ"], "qwen2.5-vl"),
        (["Qwen/Qwen3-VL-8B-Instruct"], "qwen3-vl"),
        (["Qwen/Qwen3-VL-30B-A3B-Thinking"], "qwen3-vl-thinking"),
        (["Qwen/Qwen2-VL-7B-Instruct"], "qwen2-vl"),
        # a --served-model-name alias: the root (second name) tells
        (["my-vlm", "/models/Qwen3-VL-4B-Instruct"], "qwen3-vl"),
        (["vlm", "/srv/ckpt/qwen2_5_vl_7b"], "qwen2.5-vl"),
        # a short alias that matches a plainer family does not hide a thinking root
        (["qwen3-vl", "Qwen/Qwen3-VL-8B-Thinking"], "qwen3-vl-thinking"),
        (["Qwen/Qwen3-VL-8B-Thinking", "qwen3-vl"], "qwen3-vl-thinking"),
    ],
)
def test_auto_reads_the_names(names: list[str], family: str) -> None:
    choice = choose_family("auto", names)
    assert choice.family.name == family
    assert "auto" in choice.reason


def test_conventions_per_family() -> None:
    # what each family's boxes mean: Qwen2.5-VL absolute pixels, the others 0-1000
    assert FAMILIES["qwen2.5-vl"].coords == "absolute"
    assert FAMILIES["qwen3-vl"].coords == "relative1000"
    assert FAMILIES["qwen3-vl-thinking"].coords == "relative1000"
    assert FAMILIES["qwen2-vl"].coords == "relative1000"
    assert [f.name for f in FAMILIES.values() if f.thinks] == ["qwen3-vl-thinking"]
    # a thinking family gets room to think; the others get none
    assert FAMILIES["qwen3-vl-thinking"].thinking_tokens > 0 == FAMILIES["qwen3-vl"].thinking_tokens
    # retries sample: none of the families' retry settings is greedy
    assert not any(f.retry_sampling.greedy for f in FAMILIES.values())


def test_the_log_names_the_name_that_decided() -> None:
    choice = choose_family("auto", ["qwen3-vl", "Qwen/Qwen3-VL-8B-Thinking"])
    assert choice.reason.startswith("auto: the model is called 'Qwen/Qwen3-VL-8B-Thinking'")
    assert "'qwen3-vl'" in choice.reason  # the alias is named too, as another name


def test_only_a_thinking_family_samples_its_first_answer() -> None:
    # greedy decoding makes a thinking model repeat itself endlessly (Qwen's model cards)
    thinking = FAMILIES["qwen3-vl-thinking"]
    assert thinking.sampling == thinking.retry_sampling and not thinking.sampling.greedy
    assert all(f.sampling.greedy for f in FAMILIES.values() if not f.thinks)


def test_an_explicit_setting_wins_over_the_name() -> None:
    choice = choose_family("qwen3-vl", ["Qwen/Qwen2.5-VL-3B-Instruct"])
    assert choice.family.name == "qwen3-vl" and choice.reason == "--vlm-family qwen3-vl"


def test_unknown_model_says_what_to_pass() -> None:
    with pytest.raises(UnknownFamily) as err:
        choose_family("auto", ["my-vlm", "/models/ckpt-17"])
    message = str(err.value)
    assert "'my-vlm'" in message and "--vlm-family" in message
    for name in FAMILIES:
        assert name in message


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="qwen2.5-vl"):
        choose_family("llava", [])


def _folder(tmp_path: Path, model_type: str, template: str = "") -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    if template:
        (folder / "chat_template.jinja").write_text(template)
    return folder


def test_a_local_folder_with_an_uninformative_name_is_read(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "qwen2_5_vl")
    choice = choose_family("auto", ["served", str(folder)])
    assert choice.family.name == "qwen2.5-vl" and "config.json" in choice.reason


def test_a_local_qwen3_folder_whose_template_opens_think_is_thinking(tmp_path: Path) -> None:
    template = "{%- if add_generation_prompt %}<|im_start|>assistant\n<think>\n{%- endif %}"
    folder = _folder(tmp_path, "qwen3_vl", template)
    assert choose_family("auto", [str(folder)]).family.name == "qwen3-vl-thinking"
