"""Model sources: local dirs, GGUF, hub ids, and the errors for each."""

import json

import pytest
import torch

from whetstone.config import ModelConfig
from whetstone.errors import WhetstoneError
from whetstone.models import load_model, resolve_model
from whetstone.train.device import autocast_context, cpu_supports_bf16


def test_local_directory(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved.kind == "local"
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64


def test_hub_id_without_a_hub_is_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("someorg/some-model").kind == "hub"
    with pytest.raises(WhetstoneError) as info:
        load_model(ModelConfig(name="someorg/some-model"))
    message = str(info.value)
    assert "could not load 'someorg/some-model' from the Hugging Face Hub" in message
    assert "\n" not in message


@pytest.mark.parametrize("spec, fragment", [
    ("missing.gguf", "the GGUF file missing.gguf does not exist"),
    ("./no/such/dir", "is not an embedded model"),
    ("not a model", "is not an embedded model"),
])
def test_bad_model_specs(spec, fragment):
    with pytest.raises(WhetstoneError, match=fragment):
        resolve_model(spec)


def test_pickle_weights_are_refused_unless_allowed(tmp_path, tiny_model_dir):
    directory = tmp_path / "pickled"
    directory.mkdir()
    (directory / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    torch.save({"x": torch.zeros(1)}, directory / "pytorch_model.bin")
    with pytest.raises(WhetstoneError, match="only pickle weights .*pytorch_model.bin"):
        load_model(ModelConfig(name=str(directory)))


def test_directory_without_config_json(tmp_path):
    with pytest.raises(WhetstoneError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_gguf_file_round_trip_through_the_cache(tmp_path, tiny_model_dir, monkeypatch):
    """A .gguf model path converts once into the cache; the second resolve is a cache hit."""
    pytest.importorskip("gguf")
    from whetstone.models.embedded import cached_hf_dir

    monkeypatch.setenv("WHETSTONE_CACHE", str(tmp_path / "cache"))
    gguf_path = _write_tiny_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    resolved = resolve_model(str(gguf_path))
    assert resolved.kind == "gguf" and resolved.path == str(cached_hf_dir(gguf_path.resolve()))
    config = json.loads((cached_hf_dir(gguf_path.resolve()) / "config.json").read_text())
    assert "quantization_config" not in config
    model, _ = load_model(ModelConfig(name=str(gguf_path)))
    reference, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    ids = torch.tensor([[5, 17, 42, 99]])
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-4, rtol=0)


def _write_tiny_gguf(model_dir, out):
    """Write the tiny Llama as an f32 GGUF with the `gguf` library (as llama.cpp lays it out)."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    cfg = json.loads((model_dir / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(model_dir)
    w = load_file(str(model_dir / "model.safetensors"))
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("tiny")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_file_type(0)
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    writer.add_eos_token_id(tok.eos_token_id)
    writer.add_pad_token_id(tok.pad_token_id)
    writer.add_chat_template(tok.chat_template)
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def permute(t, n_head):  # HF's rotary layout -> GGUF's interleaved layout (llama.cpp's convert script)
        return t.reshape(n_head, 2, t.shape[0] // n_head // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    per_layer = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for name, tensor in w.items():
        array = tensor.float().numpy()
        if name in names:
            target = names[name]
        else:
            _, _, layer, *rest = name.split(".")
            key = ".".join(rest[:-1])
            target = f"blk.{layer}.{per_layer[key]}.weight"
            if key == "self_attn.q_proj":
                array = permute(array, heads)
            elif key == "self_attn.k_proj":
                array = permute(array, kv_heads)
        writer.add_tensor(target, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_bf16_on_this_cpu_is_refused_or_allowed_honestly():
    ok, why = cpu_supports_bf16()
    if ok:
        assert autocast_context(torch.device("cpu"), "bf16") is not None
    else:
        with pytest.raises(WhetstoneError, match="bf16 refused: .*Use train.precision=fp32"):
            autocast_context(torch.device("cpu"), "bf16")
