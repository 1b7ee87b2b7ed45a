"""The VLM families we support, and how to tell which one a server runs.

A family fixes what the rest of the reasoning code must not guess: the coordinate convention its
boxes are written in, the image grid that keeps those coordinates exact, whether it thinks before
answering (and so needs token budget for that and must have its thinking kept out of answers), and
the sampling its authors recommend: for a regenerated answer, and for every answer of a thinking
family (greedy decoding makes a thinking model repeat itself endlessly, its model cards warn).

Which family a model is comes from the setting (`--vlm-family`) or, in "auto", from what the model
is called: vLLM's `/v1/models` gives the served name and its `root` (the real path or hub id, so a
`--served-model-name` alias resolves), and a local folder's `config.json` gives its `model_type`.
Every name is tried against the most specific family first, so a short alias ("qwen3-vl") cannot
hide that the root behind it ("Qwen/Qwen3-VL-8B-Thinking") thinks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# What --serve-vlm starts and --vlm-backend transformers loads when --vlm-model is not given, and
# what the hints to start a VLM name (a server's own model is asked of it: its GET /models).
DEFAULT_VLM_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"

Coords = Literal["absolute", "relative1000"]


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters sent with every request, explicitly.

    vLLM applies a model's generation_config.json to whatever a request leaves out (Qwen2.5-VL
    ships top_k=1), so a request that sends only a temperature can still be greedy.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut (vLLM and transformers both read 0 as "off")
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


GREEDY = Sampling()
# Qwen's recommended sampling for its instruct (non-thinking) VL models, from their model cards.
QWEN_INSTRUCT = Sampling(temperature=0.7, top_p=0.8, top_k=20)


@dataclass(frozen=True)
class VLMFamily:
    """One family of vision-language models and what the service must know about it."""

    name: str
    title: str
    coords: Coords
    grid_multiple: int  # image sides we send are multiples of this (patch size x spatial merge)
    # the authors' sampling: for regenerated answers, and every answer of a thinking family
    retry_sampling: Sampling = QWEN_INSTRUCT
    thinks: bool = False  # answers start with reasoning that ends in </think>
    thinking_tokens: int = 0  # extra tokens each request may spend thinking
    patterns: tuple[str, ...] = ()  # regexes on a model's name or path (case-insensitive)
    model_types: tuple[str, ...] = ()  # config.json model_type values
    note: str = ""

    @property
    def sampling(self) -> Sampling:
        """What a request that is not a regeneration samples with: greedy (the model's one best
        answer), except a thinking family's own sampling, since greedy decoding makes thinking
        repeat itself endlessly (Qwen's model cards say not to use it in thinking mode)."""
        return self.retry_sampling if self.thinks else GREEDY


FAMILIES: dict[str, VLMFamily] = {
    f.name: f
    for f in (
        # Listed most specific first: auto mode takes the first family whose pattern matches.
        VLMFamily(
            name="qwen3-vl-thinking",
            title="Qwen3-VL Thinking",
            coords="relative1000",
            grid_multiple=32,  # 16 px patches merged 2x2
            thinks=True,
            retry_sampling=Sampling(temperature=0.6, top_p=0.95, top_k=20),
            thinking_tokens=1024,
            patterns=(r"qwen3[-_.]?vl.*think",),
            note="thinks before answering; serve it with vLLM's --reasoning-parser qwen3",
        ),
        VLMFamily(
            name="qwen3-vl",
            title="Qwen3-VL",
            coords="relative1000",
            grid_multiple=32,
            patterns=(r"qwen3[-_.]?vl",),
            model_types=("qwen3_vl", "qwen3_vl_moe"),
        ),
        VLMFamily(
            name="qwen2.5-vl",
            title="Qwen2.5-VL",
            coords="absolute",  # pixels of the (smart-resized) image it was given
            grid_multiple=28,  # 14 px patches merged 2x2
            patterns=(r"qwen2[._]?5[-_.]?vl",),
            model_types=("qwen2_5_vl",),
        ),
        VLMFamily(
            name="qwen2-vl",
            title="Qwen2-VL",
            # 0-1000, like Qwen3-VL. Its <|box_start|> tokens are special tokens that servers strip
            # from the text, so its boxes arrive as bare "(x0,y0),(x1,y1)" or, asked for, as JSON.
            coords="relative1000",
            grid_multiple=28,
            patterns=(r"qwen2[-_.]?vl",),
            model_types=("qwen2_vl",),
        ),
    )
}

FamilySetting = Literal["auto", "qwen3-vl-thinking", "qwen3-vl", "qwen2.5-vl", "qwen2-vl"]
FAMILY_CHOICES: tuple[str, ...] = ("auto", *FAMILIES)


class UnknownFamily(ValueError):
    """auto mode could not tell the family from what the server says about the model."""


@dataclass(frozen=True)
class FamilyChoice:
    family: VLMFamily
    reason: str  # why this one, for the start-up log and /readyz


def _by_names(names: list[str]) -> tuple[VLMFamily, str] | None:
    """The most specific family any of `names` matches, and the name that matched.

    Family first, then name: vLLM lists a --served-model-name alias before its root, and an alias
    such as "qwen3-vl" also matches the plainer family of a "Qwen3-VL-8B-Thinking" root.
    """
    for family in FAMILIES.values():
        for name in names:
            low = name.lower()
            if any(re.search(p, low) for p in family.patterns):
                return family, name
    return None


def _from_local_config(path: str) -> tuple[VLMFamily, str] | None:
    """A family from a local checkpoint folder's config.json (model_type) and chat template."""
    folder = Path(path)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    family = next((f for f in FAMILIES.values() if model_type in f.model_types), None)
    if family is None:
        return None
    if family.name == "qwen3-vl" and _template_thinks(folder):
        family = FAMILIES["qwen3-vl-thinking"]
    return family, f"model_type {model_type!r} in {folder / 'config.json'}"


def _template_thinks(folder: Path) -> bool:
    # A thinking model's template opens <think> in the generation prompt.
    for name in ("chat_template.jinja", "chat_template.json", "tokenizer_config.json"):
        try:
            text = (folder / name).read_text()
        except OSError:
            continue
        if "<think>" in text and "add_generation_prompt" in text:
            return True
    return False


def choose_family(setting: str, names: list[str]) -> FamilyChoice:
    """The family for a model known by `names` (served name, root path or hub id, ...).

    Raises UnknownFamily in auto mode when nothing identifies it, saying what to pass.
    """
    if setting != "auto":
        if setting not in FAMILIES:
            raise ValueError(f"unknown VLM family {setting!r}; choose one of {FAMILY_CHOICES}")
        return FamilyChoice(FAMILIES[setting], f"--vlm-family {setting}")
    found_by_name = _by_names(names)
    if found_by_name is not None:
        family, name = found_by_name
        others = [n for n in dict.fromkeys(names) if n != name]
        also = f" (also called {', '.join(repr(n) for n in others)})" if others else ""
        return FamilyChoice(family, f"auto: the model is called {name!r}{also}")
    for name in names:
        found = _from_local_config(name)
        if found is not None:
            return FamilyChoice(found[0], f"auto: {found[1]}")
    shown = ", ".join(repr(n) for n in dict.fromkeys(names)) or "(no name)"
    raise UnknownFamily(
        f"cannot tell which VLM family the model {shown} belongs to; pass --vlm-family with one of "
        f"{', '.join(FAMILIES)}"
    )
