"""bench/gpu_check.sh on a machine without a GPU: it parses, skips cleanly, and its arithmetic and JSON are right."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402

from whetstone.config import load_config  # noqa: E402

# A real row of `whetstone plan configs/sft_lora.yaml --methods lora --device cuda --memory 81559MB
# --peak-tflops 989 --json` for the embedded model (sdpa, bf16, batch 8, max_length 256).
LORA_ROW = {"method": "lora", "total_params": 139399488, "trainable_params": 4884480, "peak_mb": 1870.1,
            "memory_mb": {"baseline": 1024.0, "weights": 284.5, "gradients": 18.6, "optimizer": 37.3,
                          "activations": 411.4, "activations_checkpointed": 30.4, "logits": 94.3, "allocator": 0.0},
            "flops_per_token": 567366912.0}
FULL_ROW = {**LORA_ROW, "method": "full", "peak_mb": 3995.8, "flops_per_token": 807090048.0}  # 6 x 134,515,008
# share_prompt read 51,200 of the examples' 61,440 tokens: 50,000 through the model per second, 60,000 counted.
SUMMARY = {"steps": 30, "tokens": 61440, "tokens_read": 51200, "train_s": 1.024, "tokens_per_s": 60000.0,
           "train_loss": 1.52, "peak_memory_mb": 1650.2}
LAYOUT = {"packing": True, "share_prompt": True}


def _script(*args, env=None):
    return subprocess.run([str(ROOT / "bench" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_help_parses():
    done = _script("--help")
    assert done.returncode == 0, done.stderr
    for flag in ("--steps", "--peak-tflops", "--set", "--budget-s", "output"):
        assert flag in done.stdout


def test_without_cuda_it_writes_the_skip_json_to_out_and_exits_0(tmp_path):
    done = _script(env={"OUT": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["skipped"] == "no CUDA GPU" and result["torch"] == torch.__version__


def test_output_path(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_check.default_output() == tmp_path / "gpu_check.json"
    assert gpu_check.parse_args([str(tmp_path / "x.json")]).output == tmp_path / "x.json"  # an argument wins
    monkeypatch.delenv("OUT")
    assert gpu_check.default_output() == ROOT / "runs" / "gpu_check.json"


def test_peak_tflops_lookup_by_nvidia_smi_name():
    names = {"NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H100 PCIe": 756.0, "NVIDIA H100 NVL": 835.0,
             "NVIDIA H200": 989.0, "NVIDIA H200 NVL": 835.0, "NVIDIA A100-SXM4-80GB": 312.0,
             "NVIDIA A100-PCIE-40GB": 312.0, "NVIDIA L4": 121.0, "NVIDIA GeForce RTX 4090": 165.2,
             "NVIDIA L40S": None, "Tesla T4": None}
    assert {name: gpu_check.peak_tflops_for(name) for name in names} == names


def test_the_run_list(tiny_model_dir):
    every = gpu_check.build_runs(30, flash=True, bnb=True, extra_sets=["train.batch_size=16"])
    assert [r.name for r in every] == [
        "smollm2-135m-instruct-lora-sdpa", "smollm2-135m-instruct-qlora-sdpa", "smollm2-135m-instruct-full-sdpa",
        "llama-1b-lora-sdpa", "smollm2-135m-instruct-lora-flash_attention_2",
        "smollm2-135m-instruct-qlora-flash_attention_2", "smollm2-135m-instruct-full-flash_attention_2",
        "llama-1b-lora-flash_attention_2"]
    assert not any(r.skipped for r in every)
    for run in every:  # every run's overrides are a valid config, resolved as the check means them
        config = load_config(str(gpu_check.CONFIG), [f"model.name={tiny_model_dir}", *run.sets])
        assert (config.method.name, config.model.attn_implementation) == (run.method, run.attn)
        assert (config.train.precision, config.model.dtype, config.train.max_steps) == ("bf16", "auto", 30)
        assert config.data.eval is None and config.train.batch_size == 16
    plain = gpu_check.build_runs(30, flash=False, bnb=False, extra_sets=[])
    assert [(r.method, r.attn, r.skipped) for r in plain] == [
        ("lora", "sdpa", None), ("qlora", "sdpa", "bitsandbytes is not importable"), ("full", "sdpa", None),
        ("lora", "sdpa", None)]


def test_mfu_and_one_runs_record():
    # 50,000 tokens/s through the model x 0.567 GFLOP/token = 28.37 TFLOP/s of an H100's 989: 2.87%.
    assert gpu_check.mfu(50000.0, 567366912.0, 989.0) == pytest.approx(0.0286838, rel=1e-5)
    run = gpu_check.Run("smollm2-135m-instruct", "lora", "sdpa")
    record = gpu_check.run_record(run, SUMMARY, LAYOUT, LORA_ROW, 989.0)
    assert record == {
        "name": "smollm2-135m-instruct-lora-sdpa", "model": "smollm2-135m-instruct", "method": "lora",
        "attn": "sdpa", "status": "ok", "packing": True, "share_prompt": True, "steps": 30, "tokens": 61440,
        "train_s": 1.024, "tokens_per_s": 60000.0, "tokens_read_per_s": 50000.0, "train_loss": 1.52,
        "measured_peak_mb": 1650.2, "flops_per_token": 567366912.0, "tflops": 28.37, "mfu": 0.0287,
        "predicted_peak_mb": 1870.1, "predicted_peak_less_overhead_mb": 846.1,
        "measured_over_predicted": 0.882,  # 1650.2 / 1870.1
        "measured_over_predicted_less_overhead": 1.95,  # 1650.2 / 846.1
    }
    # A summary without tokens_read (every token read once): the MFU follows tokens_per_s.
    unshared = {k: v for k, v in SUMMARY.items() if k != "tokens_read"}
    assert gpu_check.run_record(run, unshared, LAYOUT, LORA_ROW, 989.0)["mfu"] == 0.0344  # 60,000 x 0.567 / 989
    # Without a plan (its command failed) the record keeps what the run measured, and claims no MFU.
    assert "mfu" not in gpu_check.run_record(run, SUMMARY, LAYOUT, None, 989.0)


def test_llama_1b_has_tinyllamas_shape_with_the_embedded_vocabulary():
    from transformers import AutoModelForCausalLM

    from whetstone.models import load_tokenizer

    config = gpu_check.llama_1b_config(load_tokenizer(gpu_check.EMBEDDED))
    with torch.device("meta"):
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    hidden, layers, mlp, kv = 2048, 22, 5632, 2048 // 32 * 4
    block = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * mlp + 2 * hidden  # attention, MLP, two norms
    assert config.vocab_size == 49152
    assert params == 2 * 49152 * hidden + layers * block + hidden == 1_170_302_976


def test_the_json_of_a_whole_check(tmp_path, monkeypatch):
    """main() with the GPU and each stage's process stood in for: what the one JSON file holds."""
    commands = []

    def fake_command(command, timeout, env=None):
        commands.append(command)
        if "plan" in command:
            methods = command[command.index("--methods") + 1].split(",")
            rows = [{"lora": LORA_ROW, "full": FULL_ROW}[m] for m in methods]
            return {"rc": 0, "stdout": json.dumps({"methods": rows}), "wall_s": 9.0, "output_tail": ""}
        if "train" in command:
            out = Path(command[command.index("-o") + 1])
            out.mkdir(parents=True)
            (out / "summary.json").write_text(json.dumps(SUMMARY))
            (out / "config.yaml").write_text("data: {packing: true}\nobjective: {share_prompt: false}\n")
            return {"rc": 0, "stdout": "", "wall_s": 20.0, "output_tail": ""}
        if "pytest" in command:
            return {"rc": 0, "stdout": "", "wall_s": 30.0, "output_tail": "..\n2 passed, 1 skipped in 3.1s\n"}
        Path(command[command.index("--json") + 1]).write_text(json.dumps({"results": {"sft": {"ours": {}}}}))
        return {"rc": 0, "stdout": "", "wall_s": 90.0, "output_tail": ""}

    monkeypatch.setattr(gpu_check, "run_command", fake_command)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("P", (), {"total_memory": 81559 * 2**20}))
    monkeypatch.setattr(gpu_check, "gpu_name", lambda: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(gpu_check, "optional_packages", lambda: {"flash_attn": True, "bitsandbytes": False})
    monkeypatch.setattr(gpu_check, "build_llama_1b", lambda path: {"path": str(path), "params": 1_170_302_976})
    monkeypatch.setattr(gpu_check, "plan_model", lambda model: model)
    out = tmp_path / "check.json"
    assert gpu_check.main([str(out), "--work", str(tmp_path / "work")]) == 0
    result = json.loads(out.read_text())
    assert result["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559, "peak_tflops_bf16": 989.0}
    assert result["tests"]["passed"] and result["tests"]["summary"] == "2 passed, 1 skipped in 3.1s"
    assert [(r["name"], r["status"]) for r in result["runs"]] == [
        ("smollm2-135m-instruct-lora-sdpa", "ok"), ("smollm2-135m-instruct-qlora-sdpa", "skipped"),
        ("smollm2-135m-instruct-full-sdpa", "ok"), ("llama-1b-lora-sdpa", "ok"),
        ("smollm2-135m-instruct-lora-flash_attention_2", "ok"),
        ("smollm2-135m-instruct-qlora-flash_attention_2", "skipped"),
        ("smollm2-135m-instruct-full-flash_attention_2", "ok"), ("llama-1b-lora-flash_attention_2", "ok")]
    by_name = {r["name"]: r for r in result["runs"]}
    assert by_name["smollm2-135m-instruct-lora-sdpa"]["mfu"] == 0.0287
    assert by_name["smollm2-135m-instruct-full-sdpa"]["mfu"] == 0.0408  # 50,000 x 0.807 GFLOP / 989 TFLOP/s
    assert by_name["llama-1b-lora-sdpa"]["packing"] is True and by_name["llama-1b-lora-sdpa"]["share_prompt"] is False
    assert by_name["smollm2-135m-instruct-qlora-sdpa"]["reason"] == "bitsandbytes is not importable"
    assert result["peer"] == {"status": "ok", "wall_s": 90.0, "results": {"sft": {"ours": {}}}}
    # One plan per model and attention; the 1B runs train the model built for them.
    plans = [c for c in commands if "plan" in c]
    assert len(plans) == 4 and plans[0][plans[0].index("--methods") + 1] == "lora,full"
    trains = [c for c in commands if "train" in c]
    assert f"model.name={tmp_path / 'work' / 'llama-1b'}" in trains[2]


def test_an_unknown_card_needs_peak_tflops(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: type("P", (), {"total_memory": 16 * 2**30}))
    monkeypatch.setattr(gpu_check, "gpu_name", lambda: "Tesla T4")
    out = tmp_path / "check.json"
    assert gpu_check.main([str(out)]) == 2
    assert "--peak-tflops: no dense bf16 peak is known for 'Tesla T4'" in json.loads(out.read_text())["error"]
