"""A decoder's shape from its `config.json` alone, and its parameters counted in closed form.

The analytic planner (analytic.py) must plan a 70B model on a laptop: nothing here builds a
model, not even on the meta device. `read_architecture` reads the few numbers every known
decoder's memory follows from; `parameter_count` counts what each method trains from them. The
counts equal the meta-built model's exactly (tests/plan/test_plan_analytic.py checks each family).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

from whetstone.config import MethodConfig
from whetstone.errors import WhetstoneError
from whetstone.models.embedded import EMBEDDED
from whetstone.plan.estimate import ParameterCount

# model_type -> what differs from Llama's layer: norms per layer (gemma2/3 add pre/post feed-forward norms),
# per-head q/k norms (qwen3, gemma3), fused qkv and gate_up projections (phi3), and the tied-head default.
FAMILIES = {
    "llama": {"norms": 2, "qk_norm": False, "fused": False, "tied": False},
    "mistral": {"norms": 2, "qk_norm": False, "fused": False, "tied": False},
    "qwen2": {"norms": 2, "qk_norm": False, "fused": False, "tied": False},
    "qwen3": {"norms": 2, "qk_norm": True, "fused": False, "tied": False},
    "gemma": {"norms": 2, "qk_norm": False, "fused": False, "tied": True},
    "gemma2": {"norms": 4, "qk_norm": False, "fused": False, "tied": True},
    "gemma3_text": {"norms": 4, "qk_norm": True, "fused": False, "tied": True},
    "phi3": {"norms": 2, "qk_norm": False, "fused": True, "tied": False},
}
REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


@dataclass(frozen=True)
class Architecture:
    model_type: str
    hidden: int  # H
    intermediate: int  # I, the gated MLP's width
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool  # the head shares the input embedding's weight
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    norms: int  # RMSNorms per layer
    qk_norm: bool
    fused: bool  # phi3: one qkv_proj and one gate_up_proj

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> list[tuple[str, int, int]]:
        """(leaf name, in, out) of one layer's Linear modules, as transformers names them."""
        h, i, q, kv = self.hidden, self.intermediate, self.q_dim, self.kv_dim
        if self.fused:
            return [("qkv_proj", h, q + 2 * kv), ("o_proj", q, h), ("gate_up_proj", h, 2 * i), ("down_proj", i, h)]
        return [("q_proj", h, q), ("k_proj", h, kv), ("v_proj", h, kv), ("o_proj", q, h),
                ("gate_proj", h, i), ("up_proj", h, i), ("down_proj", i, h)]

    def layer_parameters(self) -> int:
        weights = sum(n_in * n_out for _, n_in, n_out in self.linears())
        biases = ((self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0) + (self.hidden if self.o_bias else 0)
        biases += (2 * self.intermediate + self.hidden) if self.mlp_bias else 0
        return weights + biases + self.norms * self.hidden + (2 * self.head_dim if self.qk_norm else 0)


def read_architecture(spec: str) -> tuple[Architecture, Path]:
    """The architecture of `spec`: a model directory holding config.json, a path to a config.json, the embedded
    model's name or a .gguf file (both read from their converted directory, models/load.py resolve_model).

    Returns it and the directory the config.json is in (where a tokenizer may be).
    """
    if spec in EMBEDDED or spec.endswith(".gguf"):
        from whetstone.models.load import resolve_model

        spec = resolve_model(spec).path
    path = Path(spec).expanduser()
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise WhetstoneError(f"model: {spec} is neither a directory holding config.json nor a config.json file; "
                             f"the analytic plan (--gpu or --memory) reads only the model's config.json.")
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise WhetstoneError(f"model: {file} is not readable JSON ({exc}); give the model's config.json.") from None
    if not isinstance(raw, dict):
        raise WhetstoneError(f"model: {file} holds a JSON {type(raw).__name__}, not a model config object.")
    return architecture_from_dict(raw, str(file)), file.parent


def architecture_from_dict(raw: dict, source: str) -> Architecture:
    model_type = raw.get("model_type")
    if model_type == "gemma3" and isinstance(raw.get("text_config"), dict):
        raw = raw["text_config"] | {"model_type": "gemma3_text"}  # the multimodal checkpoint: plan its text decoder
        model_type = "gemma3_text"
    missing = [key for key in REQUIRED if not isinstance(raw.get(key), int) or raw[key] < 1]
    if model_type not in FAMILIES:
        lacking = f"it lacks {', '.join(missing)}" if missing else "it has the usual fields, but its layer layout is unknown"
        raise WhetstoneError(f"{source}: model_type {model_type!r} is not an architecture the analytic planner knows "
                             f"({', '.join(sorted(FAMILIES))}); it reads {', '.join(REQUIRED)}, num_key_value_heads, "
                             f"head_dim and tie_word_embeddings, and {lacking}. Plan a known decoder, or plan on a "
                             f"machine that can load the model (without --gpu and --memory).")
    if missing:
        raise WhetstoneError(f"{source}: a {model_type} config.json needs positive integers {', '.join(REQUIRED)}; "
                             f"missing or invalid: {', '.join(missing)}.")
    family = FAMILIES[model_type]
    heads = raw["num_attention_heads"]
    head_dim = raw.get("head_dim") or raw["hidden_size"] // heads
    attention_bias = bool(raw.get("attention_bias", False))
    return Architecture(
        model_type=model_type, hidden=raw["hidden_size"], intermediate=raw["intermediate_size"],
        layers=raw["num_hidden_layers"], heads=heads, kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=head_dim, vocab=raw["vocab_size"], tied=bool(raw.get("tie_word_embeddings", family["tied"])),
        qkv_bias=model_type == "qwen2" or attention_bias,
        o_bias=attention_bias and model_type != "qwen2",
        mlp_bias=bool(raw.get("mlp_bias", False)), norms=family["norms"], qk_norm=family["qk_norm"],
        fused=family["fused"],
    )


def adapted(arch: Architecture, method: MethodConfig) -> list[tuple[str, int, int]]:
    """One layer's Linear modules that get adapters, by peft's rule: a leaf name, or a glob over the full name."""
    if method.targets == "all-linear":
        return arch.linears()
    return [(leaf, n_in, n_out) for leaf, n_in, n_out in arch.linears()
            if any(leaf == t or fnmatch.fnmatch(_full_name(leaf), t) for t in method.targets)]


def _full_name(leaf: str) -> str:
    return f"model.layers.0.{'mlp' if leaf in ('gate_proj', 'up_proj', 'gate_up_proj', 'down_proj') else 'self_attn'}.{leaf}"


def parameter_count(arch: Architecture, method: MethodConfig) -> ParameterCount:
    """What `method` trains on `arch`, counted from shapes (as estimate.count_method_parameters counts on meta)."""
    h, v, layers = arch.hidden, arch.vocab, arch.layers
    per_layer = arch.layer_parameters()
    embed = v * h
    head = 0 if arch.tied else v * h
    base = embed + head + layers * per_layer + h  # + the final norm
    matmul = base - (0 if arch.tied else embed)  # the input embedding is a lookup; a tied head multiplies
    quantizable = layers * sum(n_in * n_out for _, n_in, n_out in arch.linears())
    adapters = 0
    if method.name in ("lora", "dora", "qlora"):
        per = sum(method.r * (n_in + n_out) + (n_out if method.name == "dora" else 0)
                  for _, n_in, n_out in adapted(arch, method))
        adapters = layers * per
    if method.name == "full":
        trainable, backward = base, matmul
    elif method.name == "freeze":
        top = min(method.top_blocks, layers)
        head_params = v * h  # tied or not, the head multiplies at the top
        trainable = top * per_layer + (head_params if method.train_head else 0)
        if method.train_modules:
            raise WhetstoneError("method.train_modules: the analytic plan counts whole blocks and the head only; "
                                 "plan freeze with top_blocks and train_head, or plan where the model loads.")
        backward = top * per_layer + head_params
        if method.train_head and top == 0:
            backward = head_params
    else:
        trainable, backward = adapters, matmul
    return ParameterCount(total=base + adapters, trainable=trainable, base_total=base, matmul=matmul,
                          backward_through=min(backward, matmul), quantizable=quantizable, layers=layers, hidden=h)

