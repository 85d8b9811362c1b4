"""What each method trains, and that its output loads in plain transformers and peft."""

import re

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from tiny_runs import tiny_config
from transformers import AutoModelForCausalLM

from whetstone.config import MethodConfig, ModelConfig
from whetstone.data.batches import collate
from whetstone.data.records import Message, Record
from whetstone.data.render import render_record
from whetstone.errors import WhetstoneError
from whetstone.methods import apply_method, count_parameters
from whetstone.models import load_model
from whetstone.train.dispatch import train


def _state(path):
    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def test_freeze_leaves_every_frozen_tensor_bitwise_unchanged(tmp_path, tiny_model_dir, qa_file):
    before = _state(tiny_model_dir)
    config = tiny_config(tiny_model_dir, qa_file, "method.name=freeze", "method.top_blocks=1",
                         "method.train_modules=['model.norm.weight']", "train.max_steps=3",
                         "train.weight_decay=0.1")
    summary = train(config, tmp_path / "run", progress=False)
    after = _state(tmp_path / "run" / "model")
    trained = {k for k in after if k.startswith("model.layers.1.") or k == "model.norm.weight"}
    assert trained and summary["trainable_params"] == sum(after[k].numel() for k in trained)
    for name, tensor in after.items():
        if name in trained:
            assert not torch.equal(tensor, before[name]), f"{name} should have trained"
        else:
            assert torch.equal(tensor, before[name]), f"{name} is frozen but changed"


def test_full_changes_every_tensor(tmp_path, tiny_model_dir, qa_file):
    before = _state(tiny_model_dir)
    config = tiny_config(tiny_model_dir, qa_file, "method.name=full", "train.max_steps=2")
    summary = train(config, tmp_path / "run", progress=False)
    after = _state(tmp_path / "run" / "model")
    assert summary["trainable_params"] == summary["total_params"]
    unchanged = [name for name in after if torch.equal(after[name], before[name])]
    assert unchanged == []


def test_freeze_head_trains_the_tied_embedding(tiny_model_dir):
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    apply_method(model, MethodConfig(name="freeze", train_head=True))
    trainable, total = count_parameters(model)
    assert trainable == model.get_output_embeddings().weight.numel()
    assert model.get_input_embeddings().weight.requires_grad  # tied: the same tensor


def test_freeze_too_many_blocks_is_a_clear_error(tiny_model_dir):
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    with pytest.raises(WhetstoneError, match="the model has 2 blocks"):
        apply_method(model, MethodConfig(name="freeze", top_blocks=5))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapter_loads_in_plain_peft_with_the_same_logits(tmp_path, tiny_model_dir, qa_file, tiny_tokenizer, method):
    config = tiny_config(tiny_model_dir, qa_file, f"method.name={method}", "method.r=4", "train.max_steps=3")
    train(config, tmp_path / "run", progress=False)
    adapter = tmp_path / "run" / "adapter"

    # whetstone's own model: base + method, with the trained weights from its checkpoint.
    ours, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    ours = apply_method(ours, config.method)
    checkpoint = (tmp_path / "run" / "checkpoints" / "latest").read_text()
    weights = load_file(str(tmp_path / "run" / "checkpoints" / checkpoint / "trainable.safetensors"))
    missing, unexpected = ours.load_state_dict(weights, strict=False)
    assert not unexpected

    # plain transformers + peft, from the saved adapter.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    theirs = PeftModel.from_pretrained(base, adapter)

    record = Record("chat", "mem:1", messages=(Message("user", "What is 3 plus 3?"), Message("assistant", "6.")))
    batch = collate([render_record(record, tiny_tokenizer, None)], tiny_tokenizer.pad_token_id)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        a = ours(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    with theirs.disable_adapter(), torch.no_grad():
        untouched = theirs(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (a - untouched).abs().max() > 1e-4, "the adapter should change the output after training"


def test_lora_options_reach_peft(tiny_model_dir):
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    model = apply_method(model, MethodConfig(name="lora", r=4, alpha=8, targets=["q_proj", "v_proj"], rslora=True))
    peft_config = model.peft_config["default"]
    assert peft_config.r == 4 and peft_config.lora_alpha == 8 and peft_config.use_rslora
    assert set(peft_config.target_modules) == {"q_proj", "v_proj"}
    trainable, _ = count_parameters(model)
    # 2 layers x (q: 64->64, v: 64->32) x rank 4: A (4 x in) + B (out x 4)
    assert trainable == 2 * ((4 * 64 + 64 * 4) + (4 * 64 + 32 * 4))


def test_qlora_without_cuda_says_what_is_missing(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(WhetstoneError, match="qlora needs a CUDA GPU"):
        load_model(ModelConfig(name=str(tiny_model_dir)), device="cpu", quantize_4bit=True)


def test_interpolate_keeps_that_share_of_the_adapters_change(tmp_path, tiny_model_dir, qa_file, tiny_tokenizer):
    probe = tmp_path / "probe.jsonl"
    probe.write_text("".join(f'{{"text": "General text number {i} says something plain."}}\n' for i in range(4)))
    runs = {}
    for share in ("1.0", "0.5"):
        config = tiny_config(tiny_model_dir, qa_file, "method.r=4", "train.max_steps=3", "eval.metrics=[loss]",
                             "data.eval_fraction=0.25", "eval.forgetting=true", f"eval.forgetting_data={probe}", f"method.interpolate={share}")
        summary = train(config, tmp_path / share, progress=False)
        runs[share] = (summary, load_file(str(tmp_path / share / "adapter" / "adapter_model.safetensors")))
    (whole, full), (half, halved) = runs["1.0"], runs["0.5"]
    # The same training (same seed, same steps), then B scaled by 0.5 and A untouched.
    assert whole["train_loss"] == half["train_loss"] and full.keys() == halved.keys()
    b_keys = [k for k in full if ".lora_B." in k]
    assert b_keys and all(torch.equal(halved[k], full[k] * 0.5) for k in b_keys)
    assert all(torch.equal(halved[k], full[k]) for k in full if k not in b_keys)
    assert any(full[k].abs().max() > 0 for k in b_keys), "B trained away from zero"
    # The evaluations during training saw the same model; the dev loss reported and the end-of-training
    # evaluation are the interpolated model's.
    assert half["eval_loss_before_interpolation"] == whole["eval_loss"] != half["eval_loss"]
    assert "eval_loss_before_interpolation" not in whole
    assert half["forgetting"]["base"]["text_ppl"] == whole["forgetting"]["base"]["text_ppl"]
    assert half["forgetting"]["tuned"]["text_ppl"] != whole["forgetting"]["tuned"]["text_ppl"]


@pytest.mark.parametrize("method,share,message", [
    ("dora", 0.5, "applies to lora and qlora, not 'dora'"),
    ("full", 0.5, "applies to lora and qlora, not 'full'"),
    ("lora", 0.0, "in \\(0, 1\\]"),
    ("lora", 1.5, "in \\(0, 1\\]"),
])
def test_interpolate_refuses_what_it_cannot_do(method, share, message):
    assert any(re.search(message, p) for p in MethodConfig(name=method, interpolate=share).validate())
    assert MethodConfig(name="qlora", interpolate=0.5).validate() == []
