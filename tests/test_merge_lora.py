"""`fmu-live merge-lora` on a tiny model and a tiny LoRA made here: merged == base + adapter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _tiny_base(folder: Path) -> None:
    words = ["<pad>", "<eos>", "a", "red", "cup", "on", "the", "table", "[UNK]"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="[UNK]"
    )
    config = transformers.Qwen2Config(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.tensor([[2, 3, 4, 5, 6, 7]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_model_equals_base_plus_adapter(tmp_path: Path) -> None:
    base_dir, adapter_dir, out = tmp_path / "base", tmp_path / "adapter", tmp_path / "merged"
    _tiny_base(base_dir)
    torch.manual_seed(1)
    lora = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    adapted = peft.get_peft_model(transformers.AutoModelForCausalLM.from_pretrained(base_dir), lora)
    adapted.save_pretrained(adapter_dir)

    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "merge-lora", "--base", str(base_dir),
         "--adapter", str(adapter_dir), "--out", str(out), "--dtype", "float32"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"vllm serve {out}" in proc.stdout

    # A plain model folder (no adapter files), with the tokenizer beside the weights.
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    saved, original = (transformers.AutoTokenizer.from_pretrained(d) for d in (out, base_dir))
    assert (
        saved("a red cup on the table")["input_ids"]
        == original("a red cup on the table")["input_ids"]
    )
    merged = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with_adapter = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir
    ).eval()
    expected = _logits(with_adapter)
    assert torch.allclose(_logits(merged), expected, atol=1e-5)
    assert not torch.allclose(_logits(base), expected, atol=1e-3)  # the adapter changes outputs


def test_merge_refuses_a_folder_without_an_adapter(tmp_path: Path) -> None:
    _tiny_base(tmp_path / "base")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "merge-lora", "--base", str(tmp_path / "base"),
         "--adapter", str(tmp_path / "base"), "--out", str(tmp_path / "merged")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2  # an argument error, found before the base is read
    assert "--adapter: " in proc.stderr
    assert "not a LoRA adapter folder (no adapter_config.json)" in proc.stderr
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("config", ["[]", '"LORA"', "null"])
def test_merge_refuses_an_adapter_config_that_is_not_an_object(
    config: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import main

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(config)
    out = tmp_path / "merged"
    argv = ["merge-lora", "--base", str(tmp_path), "--adapter", str(adapter), "--out", str(out)]
    # It was read as a dict: AttributeError ('list' object has no attribute 'get').
    with pytest.raises(SystemExit) as exit_:
        main.cli(argv)
    assert exit_.value.code == 2  # an argument error, found before the base is read
    err = capsys.readouterr().err
    assert "--adapter: " in err and "is not a LoRA adapter config (a JSON object" in err
    assert str(adapter / "adapter_config.json") in err
    assert not out.exists()


def _tiny_adapter(base: Path, folder: Path) -> None:
    peft.get_peft_model(
        transformers.AutoModelForCausalLM.from_pretrained(base),
        peft.LoraConfig(r=2, target_modules=["q_proj"]),
    ).save_pretrained(folder)


def _merge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "merge-lora", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


GPT2 = transformers.GPT2Config(vocab_size=9, n_embd=32, n_layer=1, n_head=2)


@pytest.mark.parametrize(
    ("other", "trained_on", "says"),
    [
        # the same family, wider: torch's "size mismatch" as a traceback
        (
            transformers.Qwen2Config(
                vocab_size=9, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            ),
            None,
            "size mismatch for base_model.model.model.layers.0.self_attn.q_proj.lora_A",
        ),
        # another family: peft's NoMatchingPeftModuleError as a traceback
        (GPT2, None, "that is a qwen2 model, this a gpt2 one"),
        # another family with layers of the same names and shapes: it merged, with a warning
        (
            transformers.LlamaConfig(
                vocab_size=9, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
            ),
            None,
            "that is a qwen2 model, this a llama one",
        ),
        # trained on a hub model this machine has no copy of: its type is not known, and peft's
        # own finding (no layer of the adapter's names) stops the merge
        (GPT2, "org/tiny", "Target modules {'q_proj'} not found in the base model"),
    ],
)  # fmt: skip
def test_an_adapter_of_another_base_is_refused_without_a_traceback(
    other: object, trained_on: str | None, says: str, tmp_path: Path
) -> None:
    _tiny_base(tmp_path / "base")
    _tiny_adapter(tmp_path / "base", tmp_path / "adapter")
    if trained_on is not None:
        config = tmp_path / "adapter" / "adapter_config.json"
        recorded = {**json.loads(config.read_text()), "base_model_name_or_path": trained_on}
        config.write_text(json.dumps(recorded))
    transformers.AutoModelForCausalLM.from_config(other).save_pretrained(tmp_path / "other")
    out = tmp_path / "merged"
    proc = _merge("--base", str(tmp_path / "other"), "--adapter", str(tmp_path / "adapter"),
                  "--out", str(out))  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert (
        f"error: the LoRA adapter {tmp_path / 'adapter'} does not fit the base model "
        f"{tmp_path / 'other'} (it was trained on {trained_on or tmp_path / 'base'}): {says}"
    ) in proc.stderr
    assert "pass as --base the model the adapter was trained on" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("adapter without weights", "--adapter: {adapter} has an adapter_config.json but no adapter weights"),
        ("not a LoRA", "--adapter: {adapter} holds a PREFIX_TUNING adapter, not a LoRA one"),
        ("out not empty", "--out: {out} exists and is not empty: choose a new folder"),
        ("base without config", "--base: cannot load the base model's config from {base}"),
        ("base without weights", "--base: {base} has a config.json but no model weights"),
    ],
)  # fmt: skip
def test_merge_lora_argument_errors_exit_2_naming_the_option(
    case: str, says: str, tmp_path: Path
) -> None:
    base, adapter, out = tmp_path / "base", tmp_path / "adapter", tmp_path / "merged"
    _tiny_base(base)
    _tiny_adapter(base, adapter)
    if case == "adapter without weights":  # its config copied, its weights not
        (adapter / "adapter_model.safetensors").unlink()
    if case == "not a LoRA":
        config = json.loads((adapter / "adapter_config.json").read_text())
        (adapter / "adapter_config.json").write_text(
            json.dumps({**config, "peft_type": "PREFIX_TUNING"})
        )
    if case == "out not empty":
        out.mkdir()
        (out / "notes.txt").write_text("kept")
    if case == "base without config":
        (base / "config.json").unlink()
    if case == "base without weights":  # its config copied, its weights not: a traceback
        for weights in base.glob("*.safetensors"):
            weights.unlink()
    # They exited 1 like a failed merge (the adapter without weights: a traceback of peft's).
    proc = _merge("--base", str(base), "--adapter", str(adapter), "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert says.format(adapter=adapter, out=out, base=base) in proc.stderr
    assert "Traceback" not in proc.stderr
    if case == "out not empty":
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
    else:
        assert not out.exists()
