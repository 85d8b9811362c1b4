"""data.replay.distill: replay tokens learn the base model's distribution (KL), chunked or not, in a real run."""

import copy
import json

import pytest
import torch
from mixkit import arithmetic_file, chat, general_file
from peft import LoraConfig, PeftModel, get_peft_model
from tiny_runs import tiny_config, write_jsonl
from transformers import AutoModelForCausalLM

from whetstone.config import ConfigError, DataConfig, ReplayConfig, load_config
from whetstone.data.batches import collate
from whetstone.data.dataset import load_splits, tokenize
from whetstone.data.packing import collate_packed, collate_packed_shared
from whetstone.data.records import Message, Record
from whetstone.data.render import IGNORE, render_record
from whetstone.objectives.logprobs import Reference
from whetstone.objectives.sft import SFTContext, sft_loss
from whetstone.train.dispatch import train


def _examples(tokenizer):
    """Six chat examples; the odd ones are distilled replay (every token supervised)."""
    out = []
    for i in range(6):
        record = Record("chat", f"mem:{i}", messages=(Message("user", f"What is {i} times {i}?" + " Quick." * i),
                                                      Message("assistant", f"It is {i * i}." + " Done." * (i % 3))))
        rendered = render_record(record, tokenizer, 256, train_on_prompt=bool(i % 2))
        rendered.distill = bool(i % 2)
        out.append(rendered)
    return out


def _loss_and_grads(model, batch, reference, chunk):
    model.zero_grad(set_to_none=True)
    out = sft_loss(model, batch, SFTContext(chunk, reference))
    (out.loss_sum / out.units).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def _student_and_reference(tiny_model_dir, method):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    if method == "lora":  # random A and B, so the student is not the base and the KL has a gradient
        config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        return get_peft_model(model, config), Reference(copy=None)
    if method == "softcap":
        model.config.final_logit_softcapping = 3.0
    reference = Reference(copy=copy.deepcopy(model).eval().requires_grad_(False))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model, reference


@pytest.mark.parametrize("method", ["full", "lora", "softcap"])
@pytest.mark.parametrize("packed", [False, True])
def test_chunked_distillation_equals_autograd(tiny_model_dir, tiny_tokenizer, method, packed):
    model, reference = _student_and_reference(tiny_model_dir, method)
    examples = _examples(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    batch = collate_packed(examples, pad, 256) if packed else collate(examples, pad)
    whole, grads_whole = _loss_and_grads(model, batch, reference, None)  # F.kl_div under autograd
    chunked, grads_chunked = _loss_and_grads(model, batch, reference, 7)  # the chunked Function, ragged last chunk
    torch.testing.assert_close(chunked.loss_sum, whole.loss_sum, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(chunked.row_loss, whole.row_loss, atol=1e-5, rtol=1e-6)
    assert grads_whole.keys() == grads_chunked.keys() and len(grads_whole) > 0
    worst = max(float((grads_chunked[n] - grads_whole[n]).abs().max()) for n in grads_whole)
    print(f"max gradient delta, chunked vs autograd KL ({method}, packed={packed}): {worst:.2e}")
    assert worst < 1e-6
    # Distilled rows carry a KL (small, >= 0); the others a cross-entropy against the data (large).
    distilled = whole.row_loss[1::2] / whole.row_units[1::2]
    plain = whole.row_loss[0::2] / whole.row_units[0::2]
    assert bool((distilled >= 0).all()) and float(distilled.max()) < float(plain.min())


@pytest.mark.parametrize("method", ["full", "lora"])
def test_shared_prefix_rows_distill_as_packed_rows_do(tiny_model_dir, tiny_tokenizer, method):
    """objective.share_prompt with distilled replay: the distill mask follows each token's example."""
    model, reference = _student_and_reference(tiny_model_dir, method)
    examples = _examples(tiny_tokenizer)
    pad = tiny_tokenizer.pad_token_id
    packed, shared = collate_packed(examples, pad, 256), collate_packed_shared(examples, pad, 256)
    assert int(shared["attention_mask"].sum()) < int(packed["attention_mask"].sum())
    a, grads_a = _loss_and_grads(model, packed, reference, 7)
    b, grads_b = _loss_and_grads(model, shared, reference, 7)
    assert b.units == a.units and torch.equal(b.row_units, a.row_units)
    torch.testing.assert_close(b.row_loss, a.row_loss, atol=1e-5, rtol=1e-5)
    worst = max(float((grads_a[n] - grads_b[n]).abs().max()) for n in grads_a)
    assert worst < 1e-5, worst


def test_the_kl_is_zero_where_the_student_is_the_base(tiny_model_dir, tiny_tokenizer):
    """peft starts LoRA at B = 0: the tuned model is the base, so every distilled token's KL and gradient is 0."""
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    examples = [e for e in _examples(tiny_tokenizer) if e.distill]
    out, grads = _loss_and_grads(model, collate(examples, tiny_tokenizer.pad_token_id), Reference(copy=None), 5)
    assert out.units == sum(e.n_supervised for e in examples)
    assert abs(float(out.loss_sum.detach())) < 1e-4
    assert max(float(g.abs().max()) for g in grads.values()) < 1e-6


def test_distilled_tokens_without_a_reference_are_an_error(tiny_model_dir, tiny_tokenizer):
    """Cross-entropy on replay tokens would be plain replay, a different run: sft_loss refuses, never falls back."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    examples = _examples(tiny_tokenizer)
    with pytest.raises(RuntimeError, match="no reference model"):
        sft_loss(model, collate(examples, tiny_tokenizer.pad_token_id), SFTContext(5))
    plain = collate([e for e in examples if not e.distill], tiny_tokenizer.pad_token_id)
    # No distilled token: cross-entropy, as ever.
    assert float(sft_loss(model, plain, SFTContext(5)).loss_sum.detach()) > 0


def test_replay_records_are_distilled_on_every_token(tmp_path, tiny_tokenizer):
    task = write_jsonl(tmp_path / "task.jsonl", [chat(f"Q{i}?", f"A{i}.") for i in range(4)])
    general = write_jsonl(tmp_path / "general.jsonl", [chat("Tell me about rain.", "Rain is water.")])
    cfg = DataConfig(train=str(task), replay=ReplayConfig(source=str(general), fraction=0.2, distill=True))
    records, _, _ = load_splits(cfg, 0)
    examples = tokenize(records, tiny_tokenizer, cfg).examples
    assert [e.distill for e in examples] == [False] * 4 + [True]
    replay = examples[-1]
    # The request is distilled too: every token through the answer's end of turn (not the template's newline after).
    end = len(replay.input_ids) - replay.input_ids[::-1].index(tiny_tokenizer.eos_token_id)
    assert replay.labels[1:end] == replay.input_ids[1:end] and end >= len(replay.input_ids) - 2
    assert IGNORE in examples[0].labels  # the task's prompt is still not supervised

    packed = collate_packed(examples, tiny_tokenizer.pad_token_id, 256)
    plain = collate(examples, tiny_tokenizer.pad_token_id)
    for batch in (packed, plain):
        assert int(batch["distill"].sum()) == len(replay.input_ids)
    assert bool(plain["distill"][-1, : len(replay.input_ids)].all()) and not bool(plain["distill"][:-1].any())
    replay_id = len(examples) - 1
    assert torch.equal(packed["distill"], packed["example_ids"] == replay_id)
    assert "distill" not in collate(examples[:4], tiny_tokenizer.pad_token_id)  # no replay, no mask


def _replay_kl(run, tiny_model_dir, tiny_tokenizer, general) -> float:
    """Mean KL(base || tuned) per token over the replay records, measured on the saved adapter."""
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    cfg = DataConfig(train=str(general), replay=ReplayConfig(source=str(general), fraction=0.5, distill=True))
    examples = [e for e in tokenize(load_splits(cfg, 0)[0], tiny_tokenizer, cfg).examples if e.distill]
    with torch.no_grad():
        out = sft_loss(tuned, collate(examples, tiny_tokenizer.pad_token_id), SFTContext(64, Reference(copy=None)))
    return float(out.loss_sum) / out.units


def test_distilled_replay_keeps_the_model_near_its_base_on_replay(tmp_path, tiny_model_dir, tiny_tokenizer):
    """The same task run without replay, with replay as cross-entropy, and distilled: only distillation holds
    the model's distribution on the replay data near the base's."""
    arith, general = arithmetic_file(tmp_path / "arith.jsonl"), general_file(tmp_path / "general.jsonl")
    kl = {}
    for mode in ("none", "cross-entropy", "distilled"):
        replay = ([] if mode == "none" else
                  [f"data.replay={{source: {general}, fraction: 0.3, distill: {str(mode == 'distilled').lower()}}}"])
        config = tiny_config(tiny_model_dir, arith, f"data.train=[{{path: {arith}, task: arith}}]", *replay,
                             "train.max_steps=24", "train.batch_size=8", "train.lr=5e-3", "data.packing=true")
        run = tmp_path / mode.replace(" ", "_")
        train(config, run, progress=False)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        if mode == "distilled":  # step 1 is the base model (LoRA B = 0): its replay loss is a KL of 0
            assert rows[0]["loss/replay"] == pytest.approx(0.0, abs=1e-4)
            assert rows[0]["loss/arith"] > 1.0
        kl[mode] = _replay_kl(run, tiny_model_dir, tiny_tokenizer, general)
    print(f"KL(base || tuned) per replay token: {kl}")
    assert kl["distilled"] < 0.6 * min(kl["none"], kl["cross-entropy"])


def test_distill_is_refused_where_it_cannot_run():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["data.train=a.jsonl", "objective=dpo", "data.replay={source: b.jsonl, distill: true}"])
    assert "data.replay.distill: objective dpo does not learn from tokens" in str(error.value)
    with pytest.raises(ConfigError) as error:
        load_config(None, ["data.train=a.jsonl", "train.strategy=fsdp", "data.replay={source: b.jsonl, distill: true}"])
    assert "data.replay.distill with train.strategy fsdp" in str(error.value)


def test_replay_from_several_files_is_one_source(tmp_path, tiny_tokenizer):
    """Chat records and plain text cannot share a file; data.replay.source takes a list, drawn as one source."""
    from whetstone.data.dataset import plan_mixture

    task = write_jsonl(tmp_path / "task.jsonl", [chat(f"Q{i}?", f"A{i}.") for i in range(6)])
    chats = write_jsonl(tmp_path / "chats.jsonl", [chat("Tell me about rain.", "Rain is water.")])
    texts = general_file(tmp_path / "texts.jsonl", n=3)
    config = load_config(None, [f"data.train={task}", f"data.replay={{source: [{chats}, {texts}], distill: true}}"])
    records, _, stats = load_splits(config.data, 0)
    tokenized = tokenize(records, tiny_tokenizer, config.data)
    assert [e.distill for e in tokenized.examples] == [False] * 6 + [True] * 4
    assert [r.kind for r in records[6:]] == ["chat", "text", "text", "text"]
    mixture = plan_mixture(config.data, tokenized.origins, stats)
    assert [s.task for s in mixture.sources] == ["task", "replay"]
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"data.train={task}", f"data.replay={{source: [{chats}, {chats}]}}"])
    assert "listed twice" in str(error.value)
    with pytest.raises(ConfigError, match="listed twice"):  # the task file replayed as well: a single data.train
        load_config(None, [f"data.train={task}", f"data.replay={{source: {task}}}"])


def test_kl_weight_scales_the_replay_tokens_loss_alone(tiny_model_dir, tiny_tokenizer):
    """data.replay.kl_weight: loss = CE(data tokens) + w * KL(replay tokens); the logged per-row losses unweighted."""
    model, reference = _student_and_reference(tiny_model_dir, "full")
    batch = collate(_examples(tiny_tokenizer), tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        one = sft_loss(model, batch, SFTContext(None, reference))
        three = sft_loss(model, batch, SFTContext(None, reference, kl_weight=3.0))
    kl = float(one.row_loss[1::2].sum())  # the odd examples are the distilled ones
    ce = float(one.row_loss[0::2].sum())
    assert kl > 0 and ce > 0
    torch.testing.assert_close(float(one.loss_sum), ce + kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(float(three.loss_sum), ce + 3.0 * kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(three.row_loss, one.row_loss)
    assert three.units == one.units


def test_kl_weight_is_checked():
    for replay, fragment in [("{source: b.jsonl, distill: true, kl_weight: 0}", "kl_weight: got 0.0; must be above 0"),
                             ("{source: b.jsonl, kl_weight: 2.0}", "and data.replay.distill is false")]:
        with pytest.raises(ConfigError) as error:
            load_config(None, ["data.train=a.jsonl", f"data.replay={replay}"])
        assert fragment in str(error.value)
    config = load_config(None, ["data.train=a.jsonl", "data.replay={source: b.jsonl, distill: true, kl_weight: 2.5}"])
    assert config.data.replay.kl_weight == 2.5
