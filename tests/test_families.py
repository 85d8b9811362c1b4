"""Six model families end to end through the CLI: train (LoRA, full), generate, export (merged, peft, GGUF).

Each family is a tiny random model with its real chat template and special tokens (tests/families.py), built
once per module. The tests check what differs between families: which Linear layers `all-linear` adapts
(Phi-3 fuses qkv_proj and gate_up_proj), which token ends a turn (Gemma's <end_of_turn> and Phi-3's <|end|> are
not their EOS), and whether an export stops on it and computes the same function as base + adapter.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from families import FAMILIES, build_family, family_tokenizer
from tiny_runs import write_jsonl
from whetstone.cli import main
from whetstone.errors import WhetstoneError
from whetstone.export.consistency import PROBE

LORA_STEPS, LORA_LR = 3, 1e-2
FULL_STEPS, FULL_LR = 2, 1e-3
# Merged (W + s BA) x against W x + s B(A x): fp32 rounding of a 2-layer model whose logits stay under ~1.
MERGE_TOLERANCE = 1e-5


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    return FAMILIES[request.param]


@pytest.fixture(scope="module")
def family_root(family, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp(family.name)


@pytest.fixture(scope="module")
def model_dir(family, family_root) -> Path:
    return build_family(family, family_root / "base")


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from whetstone.models import load_tokenizer

    return load_tokenizer(str(model_dir))


@pytest.fixture(scope="module")
def chats(family_root) -> Path:
    """12 single-turn chats, every third with a system message (Gemma folds it into the user turn)."""
    rows = []
    for i in range(12):
        messages = [{"role": "user", "content": f"What is {i} plus {i}?"},
                    {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."}]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": "Answer with the sum."})
        rows.append({"messages": messages})
    return write_jsonl(family_root / "chats.jsonl", rows)


def _train(model_dir: Path, data: Path, out: Path, *overrides: str) -> Path:
    args = ["train", "-o", str(out), "--quiet"]
    for item in (f"model={model_dir}", f"data.train={data}", "data.max_length=128", "train.batch_size=4",
                 "train.warmup=0.0", "train.log_every=1", *overrides):
        args += ["--set", item]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def lora_run(model_dir, chats, family_root) -> Path:
    return _train(model_dir, chats, family_root / "lora", "method.name=lora", "method.targets=all-linear",
                  "method.r=8", "method.alpha=16", "method.dropout=0.0", f"train.max_steps={LORA_STEPS}",
                  f"train.lr={LORA_LR}")


@pytest.fixture(scope="module")
def full_run(model_dir, chats, family_root) -> Path:
    return _train(model_dir, chats, family_root / "full", "method.name=full", f"train.max_steps={FULL_STEPS}",
                  f"train.lr={FULL_LR}")


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def _probe(tokenizer) -> torch.Tensor:
    text = tokenizer.apply_chat_template([dict(m) for m in PROBE[:3]], tokenize=False)
    return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])  # (1, T)


@torch.no_grad()
def _logits(model_dir: Path, ids: torch.Tensor, adapter: Path | None = None) -> torch.Tensor:
    """Plain transformers (and peft), none of whetstone's loading."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval()(ids).logits.float()  # (1, T, V)


def _export(run: Path, fmt: str, out: Path, capsys, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["export", str(run), "--format", fmt, "-o", str(out), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------------------
# 1. LoRA on all-linear


def test_lora_adapts_every_linear_layer_of_the_family_and_no_head(family, tokenizer, lora_run):
    config = json.loads((lora_run / "adapter" / "adapter_config.json").read_text())
    weights = load_file(str(lora_run / "adapter" / "adapter_model.safetensors"))
    adapted = {name.split(".lora_")[0].removeprefix("base_model.model.") for name in weights}
    blocks = {"qkv_proj": "self_attn", "q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
              "o_proj": "self_attn", "gate_up_proj": "mlp", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}
    assert adapted == {f"model.layers.{i}.{blocks[leaf]}.{leaf}" for i in range(2) for leaf in family.linear}
    assert set(config["target_modules"]) == adapted  # peft writes all-linear out as module names
    assert not any("lm_head" in name or "embed" in name for name in weights)
    assert {w.shape[0] for n, w in weights.items() if "lora_A" in n} == {8}  # method.r

    losses = _losses(lora_run)
    assert len(losses) == LORA_STEPS and all(math.isfinite(x) for x in losses)
    # A random init predicts nearly uniformly over the whole vocabulary, added tokens included.
    assert abs(losses[0] - math.log(len(tokenizer))) < 0.5
    summary = json.loads((lora_run / "summary.json").read_text())
    assert math.isfinite(summary["train_loss"]) and summary["trainable_params"] < summary["total_params"] / 10


# ---------------------------------------------------------------------------
# 2. Full fine-tuning


def test_full_finetune_moves_every_block_weight_by_adam_sized_steps(family, model_dir, full_run):
    losses = _losses(full_run)
    assert len(losses) == FULL_STEPS and all(math.isfinite(x) for x in losses)
    before = load_file(str(model_dir / "model.safetensors"))
    after = load_file(str(full_run / "model" / "model.safetensors"))
    assert before.keys() == after.keys()
    for name in before:
        if ".layers." in name and name.endswith("proj.weight"):
            change = float((after[name] - before[name]).abs().max())
            # Adam moves an element by at most lr a step (|m / sqrt(v)| <= 1 with no weight decay), and its first
            # step moves every element with a gradient by lr.
            assert 0.5 * FULL_LR < change <= FULL_STEPS * FULL_LR * 1.01, name


# ---------------------------------------------------------------------------
# 3. Generation stops at the family's end-of-turn token


def _scripted(model, script: list[int]):
    """`model` with its head forced to emit script[k] at generation step k (then the last entry forever).

    A forward hook adds a large bias to the chosen id's logit; the first call is the prompt's prefill.
    """
    head = model.get_output_embeddings()
    calls = [0]

    def force(_module, _inputs, logits):  # logits (B, T, V)
        token = script[min(calls[0], len(script) - 1)]
        calls[0] += 1
        logits = logits.clone()
        logits[..., token] += 1e4
        return logits

    head.register_forward_hook(force)
    return model


def test_generate_stops_at_the_end_of_turn_token_and_drops_it(family, tokenizer, lora_run, monkeypatch, capsys):
    import whetstone.models.inference as inference
    from whetstone.data.render import end_of_turn_ids

    end = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    assert end in end_of_turn_ids(tokenizer)
    word, after = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("Yes", " never"))
    script = [word, word, word, end, after]  # if generation ran past the end of turn, " never" would follow
    load = inference.load_for_inference

    def load_scripted(*args, **kwargs):
        model, tok = load(*args, **kwargs)
        return _scripted(model, script), tok

    monkeypatch.setattr(inference, "load_for_inference", load_scripted)
    capsys.readouterr()
    assert main(["generate", "--run", str(lora_run), "--max-new-tokens", "12", "What is 2 plus 2?"]) == 0
    assert capsys.readouterr().out == "YesYesYes\n"

    # The batched path the eval and serve commands use: rows of different lengths, each reports it ended.
    model, tok = load(run=str(lora_run))
    ended: list[bool] = []
    answers = inference.generate_answers(_scripted(model, script), tok,
                                         [[{"role": "user", "content": "Hi?"}],
                                          [{"role": "user", "content": "What is twelve plus thirty, in digits?"}]],
                                         max_new_tokens=12, ended=ended)
    assert answers == ["YesYesYes", "YesYesYes"] and ended == [True, True]


def test_generate_without_an_end_of_turn_reports_it_was_cut(tokenizer, lora_run):
    import whetstone.models.inference as inference

    model, tok = inference.load_for_inference(run=str(lora_run))
    word = tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    ended: list[bool] = []
    (answer,) = inference.generate_answers(_scripted(model, [word]), tok, [[{"role": "user", "content": "Hi?"}]],
                                           max_new_tokens=5, ended=ended)
    assert answer == "Yes" * 5 and ended == [False]


# ---------------------------------------------------------------------------
# 4. Export


def test_export_merged_equals_base_plus_adapter_and_stops_on_end_of_turn(family, model_dir, tokenizer, lora_run,
                                                                          family_root, capsys):
    out = family_root / "merged"
    result = _export(lora_run, "merged", out, capsys)
    assert result["logit_delta"] <= result["tolerance"] and result["top1_agreement"] == 1.0

    ids = _probe(tokenizer)
    base = _logits(model_dir, ids)
    tuned = _logits(model_dir, ids, lora_run / "adapter")
    merged = _logits(out, ids)
    torch.testing.assert_close(merged, tuned, atol=MERGE_TOLERANCE, rtol=0)
    assert float((tuned - base).abs().max()) > 100 * MERGE_TOLERANCE  # the adapter moved the logits

    eos = tokenizer.eos_token_id
    end = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    stops = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
    if end != eos:
        assert isinstance(stops, list) and {end, eos} <= set(stops)
    else:
        assert (stops if isinstance(stops, list) else [stops]) == [eos]
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == eos


def test_export_peft_loads_on_the_base_as_the_run_adapter(family, model_dir, tokenizer, lora_run, family_root,
                                                          capsys):
    out = family_root / "peft"
    result = _export(lora_run, "peft", out, capsys)
    assert result["logit_delta"] == 0.0  # the same fp32 adapter on the same base
    config = json.loads((out / "adapter_config.json").read_text())
    assert {name.rsplit(".", 1)[-1] for name in config["target_modules"]} == set(family.linear)
    assert config["base_model_name_or_path"] == str(model_dir.resolve())
    ids = _probe(tokenizer)
    torch.testing.assert_close(_logits(model_dir, ids, out), _logits(model_dir, ids, lora_run / "adapter"),
                               atol=0, rtol=0)
    end = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    if end != tokenizer.eos_token_id:  # the base's generation_config does not stop there: the export says so
        assert any(family.end_of_turn in note for note in result["notes"])


def test_export_gguf_round_trips_or_names_the_unsupported_architecture(family, tokenizer, lora_run, family_root,
                                                                       capsys):
    from whetstone.export import export_run
    from whetstone.export.gguf import read_gguf_metadata

    out = family_root / "model.gguf"
    if not family.gguf:
        architecture = json.loads((lora_run.parent / "base" / "config.json").read_text())["architectures"][0]
        with pytest.raises(WhetstoneError, match=rf"is a {architecture};.*convert_hf_to_gguf\.py"):
            export_run(lora_run, "gguf", out, "f32")
        assert not out.exists()
        return
    result = _export(lora_run, "gguf", out, capsys, "--dtype", "f32")
    # Read back through transformers' GGUF loader by the exporter itself: logits and tokenizer consistency.
    assert result["logit_delta"] <= result["tolerance"] < 1e-4 and result["top1_agreement"] == 1.0
    assert any(check.startswith("tokens:") for check in result["checks"])
    meta = read_gguf_metadata(out)
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert meta["tokenizer.ggml.tokens"] == len(tokenizer)


def test_gguf_refuses_a_sliding_window_it_cannot_write():
    from whetstone.export.gguf import check_architecture

    mistral_v01 = {"architectures": ["MistralForCausalLM"], "sliding_window": 4096, "max_position_embeddings": 32768}
    with pytest.raises(WhetstoneError, match="MistralForCausalLM attends within a sliding window of 4096 tokens"):
        check_architecture(mistral_v01)
    check_architecture({**mistral_v01, "sliding_window": None})


def test_gguf_stops_on_an_end_of_turn_that_is_not_eos():
    """Llama 3 base: EOS <|end_of_text|>, turns end in <|eot_id|>; llama.cpp needs the second as its EOT id."""
    from whetstone.export.gguf import gguf_stop_ids

    tokenizer = family_tokenizer(FAMILIES["llama"])
    tokenizer.eos_token = "<|end_of_text|>"
    assert gguf_stop_ids(tokenizer) == tokenizer.convert_tokens_to_ids(["<|end_of_text|>", "<|eot_id|>"])
