"""DeepSpeed's JSON is filled from the train section, and a missing package fails before any work.

These need no deepspeed package; the engine itself is tested in test_distributed_deepspeed.py.
"""

import importlib.util
import json
from pathlib import Path

import pytest
from tiny_runs import tiny_config

from whetstone.config import TrainConfig, load_config
from whetstone.errors import WhetstoneError
from whetstone.train import distributed
from whetstone.train.deepspeed import engine_config, read_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["ds_zero2.json", "ds_zero3.json"])
def test_shipped_json_gets_our_batch_clipping_and_precision(name):
    ds = read_config(ROOT / "configs" / name)
    cfg = TrainConfig(batch_size=4, grad_accum=3, max_grad_norm=0.5, precision="bf16")
    out = engine_config(ds, cfg, micro_batch=4, world_size=2)
    assert out["train_micro_batch_size_per_gpu"] == 4
    assert out["gradient_accumulation_steps"] == 3
    assert out["train_batch_size"] == 4 * 3 * 2
    assert out["gradient_clipping"] == 0.5
    assert out["bf16"] == {"enabled": True}
    assert out["zero_optimization"]["stage"] == int(name[7])
    assert ds["train_batch_size"] == "auto"  # the user's dict is left alone


def test_matching_explicit_values_pass_and_clipping_off_is_zero():
    ds = {"train_micro_batch_size_per_gpu": 8, "train_batch_size": 16, "zero_optimization": {"stage": 2}}
    out = engine_config(ds, TrainConfig(max_grad_norm=None), micro_batch=8, world_size=2)
    assert (out["train_batch_size"], out["gradient_accumulation_steps"], out["gradient_clipping"]) == (16, 1, 0.0)
    assert out["bf16"] == {"enabled": False}


def test_conflicting_values_are_one_error_naming_each():
    ds = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 4, "gradient_clipping": 1.0,
          "optimizer": {"type": "AdamW"}, "fp16": {"enabled": True}, "bf16": {"enabled": True}}
    with pytest.raises(WhetstoneError) as info:
        engine_config(ds, TrainConfig(batch_size=8, grad_accum=1, max_grad_norm=1.0, precision="fp32"), micro_batch=8,
                      world_size=2)
    message = str(info.value)
    assert "train_micro_batch_size_per_gpu is 2 but train.batch_size (per process) gives 8" in message
    assert "gradient_accumulation_steps is 4 but train.grad_accum gives 1" in message
    assert "gradient_clipping" not in message  # 1.0 agrees
    assert "remove the 'optimizer' section" in message and "fp16 is enabled" in message
    assert "bf16.enabled is True but train.precision is fp32" in message


def test_bad_json_names_the_line(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{\n  "zero_optimization": {"stage": 2,}\n}\n')
    with pytest.raises(WhetstoneError, match=r"ds.json line 2: not valid JSON"):
        read_config(path)


def test_missing_deepspeed_fails_before_any_work(monkeypatch, tiny_model_dir, qa_file, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "deepspeed" else real_find_spec(name, *a))
    config = tiny_config(tiny_model_dir, qa_file, f"train.deepspeed={ROOT / 'configs' / 'ds_zero2.json'}")
    # One process runs without the engine (and without the package): how a DeepSpeed run resumes on one.
    assert distributed.resolve_strategy(config) == "single"
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(WhetstoneError) as info:
        distributed.resolve_strategy(config)  # the loop's first call after reading the config
    assert "pip install deepspeed" in str(info.value) and "train.strategy: fsdp" in str(info.value)

    from whetstone.train.dispatch import train

    with pytest.raises(WhetstoneError, match="pip install deepspeed"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run" / "metrics.jsonl").read_text()


def test_deepspeed_config_keys_are_checked(tiny_model_dir, qa_file, tmp_path):
    with pytest.raises(WhetstoneError) as info:
        load_config(None, [f"model={tiny_model_dir}", f"data.train={qa_file}", "train.strategy=deepspeed",
                           "method.name=qlora"])
    assert "train.deepspeed is not set" in str(info.value) and "qlora with train.strategy deepspeed" in str(info.value)
    with pytest.raises(WhetstoneError, match="does not exist"):
        load_config(None, [f"model={tiny_model_dir}", f"data.train={qa_file}", f"train.deepspeed={tmp_path}/no.json"])
    with pytest.raises(WhetstoneError, match="set train.strategy: deepspeed"):
        load_config(None, [f"model={tiny_model_dir}", f"data.train={qa_file}", "train.strategy=fsdp",
                           f"train.deepspeed={ROOT / 'configs' / 'ds_zero2.json'}"])
    assert json.loads((ROOT / "configs" / "ds_zero3.json").read_text())["zero_optimization"]["stage"] == 3


def test_sharded_runs_refuse_end_of_training_generation(tiny_model_dir, qa_file):
    """Rank 0 alone would generate while the others hold shards: every generating eval is refused up front."""
    for strategy in ("fsdp", "deepspeed"):
        with pytest.raises(WhetstoneError) as info:
            load_config(None, [f"model={tiny_model_dir}", f"data.train={qa_file}", f"train.strategy={strategy}",
                               f"train.deepspeed={ROOT / 'configs' / 'ds_zero2.json'}" if strategy == "deepspeed"
                               else "train.seed=0", "eval.metrics=[loss,rouge]", "eval.forgetting=true",
                               f"eval.knowledge={ROOT / 'examples' / 'knowledge_base'}"])
        assert f"eval: rouge, forgetting, knowledge generate text at the end of training, which is not wired for " \
               f"train.strategy {strategy}" in str(info.value)


def test_installed_deepspeed_checks_the_json_then_selects_the_engine(monkeypatch, tiny_model_dir, qa_file, tmp_path):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "deepspeed" else real_find_spec(name, *a))
    monkeypatch.setenv("WORLD_SIZE", "2")
    bad = tmp_path / "ds.json"
    bad.write_text(json.dumps({"train_batch_size": 64, "zero_optimization": {"stage": 2}}))
    with pytest.raises(WhetstoneError, match="train_batch_size is 64 but train.batch_size x train.grad_accum x 2"):
        distributed.resolve_strategy(tiny_config(tiny_model_dir, qa_file, f"train.deepspeed={bad}"))
    good = tiny_config(tiny_model_dir, qa_file, f"train.deepspeed={ROOT / 'configs' / 'ds_zero2.json'}")
    assert distributed.resolve_strategy(good) == "deepspeed"
    # accelerate's flag without train.deepspeed: say what is missing
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(WhetstoneError, match="train.deepspeed is not set"):
        distributed.resolve_strategy(tiny_config(tiny_model_dir, qa_file))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "ds.json")  # accelerate launch --deepspeed_config_file
    with pytest.raises(WhetstoneError, match=r"set it \(--set train.deepspeed=ds.json\)"):
        distributed.resolve_strategy(tiny_config(tiny_model_dir, qa_file))


def test_stage_zero_is_refused():
    with pytest.raises(WhetstoneError, match="stage is 0 .* plain data parallelism"):
        engine_config({"zero_optimization": {"stage": 0}}, TrainConfig(), micro_batch=8, world_size=2)
    with pytest.raises(WhetstoneError, match="stage is 4; DeepSpeed ZeRO has stages 1 to 3"):
        engine_config({"zero_optimization": {"stage": 4}}, TrainConfig(), micro_batch=8, world_size=2)
