from pathlib import Path

import pytest

from whetstone.config import ConfigError, apply_overrides, load_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("**/*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_opens_with_its_command(path):
    config = load_config(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# whetstone "), f"{path.name} must open with the command that runs it"
    assert config.data.train, path


def test_shipped_configs_exist():
    names = {p.name for p in SHIPPED}
    assert {"sft_full.yaml", "sft_freeze.yaml", "sft_lora.yaml", "sft_dora.yaml"} <= names


def test_one_error_lists_every_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "model: smollm2-135m-instruct\n"
        "method: {name: lorra, r: -2}\n"
        "data: {train: x.jsonl, max_lenght: 10}\n"
        "train: {lr: fast, batch_size: 0}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not well-formed, found the following errors:")
    assert "method.name: got 'lorra'" in message and "Did you mean 'lora'?" in message
    assert "data.max_lenght: unknown key. Did you mean 'max_length'?" in message
    assert "train.lr: got 'fast'; must be a number." in message
    assert "train.batch_size: got 0; must be a positive integer." in message
    assert "method.r: got -2; the LoRA rank must be a positive integer" in message
    assert len(info.value.problems) == 5


def test_a_misspelt_key_inside_an_optional_section_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: smollm2-135m-instruct\n"
                    "data: {train: x.jsonl, augment: {paraphrse: 5}, replay: {source: r.jsonl, fractoin: 0.2}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["data.augment.paraphrse: unknown key. Did you mean 'paraphrase'?",
                                   "data.replay.fractoin: unknown key. Did you mean 'fraction'?"]


def test_conflicting_fields_are_named_together():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.train=a.jsonl", "data.eval=b.jsonl", "data.eval_fraction=0.1"])
    assert "data.eval and data.eval_fraction are both set. Choose one" in str(info.value)


def test_set_overrides_are_typed_and_nested():
    config = load_config(None, ["data.train=a.jsonl", "train.lr=1e-4", "method.targets=[q_proj, v_proj]",
                                "model.trust_remote_code=true", "train.max_steps=null"])
    assert config.train.lr == pytest.approx(1e-4)
    assert config.method.targets == ["q_proj", "v_proj"]
    assert config.model.trust_remote_code is True and config.model.name == "smollm2-135m-instruct"
    assert config.train.max_steps is None


def test_shorthand_model_string_then_override_a_model_field():
    raw = apply_overrides({"model": "some/dir"}, ["model.revision=main"])
    assert raw["model"] == {"name": "some/dir", "revision": "main"}


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["train.lr"])


def test_freeze_with_nothing_trainable_is_an_error():
    with pytest.raises(ConfigError, match="'freeze' with nothing left trainable"):
        load_config(None, ["data.train=a.jsonl", "method.name=freeze"])


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: x\ntrain: {lr: [1,\n")
    with pytest.raises(Exception) as info:
        load_config(path)
    assert f"{path}:" in str(info.value) and "not valid YAML" in str(info.value)
