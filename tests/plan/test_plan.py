"""whetstone plan: exact parameter counts, the memory arithmetic, the probe's fit, the budget advice, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from whetstone.cli import main
from whetstone.config import MethodConfig, ModelConfig
from whetstone.errors import WhetstoneError
from whetstone.methods import apply_method, count_parameters
from whetstone.models import load_model
from whetstone.plan import estimate
from whetstone.plan.estimate import ActivationFit, MemoryEstimate, MethodPlan, MicroBatchShape, ParameterCount
from whetstone.plan.probe import RunShape, TimeFit, measure_activations, saved_bytes

METHODS = {
    "full": MethodConfig(name="full"),
    "freeze": MethodConfig(name="freeze", top_blocks=1),
    "freeze_head": MethodConfig(name="freeze", train_modules=["model.norm.weight"], train_head=True),
    "lora": MethodConfig(name="lora", r=4, alpha=8),
    "lora_qv": MethodConfig(name="lora", r=3, alpha=6, targets=["q_proj", "v_proj"]),
    "dora": MethodConfig(name="dora", r=4, alpha=8),
}


@pytest.mark.parametrize("key", sorted(METHODS))
def test_meta_counts_equal_real_parameters_after_the_method(tiny_model_dir, key):
    method = METHODS[key]
    counted = estimate.count_method_parameters(ModelConfig(name=str(tiny_model_dir)), method)
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    trainable, total = count_parameters(apply_method(model, method))
    assert (counted.trainable, counted.total) == (trainable, total)


def test_lora_shapes_fallback_matches_peft(tiny_model_dir):
    # r * (in + out) per targeted Linear, DoRA + out: the count used where peft cannot wrap a meta model.
    for method in (METHODS["lora"], METHODS["lora_qv"], METHODS["dora"]):
        meta = estimate.build_meta_model(ModelConfig(name=str(tiny_model_dir)))
        by_shapes = estimate.lora_parameters_from_shapes(meta, method)
        model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
        assert by_shapes == count_parameters(apply_method(model, method))[0]


def test_tiny_lora_count_by_hand(tiny_model_dir):
    # Tiny Llama: hidden 64, intermediate 128, 4 heads, 2 kv heads (head dim 16): q,o 64x64; k,v 64->32;
    # gate,up 64->128; down 128->64. LoRA r=4 on all seven per layer, two layers.
    per_layer = 4 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 2 + (128 + 64))
    counted = estimate.count_method_parameters(ModelConfig(name=str(tiny_model_dir)), METHODS["lora"])
    assert counted.trainable == 2 * per_layer
    assert counted.total == counted.base_total + 2 * per_layer


def _params(**kw) -> ParameterCount:
    base = {"total": 1000, "trainable": 100, "base_total": 1000, "matmul": 800, "backward_through": 800,
            "quantizable": 600, "layers": 2, "hidden": 4}
    return ParameterCount(**(base | kw))


def test_memory_arithmetic_by_hand():
    params = _params()
    fit = ActivationFit(per_token=10.0, per_batch_len2=0.5, per_supervised=3.0)
    shape = MicroBatchShape(batch=2, length=8, supervised=10)
    m = estimate.estimate_memory(params, "full", fit, shape, baseline=1000.0, gradient_checkpointing=False)
    assert (m.weights, m.gradients, m.optimizer) == (4000, 400, 800)  # fp32 weights and grads, AdamW 2 x fp32
    assert m.activations == 10 * 2 * 8 + 0.5 * 2 * 8**2 == 224
    assert m.logits == 2 * 3.0 * 10  # saved logits + their gradient
    assert m.activations_checkpointed == 2 * 2 * 8 * 4 * 4 + 224 / 2  # block inputs + one block recomputed
    assert m.peak == 1000 + 4000 + 400 + 800 + 224 + 60
    assert m.peak_with(True) == 1000 + 4000 + 400 + 800 + 624 + 60
    checkpointed = estimate.estimate_memory(params, "full", fit, shape, 1000.0, gradient_checkpointing=True)
    assert checkpointed.peak == m.peak_with(True)
    m.allocator = 50.0  # what the probe's fresh process held beyond the model: part of the peak
    assert m.peak == 1000 + 4000 + 400 + 800 + 224 + 60 + 50
    q = estimate.estimate_memory(params, "qlora", fit, shape, 0.0, False)
    assert q.weights == pytest.approx(600 * 4.127 / 8 + 400 * 4)


def test_flops_storage_and_variants_by_hand():
    full = _params(trainable=1000)
    assert estimate.flops_per_token(full, "full") == 6 * 800
    lora = _params(total=1050, trainable=50)  # 50 adapter weights on a frozen 1000
    assert estimate.flops_per_token(lora, "lora") == 2 * 850 + 2 * 850 + 2 * 50
    frozen = _params(trainable=200, backward_through=300)
    assert estimate.flops_per_token(frozen, "freeze") == 2 * 800 + 2 * 300 + 2 * 200
    # A reference model's forward (DPO) adds the base's 2N, whatever trains.
    assert estimate.flops_per_token(lora, "lora", reference=True) == 2 * 850 + 2 * 850 + 2 * 50 + 2 * 800
    assert estimate.flops_per_token(full, "full", reference=True) == 6 * 800 + 2 * 800
    assert estimate.output_bytes(lora, "lora") == 200 and estimate.output_bytes(frozen, "freeze") == 4000
    assert estimate.variants_bytes(lora, "lora", 10) == 10 * 200 + 4000  # ten adapters + the shared base
    assert estimate.variants_bytes(full, "full", 10) == 10 * 4000


def test_freeze_backward_flows_only_through_the_top_blocks(tiny_model_dir):
    cfg = ModelConfig(name=str(tiny_model_dir))
    top = estimate.count_method_parameters(cfg, METHODS["freeze"])
    full = estimate.count_method_parameters(cfg, METHODS["full"])
    # Tied head (384 x 64) + the top block; the input embedding is a lookup, not a matmul.
    assert full.matmul == full.total and top.backward_through == top.trainable + 384 * 64
    assert estimate.flops_per_token(top, "freeze") < estimate.flops_per_token(full, "full")


def test_saved_bytes_counts_activations_once_and_no_parameters():
    layer = torch.nn.Linear(4, 3)

    def loss(model, batch, context):  # Linear saves its input (5 x 4); relu saves its output (5 x 3)
        return type("Out", (), {"loss_sum": torch.relu(model(batch["x"])).sum()})()

    objective = type("Objective", (), {"loss": staticmethod(loss)})()
    assert saved_bytes(layer, objective, {"x": torch.randn(5, 4)}, None) == (5 * 4 + 5 * 3) * 4


def test_activation_fit_predicts_an_unseen_batch(tiny_model_dir):
    from whetstone.objectives import OBJECTIVES
    from whetstone.plan.probe import _synthetic_batch

    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    model = apply_method(model, METHODS["lora"]).train()
    sft = OBJECTIVES["sft"]
    fit = measure_activations(model, sft, None, 384, 64, "cpu")
    batch = _synthetic_batch(3, 40, 25, 384, torch.Generator().manual_seed(1))
    supervised = 3 * (40 - 25)
    measured = saved_bytes(model, sft, batch, None)
    predicted = fit.body(3, 40) + fit.per_supervised * supervised
    assert predicted == pytest.approx(measured, rel=0.01)


def test_a_probe_in_a_fresh_process_measures_what_one_in_this_process_does(tiny_model_dir, qa_file):
    from whetstone.config import load_config
    from whetstone.models import load_tokenizer
    from whetstone.plan.probe import prepare_run, probe_in_fresh_process, probe_method

    config = load_config(None, [f"model={tiny_model_dir}", f"data.train={qa_file}", "train.batch_size=4",
                                "data.max_length=64"])
    tokenizer = load_tokenizer(str(tiny_model_dir))
    objective, train_set, shape = prepare_run(config, tokenizer)
    here = probe_method(config, METHODS["lora"], objective, train_set, shape, tokenizer, torch.device("cpu"))
    fresh = probe_in_fresh_process(config, METHODS["lora"], "cpu")
    assert fresh.fit.per_token == pytest.approx(here.fit.per_token, rel=1e-6)  # the same model, the same bytes
    assert fresh.fit.per_supervised == pytest.approx(here.fit.per_supervised, rel=1e-6)
    assert fresh.time.probed_steps == here.time.probed_steps == 3
    assert fresh.time.per_token > 0 and fresh.time.first_step > 0
    # Its own process: the peak holds the weights, AdamW and the steps on top of what it held before loading.
    assert fresh.process_peak > fresh.rss_before_load > 0


def test_time_fit_arithmetic():
    shape = RunShape(plan=None, steps=[[MicroBatchShape(2, 10, 5)], [MicroBatchShape(2, 20, 5)],
                                       [MicroBatchShape(2, 30, 5), MicroBatchShape(1, 10, 2)]], indices=[])
    fit = TimeFit(first_step=3.0, per_token=0.01, per_step=0.5)
    assert fit.seconds(shape) == pytest.approx(3.0 + (0.5 + 0.01 * 40) + (0.5 + 0.01 * 70))
    assert shape.largest() == MicroBatchShape(2, 30, 5)


def _plan(name, peak, seconds, output) -> MethodPlan:
    memory = MemoryEstimate(baseline=peak, weights=0, gradients=0, optimizer=0, activations=0,
                            activations_checkpointed=0, logits=0, gradient_checkpointing=False)
    return MethodPlan(method=name, params=None, memory=memory, seconds=seconds, output_bytes=output)


def test_budget_recommends_the_cheapest_method_that_fits():
    gb = 2**30
    plans = [_plan("full", 9 * gb, 100, 500), _plan("freeze", 5 * gb, 40, 500), _plan("lora", 4 * gb, 90, 5)]
    advice = estimate.recommend(plans, 8 * gb)
    assert advice.startswith("recommended: freeze:") and "lora also fit" in advice
    assert estimate.recommend(plans, 4.5 * gb).startswith("recommended: lora:")
    nothing = estimate.recommend(plans, 2 * gb)
    assert nothing.startswith("nothing fits 2.0 GB: the smallest is lora at 4.00 GB")
    assert "gradient_checkpointing" in nothing and "batch_size" in nothing and "max_length" in nothing


@pytest.mark.parametrize("text,expected", [("8GB", 8 * 2**30), ("512MB", 512 * 2**20), ("16GiB", 16 * 2**30),
                                           ("1.5g", 1.5 * 2**30)])
def test_parse_size(text, expected):
    assert estimate.parse_size(text) == expected


def test_plan_json_on_the_tiny_model(tiny_model_dir, qa_file, capsys):
    rc = main(["plan", "--set", f"model={tiny_model_dir}", "--set", f"data.train={qa_file}", "--set",
               "train.batch_size=4", "--set", "data.max_length=64", "--methods", "full,freeze,lora,qlora",
               "--memory-budget", "64GB", "--json"])
    assert rc == 0
    plan = json.loads(capsys.readouterr().out)
    assert set(plan) == {"device", "steps", "padded_tokens", "largest_micro_batch", "time_source", "methods",
                         "recommendation", "notes"}
    assert plan["steps"] == 8  # 32 examples, batch 4, one epoch
    rows = {r["method"]: r for r in plan["methods"]}
    assert list(rows) == ["full", "freeze", "lora", "qlora"]
    for row in rows.values():
        assert set(row) >= {"total_params", "trainable_params", "trainable_pct", "memory_mb", "peak_mb",
                            "peak_without_checkpointing_mb", "peak_with_checkpointing_mb", "flops_per_token",
                            "seconds", "output_mb", "variants_mb"}
        assert set(row["memory_mb"]) == {"baseline", "weights", "gradients", "optimizer", "activations",
                                         "activations_checkpointed", "logits", "allocator"}
        parts = row["memory_mb"]
        total = sum(parts[k] for k in ("baseline", "weights", "gradients", "optimizer", "activations", "logits",
                                       "allocator"))
        assert row["peak_mb"] == pytest.approx(total, abs=0.5)
    assert rows["full"]["trainable_pct"] == 100.0
    assert rows["full"]["memory_mb"]["optimizer"] == pytest.approx(2 * rows["full"]["memory_mb"]["weights"], abs=0.2)
    assert rows["qlora"]["seconds"] is None and "needs a CUDA GPU" in rows["qlora"]["notes"][0]
    assert all(rows[m]["seconds"] > 0 for m in ("full", "freeze", "lora"))
    for m in ("full", "freeze", "lora"):  # the timed steps the time was made from: the first, then 2 steady ones
        timed = rows[m]["measured"]
        assert timed["steps"] == 3 and timed["first_step_s"] > 0 and timed["per_token_s"] > 0
        assert rows[m]["seconds"] > timed["first_step_s"]  # 7 more steps follow the first
    assert "measured" not in rows["qlora"]
    assert plan["recommendation"].startswith("recommended: ")


def test_plan_table_and_flops_time_for_a_stated_gpu(tiny_model_dir, qa_file, capsys):
    if torch.cuda.is_available():
        pytest.skip("with a GPU here the time is measured, not derived from --peak-tflops")
    args = ["plan", "--set", f"model={tiny_model_dir}", "--set", f"data.train={qa_file}", "--methods", "full",
            "--device", "cuda", "--peak-tflops", "100", "--utilisation", "0.5"]
    assert main(args + ["--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    row = plan["methods"][0]
    assert row["seconds"] == pytest.approx(plan["padded_tokens"] * row["flops_per_token"] / (100e12 * 0.5), abs=0.01)
    assert main(args) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["method", "total", "trainable"] and "FLOPs at 100.0 TFLOP/s" in table


@pytest.mark.parametrize("extra,message", [
    (["--methods", "full,lorax"], "--methods: got 'full,lorax'"),
    (["--memory-budget", "lots"], "--memory-budget: got 'lots'"),
    (["--variants", "0"], "--variants: got 0"),
    (["--set", "train.batch_size=0"], "train.batch_size: got 0"),
])
def test_cli_errors_are_sentences(tiny_model_dir, qa_file, capsys, extra, message):
    rc = main(["plan", "--set", f"model={tiny_model_dir}", "--set", f"data.train={qa_file}", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err


def test_cuda_without_gpu_asks_for_a_stated_peak(tiny_model_dir, qa_file, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    rc = main(["plan", "--set", f"model={tiny_model_dir}", "--set", f"data.train={qa_file}", "--device", "cuda"])
    assert rc == 2 and "--peak-tflops" in capsys.readouterr().err


def test_method_config_keeps_the_options_and_gives_freeze_blocks():
    base = MethodConfig(name="lora", r=8, alpha=16, targets=["q_proj"])
    assert estimate.method_config(base, "dora").r == 8
    assert estimate.method_config(base, "freeze").top_blocks == estimate.DEFAULT_FREEZE_BLOCKS
    assert estimate.method_config(MethodConfig(name="freeze", top_blocks=1), "freeze").top_blocks == 1
    assert estimate.method_config(base, "freeze", layers=2).top_blocks == 2  # never more blocks than the model has
    with pytest.raises(WhetstoneError):
        estimate.parse_size("-1GB")


def _pairs_file(path, n: int = 12):
    rows = [{"prompt": "word " * (1 + i % 5) + "?", "chosen": "yes " * (1 + i % 3) + "good",
             "rejected": "no " * (1 + 2 * (i % 4)) + "bad"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("objective,packing", [("sft", True), ("dpo", False), ("dpo", True), ("dpo", "shared")])
def test_the_planned_steps_are_the_rows_the_loop_collates(tiny_model_dir, qa_file, tmp_path, objective, packing):
    """Packed rows, shared prompts and DPO's chosen + rejected sequences: the plan's shapes are the collated
    batches' shapes."""
    from whetstone.config import load_config
    from whetstone.data.render import IGNORE
    from whetstone.models import load_tokenizer
    from whetstone.plan.probe import prepare_run

    data = qa_file if objective == "sft" else _pairs_file(tmp_path / "pairs.jsonl")
    config = load_config(None, [f"objective={objective}", f"model={tiny_model_dir}", f"data.train={data}",
                                "train.batch_size=4", "data.max_length=160", f"data.packing={str(bool(packing)).lower()}",
                                f"objective.share_prompt={str(packing == 'shared').lower()}"])
    tokenizer = load_tokenizer(str(tiny_model_dir))
    objective_used, train_set, shape = prepare_run(config, tokenizer)
    assert len(shape.steps) == shape.plan.total_steps > 0
    for step, micro in enumerate(shape.steps[: len(shape.indices)]):
        for idx, planned in zip(shape.indices[step], micro):
            examples = [train_set.examples[i] for i in idx]
            batch = objective_used.collate(examples, tokenizer.pad_token_id)
            assert (planned.batch, planned.length) == tuple(batch["input_ids"].shape)
            assert planned.supervised == int((batch["labels"][:, 1:] != IGNORE).sum())
            if objective == "dpo" and not packing:
                assert planned.batch == 2 * len(examples)
            if packing:
                assert planned.batch < (2 if objective == "dpo" else 1) * len(examples)


def test_plan_runs_for_dpo_and_names_what_it_cannot_plan(tiny_model_dir, tmp_path, capsys):
    pairs = _pairs_file(tmp_path / "pairs.jsonl")
    common = ["--set", f"model={tiny_model_dir}", "--set", f"data.train={pairs}", "--set", "train.batch_size=4",
              "--set", "data.max_length=64"]
    assert main(["plan", "--set", "objective=dpo", *common, "--set", "data.packing=true", "--methods", "lora",
                 "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["steps"] == 3 and plan["methods"][0]["seconds"] > 0
    assert any("chosen and rejected" in note and "include the reference model's forward" in note
               for note in plan["notes"])
    assert main(["plan", "--set", "objective=dpo", "--set", "objective.loss=simpo", *common, "--methods", "lora",
                 "--json"]) == 0
    simpo = json.loads(capsys.readouterr().out)
    assert any("uses no reference model" in note for note in simpo["notes"])
    # The reference's forward is the base model's 2N per token; SimPO has none.
    base = estimate.count_method_parameters(ModelConfig(name=str(tiny_model_dir)), METHODS["full"])
    assert plan["methods"][0]["flops_per_token"] - simpo["methods"][0]["flops_per_token"] == 2 * base.matmul
    assert main(["plan", "--set", "objective=reward", *common, "--methods", "lora"]) == 2
    err = capsys.readouterr().err
    assert "objective reward is not planned yet" in err and "Traceback" not in err
