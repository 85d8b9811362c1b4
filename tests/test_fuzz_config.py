"""Fuzzing the config loader and the --set parser: a valid config or a clean error, never a traceback."""

import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whetstone.config import RunConfig, config_from_dict, load_config, parse_override
from whetstone.errors import WhetstoneError

KEYS = ["model", "method", "objective", "data", "train", "eval", "output", "name", "r", "alpha", "lr", "epochs",
        "max_steps", "batch_size", "train", "eval", "format", "targets", "top_blocks", "warmup", "schedule", "x"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["lora", "full", "cosine", "sft", "1e-4", "all-linear"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
                      max_leaves=20)
COUNTS = {"configs": 0, "overrides": 0, "yaml": 0}


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=7))
def test_config_dicts_give_a_config_or_a_clean_error(raw):
    COUNTS["configs"] += 1
    try:
        assert isinstance(config_from_dict(raw), RunConfig)
    except WhetstoneError:
        pass


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(st.text(alphabet=string.printable, max_size=40))
def test_set_overrides_give_a_value_or_a_clean_error(text):
    COUNTS["overrides"] += 1
    try:
        parts, _ = parse_override(text)
        assert all(parts)
        load_config(None, ["data.train=x.jsonl", text])
    except WhetstoneError:
        pass


@settings(max_examples=800, deadline=None, derandomize=True)
@given(st.text(max_size=200))
def test_yaml_files_give_a_config_or_a_clean_error(tmp_path_factory, text):
    COUNTS["yaml"] += 1
    path = tmp_path_factory.mktemp("y") / "c.yaml"
    path.write_bytes(text.encode("utf-8", errors="replace"))
    try:
        load_config(path)
    except WhetstoneError:
        pass


def test_nan_and_infinite_numbers_are_refused():
    for bad in (".nan", ".inf", "-.inf"):  # YAML spellings of NaN and infinities
        try:
            load_config(None, ["data.train=x.jsonl", f"train.lr={bad}"])
        except WhetstoneError as exc:
            assert "train.lr" in str(exc) and "finite" in str(exc)
        else:
            raise AssertionError(f"train.lr={bad} was accepted")


@settings(max_examples=300, deadline=None, derandomize=True)
@given(values)
def test_yaml_dumped_values_round_trip_or_fail_cleanly(tmp_path_factory, value):
    path = tmp_path_factory.mktemp("y") / "c.yaml"
    path.write_text(yaml.safe_dump({"train": value, "data": {"train": "x.jsonl"}}))
    try:
        load_config(path)
    except WhetstoneError:
        pass
