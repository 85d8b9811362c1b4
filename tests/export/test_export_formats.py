"""export --format peft | merged: layouts that peft and transformers load, and logits equal to base + adapter."""

import json

import pytest
import torch
from safetensors.torch import load_file

from export.shipkit import probe_ids, reference_logits
from whetstone.errors import WhetstoneError
from whetstone.export import export_run
from whetstone.export.formats import rounding_tolerance
from whetstone.models import load_tokenizer


@pytest.fixture(scope="module")
def probe(tiny_model_dir):
    return probe_ids(load_tokenizer(str(tiny_model_dir)))


@pytest.fixture(scope="module")
def expected(tiny_model_dir, lora_run, probe):
    """(base logits, base + adapter logits) from plain transformers + peft."""
    return reference_logits(tiny_model_dir, None, probe), reference_logits(tiny_model_dir, lora_run / "adapter", probe)


def test_merged_f32_equals_base_plus_adapter(tmp_path, lora_run, tiny_model_dir, probe, expected):
    from transformers import AutoModelForCausalLM

    base, tuned = expected
    assert float((tuned - base).abs().max()) > 1e-2  # the adapter matters, so equality below means something
    result = export_run(lora_run, "merged", tmp_path / "merged")
    out = tmp_path / "merged"
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()  # plain transformers, no peft
    with torch.no_grad():
        logits = merged(probe).logits
    torch.testing.assert_close(logits, tuned, atol=1e-4, rtol=0)
    assert result.logit_delta <= result.tolerance and result.top1_agreement == 1.0
    assert result.tolerance == rounding_tolerance(2, float(tuned.abs().max()))  # 2 layers, at the logits' scale
    # Standalone: no LoRA tensors, the base's tensor names, the run's EOS as the stop token.
    names = load_file(str(out / "model.safetensors")).keys()
    assert not any("lora" in n for n in names) and "model.layers.0.self_attn.q_proj.weight" in names
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["logit_delta"] == result.logit_delta and manifest["bytes"] == result.bytes


@pytest.mark.parametrize("dtype, torch_dtype", [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_merged_half_precision_halves_the_size(tmp_path, lora_run, dtype, torch_dtype):
    f32 = export_run(lora_run, "merged", tmp_path / "f32")
    half = export_run(lora_run, "merged", tmp_path / dtype, dtype)
    weights = load_file(str(tmp_path / dtype / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch_dtype}
    f32_weights = (tmp_path / "f32" / "model.safetensors").stat().st_size
    assert (tmp_path / dtype / "model.safetensors").stat().st_size == pytest.approx(f32_weights / 2, rel=0.01)
    assert 0 < half.logit_delta <= half.tolerance and half.top1_agreement >= 0.95
    assert f32.logit_delta < half.logit_delta


def test_peft_export_is_standard_and_loads_with_peft(tmp_path, lora_run, tiny_model_dir, probe, expected):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = export_run(lora_run, "peft", tmp_path / "peft")
    out = tmp_path / "peft"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16 and config["lora_alpha"] == 32
    assert config["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    keys = load_file(str(out / "adapter_model.safetensors")).keys()
    # vLLM's loader expects exactly these names: base_model.model.<module>.lora_{A,B}.weight
    assert all(k.startswith("base_model.model.model.layers.") and k.endswith((".lora_A.weight", ".lora_B.weight"))
               for k in keys)
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], dtype=torch.float32)
    with torch.no_grad():
        logits = PeftModel.from_pretrained(base, str(out)).eval()(probe).logits
    torch.testing.assert_close(logits, expected[1], atol=1e-6, rtol=0)
    assert result.logit_delta == 0.0


def test_peft_export_casts_to_bf16(tmp_path, lora_run):
    export_run(lora_run, "peft", tmp_path / "peft", "bf16")
    weights = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}


def test_merged_export_of_a_full_run_is_its_model(tmp_path, full_run, probe):
    result = export_run(full_run, "merged", tmp_path / "merged")
    assert result.logit_delta < 1e-6
    expected = load_file(str(full_run / "model" / "model.safetensors"))
    got = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.parametrize("fmt, dtype, fragment", [
    ("merged", "q8_0", "q8_0 is a GGUF quantization: use --format gguf"),
    ("peft", "q8_0", "--format peft writes f32, f16, bf16"),
    ("onnx", None, "--format onnx: choose one of peft, merged, gguf"),
])
def test_bad_format_or_dtype_is_one_sentence(tmp_path, lora_run, fmt, dtype, fragment):
    with pytest.raises(WhetstoneError, match=fragment.replace("(", r"\(")):
        export_run(lora_run, fmt, tmp_path / "out", dtype)


def test_peft_of_a_full_run_and_unfinished_runs_are_refused(tmp_path, full_run):
    with pytest.raises(WhetstoneError, match="trained every weight .* Use --format merged or gguf"):
        export_run(full_run, "peft", tmp_path / "out")
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text((full_run / "config.yaml").read_text())
    with pytest.raises(WhetstoneError, match="has no adapter/ or model/ yet"):
        export_run(tmp_path / "unfinished", "merged")


def test_existing_output_needs_overwrite(tmp_path, lora_run):
    export_run(lora_run, "peft", tmp_path / "out")
    with pytest.raises(WhetstoneError, match="already exists. Pass --overwrite"):
        export_run(lora_run, "peft", tmp_path / "out")
    assert export_run(lora_run, "peft", tmp_path / "out", overwrite=True).bytes > 0


def test_cli_export_prints_the_delta_and_checks(tmp_path, lora_run, capsys):
    from whetstone.cli import main

    assert main(["export", str(lora_run), "--format", "merged", "-o", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "exported merged (f32)" in out and "max |delta|" in out and "ok: EOS:" in out
    assert main(["export", str(tmp_path / "nowhere"), "--format", "merged"]) == 2
    assert "not a run directory" in capsys.readouterr().err
