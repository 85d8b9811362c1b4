"""Forward passes that only pay for what the loss uses.

A causal LM's head maps every position to vocabulary-sized logits: for the
embedded model that is 49,152 floats per token, most of them at prompt positions
whose labels are -100. `label_hidden` runs the decoder and keeps the hidden
states at supervised positions only. `label_cross_entropy` (SFT),
`label_distillation` (SFT's distilled replay: soft targets from another model)
and `label_token_logprobs` (the preference objectives) then apply the head and
the log-softmax `chunk` tokens at a time, so at most (chunk, V) logits exist at once,
in the forward pass and in the backward pass, instead of (B, T, V).

A packed batch (data/packing.py) carries position_ids and example_ids; it goes
to the decoder without its 2D attention mask, so that transformers builds the
block-diagonal causal mask from the position ids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from whetstone.data.packing import shared_prefix_mask
from whetstone.data.render import IGNORE

LOGIT_CHUNK = 1024  # the default of train.logit_chunk, for callers without a config (eval, tests)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under peft (and, later, DDP) wrappers."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()  # peft: LoRA layers stay injected in place
    return model


def label_hidden(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states at the positions that predict a supervised label, and those labels.

    Returns (hidden (N, H), targets (N,)), N = supervised tokens in the batch, in row-major order.
    """
    lm = unwrap(model)
    if "segment_ids" in batch:  # shared prefixes: a mask that position ids cannot describe
        attention_mask = _shared_prefix_attention(lm, batch["segment_ids"], batch["prefix_ids"])
    else:  # packed rows: no 2D mask, so transformers reads the example boundaries from position_ids (data/packing.py)
        attention_mask = None if "example_ids" in batch else batch["attention_mask"]
    hidden = lm.get_decoder()(
        input_ids=batch["input_ids"],
        attention_mask=attention_mask,
        position_ids=batch.get("position_ids"),
        use_cache=False,
    ).last_hidden_state  # (B, T, H)
    targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    keep = targets != IGNORE
    if "predict_from" in batch:  # shared prefixes: a rest's first token is predicted from the prefix's end
        rows, columns = keep.nonzero()[:, 0], batch["predict_from"][:, 1:][keep]
        return hidden[rows, columns], targets[keep]
    return hidden[:, :-1][keep], targets[keep]  # (N, H), (N,)


def _shared_prefix_attention(lm: torch.nn.Module, segment_ids: torch.Tensor, prefix_ids: torch.Tensor) -> torch.Tensor:
    """The (R, 1, T, T) mask of a shared-prefix batch, as the attention implementation takes it: boolean for sdpa,
    additive (0 or the dtype's minimum) for eager, which adds the mask to its scores."""
    allowed = shared_prefix_mask(segment_ids, prefix_ids)
    if getattr(lm.config, "_attn_implementation", "sdpa") == "sdpa":
        return allowed
    dtype = lm.get_input_embeddings().weight.dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def label_cross_entropy(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                        chunk: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy at the supervised positions: (loss summed (scalar), per-token loss (N,), detached).

    With `chunk`, the head and the loss run `chunk` tokens at a time and their gradients are computed in the
    same pass (see _ChunkedHeadCrossEntropy), so peak memory holds (chunk, V) logits instead of two (N, V)
    tensors. The result equals the unchunked one up to float summation order.
    """
    hidden, targets = label_hidden(model, batch)  # (N, H), (N,)
    return hidden_cross_entropy(model, hidden, targets, chunk)


def hidden_cross_entropy(model: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                         chunk: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """label_cross_entropy from final hidden states (N, H) and their targets (N,)."""
    head, softcap = _head_and_softcap(model)
    # Only a plain Linear head is read as (weight, bias): a LoRA-wrapped or quantised head runs as a module.
    if chunk is None or type(head) is not torch.nn.Linear:
        token_loss = F.cross_entropy(_head_logits(head, hidden, softcap), targets, reduction="none")  # (N,)
        return token_loss.sum(), token_loss.detach()
    # Under no_grad (evaluation) the Function still sees inputs that require grad: tell it not to take gradients.
    return _ChunkedHeadCrossEntropy.apply(hidden, head.weight, head.bias, targets, chunk, softcap,
                                          torch.is_grad_enabled(), False)


def label_token_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor],
                         chunk: int | None) -> torch.Tensor:
    """log p(label) at each supervised position, (N,), differentiable: what the preference objectives sum per row.

    Their loss weighs every row differently, so unlike label_cross_entropy the result must carry a gradient per
    token. With `chunk` and a head that does not train (LoRA, or anything frozen at the head), the head runs
    `chunk` tokens at a time and keeps only each token's (H,) gradient, so peak memory holds (chunk, V) logits
    instead of (N, V) logits, their log-softmax and its gradient. A head that trains takes the unchunked path.
    """
    hidden, targets = label_hidden(model, batch)  # (N, H), (N,)
    head, softcap = _head_and_softcap(model)
    head_trains = torch.is_grad_enabled() and any(p is not None and p.requires_grad
                                                  for p in (getattr(head, "weight", None), getattr(head, "bias", None)))
    if chunk is None or type(head) is not torch.nn.Linear or head_trains:
        return torch.log_softmax(_head_logits(head, hidden, softcap), dim=-1).gather(1, targets[:, None]).squeeze(1)
    _, token_loss = _ChunkedHeadCrossEntropy.apply(hidden, head.weight, head.bias, targets, chunk, softcap,
                                                   torch.is_grad_enabled(), True)
    return -token_loss


def label_distillation(model: torch.nn.Module, hidden: torch.Tensor, teacher: torch.Tensor,
                       teacher_head: torch.nn.Module, chunk: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(teacher || model) of the next-token distributions at N positions: (summed (scalar), per token (N,), detached).

    `hidden` (N, H) are the model's final hidden states at the positions (label_hidden), `teacher` (N, H) the
    teacher's at the same positions, and `teacher_head` its head (for an adapter run: the model's own head
    without its adapter, objectives/logprobs.py Reference.head). With `chunk`, the heads and the loss run `chunk` positions at a time, as in
    label_cross_entropy: the gradient of the KL with respect to the logits is softmax(z) - q, so soft targets
    cost what hard ones cost, and no (N, V) tensor exists.
    """
    head, softcap = _head_and_softcap(model)
    teacher = teacher.detach()
    if chunk is None or type(head) is not torch.nn.Linear or type(teacher_head) is not torch.nn.Linear:
        log_p = torch.log_softmax(_head_logits(head, hidden, softcap), dim=-1)  # (N, V)
        with torch.no_grad():
            log_q = torch.log_softmax(_head_logits(teacher_head, teacher, softcap), dim=-1)  # (N, V)
        token_loss = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)  # (N,)
        return token_loss.sum(), token_loss.detach()
    return _ChunkedHeadCrossEntropy.apply(hidden, head.weight, head.bias, None, chunk, softcap,
                                          torch.is_grad_enabled(), False,
                                          (teacher, teacher_head.weight.detach(), _detached(teacher_head.bias)))


def _head_and_softcap(model: torch.nn.Module) -> tuple[torch.nn.Module, float | None]:
    """The LM head under the wrappers, and the model's final logit softcap (Gemma 2), or None."""
    lm = unwrap(model)
    return lm.get_output_embeddings(), getattr(lm.config, "final_logit_softcapping", None) or None


def _detached(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach()


def _softcapped(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def _head_logits(head: torch.nn.Module, hidden: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """All (N, V) logits at once, in fp32, through the softcap when the model has one: the unchunked path."""
    return _softcapped(logits_in_fp32(head, hidden), softcap)


def logits_in_fp32(head: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """head(hidden) computed in fp32, whatever autocast or the base's dtype say: (..., H) -> (..., out).

    Why: bf16 keeps 8 bits of mantissa, so a logit near 20 is rounded by up to 0.06 before the log-softmax,
    and every loss and compared log-prob inherits that error. The head is one matmul of the whole model; in fp32
    it costs a little speed and keeps the losses exact. A plain Linear's weight is upcast (a frozen bf16 head);
    another module (a trained head under peft's wrapper, kept fp32 by methods.trainable_in_fp32) gets fp32 input.
    """
    with torch.autocast(hidden.device.type, enabled=False):
        if type(head) is torch.nn.Linear:
            return F.linear(hidden.float(), head.weight.float(), _float(head.bias))
        return head(hidden.to(next(head.parameters()).dtype)).float()


def _float(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.float()


HEAD_BLOCK_ROWS = 8192  # rows of a low-precision head upcast at once: 8192 x H x 4 B, not the whole (V, H)


def _linear_fp32(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """h (C, H) fp32 times weight (V, H) transposed, plus bias, in fp32: (C, V).

    An fp32 weight is used as it is. A bf16 one is upcast HEAD_BLOCK_ROWS rows at a time, so no fp32 copy of the
    whole head (113 MB for a 49k x 576 head, 2 GB for Llama 3's 128k x 4096) is ever held beside the model.
    """
    with torch.autocast(h.device.type, enabled=False):
        if weight.dtype == torch.float32:
            return F.linear(h, weight, _float(bias))
        out = torch.empty(h.shape[0], weight.shape[0], dtype=torch.float32, device=h.device)
        for first in range(0, weight.shape[0], HEAD_BLOCK_ROWS):
            rows = slice(first, first + HEAD_BLOCK_ROWS)
            out[:, rows] = F.linear(h, weight[rows].float(), None if bias is None else bias[rows].float())
        return out


def _matmul_fp32(grad_z: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad_z (C, V) times weight (V, H) in fp32: (C, H); a bf16 weight upcast in blocks, as in _linear_fp32."""
    if weight.dtype == torch.float32:
        return grad_z @ weight
    out = torch.zeros(grad_z.shape[0], weight.shape[1], dtype=torch.float32, device=grad_z.device)
    for first in range(0, weight.shape[0], HEAD_BLOCK_ROWS):
        rows = slice(first, first + HEAD_BLOCK_ROWS)
        out += grad_z[:, rows] @ weight[rows].float()
    return out


class _ChunkedHeadCrossEntropy(torch.autograd.Function):
    """sum_i CE(softcap(h_i W^T + b), y_i) over chunks, with d/dh, d/dW, d/db computed chunk by chunk in forward.

    Chunking the forward alone would not bound memory: autograd would keep every chunk's (chunk, V)
    log-softmax for the backward pass, N x V in all. So each chunk's gradient is taken at once,
    dCE/dz = softmax(z) - onehot(y) (times 1 - (z/c)^2 through a softcap c), and only the (N, H) and
    (V, H) results are kept. The loss is a sum, so the backward pass scales them by its incoming scalar.
    Nothing is recomputed, so it costs no more compute than autograd over the whole (N, V).

    With `teacher` = (hidden (N, H), head weight, head bias), the targets are that teacher's distributions q
    instead of tokens: the loss is KL(q || p) and dKL/dz = softmax(z) - q (label_distillation).

    With `per_token`, the per-token losses (N,) carry a gradient too: row i of d/dh is token i's own
    gradient, so it scales by that token's incoming gradient. d/dW mixes the tokens and cannot, so
    per_token needs a head that does not train (label_token_logprobs checks).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, softcap, grad_enabled, per_token, teacher=None):
        n = hidden.shape[0]
        need_h, need_w, need_b = (grad_enabled and need for need in ctx.needs_input_grad[:3])
        token_loss = torch.empty(n, dtype=torch.float32, device=hidden.device)  # (N,)
        grad_h = torch.empty_like(hidden) if need_h else None  # (N, H)
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None  # (V, H)
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None  # (V,)
        # The head in fp32 (see logits_in_fp32); a low-precision head is upcast a block of rows at a time.
        weight, bias = weight.detach(), _detached(bias)
        if teacher is not None:
            t_hidden, t_weight, t_bias = teacher
        for start in range(0, n, chunk):
            h = hidden[start : start + chunk].float()  # (C, H)
            z = _softcapped(_linear_fp32(h, weight, bias), softcap)  # (C, V), fp32
            log_probs = torch.log_softmax(z, dim=-1)  # (C, V)
            if teacher is None:
                y = targets[start : start + chunk]  # (C,)
                token_loss[start : start + chunk] = -log_probs.gather(1, y[:, None]).squeeze(1)
            else:  # soft targets: the teacher's distribution q at the same positions, loss KL(q || p)
                t_logits = _linear_fp32(t_hidden[start : start + chunk].float(), t_weight, t_bias)  # (C, V)
                q_log = torch.log_softmax(_softcapped(t_logits, softcap), dim=-1)  # (C, V)
                q = q_log.exp()
                token_loss[start : start + chunk] = (q * (q_log - log_probs)).sum(-1)
            if not (need_h or need_w or need_b):
                continue
            grad_z = log_probs.exp_()  # (C, V): softmax, in place of the log-probs
            if teacher is None:
                grad_z[torch.arange(len(y), device=y.device), y] -= 1.0
            else:
                grad_z -= q  # d KL(q || softmax(z)) / dz = softmax(z) - q
            if softcap:
                grad_z *= 1.0 - (z / softcap) ** 2
            with torch.autocast(h.device.type, enabled=False):  # the gradients in fp32 too
                if need_h:
                    grad_h[start : start + chunk] = _matmul_fp32(grad_z, weight).to(hidden.dtype)
                if need_w:
                    grad_w += grad_z.t() @ h
            if need_b:
                grad_b += grad_z.sum(0)
        if per_token and (need_w or need_b):
            raise ValueError("per-token gradients need a head that does not train")
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        if not per_token:
            ctx.mark_non_differentiable(token_loss)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return token_loss.sum(), token_loss

    @staticmethod
    def backward(ctx, grad_sum, grad_token_loss):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        scale = grad_sum  # scalar: the loop multiplies the loss sum by 1 / (units of the step)
        w_dtype, b_dtype = ctx.dtypes
        if grad_h is not None:
            # Each token's gradient scales by what reaches it: through the sum, and (per_token) through its own loss.
            per_row = scale if grad_token_loss is None else (scale + grad_token_loss)[:, None]  # () or (N, 1)
            grad_h = grad_h * per_row.to(grad_h.dtype)
        return (
            grad_h,
            None if grad_w is None else (grad_w * scale).to(w_dtype),
            None if grad_b is None else (grad_b * scale).to(b_dtype),
            None, None, None, None, None, None,
        )
