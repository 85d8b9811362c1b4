"""train.precision and model.dtype: what auto resolves to, what stays fp32 under bf16, and that bf16 trains.

Every test passes on CPUs with and without bf16 instructions: where the CPU lacks them, bf16 runs emulated,
and `auto` is pinned by monkeypatching cpu_supports_bf16 both ways.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from tiny_runs import tiny_config

from whetstone.config import ConfigError, ModelConfig, load_config
from whetstone.errors import WhetstoneError
from whetstone.export.formats import export_run
from whetstone.methods import apply_method
from whetstone.models import load_model
from whetstone.models.forward import label_cross_entropy, label_hidden, label_token_logprobs, unwrap
from whetstone.train import device as device_module
from whetstone.train.device import Precision, autocast_context, base_dtype, resolve_precision
from whetstone.train.dispatch import train
from whetstone.train.loop import build_optimizer

CPU = torch.device("cpu")
BF16 = Precision("bf16", "bf16", "test")


def _cpu_has_bf16(monkeypatch, has: bool):
    why = "avx512_bf16" if has else "this CPU has neither avx512_bf16 nor amx_bf16"
    monkeypatch.setattr(device_module, "cpu_supports_bf16", lambda: (has, why))


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _batch(vocab: int, rows: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (rows, length), generator=generator)
    labels = ids.clone()
    labels[:, :4] = -100  # a prompt: the first tokens are not supervised
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


@pytest.fixture(autouse=True)
def _auto_unpinned(monkeypatch):
    """conftest pins auto to fp32 for the rest of the suite; here auto is what is tested."""
    monkeypatch.delenv(device_module.PIN_AUTO, raising=False)


# ---- auto, and what an explicit bf16 does -----------------------------------------------------------------------


def test_the_pin_decides_auto_on_any_cpu_and_leaves_explicit_values_alone(monkeypatch):
    _cpu_has_bf16(monkeypatch, True)
    monkeypatch.setenv(device_module.PIN_AUTO, "fp32")
    pinned = resolve_precision(CPU, "auto")
    assert (pinned.asked, pinned.resolved, pinned.why) == ("auto", "fp32", "pinned to fp32 by WHETSTONE_AUTO_PRECISION")
    assert resolve_precision(CPU, "bf16").resolved == "bf16"  # an explicit value is the user's
    _cpu_has_bf16(monkeypatch, False)
    monkeypatch.setenv(device_module.PIN_AUTO, "bf16")
    emulated = resolve_precision(CPU, "auto")
    assert (emulated.resolved, emulated.emulated) == ("bf16", True)
    assert emulated.why.startswith("pinned to bf16 by WHETSTONE_AUTO_PRECISION; this CPU has neither")
    monkeypatch.setenv(device_module.PIN_AUTO, "fp16")
    with pytest.raises(WhetstoneError, match="WHETSTONE_AUTO_PRECISION: got 'fp16'; set it to fp32 or bf16"):
        resolve_precision(CPU, "auto")


def test_auto_is_the_default():
    assert load_config(None, ["data.train=x.jsonl"]).train.precision == "auto"


@pytest.mark.parametrize("has, resolved", [(True, "bf16"), (False, "fp32")])
def test_auto_follows_the_cpu_bf16_instructions(monkeypatch, has, resolved):
    _cpu_has_bf16(monkeypatch, has)
    precision = resolve_precision(CPU, "auto")
    assert (precision.asked, precision.resolved, precision.emulated) == ("auto", resolved, False)
    assert precision.why == ("avx512_bf16" if has else "this CPU has neither avx512_bf16 nor amx_bf16")
    assert resolve_precision(CPU, "fp32").resolved == "fp32"
    assert resolve_precision(torch.device("mps"), "auto").resolved == "fp32"


def test_explicit_bf16_without_instructions_runs_emulated_and_says_so(monkeypatch):
    _cpu_has_bf16(monkeypatch, False)
    precision = resolve_precision(CPU, "bf16")
    assert precision.resolved == "bf16" and precision.emulated
    assert "emulated, slower than fp32" in precision.why
    with autocast_context(CPU, precision)():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")


def test_base_dtype_auto_follows_precision_and_full_keeps_fp32(tiny_model_dir):
    def config(*overrides):
        return load_config(None, [f"model={tiny_model_dir}", "data.train=x", *overrides])

    fp32 = Precision("fp32", "fp32", "asked for")
    assert base_dtype(config(), BF16) == torch.bfloat16
    assert base_dtype(config(), fp32) == torch.float32
    assert base_dtype(config("method.name=full"), BF16) == torch.float32  # fp32 master weights
    assert base_dtype(config("model.dtype=fp16"), fp32) == torch.float16  # lora: peft mixes the dtypes
    with pytest.raises(WhetstoneError, match="model.dtype: bf16 with method freeze needs bf16 autocast"):
        base_dtype(config("model.dtype=bf16", "method.name=freeze", "method.top_blocks=1"), fp32)
    with pytest.raises(ConfigError, match="model.dtype: bf16 with method full"):
        config("model.dtype=bf16", "method.name=full")


# ---- what stays fp32 under bf16 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "dora", "freeze"])
def test_trainable_weights_optimizer_state_and_loss_stay_fp32_on_a_bf16_base(tiny_model_dir, method):
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)), dtype=torch.bfloat16)
    cfg = load_config(None, [f"model={tiny_model_dir}", "data.train=x", f"method.name={method}",
                             "method.top_blocks=1"]).method
    model = apply_method(model, cfg)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable and frozen
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    assert {p.dtype for p in frozen.values()} == {torch.bfloat16}
    if method == "dora":
        assert any("lora_magnitude_vector" in n for n in trainable)

    optimizer = build_optimizer(model, load_config(None, ["data.train=x"]).train)
    batch = _batch(unwrap(model).config.vocab_size)
    with autocast_context(CPU, BF16)():
        loss_sum, token_loss = label_cross_entropy(model, batch, chunk=5)
    assert loss_sum.dtype == token_loss.dtype == torch.float32
    loss_sum.backward()
    optimizer.step()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in trainable.values())
    states = [s for state in optimizer.state.values() for s in state.values() if s.ndim > 0]
    assert states and {s.dtype for s in states} == {torch.float32}


def test_adapters_on_a_bf16_base_read_its_input_as_is_same_numbers_less_memory(tiny_model_dir):
    """Under autocast peft's cast of a bf16 input to the fp32 adapter is undone at once by autocast's cast back
    to bf16; without it (apply_method autocast_bf16, lora.keep_input_dtype) the loss and every gradient are the
    same, and autograd keeps fewer bytes. DoRA keeps the cast (its norms read the input)."""
    from whetstone.plan.probe import saved_bytes

    dora, _ = load_model(ModelConfig(name=str(tiny_model_dir)), dtype=torch.bfloat16)
    dora = apply_method(dora, load_config(None, [f"model={tiny_model_dir}", "data.train=x",
                                                 "method.name=dora"]).method, autocast_bf16=True)
    assert {m.cast_input_dtype_enabled for m in dora.modules() if hasattr(m, "lora_A")} == {True}
    cfg = load_config(None, [f"model={tiny_model_dir}", "data.train=x", "method.name=lora"]).method
    runs = {}
    for keep in (False, True):
        torch.manual_seed(0)
        model, _ = load_model(ModelConfig(name=str(tiny_model_dir)), dtype=torch.bfloat16)
        model = apply_method(model, cfg, autocast_bf16=keep)
        casting = {m.cast_input_dtype_enabled for m in model.modules() if hasattr(m, "lora_A")}
        assert casting == {not keep}
        batch = _batch(unwrap(model).config.vocab_size, rows=2, length=24)
        objective = type("SFT", (), {"loss": staticmethod(lambda m, b, c: label_cross_entropy(m, b, None)[0])})
        with autocast_context(CPU, BF16)():
            saved = saved_bytes(model, objective, batch, None)
            loss, _ = label_cross_entropy(model, batch, chunk=None)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        runs[keep] = loss.item(), grads, saved
    (loss_cast, grads_cast, saved_cast), (loss_kept, grads_kept, saved_kept) = runs[False], runs[True]
    assert loss_kept == loss_cast
    assert grads_kept.keys() == grads_cast.keys()
    for name in grads_cast:
        assert torch.equal(grads_kept[name], grads_cast[name]), name
    assert saved_kept < saved_cast


def test_the_head_and_log_probs_are_fp32_under_autocast(tiny_model_dir):
    """Under bf16 autocast the decoder runs in bf16, but the head's logits, the cross-entropy and the compared
    log-probs are fp32: each equals an fp32 computation from the same hidden states, chunked or not."""
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    model.requires_grad_(False)
    batch = _batch(model.config.vocab_size, rows=3)
    with torch.no_grad(), autocast_context(CPU, BF16)():
        hidden, targets = label_hidden(model, batch)
        unchunked, _ = label_cross_entropy(model, batch, chunk=None)
        chunked, _ = label_cross_entropy(model, batch, chunk=4)
        logprobs = label_token_logprobs(model, batch, chunk=4)
        head_bf16 = model.get_output_embeddings()(hidden)  # what autocast alone would give the loss
    logits = F.linear(hidden.float(), model.get_output_embeddings().weight)  # (N, V) in fp32
    reference = F.cross_entropy(logits, targets, reduction="none")  # (N,)
    assert head_bf16.dtype == torch.bfloat16  # so the fp32 head below is our doing, not autocast's
    assert unchunked.dtype == chunked.dtype == logprobs.dtype == torch.float32
    torch.testing.assert_close(unchunked, reference.sum(), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(chunked, reference.sum(), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(logprobs, -reference, atol=1e-5, rtol=1e-6)


# ---- end to end --------------------------------------------------------------------------------------------------


def test_bf16_trains_within_one_percent_of_fp32(tmp_path, tiny_model_dir, qa_file):
    """On any CPU (emulated where there are no bf16 instructions), 10 steps of bf16 autocast follow fp32."""
    runs = {}
    for precision in ("fp32", "bf16"):
        runs[precision] = tmp_path / precision
        train(tiny_config(tiny_model_dir, qa_file, "train.max_steps=10", "train.batch_size=4",
                          f"train.precision={precision}"), runs[precision], progress=False)
    fp32, bf16 = _losses(runs["fp32"]), _losses(runs["bf16"])
    assert len(fp32) == len(bf16) == 10
    assert bf16 == pytest.approx(fp32, rel=0.01)
    assert fp32[0] - fp32[-1] > 0.1  # it learns (6.00 -> 5.81), so "within 1%" compares two moving curves
    rows = [json.loads(line) for line in (runs["bf16"] / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["grad_norm"])) and r["grad_norm"] > 0 for r in rows)
    summary = json.loads((runs["bf16"] / "summary.json").read_text())
    assert summary["skipped_steps"] == 0 and summary["precision"]["resolved"] == "bf16"
    assert summary["model_dtype"] == "bf16"  # model.dtype auto under bf16 autocast


@pytest.mark.parametrize("has", [True, False])
def test_summary_records_what_auto_resolved_to(tmp_path, tiny_model_dir, qa_file, monkeypatch, capsys, has):
    _cpu_has_bf16(monkeypatch, has)
    summary = train(tiny_config(tiny_model_dir, qa_file, "train.max_steps=2", "train.precision=auto"),
                    tmp_path / "run", progress=False)
    resolved = "bf16" if has else "fp32"
    why = "avx512_bf16" if has else "this CPU has neither avx512_bf16 nor amx_bf16"
    recorded = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert recorded["precision"] == summary["precision"] == {"asked": "auto", "resolved": resolved, "why": why}
    assert recorded["model_dtype"] == resolved
    printed = capsys.readouterr().out
    assert printed.count(f"precision: {resolved} (train.precision auto: {why})") == 1
    assert "warning" not in printed


def test_bf16_base_trains_lora_and_warns_when_emulated(tmp_path, tiny_model_dir, qa_file, monkeypatch, capsys):
    _cpu_has_bf16(monkeypatch, False)
    common = ("train.max_steps=6", "train.batch_size=4")
    fp32 = train(tiny_config(tiny_model_dir, qa_file, *common), tmp_path / "fp32", progress=False)
    bf16 = train(tiny_config(tiny_model_dir, qa_file, *common, "train.precision=bf16", "model.dtype=bf16"),
                 tmp_path / "bf16", progress=False)
    assert "warning: train.precision bf16 runs emulated on this CPU" in capsys.readouterr().out
    assert bf16["model_dtype"] == "bf16" and bf16["precision"]["resolved"] == "bf16"
    assert bf16["train_loss"] == pytest.approx(fp32["train_loss"], rel=0.02)
    # The saved adapter is fp32; export merges it into the fp32 base and holds it to the f32 rounding bound.
    from safetensors.torch import load_file

    adapter = load_file(str(tmp_path / "bf16" / "adapter" / "adapter_model.safetensors"))
    assert adapter and {t.dtype for t in adapter.values()} == {torch.float32}
    merged = export_run(tmp_path / "bf16", "merged", tmp_path / "merged")
    # The f32 rounding bound (~1e-5 at these logits), not the 5% of max |logit| that lossy exports get.
    assert merged.logit_delta <= merged.tolerance < 1e-3 and merged.top1_agreement == 1.0
