"""train.logit_chunk: the LM head and cross-entropy in chunks give the unchunked loss and gradients."""

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from whetstone.data.batches import collate
from whetstone.data.packing import collate_packed
from whetstone.data.records import Message, Record
from whetstone.data.render import render_record
from whetstone.objectives.sft import SFTContext, sft_loss


def _batch(tokenizer, packed=False):
    records = [
        Record("chat", f"mem:{i}", messages=(Message("user", f"What is {i} times {i}?" + " Quick." * i),
                                             Message("assistant", f"It is {i * i}." + " Done." * (i % 3))))
        for i in range(6)
    ]
    examples = [render_record(r, tokenizer, 256, False) for r in records]
    return collate_packed(examples, tokenizer.pad_token_id, 256) if packed else collate(examples, tokenizer.pad_token_id)


def _loss_and_grads(model, batch, chunk):
    model.zero_grad(set_to_none=True)
    out = sft_loss(model, batch, SFTContext(chunk))
    (out.loss_sum / out.units).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("method", ["full", "lora", "softcap"])
def test_chunked_head_equals_unchunked(tiny_model_dir, tiny_tokenizer, method):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    if method == "softcap":  # Gemma-2-style logit softcapping goes through its own derivative
        model.config.final_logit_softcapping = 3.0
    batch = _batch(tiny_tokenizer)
    whole, grads_whole = _loss_and_grads(model, batch, None)
    chunked, grads_chunked = _loss_and_grads(model, batch, 7)  # 7 does not divide N: a ragged last chunk
    assert whole.units == chunked.units > 7 * 3
    torch.testing.assert_close(chunked.loss_sum, whole.loss_sum, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(chunked.row_loss, whole.row_loss, atol=1e-6, rtol=1e-6)
    assert grads_whole.keys() == grads_chunked.keys() and len(grads_whole) > 0
    if method != "lora":
        assert "model.embed_tokens.weight" in grads_whole  # the tied head's gradient is part of the comparison
    worst = max(float((grads_chunked[n] - grads_whole[n]).abs().max()) for n in grads_whole)
    print(f"max gradient delta, chunked vs unchunked ({method}): {worst:.2e}")
    assert worst < 1e-6


def test_chunked_head_on_a_packed_batch(tiny_model_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    plain, grads_plain = _loss_and_grads(model, _batch(tiny_tokenizer), None)
    packed, grads_packed = _loss_and_grads(model, _batch(tiny_tokenizer, packed=True), 5)
    torch.testing.assert_close(packed.loss_sum, plain.loss_sum, atol=1e-5, rtol=1e-6)
    for name in grads_plain:
        torch.testing.assert_close(grads_packed[name], grads_plain[name], atol=1e-6, rtol=1e-5)


def test_chunked_head_without_grad_returns_the_loss_and_takes_no_gradient(tiny_model_dir, tiny_tokenizer,
                                                                          monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = _batch(tiny_tokenizer)
    softmaxes = []  # the gradient path turns each chunk's log-probs into softmax in place (exp_)
    real_exp_ = torch.Tensor.exp_
    monkeypatch.setattr(torch.Tensor, "exp_", lambda t: softmaxes.append(t.shape) or real_exp_(t))
    with torch.no_grad():  # evaluation: the parameters still require grad, but nothing may be computed for them
        reference = model(**batch).loss  # transformers' own mean over the shifted labels
        out = sft_loss(model, batch, SFTContext(4))
    torch.testing.assert_close(out.loss_sum / out.units, reference, atol=1e-6, rtol=1e-6)
    assert softmaxes == []
    _loss_and_grads(model, batch, 4)  # with gradients, every chunk does
    assert len(softmaxes) == -(-out.units // 4)


@pytest.mark.parametrize("method", ["lora", "lora-softcap", "full"])
def test_chunked_sequence_logprobs_equal_unchunked_with_per_row_weights(tiny_model_dir, tiny_tokenizer, method):
    """DPO weighs each row's log-prob differently, so the chunked head must give every token its own gradient."""
    from whetstone.objectives.logprobs import sequence_logprobs

    torch.manual_seed(0)  # the random LoRA weights: the same test whatever ran before it
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if method != "full":  # full: the tied head trains, so the chunked path must step aside and still be right
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 init_lora_weights=False))
    if method == "lora-softcap":
        model.config.final_logit_softcapping = 3.0
    batch = _batch(tiny_tokenizer)
    weights = torch.linspace(-2.0, 3.0, batch["input_ids"].shape[0])  # (R,): a different weight per row

    def run(chunk):
        model.zero_grad(set_to_none=True)
        logps, counts = sequence_logprobs(model, batch, chunk)
        (weights * logps).sum().backward()
        return logps.detach(), counts, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    whole, counts_whole, grads_whole = run(None)
    chunked, counts_chunked, grads_chunked = run(5)  # 5 does not divide N
    assert torch.equal(counts_whole, counts_chunked) and int(counts_whole.sum()) > 5 * 3
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-6)
    assert grads_whole.keys() == grads_chunked.keys() and len(grads_whole) > 0
    # Relative to the largest gradient: the row weights and the unnormalised sums make gradients of order 10-100.
    scale = max(float(g.abs().max()) for g in grads_whole.values())
    worst = max(float((grads_chunked[n] - grads_whole[n]).abs().max()) for n in grads_whole) / scale
    print(f"max gradient delta / max gradient, chunked vs unchunked sequence log-probs ({method}): {worst:.2e}"
          f" (max gradient {scale:.1f})")
    assert worst < 1e-6
    with torch.no_grad():  # the reference's pass: the same values, no gradient kept
        torch.testing.assert_close(sequence_logprobs(model, batch, 5)[0], whole, atol=1e-5, rtol=1e-6)


def test_a_bf16_head_is_upcast_in_blocks_with_the_whole_upcasts_numbers():
    """A bf16 head (V > one block) gives the logits and the input gradient of its whole fp32 upcast."""
    from whetstone.models.forward import HEAD_BLOCK_ROWS, _linear_fp32, _matmul_fp32

    generator = torch.Generator().manual_seed(0)
    vocab, hidden = 2 * HEAD_BLOCK_ROWS + 123, 16  # three blocks, the last one short
    weight = torch.randn(vocab, hidden, generator=generator).to(torch.bfloat16)
    bias = torch.randn(vocab, generator=generator).to(torch.bfloat16)
    h = torch.randn(5, hidden, generator=generator)
    grad_z = torch.randn(5, vocab, generator=generator)
    torch.testing.assert_close(_linear_fp32(h, weight, bias), F.linear(h, weight.float(), bias.float()))
    # summed in three blocks instead of one pass: equal up to fp32 summation order over the V terms
    bound = 8 * torch.finfo(torch.float32).eps * (grad_z.abs() @ weight.float().abs())
    assert ((_matmul_fp32(grad_z, weight) - grad_z @ weight.float()).abs() <= bound).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the fp32 head ignores autocast
        assert _linear_fp32(h, weight, bias).dtype == torch.float32
