"""A few tests on the real embedded model (SmolLM2-135M-Instruct from its GGUF)."""

import time

import pytest
import torch

from whetstone.config import MethodConfig, ModelConfig
from whetstone.data.batches import collate
from whetstone.data.records import Message, Record
from whetstone.data.render import render_record
from whetstone.methods import apply_method
from whetstone.models import load_model, load_tokenizer, resolve_model
from whetstone.models.embedded import cached_hf_dir, embedded_gguf_path
from whetstone.models.inference import generate_answers
from whetstone.objectives import sft_loss

pytestmark = pytest.mark.slow
NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def embedded():
    tokenizer = load_tokenizer(NAME)  # converts the GGUF into the cache on first use
    model, resolved = load_model(ModelConfig(name=NAME))
    return model, tokenizer, resolved


def test_loads_from_the_safetensors_cache(embedded):
    _, tokenizer, resolved = embedded
    assert resolved.kind == "embedded"
    assert resolved.path == str(cached_hf_dir(embedded_gguf_path(NAME)))
    start = time.perf_counter()
    again = resolve_model(NAME)
    assert again.path == resolved.path and time.perf_counter() - start < 1.0  # a cache hit converts nothing
    assert tokenizer.eos_token == "<|im_end|>"
    assert "<|im_start|>" in tokenizer.chat_template  # the template came from the GGUF


def test_generates_an_answer(embedded):
    model, tokenizer, _ = embedded
    (answer,) = generate_answers(model, tokenizer, [[{"role": "user", "content": "What is the capital of France?"}]],
                                 max_new_tokens=16)
    assert "Paris" in answer


def test_lora_step_lowers_loss_on_a_repeated_batch(embedded):
    base, tokenizer, _ = embedded
    model = apply_method(base, MethodConfig(name="lora", r=8, alpha=16))
    records = [Record("chat", f"mem:{i}", messages=(Message("user", f"What does `whetstone.{name}` do?"),
                                                    Message("assistant", f"It {verb} the model.")))
               for i, (name, verb) in enumerate([("train", "trains"), ("plan", "plans"), ("export", "exports")])]
    batch = collate([render_record(r, tokenizer, 128) for r in records], tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(3):
        out = sft_loss(model, batch)
        loss = out.loss_sum / out.units
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[2] < losses[0] - 0.3, losses
    model.unload()  # leave the shared base as it was
