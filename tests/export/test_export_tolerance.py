"""The export's logit check: a bound derived from fp32 arithmetic, not tuned to one CPU's rounding.

A healthy merge differs from base + adapter by rounding alone, on any kernel (AVX-512, AVX2, scalar); a wrong
merge, even one that scales the adapter by 1%, differs by far more. Both sides are checked here.
"""

import pytest
import torch
from safetensors.torch import load_file

import whetstone.export.formats as formats
from whetstone.errors import WhetstoneError
from whetstone.export import export_run
from whetstone.methods.lora import merge_exactly

EPS = torch.finfo(torch.float32).eps


def test_the_bound_grows_with_depth_and_logit_scale():
    assert formats.rounding_tolerance(2, 1.0) == pytest.approx(16 * EPS * 3)
    # SmolLM2-135M: 30 layers, logits up to ~41 on the probe: 2.4e-3, where the measured deltas were
    # 0.68e-4 (AVX-512), 1.0e-4 (AVX2) and 1.2e-4 (scalar), and a 10-step LoRA moves the logits by ~5.
    assert formats.rounding_tolerance(30, 41.2) == pytest.approx(2.43e-3, rel=0.01)
    assert formats.rounding_tolerance(60, 41.2) > formats.rounding_tolerance(30, 41.2)


def _perturbed_merge(relative: float, only_lora: bool):
    """merge_exactly, then every merged weight (or only its adapter part) scaled by (1 + relative * ±1)."""

    def merge(model):
        deltas = {}
        if only_lora:
            from peft.tuners.lora import LoraLayer

            for name, module in model.named_modules():
                if isinstance(module, LoraLayer):
                    # named as in the unloaded model: peft's wrapper prefixes base_model.model.
                    deltas[name.removeprefix("base_model.model.")] = module.get_delta_weight("default").detach().clone()
        merged = merge_exactly(model)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, module in merged.named_modules():
                if not isinstance(module, torch.nn.Linear) or (only_lora and name not in deltas):
                    continue
                if only_lora:  # a merge that scales B A wrongly: W + 1.01 * s B A
                    module.weight += relative * deltas[name].to(module.weight.dtype)
                else:  # one ulp of noise on every weight: what another summation order does at most
                    signs = torch.randint(0, 2, module.weight.shape, generator=generator) * 2 - 1
                    module.weight *= 1 + relative * signs
        return merged

    return merge


def test_rounding_noise_on_every_weight_passes(tmp_path, lora_run, monkeypatch):
    healthy = export_run(lora_run, "merged", tmp_path / "healthy")
    monkeypatch.setattr(formats, "merge_exactly", _perturbed_merge(EPS, only_lora=False))
    noisy = export_run(lora_run, "merged", tmp_path / "noisy")
    before = load_file(str(tmp_path / "healthy" / "model.safetensors"))
    after = load_file(str(tmp_path / "noisy" / "model.safetensors"))
    changed = sum(int((before[k] != after[k]).sum()) for k in before)
    assert changed > 0.9 * sum(t.numel() for k, t in before.items() if "proj" in k)  # every projection moved
    assert noisy.logit_delta <= noisy.tolerance and noisy.top1_agreement == 1.0  # and that is accepted as rounding
    assert noisy.tolerance == healthy.tolerance


def test_an_adapter_scaled_by_one_percent_is_refused(tmp_path, lora_run, monkeypatch):
    monkeypatch.setattr(formats, "merge_exactly", _perturbed_merge(0.01, only_lora=True))
    with pytest.raises(WhetstoneError, match="more than rounding explains"):
        export_run(lora_run, "merged", tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()
