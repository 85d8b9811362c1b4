"""Activation bytes from the architecture alone: what autograd keeps for backward, term by term.

The probe (probe.py) measures these bytes by running the model; this module predicts them from
config.json, so that a model that is not here, or would not fit here, can be planned. Each term
is a tensor some op saves for its backward, per token of one layer (shapes as in the Llama
family in transformers; `a` = bytes of a matmul's output, `res` = bytes of the residual stream):

  each RMSNorm          4H + 4        its fp32 upcast input and rsqrt (both fp32 whatever the
                                      model's dtype); + res*H when its weight trains
  a Linear's input      width * res   kept once per input when the weight trains or an adapter
                                      reads it, in an fp32 run and for adapters on a bf16 base under
                                      autocast (they read its bf16 input as is: methods/lora.py
                                      keep_input_dtype); otherwise under bf16 autocast every adapter
                                      (peft casts its input to the fp32 adapter dtype) and every
                                      fp32 weight keeps its own bf16 copy, width * 2 each
  attention (sdpa/flash) q, k, v after RoPE, the output (q + 2kv + q) * a, and the fp32 logsumexp
                        per head; k and v at q's width where transformers repeats them for sdpa
                        with a padding mask (CUDA); eager adds heads * T * (4 + a) for the scores
  gated MLP             gate, up and the activation's output, 3I * a
  LoRA                  each adapter's A output, r * (2 under autocast, else 4)
  q/k norms (qwen3, gemma3)  (q + kv) * 4 + (heads + kv heads) * 4

Outside the layers: RoPE's cos and sin (2 head_dim * res), the supervised-position mask (1 byte),
the token ids when the embedding trains (8), the final norm, and the attention mask the sdpa
kernels read, batch * T^2 bytes (bool), once. The head (models/forward.py) runs at supervised
positions only, in chunks: it keeps the (N, H) gradient of the final hidden states, and while it
runs, one chunk of (chunk, V) logits, their fp32 log-softmax and gradient (a + 8 + a bytes each).
A trainable head also keeps its own fp32 (V, H) gradient buffer.

Gradient checkpointing keeps each layer's input (H * res per token) and recomputes one layer at a
time, so one layer's terms are live on top.

DoRA (not checked against the probe): each adapted Linear also keeps its base and adapter outputs
(2 * out * a per token) and, once per step, the (in, in) identity peft runs the adapter on to
form B A (in^2 * a bytes per adapted Linear).
"""

from __future__ import annotations

from dataclasses import dataclass

from whetstone.plan.architecture import Architecture

_NORM_SITES = ("attn_in", "mlp_in")


@dataclass(frozen=True)
class Regime:
    """How a method runs: which weights train, in which dtypes, with which attention kernel."""

    method: str  # full, freeze, lora, dora, qlora
    precision: str  # fp32 or bf16 (bf16: autocast over fp32 trainable weights)
    attention: str = "sdpa"  # sdpa, flash_attention_2 or eager
    cuda: bool = True  # on CUDA, sdpa with a padding mask repeats k and v to every head
    adapted: tuple[str, ...] = ()  # leaf names of the Linear modules with adapters
    r: int = 16
    top_blocks: int = 0  # freeze: layers that train

    @property
    def autocast(self) -> bool:
        return self.precision == "bf16"

    @property
    def a(self) -> int:
        return 2 if self.autocast else 4

    @property
    def res(self) -> int:
        # fp32 master weights (full, the trained blocks of freeze) and qlora's fp32-cast norms and embeddings
        # keep the residual stream in fp32 under autocast; a bf16 base keeps it in bf16.
        return 2 if self.autocast and self.method in ("lora", "dora") else 4

    @property
    def trains_weights(self) -> bool:
        return self.method in ("full", "freeze")


def _sites(arch: Architecture) -> dict[str, tuple[int, tuple[str, ...]]]:
    """Each Linear input: (width, the Linear modules that read it)."""
    if arch.fused:
        return {"attn_in": (arch.hidden, ("qkv_proj",)), "o_in": (arch.q_dim, ("o_proj",)),
                "mlp_in": (arch.hidden, ("gate_up_proj",)), "down_in": (arch.intermediate, ("down_proj",))}
    return {"attn_in": (arch.hidden, ("q_proj", "k_proj", "v_proj")), "o_in": (arch.q_dim, ("o_proj",)),
            "mlp_in": (arch.hidden, ("gate_proj", "up_proj")), "down_in": (arch.intermediate, ("down_proj",))}


def layer_token_bytes(arch: Architecture, regime: Regime) -> float:
    """Bytes one trained layer keeps per token (no T^2 terms)."""
    a, res, h = regime.a, regime.res, arch.hidden
    q, kv = arch.q_dim, arch.kv_dim
    total = arch.norms * (4 * h + 4 + (res * h if regime.trains_weights else 0))
    for site, (width, readers) in _sites(arch).items():
        keep = [name for name in readers if regime.trains_weights or name in regime.adapted]
        if not keep:
            continue
        site_bytes = res if site in _NORM_SITES else a
        # o_proj reads the attention output, which the kernel keeps anyway
        if not regime.autocast or regime.res == 2:  # (bf16 base: adapters read its bf16 input as is, kept once)
            total += width * site_bytes if site != "o_in" else 0
            continue
        for name in keep:
            if name in regime.adapted or site_bytes != 2:  # a copy cast to bf16 for this Linear alone
                total += width * 2
            elif site == "down_in" and name == keep[0]:
                total += width * 2  # the bf16 product of the gated MLP, read as is
    repeat = regime.attention == "eager" or (regime.attention == "sdpa" and regime.cuda)
    kv_kept = q if repeat else kv
    v_storage = (q + 2 * kv) if arch.fused and not repeat else kv_kept  # phi3: v is a view of the fused output
    total += (q + kv_kept) * a + v_storage * a + q * a  # q, k after RoPE, v, the output
    if regime.attention != "eager":
        total += arch.heads * 4  # the kernel's fp32 logsumexp
    if arch.qk_norm:
        total += (q + kv) * 4 + (arch.heads + arch.kv_heads) * 4 + ((q + kv) * res if regime.trains_weights else 0)
    total += 3 * arch.intermediate * a
    total += len(regime.adapted) * regime.r * a
    if regime.method == "dora":
        total += sum(2 * n_out * a for leaf, _, n_out in arch.linears() if leaf in regime.adapted)
    return float(total)


@dataclass
class ActivationModel:
    """Saved bytes of a micro-batch of B rows of T tokens with N supervised, as the probe's ActivationFit reads."""

    per_token: float  # every trained layer and what is outside them
    per_batch_len2: float  # the T^2 terms: the attention mask, eager's scores
    per_supervised: float  # the (N, H) gradient the chunked head keeps
    constant: float  # a trainable head's fp32 gradient buffer; DoRA's weight norms
    layer_per_token: float  # one trained layer (what checkpointing recomputes)
    layer_input: float  # bytes per token of one layer's input (what checkpointing keeps)
    layers: int  # trained layers
    head_workspace_per_token: float  # (V) logits, log-softmax and gradient of one chunk, per chunk token

    def body(self, batch: int, length: int) -> float:
        return self.per_token * batch * length + self.per_batch_len2 * batch * length**2 + self.constant

    def checkpointed(self, batch: int, length: int) -> float:
        outside = self.per_token - self.layers * self.layer_per_token
        tokens = batch * length
        per_layer_t2 = self.per_batch_len2 - 1.0  # eager's scores are per layer; the mask is once
        one_layer = self.layer_per_token * tokens + (per_layer_t2 / max(self.layers, 1) + 1.0) * batch * length**2
        return (self.layers * self.layer_input + outside) * tokens + one_layer + self.constant

    def logits(self, supervised: int, chunk: int | None) -> float:
        workspace = self.head_workspace_per_token * min(chunk or supervised, supervised)
        return 2.0 * self.per_supervised * supervised + workspace


def activation_model(arch: Architecture, regime: Regime) -> ActivationModel:
    a, res, h = regime.a, regime.res, arch.hidden
    layer = layer_token_bytes(arch, regime)
    trained = min(regime.top_blocks, arch.layers) if regime.method == "freeze" else arch.layers
    outside = 2 * arch.head_dim * res + 1 + 4 * h + 4  # cos, sin; supervised mask; the final norm
    if regime.method == "full":
        outside += 8 + res * h  # token ids for the embedding's gradient; the final norm's weight trains
    elif regime.method != "qlora":  # (qlora: peft makes the embedding's output require a gradient)
        outside -= 4 * h + 4  # the first trained layer's input needs no gradient: its first norm keeps no fp32 terms
    t2 = 1.0 if regime.attention != "flash_attention_2" else 0.0
    if regime.attention == "eager":
        t2 += trained * arch.heads * (4 + (a if a != 4 else 0))  # fp32 softmax, and its copy in the compute dtype
    head_trains = regime.method == "full"
    constant = arch.vocab * h * 4.0 if head_trains else 0.0
    if regime.method == "dora":
        # peft's DoRA builds B A by running the adapter on an (in, in) identity, kept for backward (dora.py x_eye)
        constant += trained * a * sum(n_in * n_in for leaf, n_in, _ in arch.linears() if leaf in regime.adapted)
    workspace = float(a + 8 + a) if a != 4 else 8.0  # fp32: the logits are the log-softmax's input itself
    return ActivationModel(per_token=trained * layer + outside, per_batch_len2=t2, per_supervised=float(h * res),
                           constant=constant, layer_per_token=layer, layer_input=float(h * res), layers=trained,
                           head_workspace_per_token=workspace * arch.vocab)
