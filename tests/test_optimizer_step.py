"""build_optimizer's AdamW: the fused kernel it picks on CPU takes the same steps as torch's one-tensor-at-a-time loop."""

import copy

import pytest
import torch
from safetensors.torch import load_file

from whetstone.config import load_config
from whetstone.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from whetstone.train.loop import build_optimizer


class Adapted(torch.nn.Module):
    """A frozen linear layer with a LoRA-like pair (A, B: decayed), and a norm gain and a bias (not decayed)."""

    def __init__(self, width: int = 16, rank: int = 4):
        super().__init__()
        self.base = torch.nn.Linear(width, width)
        self.base.requires_grad_(False)
        self.lora_A = torch.nn.Parameter(torch.randn(rank, width) / width**0.5)  # (r, in)
        self.lora_B = torch.nn.Parameter(torch.randn(width, rank) * 0.01)  # (out, r)
        self.gain = torch.nn.Parameter(torch.ones(width))
        self.bias = torch.nn.Parameter(torch.zeros(width))

    def forward(self, x):
        h = self.base(x) + x @ self.lora_A.t() @ self.lora_B.t()
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.gain + self.bias


def _train_config():
    return load_config(None, ["data.train=x", "train.lr=1e-2", "train.weight_decay=0.1"]).train


def _steps(model, optimizer, n: int, seed: int = 0) -> None:
    """n steps of the loop's order: backward, clip, step, zero_grad; the same batches for any optimizer."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(8, 16, generator=generator)
        target = torch.randn(8, 16, generator=generator)
        torch.nn.functional.mse_loss(model(x), target).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_build_optimizer_groups_and_picks_fused_on_cpu():
    torch.manual_seed(0)
    optimizer = build_optimizer(Adapted(), _train_config())
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 2]  # (A, B), (gain, bias)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert all(g["fused"] for g in optimizer.param_groups)


def test_fused_steps_equal_the_for_loop():
    torch.manual_seed(0)
    fused_model = Adapted()
    loop_model = copy.deepcopy(fused_model)
    fused = build_optimizer(fused_model, _train_config())
    # The reference: the same groups under torch's plain per-tensor implementation (its CPU default).
    loop = build_optimizer(loop_model, _train_config())
    for group in loop.param_groups:
        group.update(fused=False, foreach=False)
    start = {n: p.detach().clone() for n, p in loop_model.named_parameters() if p.requires_grad}
    _steps(fused_model, fused, 5)
    _steps(loop_model, loop, 5)
    trained = dict(fused_model.named_parameters())
    for name, b in loop_model.named_parameters():
        if name in start:
            assert (b - start[name]).abs().max() > 1e-3, name  # it trained: the comparison is not of untouched weights
            # Float rounding of a different operation order over 5 steps: a few ulps of each weight.
            torch.testing.assert_close(trained[name], b, rtol=1e-6, atol=1e-7, msg=name)
    for pa, pb in zip(fused_model.parameters(), loop_model.parameters()):
        if pb.requires_grad:
            sa, sb = fused.state[pa], loop.state[pb]
            assert float(sa["step"]) == float(sb["step"]) == 5.0
            torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=1e-6, atol=1e-9)
            torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=1e-6, atol=1e-12)


def test_fused_optimizer_state_survives_a_checkpoint(tmp_path):
    """Save after 3 steps, restore into a fresh model and optimizer, take 3 more: bitwise the uninterrupted run."""
    torch.manual_seed(0)
    straight_model = Adapted()
    stopped_model = copy.deepcopy(straight_model)
    fresh_model = copy.deepcopy(straight_model)
    cfg = _train_config()

    straight = build_optimizer(straight_model, cfg)
    _steps(straight_model, straight, 3)
    _steps(straight_model, straight, 3, seed=1)

    stopped = build_optimizer(stopped_model, cfg)
    _steps(stopped_model, stopped, 3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(stopped, lambda s: 1.0)
    path = save_checkpoint(tmp_path / "checkpoints", stopped_model, stopped, scheduler, TrainState(step=3), keep=2)
    assert load_file(str(path / "trainable.safetensors")).keys() == {"lora_A", "lora_B", "gain", "bias"}

    resumed = build_optimizer(fresh_model, cfg)
    state = load_checkpoint(path, fresh_model, resumed, torch.optim.lr_scheduler.LambdaLR(resumed, lambda s: 1.0))
    assert state.step == 3
    assert all(g["fused"] for g in resumed.param_groups)
    for p in (p for p in fresh_model.parameters() if p.requires_grad):
        assert resumed.state[p]["step"].dtype == torch.float32 and float(resumed.state[p]["step"]) == 3.0
    _steps(fresh_model, resumed, 3, seed=1)
    for (name, a), b in zip(straight_model.named_parameters(), fresh_model.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("saved_fused", [False, True])
def test_a_checkpoint_keeps_its_implementation(tmp_path, saved_fused):
    """torch restores AdamW's param groups as saved, `fused` with them: a checkpoint of the per-tensor loop (any run
    begun before build_optimizer picked fused) resumes on the loop, and one of the fused kernel on it, exactly."""
    torch.manual_seed(0)
    model = Adapted()
    other = copy.deepcopy(model)
    cfg = _train_config()
    saved = build_optimizer(model, cfg)
    for group in saved.param_groups:
        group.update(fused=saved_fused, foreach=False)
    _steps(model, saved, 2)
    path = save_checkpoint(tmp_path, model, saved, torch.optim.lr_scheduler.LambdaLR(saved, lambda s: 1.0),
                           TrainState(step=2), keep=1)
    loaded = build_optimizer(other, cfg)
    load_checkpoint(path, other, loaded, torch.optim.lr_scheduler.LambdaLR(loaded, lambda s: 1.0))
    assert [bool(g["fused"]) for g in loaded.param_groups] == [saved_fused, saved_fused]
    _steps(model, saved, 2, seed=1)
    _steps(other, loaded, 2, seed=1)
    for (name, a), b in zip(model.named_parameters(), other.parameters()):
        assert torch.equal(a, b), name


def test_other_devices_and_tensor_types_keep_torch_default():
    """Off the CPU (here the meta device), or with FSDP's DTensor shards, torch picks the implementation."""
    optimizer = build_optimizer(Adapted().to("meta"), _train_config())
    assert all(g["fused"] is None and g["foreach"] is None for g in optimizer.param_groups)
