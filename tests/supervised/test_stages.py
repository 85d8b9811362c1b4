"""Sequential pipelines on a tiny model: hand-over by hash, the per-stage table, lineage, resume."""

import hashlib
import json

import pytest
import torch
import yaml
from mixkit import arithmetic_file, echo_file
from tiny_runs import latest_trainable

from whetstone.cli import main
from whetstone.config import ConfigError, load_config
from whetstone.train import dispatch, loop
from whetstone.train.stages import files_sha256, tensors_sha256


def _write_pipeline(tmp_path, tiny_model_dir, stages_adapters="merge"):
    arith, echo = arithmetic_file(tmp_path / "arith.jsonl"), echo_file(tmp_path / "echo.jsonl")
    raw = {
        "model": str(tiny_model_dir),
        "method": {"name": "lora", "dropout": 0.1},
        "data": {"eval_fraction": 0.25},
        "train": {"lr": 1e-3, "warmup": 0.0, "log_every": 1, "batch_size": 4, "max_steps": 4},
        "stages_adapters": stages_adapters,
        "stages": [{"name": "arith", "data": {"train": str(arith)}},
                   {"name": "echo", "data": {"train": str(echo)}, "train": {"max_steps": 5}}],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run_spied(config_path, run, **train_kwargs):
    """Run the pipeline, hashing the model each stage's loop loaded (before its method) and its adapter after."""
    from peft import get_peft_model_state_dict

    loaded, adapters = [], []
    real = loop.apply_method

    def spy(model, cfg, **kwargs):
        loaded.append(tensors_sha256(dict(model.named_parameters())))
        out = real(model, cfg, **kwargs)
        adapters.append(tensors_sha256(get_peft_model_state_dict(out)))
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "apply_method", spy)
        summary = dispatch.train(load_config(config_path), run, progress=False, **train_kwargs)
    return summary, loaded, adapters


def _stage(run, index):
    return run / "stages" / ["0-arith", "1-echo"][index]


@pytest.fixture(scope="module")
def merged(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("merged")
    config_path = _write_pipeline(tmp, tiny_model_dir)
    summary, loaded, _ = _run_spied(config_path, tmp / "run")
    return {"tmp": tmp, "config": config_path, "run": tmp / "run", "summary": summary, "loaded": loaded}


def test_second_stage_starts_from_exactly_the_weights_the_first_produced(merged, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, loaded = merged["run"], merged["loaded"]
    lineage = [json.loads((_stage(run, i) / "lineage.json").read_text()) for i in (0, 1)]
    # Reference: stage 1's adapter folded into the base by hand, W + (alpha / r) B A in float64, rounded once.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert loaded[0] == tensors_sha256(dict(base.named_parameters()))  # stage 1 starts from the base
    reference = PeftModel.from_pretrained(base, str(_stage(run, 0) / "adapter"))
    with torch.no_grad():
        for module in reference.modules():
            if hasattr(module, "lora_A") and "default" in module.lora_A:
                a, b = module.lora_A["default"].weight.double(), module.lora_B["default"].weight.double()
                weight = module.base_layer.weight
                weight.copy_((weight.double() + module.scaling["default"] * (b @ a)).float())
    reference = reference.unload()
    expected = tensors_sha256(dict(reference.named_parameters()))
    assert loaded[1] == expected == lineage[0]["output_weights_sha256"] == lineage[1]["start_weights_sha256"]
    assert loaded[1] != loaded[0]  # stage 1 did change the weights
    stage2 = yaml.safe_load((_stage(run, 1) / "config.yaml").read_text())
    assert stage2["model"]["name"] == str((_stage(run, 0) / "merged").resolve())
    assert stage2["method"]["init_adapter"] is None  # merge: a fresh adapter on the merged model


def test_stages_table_and_lineage_are_written(merged, tiny_model_dir):
    run = merged["run"]
    table = json.loads((run / "stages.json").read_text())
    assert table["stages"] == ["arith", "echo"] and [r["after"] for r in table["rows"]] == [0, 1]
    assert list(table["rows"][0]["on"]) == ["arith"] and list(table["rows"][1]["on"]) == ["arith", "echo"]
    # The table's diagonal is each stage's own eval loss at its end, which the loop measured its own way.
    for index, name in enumerate(["arith", "echo"]):
        own = json.loads((_stage(run, index) / "summary.json").read_text())["eval_loss"]
        assert table["rows"][index]["on"][name]["loss"] == pytest.approx(own, abs=1e-4)
    markdown = (run / "stages.md").read_text()
    after, on_arith = table["rows"][1]["on"]["arith"]["loss"], table["rows"][0]["on"]["arith"]["loss"]
    assert f"| 1-echo | {after:.4f} ({after - on_arith:+.4f}) |" in markdown
    lineage = json.loads((_stage(run, 1) / "lineage.json").read_text())
    echo = merged["tmp"] / "echo.jsonl"
    assert lineage["data"] == [{"role": "train", "path": str(echo), "task": None, "weight": 1.0,
                                "sha256": hashlib.sha256(echo.read_bytes()).hexdigest()}]
    assert (lineage["stage"], lineage["name"], lineage["parent"], lineage["base_model"]) == (
        1, "echo", "0-arith", str(tiny_model_dir))
    summary = json.loads((run / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["arith", "echo"] and not summary["stopped_early"]


def test_pipeline_killed_in_stage_two_resumes_there_and_ends_bitwise_equal(merged, tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    calls = []
    summary, _, _ = _run_spied(merged["config"], run, on_step=lambda step, row: calls.append(step) or len(calls) == 6)
    assert summary["stopped_early"] and summary["stopped_stage"] == 1  # stage 1's 4 steps, then 2 of stage 2
    first_stage = (_stage(run, 0) / "summary.json").stat().st_mtime_ns
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert (_stage(run, 0) / "summary.json").stat().st_mtime_ns == first_stage  # finished stages are not rerun
    a, b = latest_trainable(_stage(merged["run"], 1)), latest_trainable(_stage(run, 1))
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert (json.loads((run / "stages.json").read_text())["rows"]
            == json.loads((merged["run"] / "stages.json").read_text())["rows"])


def test_continue_trains_the_same_adapter_on(tmp_path, tiny_model_dir):
    config_path = _write_pipeline(tmp_path, tiny_model_dir, stages_adapters="continue")
    assert main(["train", str(config_path), "-o", str(tmp_path / "cli-check"), "--quiet",
                 "--set", "stages_adapters=stak"]) == 2  # a typo is a config error, not a traceback
    _, loaded, adapters = _run_spied(config_path, tmp_path / "run")
    run = tmp_path / "run"
    assert loaded[0] == loaded[1]  # both stages load the same base, and stage 2 starts from stage 1's adapter
    assert adapters[1] == files_sha256(_stage(run, 0) / "adapter") != files_sha256(_stage(run, 1) / "adapter")
    stage2 = yaml.safe_load((_stage(run, 1) / "config.yaml").read_text())
    assert stage2["method"]["init_adapter"] == str((_stage(run, 0) / "adapter").resolve())
    assert stage2["method"]["base_adapters"] == []
    assert not (_stage(run, 0) / "merged").exists()
    lineage = json.loads((_stage(run, 1) / "lineage.json").read_text())
    assert lineage["start_weights_sha256"] == files_sha256(_stage(run, 0) / "adapter")


PROBE = torch.tensor([[5, 17, 3, 42, 8, 11, 29, 2]])  # (1, 8) token ids the tiny model knows


@pytest.fixture(scope="module")
def stacked(tmp_path_factory, tiny_model_dir):
    """A stack pipeline, with the logits of each stage's model as its training began."""
    from peft import get_peft_model_state_dict

    tmp = tmp_path_factory.mktemp("stacked")
    config_path = _write_pipeline(tmp, tiny_model_dir, stages_adapters="stack")
    loaded, adapters, start_logits = [], [], []
    real = loop.apply_method

    def spy(model, cfg, **kwargs):
        loaded.append(tensors_sha256(dict(model.named_parameters())))
        out = real(model, cfg, **kwargs)
        adapters.append(tensors_sha256(get_peft_model_state_dict(out)))
        was = out.training
        with torch.no_grad():
            start_logits.append(out.eval()(input_ids=PROBE).logits)
        out.train(was)
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "apply_method", spy)
        dispatch.train(load_config(config_path), tmp / "run", progress=False)
    return {"run": tmp / "run", "loaded": loaded, "adapters": adapters, "start_logits": start_logits}


def _stack_by_hand(tiny_model_dir, *adapters):
    """The base with each adapter applied in order by plain peft: W + s1 B1 A1 (+ s2 B2 A2 as a live adapter)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    for adapter in adapters[:-1]:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return PeftModel.from_pretrained(model, str(adapters[-1])).eval()


def test_stack_keeps_each_stage_adapter_frozen_under_a_new_one(stacked, tiny_model_dir):
    run, loaded, adapters = stacked["run"], stacked["loaded"], stacked["adapters"]
    first, second = _stage(run, 0) / "adapter", _stage(run, 1) / "adapter"
    assert loaded[0] == loaded[1]  # both stages load the plain base; the stack is applied by the method
    stage2 = yaml.safe_load((_stage(run, 1) / "config.yaml").read_text())
    assert stage2["method"]["base_adapters"] == [str(first.resolve())]
    assert stage2["method"]["init_adapter"] is None
    # Stage 2 starts from exactly the function stage 1 produced (its new adapter's B is zero) ...
    with torch.no_grad():
        stage1_output = _stack_by_hand(tiny_model_dir, first)(input_ids=PROBE).logits
    assert (stacked["start_logits"][1] - stage1_output).abs().max() < 1e-5
    # ... with a fresh adapter of its own, while stage 1's adapter is kept as it was, frozen.
    assert adapters[1] != files_sha256(first)
    lineage = [json.loads((_stage(run, i) / "lineage.json").read_text()) for i in (0, 1)]
    assert files_sha256(first) == lineage[0]["output_weights_sha256"] == lineage[1]["start_weights_sha256"]
    assert lineage[1]["frozen_adapters"] == [str(first.resolve())]
    assert lineage[1]["output_weights_sha256"] == files_sha256(second) != files_sha256(first)
    assert not (_stage(run, 0) / "merged").exists() and not (_stage(run, 1) / "model").exists()


def test_a_stacked_run_loads_with_its_whole_stack(stacked, tiny_model_dir):
    from whetstone.adapters import resolve_adapter
    from whetstone.errors import WhetstoneError
    from whetstone.models.inference import load_for_inference

    run = stacked["run"]
    first, second = _stage(run, 0) / "adapter", _stage(run, 1) / "adapter"
    with torch.no_grad():
        expected = _stack_by_hand(tiny_model_dir, first, second)(input_ids=PROBE).logits
        without_stack = _stack_by_hand(tiny_model_dir, second)(input_ids=PROBE).logits
        for where in (_stage(run, 1), run):  # a stage's directory, or the pipeline's (its last stage)
            model, _ = load_for_inference(run=str(where))
            assert (model(input_ids=PROBE).logits - expected).abs().max() < 1e-5
    assert (without_stack - expected).abs().max() > 1e-3  # the stack matters, so the check above can fail
    # The stage's adapter alone is not the model: every path that would load it bare says so.
    for spec in (str(_stage(run, 1)), str(second)):
        with pytest.raises(WhetstoneError, match="frozen adapter"):
            resolve_adapter(spec)


def test_an_unfinished_pipeline_names_its_stages_instead_of_loading(tmp_path, tiny_model_dir):
    from whetstone.errors import WhetstoneError
    from whetstone.models.inference import load_for_inference

    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "config.yaml").write_text(_write_pipeline(tmp_path, tiny_model_dir, "stack").read_text())
    with pytest.raises(WhetstoneError, match="has not finished its last stage"):
        load_for_inference(run=str(pipeline))


def test_a_stacked_run_exports_merged_with_its_stack_and_refuses_peft(stacked, tiny_model_dir, tmp_path):
    from whetstone.errors import WhetstoneError
    from whetstone.export.formats import export_run

    run = stacked["run"]
    stage = _stage(run, 1)
    with pytest.raises(WhetstoneError, match="--format merged or gguf"):
        export_run(stage, "peft", tmp_path / "peft")
    result = export_run(stage, "merged", tmp_path / "merged")
    assert result.logit_delta is not None and result.logit_delta <= result.tolerance  # against base + stack + adapter
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    with torch.no_grad():
        expected = _stack_by_hand(tiny_model_dir, _stage(run, 0) / "adapter", stage / "adapter")(input_ids=PROBE)
        assert (exported(input_ids=PROBE).logits - expected.logits).abs().max() < 1e-4


def test_stack_and_merge_refuse_qlora_and_base_adapters_need_an_adapter_method(tmp_path, tiny_model_dir):
    config_path = _write_pipeline(tmp_path, tiny_model_dir, stages_adapters="stack")
    with pytest.raises(ConfigError, match="stages_adapters: stack folds adapters into a 4-bit qlora base"):
        load_config(config_path, ["method.name=qlora"])
    single = tmp_path / "single.yaml"
    raw = {"model": str(tiny_model_dir), "method": {"name": "full", "base_adapters": [str(tmp_path)]},
           "data": {"train": "x.jsonl"}}
    single.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="method.base_adapters applies to lora and dora, not 'full'"):
        load_config(single)


def test_stage_config_errors_name_the_stage(tmp_path):
    raw = {"objective": "dpo", "stages": [{"name": "a b", "data": {"train": "x.jsonl"}}, {"name": "c", "trian": {}}]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "stages[0] (a b): name: got 'a b'" in text
    assert "stages[1] (c): trian: unknown key. Did you mean 'train'?" in text
    assert "stages[1] (c): data.train: missing" in text
    assert "stages: objective dpo cannot run as a pipeline yet" in text
