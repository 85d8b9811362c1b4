"""Write a Llama-family model (Llama, Mistral) as one GGUF file, laid out the way llama.cpp's converter does.

A GGUF holds the architecture metadata llama.cpp reads (`llama.*` keys), the
tokenizer (vocabulary, token types, merges, special ids, pre-tokenizer name, chat
template) and the tensors under llama.cpp's names. Two details matter for equal
logits:

- llama.cpp applies rotary embeddings to interleaved pairs (x0, x1), (x2, x3), ...
  while transformers rotates halves (x_i, x_{i+d/2}). The converter permutes the
  rows of q_proj and k_proj so that the same rotation falls on the same features;
  transformers' GGUF loader undoes it.
- Norm weights (1-D) stay f32 in every file type, as llama.cpp expects; only the
  matrices take the requested type. q8_0 stores blocks of 32 values with one f16
  scale (8.5 bits a weight); a matrix whose rows are not a multiple of 32 stays f16.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from whetstone.data.render import end_of_turn_ids
from whetstone.errors import WhetstoneError
from whetstone.export import GGUF_DTYPES

# llama.cpp's "llama" layout. Its converter writes Mistral there too: the same blocks, names and rotary; only a
# sliding window (Mistral 7B v0.1) has no place in it, and check_architecture refuses that.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")

_LAYER_TENSORS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_TOP_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def permute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF's half-split rotary rows -> llama.cpp's interleaved rows (its convert script's `permute`).

    weight: (n_head * head_dim, in). Within each head, row j of the first half and row j of
    the second half become neighbours 2j and 2j+1.
    """
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape
    )


def check_architecture(config: dict) -> None:
    """Raise a clear error for models this exporter cannot write faithfully."""
    archs = config.get("architectures") or [config.get("model_type", "unknown")]
    if archs[0] not in SUPPORTED_ARCHITECTURES:
        raise WhetstoneError(
            f"--format gguf: the model is a {archs[0]}; this exporter writes Llama-family models "
            f"({', '.join(SUPPORTED_ARCHITECTURES)}) only. Export --format merged and convert it with llama.cpp's "
            f"convert_hf_to_gguf.py."
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in (None, "default"):
        raise WhetstoneError(
            f"--format gguf: rope scaling {rope_type!r} is not written by this exporter (it needs llama.cpp's "
            f"rope_freqs tensor). Export --format merged and convert it with llama.cpp's convert_hf_to_gguf.py."
        )
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise WhetstoneError(f"--format gguf: {flag}=true is not part of llama.cpp's llama layout.")
    window = config.get("sliding_window")
    if window is not None and window < config.get("max_position_embeddings", 0):
        raise WhetstoneError(
            f"--format gguf: the {archs[0]} attends within a sliding window of {window} tokens, which llama.cpp's "
            f"llama layout does not write: past {window} tokens the file would compute another function. Export "
            f"--format merged and convert it with llama.cpp's convert_hf_to_gguf.py."
        )


def _rope_theta(config: dict) -> float:
    rope = config.get("rope_parameters") or {}
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


# ---------------------------------------------------------------------------
# The tokenizer.


def detect_pre_tokenizer(tokenizer) -> str | None:
    """llama.cpp's name for the tokenizer's pre-tokenizer (its text-splitting regex), or None.

    llama.cpp picks the regex by this name, so a wrong one splits text differently
    from training. We recognise the common shapes and otherwise ask the user.
    """
    spec = json.loads(tokenizer.backend_tokenizer.to_str()).get("pre_tokenizer") or {}
    parts = spec.get("pretokenizers", [spec]) if spec.get("type") == "Sequence" else [spec]
    types = [p.get("type") for p in parts]
    if types == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt2"
    if types == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if types == ["Split", "ByteLevel"]:
        pattern = (parts[0].get("pattern") or {}).get("Regex")
        try:
            from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
        except ImportError:  # older transformers keep the table elsewhere; then the user names it
            return None
        for name, split in GGUF_PRE_TOKENIZER_SPLITS.items():
            if split == pattern:
                return name
    return None


def source_gguf_pre(gguf_path: Path) -> str | None:
    """The pre-tokenizer name stored in a GGUF the base model came from."""
    import gguf

    field = gguf.GGUFReader(str(gguf_path)).fields.get("tokenizer.ggml.pre")
    return str(field.contents()) if field is not None else None


def _token_list(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id and their llama.cpp types, padded to the model's vocab_size."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    if max(by_id) >= vocab_size:
        raise WhetstoneError(f"--format gguf: the tokenizer has token id {max(by_id)} but the model's vocab_size is "
                             f"{vocab_size}; the embeddings were not resized after adding tokens.")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:  # the embedding matrix is larger than the vocabulary (padded for speed)
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]


def gguf_stop_ids(tokenizer) -> list[int]:
    """What llama.cpp stops on: EOS, then the chat template's end-of-turn token where it is another one.

    A template whose turns end in another token than EOS (Llama 3 base's <|eot_id|>, its EOS being
    <|end_of_text|>) needs the file's tokenizer.ggml.eot_token_id; llama.cpp holds one such id.
    """
    eot = next((t for t in end_of_turn_ids(tokenizer) if t != tokenizer.eos_token_id), None)
    return [tokenizer.eos_token_id] + ([eot] if eot is not None else [])


def _merges(tokenizer) -> list[str]:
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise WhetstoneError(f"--format gguf: the tokenizer is {model.get('type')}, not byte-level BPE; this exporter "
                             f"writes BPE (gpt2-style) tokenizers only.")
    return [" ".join(m) if isinstance(m, list) else m for m in model.get("merges", [])]


def _adds(tokenizer, token_id: int | None, at: int) -> bool:
    """Whether plain encoding puts `token_id` at position `at` (0: BOS, -1: EOS)."""
    if token_id is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[at] == token_id and len(ids) > len(tokenizer("a", add_special_tokens=False)["input_ids"])


def _write_tokenizer(writer, tokenizer, vocab_size: int, pre: str) -> None:
    tokens, types = _token_list(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(tokenizer))
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    stops = gguf_stop_ids(tokenizer)
    if len(stops) > 1:
        writer.add_eot_token_id(stops[1])
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(_adds(tokenizer, tokenizer.bos_token_id, 0))
    writer.add_add_eos_token(_adds(tokenizer, tokenizer.eos_token_id, -1))
    writer.add_add_space_prefix(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


# ---------------------------------------------------------------------------
# The tensors.


def _gguf_name(hf_name: str) -> tuple[str, str | None]:
    """(llama.cpp name, 'q' | 'k' | None for the rotary permutation)."""
    if hf_name in _TOP_TENSORS:
        return _TOP_TENSORS[hf_name], None
    parts = hf_name.split(".")
    if len(parts) >= 5 and parts[:2] == ["model", "layers"] and parts[-1] == "weight":
        key = ".".join(parts[3:-1])
        if key in _LAYER_TENSORS:
            rotary = {"self_attn.q_proj": "q", "self_attn.k_proj": "k"}.get(key)
            return f"blk.{parts[2]}.{_LAYER_TENSORS[key]}.weight", rotary
    raise WhetstoneError(f"--format gguf: the tensor {hf_name} has no place in llama.cpp's llama layout.")


def _encode(array: np.ndarray, dtype: str):
    """(data, raw_dtype) for writer.add_tensor: 1-D stays f32; q8_0 needs rows in blocks of 32."""
    import gguf

    if array.ndim == 1 or dtype == "f32":
        return np.ascontiguousarray(array, dtype=np.float32), None
    if dtype == "f16" or (dtype == "q8_0" and array.shape[-1] % 32):
        return np.ascontiguousarray(array, dtype=np.float16), None
    qtype = {"bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[dtype]
    return gguf.quants.quantize(np.ascontiguousarray(array, dtype=np.float32), qtype), qtype


def write_gguf(state_dict: dict[str, torch.Tensor], config: dict, tokenizer, out: Path, dtype: str, *,
               name: str, pre: str) -> Path:
    """Write `state_dict` (HF Llama names, fp32) and `tokenizer` to the GGUF file `out`."""
    import gguf

    if dtype not in GGUF_DTYPES:
        raise WhetstoneError(f"--dtype {dtype}: GGUF export writes {', '.join(GGUF_DTYPES)}.")
    check_architecture(config)
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_type("model")
        writer.add_name(name)
        writer.add_context_length(config["max_position_embeddings"])
        writer.add_embedding_length(config["hidden_size"])
        writer.add_block_count(config["num_hidden_layers"])
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_dimension_count(head_dim)
        if head_dim != config["hidden_size"] // heads:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        writer.add_rope_freq_base(_rope_theta(config))
        writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
        writer.add_vocab_size(config["vocab_size"])
        writer.add_file_type(int(file_type))
        if dtype == "q8_0":  # quantized blocks carry a format version
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _write_tokenizer(writer, tokenizer, config["vocab_size"], pre)

        tied = config.get("tie_word_embeddings", False)
        for hf_name, tensor in state_dict.items():
            if hf_name == "lm_head.weight" and tied:
                continue  # llama.cpp reuses token_embd when there is no output.weight
            target, rotary = _gguf_name(hf_name)
            array = tensor.detach().to(torch.float32).cpu().numpy()
            if rotary == "q":
                array = permute_rotary(array, heads)
            elif rotary == "k":
                array = permute_rotary(array, kv_heads)
            data, raw_dtype = _encode(array, dtype)
            writer.add_tensor(target, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)  # never leave a half-written .gguf under the final name
    return out


def read_gguf_metadata(path: Path) -> dict:
    """The scalar metadata of a GGUF file (arrays are reported by length), for tests and `show`."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
            meta[key] = len(field.data)
            continue
        meta[key] = field.contents()
    meta["tensors"] = {t.name: (t.tensor_type.name, [int(s) for s in t.shape]) for t in reader.tensors}
    return meta
