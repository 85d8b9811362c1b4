"""Verifiable rewards (whetstone/rewards/verifiable.py) against hand-written cases; their options via the loader."""

import textwrap
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from whetstone.config import ConfigError, RewardSource, config_from_dict, load_config
from whetstone.data.records import Message
from whetstone.errors import WhetstoneError
from whetstone.rewards import load_rewards, score_completions
from whetstone.rewards.verifiable import (
    exact_format,
    extract_number,
    numeric_match,
    overlong_penalty,
    regex_format,
    schema_errors,
    tool_call_valid,
)

VERIFIABLE = "whetstone.rewards.verifiable"


def _scores(function, pairs, **options):
    """function over [(completion, reference)]: one score each."""
    completions, references = [c for c, _ in pairs], [r for _, r in pairs]
    return function(["q"] * len(pairs), completions, references, **options)


# ---------------------------------------------------------------------------
# numeric_match


@pytest.mark.parametrize("completion, reference", [
    ("42", "42"),
    ("The total is 1,234 apples.", "1234"),  # thousands separators
    ("The total is 1 234 apples.", "1,234"),
    ("1\u202f234", "1234"),  # a narrow no-break space
    (r"so it is 1\,234", "1234"),  # LaTeX thin space
    (r"$1{,}234$", "1234"),
    ("It costs $1,234.50.", "1234.5"),  # currency, a trailing period
    ("+7", "7"),
    ("-$5", "-5"),
    ("\u22125", "-5"),  # unicode minus
    ("She walks 12 km", "12"),  # a trailing unit
    ("12km", "12 km"),
    ("That is 50%.", "50"),
    ("3/4", "0.75"),  # fractions against decimals
    ("The answer is 3/4.", "0.75"),
    (r"\boxed{\frac{3}{4}}", "0.75"),
    (r"\boxed{-\dfrac{1}{2}}", "-0.5"),
    ("1e6", "1,000,000"),
    ("0.3333333", "1/3"),  # within a relative 1e-6
    ("1000000.5", "1000000"),  # 5e-7 relative
    (r"First 3, then 5, so \boxed{8}. Check: 8 + 0 = 8, 9 times.", "8"),  # the box outranks later numbers
    ("The answer is 17. Then 2 more steps show why.", "17"),  # the first number after the marker
    ("Answer: 17\nI counted 3 times.", "17"),
    ("Step 1: 5. Step 2: 9.\n#### 12", "12"),
    ("5 + 7 = 12", "Natalia sold 48/2 = 24 clips in May.\n12 in all.\n#### 12"),  # a GSM8K reference
    ("12", r"The sum is $\boxed{12}$."),  # a MATH reference
    ("<think>Maybe 11? No: 5 + 7.</think>It is 12.", "12"),  # reasoning is left out
])
def test_numeric_match_reads_the_answer_through_its_formatting(completion, reference):
    assert _scores(numeric_match, [(completion, reference)]) == [1.0]


@pytest.mark.parametrize("completion, reference", [
    ("41", "42"),
    ("-5", "5"),
    ("0.333", "1/3"),  # 1e-3 relative: too far
    ("The answer is 12, or maybe not.", "13"),
    ("I don't know.", "12"),
    ("12", "twelve"),  # a reference with no number scores 0
    ("12", None),
    ("12", ""),
    (r"\boxed{x}. Earlier I had 12.", "12"),  # a box without a number: no answer, whatever came before
    ("We found 40 items. The answer is forty.", "40"),  # nothing numeric after the marker: no answer
    ("<think>It is 12.</think>It is 13.", "12"),  # the reasoning's number does not count
    ("<think>It is 12, so", "12"),  # cut inside the reasoning: no answer yet
    ("10/0", "10"),
    ("1" * 5000, "1"),  # too many digits to read: no number rather than a crash
])
def test_numeric_match_rejects_wrong_or_missing_numbers(completion, reference):
    assert _scores(numeric_match, [(completion, reference)]) == [0.0]


def test_numeric_match_tolerance_is_relative_1e_6():
    references = ["1000000"] * 3 + ["0.001"] * 2
    completions = ["1000000.9", "1000001.1", "999998.9", "0.0010000009", "0.0010000011"]
    assert numeric_match(["q"] * 5, completions, references) == [1.0, 0.0, 0.0, 1.0, 0.0]


def test_extract_number_values():
    assert extract_number("It costs $1,234.50.") == Fraction(2469, 2)
    assert extract_number(r"\boxed{-\frac{1}{2}} and 7") == Fraction(-1, 2)
    assert extract_number("v1.2.3 and x2") is None  # version strings and names are not numbers
    assert extract_number("COVID-19") == 19  # a hyphen after a word is not a minus
    assert extract_number("- 5") == 5  # nor is a list bullet
    assert extract_number("1e99999") is None
    assert extract_number("1e" + "9" * 5000) is None and extract_number("1/" + "9" * 5000) is None
    assert extract_number(".5") == Fraction(1, 2)


# ---------------------------------------------------------------------------
# exact_format and regex_format


def test_exact_format():
    completions = ["yes", "  yes\n", "Yes", "yes.", "yes yes"]
    assert exact_format(["q"] * 5, completions, [None] * 5, text=" yes ") == [1.0, 1.0, 0.0, 0.0, 0.0]
    with pytest.raises(WhetstoneError, match="option 'text': got 3"):
        exact_format([], [], [], text=3)


def test_regex_format_matches_the_whole_completion():
    completions = ["<think>a\nb</think> 42", "<think>a</think> 42 and more", "42", " \n<think>x</think>7\n"]
    pattern = r"(?s)<think>.+</think>\s*\d+"
    assert regex_format(["q"] * 4, completions, [None] * 4, pattern=pattern) == [1.0, 0.0, 0.0, 1.0]
    # Without (?s) the dot stops at a newline.
    assert regex_format(["q"], completions[:1], [None], pattern=r"<think>.+</think>\s*\d+") == [0.0]
    with pytest.raises(WhetstoneError, match="option 'pattern': '\\(unclosed' is not a regular expression"):
        regex_format([], [], [], pattern="(unclosed")


# ---------------------------------------------------------------------------
# tool_call_valid

WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "required": ["city"], "additionalProperties": False,
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                   "unit": {"type": "string", "enum": ["C", "F"]},
                   "hours": {"type": "array", "items": {"type": "integer"}}}}}}
NEWS = {"name": "news", "parameters": {"type": "object", "properties": {"topic": {"type": ["string", "null"]}}}}


def _hermes(name: str, arguments: str) -> str:
    return f'<tool_call>{{"name": "{name}", "arguments": {arguments}}}</tool_call>'


TOOL_CASES = [  # (completion, with tools, without tools, hermes only)
    (_hermes("weather", '{"city": "Oslo", "days": 3}'), 1.0, 1.0, 1.0),
    ("Let me look. " + _hermes("weather", '{"city": "Oslo", "hours": [1, 2]}'), 1.0, 1.0, 1.0),
    ('<think>hm</think>' + _hermes("weather", '{"city": "Oslo", "days": 3.0}'), 1.0, 1.0, 1.0),  # 3.0 is an integer
    (_hermes("weather", '"{\\"city\\": \\"Oslo\\"}"'), 1.0, 1.0, 1.0),  # arguments as a JSON string, OpenAI-style
    (_hermes("news", '{"topic": null}'), 1.0, 1.0, 1.0),
    ('[TOOL_CALLS][{"name": "weather", "arguments": {"city": "Oslo"}}]', 1.0, 1.0, 0.0),  # mistral
    ('[TOOL_CALLS]weather[ARGS]{"city": "Oslo"}', 1.0, 1.0, 0.0),
    ('<|python_tag|>{"name": "weather", "parameters": {"city": "Oslo"}}', 1.0, 1.0, 0.0),  # llama3
    ('<|start|>assistant to=functions.weather<|channel|>commentary json<|message|>{"city": "Oslo"}<|call|>',
     1.0, 1.0, 0.0),  # harmony
    (_hermes("weather", '{"city": "Oslo", "days": "3"}'), 0.5, 1.0, 0.5),  # a string for an integer
    (_hermes("weather", '{"city": "Oslo", "days": true}'), 0.5, 1.0, 0.5),  # a boolean is not an integer
    (_hermes("weather", '{"days": 3}'), 0.5, 1.0, 0.5),  # required city missing
    (_hermes("weather", '{"city": "Oslo", "unit": "K"}'), 0.5, 1.0, 0.5),  # not in the enum
    (_hermes("weather", '{"city": "Oslo", "country": "NO"}'), 0.5, 1.0, 0.5),  # additionalProperties: false
    (_hermes("weather", '{"city": "Oslo", "hours": [1, "2"]}'), 0.5, 1.0, 0.5),  # items
    (_hermes("sports", '{}'), 0.5, 1.0, 0.5),  # not one of the tools
    (_hermes("weather", '{"city": "Oslo"}') + _hermes("weather", '{}'), 0.5, 1.0, 0.5),  # one of two calls is bad
    (_hermes("weather", '{"city": "Oslo",'), 0.0, 0.0, 0.0),  # malformed JSON
    (_hermes("weather", '[1]'), 0.0, 0.0, 0.0),  # arguments not an object
    ('<tool_call>{"arguments": {"city": "Oslo"}}</tool_call>', 0.0, 0.0, 0.0),  # no name
    ("It is sunny in Oslo.", 0.0, 0.0, 0.0),
    ("<think>" + _hermes("weather", '{"city": "Oslo"}') + "</think>It is sunny.", 0.0, 0.0, 0.0),  # only thought of
]


def test_tool_call_valid_scores_parse_and_schema():
    completions = [c for c, *_ in TOOL_CASES]
    prompts, references = ["q"] * len(completions), [None] * len(completions)
    assert tool_call_valid(prompts, completions, references, tools=[WEATHER, NEWS]) == [c[1] for c in TOOL_CASES]
    assert tool_call_valid(prompts, completions, references) == [c[2] for c in TOOL_CASES]
    assert tool_call_valid(prompts, completions, references, tools=[WEATHER, NEWS], format="hermes") == \
        [c[3] for c in TOOL_CASES]


def test_tool_call_valid_refuses_bad_options():
    with pytest.raises(WhetstoneError, match=r"option tools\[0\].name: is missing"):
        tool_call_valid([], [], [], tools=[{"parameters": {}}])
    with pytest.raises(WhetstoneError, match=r"option tools\[1\].function.name: \"weather\" is defined twice"):
        tool_call_valid([], [], [], tools=[WEATHER, WEATHER])
    with pytest.raises(WhetstoneError, match="the list is empty"):
        tool_call_valid([], [], [], tools=[])
    with pytest.raises(WhetstoneError, match="option 'format': got 'xml'; give one of hermes, llama3"):
        tool_call_valid([], [], [], format="xml")


def test_schema_errors_name_the_argument():
    schema = WEATHER["function"]["parameters"]
    assert schema_errors({"city": "Oslo", "hours": [1, 2]}, schema) == []
    assert schema_errors({"city": 3, "unit": "K", "hours": [1.5], "x": 1}, schema) == [
        "arguments.city: 3 is not of type 'string'", "arguments.unit: \"K\" is not one of [\"C\", \"F\"]",
        "arguments.hours[0]: 1.5 is not of type 'integer'", "arguments: 'x' is not a parameter"]
    assert schema_errors({}, schema) == ["arguments: 'city' is required"]
    assert schema_errors(5, {"anyOf": [{"type": "string"}]}) == []  # keywords outside the subset are not checked


# ---------------------------------------------------------------------------
# overlong_penalty


def test_overlong_penalty_is_dapos_soft_punishment():
    # max_length 10, buffer 4: 0 up to 6, then (6 - L) / 4, then -1 beyond 10.
    completions = [" ".join(["w"] * n) for n in (0, 6, 7, 8, 9, 10, 11, 50)]
    expected = [0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0]
    assert overlong_penalty(["q"] * 8, completions, [None] * 8, max_length=10, buffer=4) == expected
    chars = ["abcd", "abcdef", "abcdefgh"]  # 4, 6, 8 characters; max 8, buffer 4: 0, -0.5, -1
    assert overlong_penalty(["q"] * 3, chars, [None] * 3, max_length=8, buffer=4, unit="characters") == \
        [0.0, -0.5, -1.0]
    assert overlong_penalty(["q"] * 2, ["a b", "a b c"], [None] * 2, max_length=2, buffer=0) == [0.0, -1.0]


@pytest.mark.parametrize("options, message", [
    ({"max_length": 10, "buffer": 11}, "buffer from 0 to max_length"),
    ({"max_length": 0, "buffer": 0}, "max_length must be 1 or more"),
    ({"max_length": 10.5, "buffer": 2}, "option 'max_length': got 10.5; give a whole number"),
    ({"max_length": 10, "buffer": True}, "option 'buffer': got True"),
    ({"max_length": 10, "buffer": 2, "unit": "tokens"}, "option 'unit': got 'tokens'; give 'words' or 'characters'"),
])
def test_overlong_penalty_refuses_bad_options(options, message):
    with pytest.raises(WhetstoneError, match=message):
        overlong_penalty([], [], [], **options)


# ---------------------------------------------------------------------------
# Options through the config and the loader.


def _grpo(rewards: str):
    return load_config(None, ["data.train=x.jsonl", "objective.name=grpo", f"objective.reward={rewards}"])


def test_options_from_a_config_reach_the_functions():
    config = _grpo(f"[{{function: '{VERIFIABLE}:regex_format', weight: 0.5, options: {{pattern: 'A: [0-9]+'}}}}, "
                   f"{{function: '{VERIFIABLE}:numeric_match'}}, "
                   f"{{function: '{VERIFIABLE}:overlong_penalty', options: {{max_length: 4, buffer: 2}}}}, "
                   f"{{function: 'whetstone.rewards:exact_match'}}]")
    assert config.objective.reward[0].options == {"pattern": "A: [0-9]+"}
    assert config.objective.reward[1].options == {}
    rewards = load_rewards(config.objective.reward, "cpu")
    assert [r.name for r in rewards] == ["regex_format", "numeric_match", "overlong_penalty", "exact_match"]
    prompts = [(Message("system", "be brief"), Message("user", "6 * 7?"))] * 3
    completions = ["A: 42", "It is 42, I think", "A: 41"]
    total, parts = score_completions(rewards, prompts, completions, ["42", "42", "42"])
    assert parts == {"regex_format": [1.0, 0.0, 1.0], "numeric_match": [1.0, 1.0, 0.0],
                     "overlong_penalty": [0.0, -1.0, 0.0], "exact_match": [0.0, 0.0, 0.0]}
    assert total == [1.5, 0.0, 0.5]


def test_a_users_function_gets_its_options_and_the_last_user_turn(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("def starts(prompts, completions, references, prefix, bonus=0.0):\n"
                    "    pairs = zip(prompts, completions)\n"
                    "    return [float(c.startswith(prefix)) + bonus * (p == 'hi') for p, c in pairs]\n"
                    "def anything(prompts, completions, references, **options):\n"
                    "    return [float(len(options))] * len(completions)\n")
    sources = [RewardSource(function=f"{path}:starts", options={"prefix": "ok", "bonus": 0.25}),
               RewardSource(function=f"{path}:anything", options={"a": 1, "b": 2})]
    rewards = load_rewards(sources, "cpu")
    prompts = [(Message("user", "hi"), Message("assistant", "?"), Message("user", "hi"))] * 2
    _, parts = score_completions(rewards, prompts, ["ok go", "no"], [None, None])
    assert parts == {"starts": [1.25, 0.25], "anything": [2.0, 2.0]}


@pytest.mark.parametrize("source, message", [
    (RewardSource(function=f"{VERIFIABLE}:regex_format", options={"patern": "x"}),
     r"objective.reward\[0\].options.patern: whetstone.rewards.verifiable:regex_format has no parameter 'patern'; "
     r"did you mean 'pattern'\? it takes pattern"),
    (RewardSource(function=f"{VERIFIABLE}:regex_format"),
     r"objective.reward\[0\].options: .*regex_format needs the option 'pattern'; add options: \{pattern: ...\}"),
    (RewardSource(function="whetstone.rewards:exact_match", options={"strict": True}),
     "has no parameter 'strict'; it takes no options"),
    (RewardSource(function=f"{VERIFIABLE}:regex_format", options={"pattern": "x", "completions": []}),
     "options.completions: the loader passes completions itself"),
    # Values are checked when the rewards load, not at the first rollout: an empty batch runs each function.
    (RewardSource(function=f"{VERIFIABLE}:regex_format", options={"pattern": "[0-9"}),
     r"objective.reward\[0\].options \(whetstone.rewards.verifiable:regex_format\): option 'pattern': '\[0-9' is not"),
    (RewardSource(function=f"{VERIFIABLE}:tool_call_valid", options={"tools": [{"name": "f", "parameters": 3}]}),
     r"option tools\[0\].parameters: expected a JSON schema object"),
])
def test_bad_options_fail_when_the_rewards_load(source, message):
    with pytest.raises(WhetstoneError, match=message):
        load_rewards([source], "cpu")


@pytest.mark.parametrize("rewards, message", [
    ("[{function: 'whetstone.rewards:exact_match', options: [pattern]}]",
     r"objective.reward\[0\].options: got \['pattern'\]; must be a mapping of names to values"),
    ("[{function: 'whetstone.rewards:exact_match', options: '\\d+'}]",
     r"objective.reward\[0\].options: got '\\\\d\+'; must be a mapping"),
    ("[{function: 'whetstone.rewards:exact_match', options: {1: x}}]",
     r"objective.reward\[0\].options: got \{1: 'x'\}"),
    ("[{run: runs/rm, options: {a: 1}}]", r"objective.reward\[0\].options: a reward-model run takes no options"),
])
def test_a_bad_options_value_is_a_config_error(rewards, message):
    with pytest.raises(ConfigError, match=message):
        _grpo(rewards)


def test_a_function_without_the_batch_keywords_is_named_at_load(tmp_path):
    path = tmp_path / "typo.py"
    path.write_text("def f(prompts, completions, refs):\n    return [0.0] * len(completions)\n")
    with pytest.raises(WhetstoneError, match=r"objective.reward\[0\]: .*typo.py:f has no parameter 'references'; "
                                             r"a reward function is called as f\(prompts="):
        load_rewards([RewardSource(function=f"{path}:f")], "cpu")


def test_the_existing_function_specs_load_unchanged():
    sources = [RewardSource(function=f"whetstone.rewards:{name}")
               for name in ("exact_match", "contains_reference", "length_penalty")]
    rewards = load_rewards(sources, "cpu")
    prompts = [(Message("user", "Which module?"),)] * 3
    _, parts = score_completions(rewards, prompts, ["`os.path`.", "use os.path here", "OS"], ["os.path"] * 2 + [None])
    assert parts == {"exact_match": [1.0, 0.0, 0.0], "contains_reference": [1.0, 1.0, 0.0],
                     "length_penalty": [-0.01, -0.03, -0.01]}


def test_the_documented_config_loads_and_scores():
    """The YAML of docs/preferences.md's "Verifiable rewards" section, as a user would paste it."""
    docs = (Path(__file__).parents[2] / "docs" / "preferences.md").read_text()
    section = docs[docs.index("### Verifiable rewards"):]
    block = section[section.index("    objective:"):section.index("\n\n", section.index("    objective:"))]
    objective = yaml.safe_load(textwrap.dedent(block))["objective"]
    config = config_from_dict({"data": {"train": "x.jsonl"}, "objective": {"name": "grpo", **objective}})
    rewards = load_rewards(config.objective.reward, "cpu")
    completions = ["<think>5 + 7</think>So \\boxed{12}.",
                   '<tool_call>{"name": "weather", "arguments": {"city": 7}}</tool_call>']
    _, parts = score_completions(rewards, [(Message("user", "q"),)] * 2, completions, ["12", None])
    assert parts == {"numeric_match": [1.0, 0.0], "regex_format": [1.0, 0.0], "tool_call_valid": [0.0, 0.5],
                     "overlong_penalty": [0.0, 0.0]}
