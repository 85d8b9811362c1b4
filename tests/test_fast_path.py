"""The fast path by default (train/fast_path.py): packing and share_prompt on where they apply, off with a
reason where they cannot, an explicit value kept, and a default run that trains as the plain layout does."""

import json

import pytest
import yaml
from tiny_runs import tiny_config, write_jsonl

from whetstone.config import load_config
from whetstone.errors import WhetstoneError
from whetstone.train.fast_path import resolve_fast_path
from whetstone.train.dispatch import train


def _resolve(*overrides, strategy="single"):
    config, line = resolve_fast_path(load_config(None, ["data.train=x.jsonl", *overrides]), strategy)
    return config.data.packing, config.objective.share_prompt, line


def test_sft_and_dpo_get_packing_and_share_prompt_by_default():
    for objective in ("sft", "dpo"):
        assert _resolve(f"objective={objective}") == (
            True, True, "layout: data.packing on (default), objective.share_prompt on (default)")
    assert _resolve(strategy="ddp")[:2] == (True, True)


@pytest.mark.parametrize("overrides, strategy, reason", [
    (["objective=kto"], "single", "objective kto keeps one sequence per row"),
    (["objective=reward"], "single", "objective reward keeps one sequence per row"),
    (["objective=classify", "eval.metrics=[loss]"], "single", "objective classify keeps one sequence per row"),
    ([], "fsdp", "packed batches are not tested with train.strategy fsdp yet"),
    (["objective=dpo"], "deepspeed", "packed batches are not tested with train.strategy deepspeed yet"),
])
def test_where_they_cannot_apply_they_turn_off_and_say_why(overrides, strategy, reason):
    packing, share_prompt, line = _resolve(*overrides, strategy=strategy)
    assert (packing, share_prompt) == (False, False)
    assert line.startswith("layout: data.packing off (default), objective.share_prompt off (default) (")
    assert reason in line


def test_flash_attention_packs_one_row_and_shares_no_prompt():
    packing, share_prompt, line = _resolve("model.attn_implementation=flash_attention_2")
    assert (packing, share_prompt) == (True, False)
    assert line == ("layout: data.packing on (default), objective.share_prompt off (default) (flash_attention_2: "
                    "one padding-free row per micro-batch, which reads no shared-prefix mask)")


def test_an_explicit_value_is_kept():
    assert _resolve("data.packing=false") == (
        False, False, "layout: data.packing off, objective.share_prompt off (default)")
    assert _resolve("objective.share_prompt=false")[:2] == (True, False)
    assert _resolve("data.packing=true", "objective.share_prompt=true")[2] == (
        "layout: data.packing on, objective.share_prompt on")
    # An explicit true that cannot apply is refused, never dropped in silence.
    with pytest.raises(WhetstoneError, match="objective.share_prompt: true needs data.packing, which is off here "
                                             r"\(packed batches are not tested with train.strategy fsdp yet\)"):
        _resolve("objective.share_prompt=true", strategy="fsdp")
    with pytest.raises(Exception, match="objective.share_prompt applies to objectives sft and dpo with data.packing on"):
        _resolve("data.packing=false", "objective.share_prompt=true")


def test_a_default_run_records_its_layout_and_trains_as_the_plain_layout(tmp_path, tiny_model_dir, capsys):
    # A shared system prompt, so that share_prompt has a prefix to read once.
    rows = [{"messages": [{"role": "system", "content": "You answer sums. Be brief and exact."},
                          {"role": "user", "content": f"What is {i} plus {i}?" + " Please." * (i % 3)},
                          {"role": "assistant", "content": f"{2 * i}." + " That is the sum." * (i % 4)}]}
            for i in range(24)]
    data = write_jsonl(tmp_path / "sums.jsonl", rows)
    common = ("train.max_steps=4", "train.batch_size=6", "train.precision=fp32")
    fast = train(tiny_config(tiny_model_dir, data, *common), tmp_path / "fast", progress=False)
    assert "layout: data.packing on (default), objective.share_prompt on (default)" in capsys.readouterr().out
    plain = train(tiny_config(tiny_model_dir, data, *common, "data.packing=false"), tmp_path / "plain",
                  progress=False)
    recorded = yaml.safe_load((tmp_path / "fast" / "config.yaml").read_text())
    assert recorded["data"]["packing"] is True and recorded["objective"]["share_prompt"] is True
    losses = {name: [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
              for name in ("fast", "plain")}
    assert len(losses["fast"]) == 4
    # The same examples and loss normalisation: only the float summation order differs.
    assert losses["fast"] == pytest.approx(losses["plain"], rel=1e-5)
    assert fast["tokens"] == plain["tokens"]
