"""`fmu-live merge-lora` on a tiny model and a tiny LoRA made here: merged == base + adapter."""

from __future__ import annotations

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
    assert proc.returncode == 1
    assert "not a LoRA adapter folder (no adapter_config.json)" in proc.stderr
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize("config", ["[]", '"LORA"', "null"])
def test_merge_refuses_an_adapter_config_that_is_not_an_object(config: str, tmp_path: Path) -> None:
    import main

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(config)
    out = tmp_path / "merged"
    argv = ["merge-lora", "--base", str(tmp_path), "--adapter", str(adapter), "--out", str(out)]
    # It was read as a dict: AttributeError ('list' object has no attribute 'get').
    with pytest.raises(SystemExit) as exit_:
        main.cli(argv)
    assert "is not a LoRA adapter config (a JSON object" in str(exit_.value.code)
    assert str(adapter / "adapter_config.json") in str(exit_.value.code)
    assert not out.exists()
