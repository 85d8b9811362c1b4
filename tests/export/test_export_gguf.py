"""export --format gguf: llama.cpp's layout, checked by reading the file back through transformers' GGUF loader."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from export.shipkit import probe_ids, reference_logits
from whetstone.errors import WhetstoneError
from whetstone.export import export_run
from whetstone.export.gguf import check_architecture, permute_rotary, read_gguf_metadata, write_gguf
from whetstone.models import load_tokenizer


@pytest.fixture(scope="module")
def probe(tiny_model_dir):
    return probe_ids(load_tokenizer(str(tiny_model_dir)))


@pytest.fixture(scope="module")
def tuned(tiny_model_dir, lora_run, probe):
    return reference_logits(tiny_model_dir, lora_run / "adapter", probe)


def _load_gguf(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_permutation_interleaves_the_rotary_halves():
    # One head of dim 8: HF rotates (x0, x4), (x1, x5), ...; llama.cpp rotates (x0, x1), (x2, x3), ...
    rows = np.arange(8, dtype=np.float32).reshape(8, 1)
    assert permute_rotary(rows, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    two_heads = np.arange(16, dtype=np.float32).reshape(16, 1)
    assert permute_rotary(two_heads, 2)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


def test_gguf_f32_round_trip_equals_base_plus_adapter(tmp_path, lora_run, tiny_model_dir, probe, tuned):
    out = tmp_path / "tiny.gguf"
    result = export_run(lora_run, "gguf", out, "f32")
    model, tokenizer = _load_gguf(out)
    with torch.no_grad():
        logits = model(probe).logits
    torch.testing.assert_close(logits, tuned, atol=1e-4, rtol=0)
    assert result.logit_delta <= result.tolerance < 1e-4 and result.top1_agreement == 1.0

    # The tokenizer inside the file tokenizes like training and keeps the chat template and special ids.
    train_tokenizer = load_tokenizer(str(tiny_model_dir))
    text = train_tokenizer.apply_chat_template([{"role": "user", "content": "Split the string at spaces: a b"}],
                                               tokenize=False, add_generation_prompt=True)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == train_tokenizer(text, add_special_tokens=False)[
        "input_ids"]
    assert tokenizer.chat_template == train_tokenizer.chat_template
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (train_tokenizer.eos_token_id,
                                                                train_tokenizer.pad_token_id)


def test_gguf_metadata_is_what_llama_cpp_reads(tmp_path, lora_run, tiny_model_dir):
    out = tmp_path / "tiny.gguf"
    export_run(lora_run, "gguf", out, "f32")
    meta = read_gguf_metadata(out)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    tok = load_tokenizer(str(tiny_model_dir))
    expected = {
        "general.architecture": "llama",
        "general.file_type": 0,
        "llama.context_length": config["max_position_embeddings"],
        "llama.embedding_length": 64,
        "llama.block_count": 2,
        "llama.feed_forward_length": 128,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.rope.dimension_count": 16,
        "llama.vocab_size": config["vocab_size"],
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt2",
        "tokenizer.ggml.tokens": config["vocab_size"],
        "tokenizer.ggml.token_type": config["vocab_size"],
        "tokenizer.ggml.merges": len(json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]),
        "tokenizer.ggml.eos_token_id": tok.eos_token_id,
        "tokenizer.ggml.padding_token_id": tok.pad_token_id,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": tok.chat_template,
    }
    assert {k: meta.get(k) for k in expected} == expected
    assert meta["llama.rope.freq_base"] == pytest.approx(config["rope_parameters"]["rope_theta"])
    # Tied embeddings: llama.cpp reuses token_embd, so there is no output.weight.
    assert "output.weight" not in meta["tensors"] and meta["tensors"]["token_embd.weight"][0] == "F32"
    assert meta["tensors"]["blk.1.attn_k.weight"] == ("F32", [64, 32])  # GGUF lists dims innermost first
    assert len(meta["tensors"]) == 2 + 2 * 9


def test_gguf_q_and_k_rows_are_permuted_from_the_merged_weights(tmp_path, lora_run):
    import gguf

    export_run(lora_run, "merged", tmp_path / "merged")
    export_run(lora_run, "gguf", tmp_path / "tiny.gguf", "f32")
    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    tensors = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "tiny.gguf")).tensors}
    q = np.asarray(tensors["blk.0.attn_q.weight"].data)
    k = np.asarray(tensors["blk.0.attn_k.weight"].data)
    v = np.asarray(tensors["blk.0.attn_v.weight"].data)
    np.testing.assert_array_equal(q, permute_rotary(merged["model.layers.0.self_attn.q_proj.weight"].numpy(), 4))
    np.testing.assert_array_equal(k, permute_rotary(merged["model.layers.0.self_attn.k_proj.weight"].numpy(), 2))
    np.testing.assert_array_equal(v, merged["model.layers.0.self_attn.v_proj.weight"].numpy())  # v is not rotated


@pytest.mark.parametrize("dtype, ggml_type", [("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")])
def test_gguf_lossy_types_stay_within_the_stated_tolerance(tmp_path, lora_run, probe, tuned, dtype, ggml_type):
    out = tmp_path / f"tiny-{dtype}.gguf"
    result = export_run(lora_run, "gguf", out, dtype)
    meta = read_gguf_metadata(out)
    assert meta["tensors"]["blk.0.ffn_up.weight"][0] == ggml_type
    assert meta["tensors"]["blk.0.attn_norm.weight"][0] == "F32"  # norms stay f32 in every file type
    model, _ = _load_gguf(out)
    with torch.no_grad():
        delta = float((model(probe).logits - tuned).abs().max())
    assert delta == pytest.approx(result.logit_delta, abs=1e-6)
    # Stated tolerance: 5% of the largest |logit|; rounding, not a layout error, is what is left.
    assert 0 < delta <= 0.05 * float(tuned.abs().max())
    assert result.top1_agreement >= 0.95


def test_gguf_sizes_shrink_with_the_type(tmp_path, lora_run):
    sizes = {d: export_run(lora_run, "gguf", tmp_path / f"{d}.gguf", d, verify=False).bytes
             for d in ("f32", "f16", "q8_0")}
    assert sizes["q8_0"] < sizes["f16"] < sizes["f32"]


def test_default_output_path_and_dtype(run_copy):
    result = export_run(run_copy, "gguf", verify=False)
    assert result.dtype == "f16" and result.path == str(run_copy / "export" / "run-f16.gguf")
    assert (run_copy / "export" / "run-f16.export.json").is_file()


def test_unsupported_architectures_get_a_clear_error():
    with pytest.raises(WhetstoneError, match="GPT2LMHeadModel; this exporter writes Llama-family models"):
        check_architecture({"architectures": ["GPT2LMHeadModel"]})
    llama3 = {"architectures": ["LlamaForCausalLM"], "rope_parameters": {"rope_type": "llama3", "factor": 8.0}}
    with pytest.raises(WhetstoneError, match="rope scaling 'llama3' is not written"):
        check_architecture(llama3)
    with pytest.raises(WhetstoneError, match="attention_bias=true"):
        check_architecture({"architectures": ["LlamaForCausalLM"], "attention_bias": True})


def test_write_gguf_refuses_tensors_outside_the_layout(tmp_path, tiny_model_dir):
    config = json.loads((tiny_model_dir / "config.json").read_text())
    tokenizer = load_tokenizer(str(tiny_model_dir))
    weights = {"model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}
    with pytest.raises(WhetstoneError, match="q_proj.bias has no place in llama.cpp's llama layout"):
        write_gguf(weights, config, tokenizer, tmp_path / "x.gguf", "f32", name="x", pre="gpt2")
    assert not any(tmp_path.iterdir())  # no half-written file, under any name
