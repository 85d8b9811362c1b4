"""Verifiable rewards: a completion checked against its reference answer, a format, or the tools it may call.

Ready to name in a config (ppo and grpo), with their options:

    objective:
      reward:
        - {function: whetstone.rewards.verifiable:numeric_match, weight: 1.0}
        - {function: whetstone.rewards.verifiable:regex_format, weight: 0.2,
           options: {pattern: '(?s)<think>.+</think>.*\\\\boxed\\{.+\\}.*'}}
        - {function: whetstone.rewards.verifiable:overlong_penalty, options: {max_length: 300, buffer: 60}}

Each is a plain function with the signature every reward function has,

    f(prompts: list[str], completions: list[str], references: list[str | None], **options) -> list[float]

one float per completion, where a prompt is the text of its last user turn and a reference the
record's reference answer. A config's `options:` arrive as keyword arguments; your own reward
function may import these and call them the same way:

    from whetstone.rewards.verifiable import numeric_match, overlong_penalty

    def answer_and_length(prompts, completions, references):
        right = numeric_match(prompts, completions, references)
        long = overlong_penalty(prompts, completions, references, max_length=200, buffer=50)
        return [r + p for r, p in zip(right, long)]

A bad option raises WhetstoneError; the loader calls each function that has options once with an
empty batch when training starts, so that happens before the first rollout.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction

from whetstone.data.fields import Fields
from whetstone.data.readers import Row
from whetstone.data.tool_parse import TOOL_CALL_FORMATS, parse_tool_calls, split_reasoning
from whetstone.errors import WhetstoneError

# ---------------------------------------------------------------------------
# Numeric answers.

RELATIVE_TOLERANCE = Fraction(1, 10**6)

# LaTeX an answer is often written in, rewritten to plain text before numbers are read.
_LATEX = (
    (re.compile(r"\\[dt]?frac\s*\{\s*([-+]?\d+)\s*\}\s*\{\s*(\d+)\s*\}"), r"\1/\2"),  # \frac{3}{4} -> 3/4
    (re.compile(r"\\[dt]?frac(\d)(\d)"), r"\1/\2"),  # \frac34
    (re.compile(r"\\(?:text|mathrm|mbox)\s*\{([^{}]*)\}"), r" \1"),  # \text{ km}: a unit, kept as words
    (re.compile(r"\{,\}"), ","),  # 1{,}234
    (re.compile(r"\\[,;: ]"), " "),  # thin spaces: 1\,234
    (re.compile(r"\\([$%])"), r"\1"),  # \$ and \%
)
# Unicode minus and the spaces that separate thousands (no-break, narrow no-break, thin).
_PLAIN = str.maketrans({"\u2212": "-", "\u00a0": " ", "\u202f": " ", "\u2009": " "})
_NUMBER = re.compile(
    r"(?<![\w.])"  # not the tail of a word (x2) or of a dotted number (1.2.3)
    r"(?P<sign>[-+]?)(?:[$€£¥]\s?)?(?P<sign_after>[-+]?)"  # -$5, $-5, +5
    r"(?:(?P<whole>\d{1,3}(?:,\d{3})+(?!\d)|\d{1,3}(?: \d{3})+(?!\d)|\d+)(?:\.(?P<decimals>\d+))?"  # 1,234.5 / 1 234
    r"|\.(?P<bare_decimals>\d+))"  # .5
    r"(?:[eE](?P<exponent>[-+]?\d+))?"
    r"(?:\s*/\s*(?P<denominator>\d+)(?!\d|\.\d))?"  # 3/4
)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_MARKER = re.compile(r"answer\s+is\b|answer\s*:|####", re.IGNORECASE)


def _number(match: re.Match) -> Fraction | None:
    whole = (match["whole"] or "0").replace(",", "").replace(" ", "")
    try:
        value = Fraction(f"{whole}.{match['decimals'] or match['bare_decimals'] or '0'}")
        exponent, denominator = int(match["exponent"] or 0), int(match["denominator"] or 1)
    except ValueError:  # more digits than Python converts (4,300)
        return None
    if abs(exponent) > 400 or denominator == 0:  # 400: beyond any float; 10**huge would stall the process
        return None
    value *= Fraction(10) ** exponent / denominator
    return -value if "-" in match["sign"] + match["sign_after"] else value


def _braced(text: str, start: int) -> str:
    """The text from `start` to the brace that closes the one just before it (the rest when none does)."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return text[start:]


def extract_number(text: str) -> Fraction | None:
    """The answer a text gives as a number, or None when it gives none.

    Where the answer is: inside the last \\boxed{...} (its first number); else after the last
    "answer is", "Answer:" or "####" (the first number after it, None when none follows); else the
    text's last number.
    Thousands separators (1,234 and 1 234), a sign, a currency sign, a trailing unit, % or period,
    fractions (3/4, \\frac{3}{4}) and exponents (1e-3) are read; a % is dropped, not divided by 100.

    >>> extract_number("So the total is $1,234.50.")
    Fraction(2469, 2)
    """
    text = text.translate(_PLAIN)
    for pattern, replacement in _LATEX:
        text = pattern.sub(replacement, text)
    boxes = list(_BOXED.finditer(text))
    markers = list(_ANSWER_MARKER.finditer(text))
    if boxes:
        numbers = _NUMBER.finditer(_braced(text, boxes[-1].end()))
    elif markers:
        numbers = _NUMBER.finditer(text, markers[-1].end())
    else:
        numbers = reversed(list(_NUMBER.finditer(text)))
    return next((n for n in map(_number, numbers) if n is not None), None)


def numeric_match(prompts: list[str], completions: list[str], references: list[str | None]) -> list[float]:
    """1.0 when the completion's answer is the reference's number, else 0. No options.

    Both numbers are read by `extract_number` (a reference may be a bare number, or a worked
    solution ending in "#### 72" or \\boxed{72}); they match within a relative 1e-6. Reasoning
    (<think>...</think>) is left out of the completion first. A reference with no number in it
    (or none at all) scores 0, whatever the completion says.

    >>> numeric_match(["q"] * 3, ["The answer is \\\\boxed{1,234}", "Answer: 0.75 kg", "about 12"],
    ...               ["1234", "#### 3/4", "twelve"])
    [1.0, 1.0, 0.0]
    """
    scores = []
    for completion, reference in zip(completions, references):
        expected = extract_number(reference) if reference is not None else None
        got = extract_number(split_reasoning(completion)[1]) if expected is not None else None
        same = got is not None and abs(got - expected) <= RELATIVE_TOLERANCE * max(abs(got), abs(expected))
        scores.append(float(same))
    return scores


# ---------------------------------------------------------------------------
# Format checks.


def _string_option(name: str, value) -> str:
    if not isinstance(value, str):
        raise WhetstoneError(f"option {name!r}: got {value!r} ({type(value).__name__}); give a string.")
    return value


def exact_format(prompts: list[str], completions: list[str], references: list[str | None], *,
                 text: str) -> list[float]:
    """1.0 when the completion, stripped of surrounding whitespace, is exactly `text` (also stripped); else 0.

    Option `text` (required): the string the completion must be.

    >>> exact_format(["q"] * 2, [" yes\\n", "Yes"], [None] * 2, text="yes")
    [1.0, 0.0]
    """
    wanted = _string_option("text", text).strip()
    return [float(c.strip() == wanted) for c in completions]


def regex_format(prompts: list[str], completions: list[str], references: list[str | None], *,
                 pattern: str) -> list[float]:
    """1.0 when the regular expression `pattern` matches the whole completion (stripped of surrounding whitespace).

    Option `pattern` (required): a Python regular expression. `.` does not cross lines unless
    the pattern starts with (?s); (?i) ignores case. Reasoning is not left out: a pattern may check it.

    >>> regex_format(["q"] * 2, ["<think>hm</think> 42", "42"], [None] * 2, pattern=r"(?s)<think>.+</think>\\s*\\d+")
    [1.0, 0.0]
    """
    try:
        compiled = re.compile(_string_option("pattern", pattern))
    except re.error as exc:
        raise WhetstoneError(f"option 'pattern': {pattern!r} is not a regular expression ({exc}).") from None
    return [float(compiled.fullmatch(c.strip()) is not None) for c in completions]


# ---------------------------------------------------------------------------
# Tool calls.

_SCHEMA_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_errors(value, schema: dict, where: str = "arguments") -> list[str]:
    """Where `value` breaks the JSON schema `schema`, [] when it does not.

    The subset OpenAI function schemas use: type (one or a list), properties, required, enum,
    items, additionalProperties (false or a schema). Other keywords (anyOf, pattern, minimum,
    format, ...) are not checked: a value passes them.

    >>> schema_errors({"city": 3}, {"type": "object", "properties": {"city": {"type": "string"}}})
    ["arguments.city: 3 is not of type 'string'"]
    """
    if not isinstance(schema, dict):  # a malformed schema checks nothing rather than failing every call
        return []
    types = schema.get("type")
    types = [types] if isinstance(types, str) else types if isinstance(types, list) else []
    if types and not any(_SCHEMA_TYPES.get(t, lambda v: True)(value) for t in types):  # unknown type names pass
        return [f"{where}: {json.dumps(value)} is not of type {' or '.join(repr(t) for t in types)}"]
    if isinstance(schema.get("enum"), list) and value not in schema["enum"]:
        return [f"{where}: {json.dumps(value)} is not one of {json.dumps(schema['enum'])}"]
    errors = []
    if isinstance(value, dict):
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        required = schema.get("required") if isinstance(schema.get("required"), list) else []
        errors += [f"{where}: '{name}' is required" for name in required if name not in value]
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                errors += schema_errors(item, properties[name], f"{where}.{name}")
            elif extra is False:
                errors.append(f"{where}: '{name}' is not a parameter")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, f"{where}.{name}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{where}[{i}]")
    return errors


def _tool_schemas(tools) -> dict[str, dict]:
    """{name: parameters schema} of the `tools` option, read as a data file's `tools` field is (docs/data.md)."""
    fields = Fields(Row("option 'tools'", 0, {"tools": tools}), None, None, set())
    read = fields.tools("tools")
    if read is None:
        raise WhetstoneError("; ".join(f"option {p.field}: {p.reason}" for p in fields.problems) + ".")
    if not read:
        raise WhetstoneError("option 'tools': the list is empty; give the tools, or leave the option out "
                             "to accept a call to any name.")
    return {tool["function"]["name"]: tool["function"].get("parameters") or {} for tool in read}


def _calls(text: str, families: tuple[str, ...]) -> list[tuple[str, dict]]:
    """(name, arguments) of each call in the first of `families` that finds any (tool_parse reads them)."""
    for family in families:
        _, calls = parse_tool_calls(text, family)
        if calls:
            return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]
    return []


def tool_call_valid(prompts: list[str], completions: list[str], references: list[str | None], *,
                    tools: list[dict] | None = None, format: str | None = None) -> list[float]:
    """1.0 for a well-formed tool call, 0.5 for one that parses but does not fit the tools, 0 for none.

    A call is in one of the formats data/tool_parse.py reads (hermes <tool_call>{...}</tool_call>,
    llama3, mistral [TOOL_CALLS], harmony), with a name and an arguments object; reasoning is
    left out first. With `tools`, every call must name one of them and its arguments pass that
    tool's parameters schema (`schema_errors`) for 1.0; else any parsed call scores 1.0.

    Options: `tools` (optional), a list of function schemas as a data file's `tools` field holds them
    ({"type": "function", "function": {"name", "parameters"}} or the bare {"name", "parameters"});
    `format` (optional), one of hermes, llama3, mistral, harmony: read only that markup (default: any).

    >>> weather = {"name": "weather", "parameters": {"type": "object", "required": ["city"],
    ...            "properties": {"city": {"type": "string"}}}}
    >>> tool_call_valid(["q"] * 3, ['<tool_call>{"name": "weather", "arguments": {"city": "Oslo"}}</tool_call>',
    ...                             '<tool_call>{"name": "weather", "arguments": {}}</tool_call>',
    ...                             '<tool_call>{"name": "weather", "arguments": </tool_call>'],
    ...                 [None] * 3, tools=[weather])
    [1.0, 0.5, 0.0]
    """
    if format is not None and format not in TOOL_CALL_FORMATS:
        raise WhetstoneError(f"option 'format': got {format!r}; give one of {', '.join(TOOL_CALL_FORMATS)}, "
                             f"or leave it out to read any of them.")
    schemas = _tool_schemas(tools) if tools is not None else None
    families = (format,) if format else TOOL_CALL_FORMATS
    scores = []
    for completion in completions:
        calls = _calls(split_reasoning(completion)[1], families)
        fits = schemas is None or all(name in schemas and not schema_errors(arguments, schemas[name])
                                      for name, arguments in calls)
        scores.append(0.0 if not calls else 1.0 if fits else 0.5)
    return scores


# ---------------------------------------------------------------------------
# Length.

LENGTH_UNITS = ("words", "characters")


def overlong_penalty(prompts: list[str], completions: list[str], references: list[str | None], *,
                     max_length: int, buffer: int, unit: str = "words") -> list[float]:
    """DAPO's soft overlong punishment (Yu et al. 2025): 0 up to max_length - buffer, then falling
    linearly to -1 at max_length, and -1 beyond it.

        R(L) = 0                                  L <= max_length - buffer
               (max_length - buffer - L) / buffer   max_length - buffer < L <= max_length
               -1                                 L > max_length

    Options: `max_length` (required, an integer >= 1), `buffer` (required, 0 to max_length; 0 gives
    a step from 0 to -1), `unit` ("words", the default, split on whitespace; or "characters").
    DAPO counts tokens; a reward function sees text, so set max_length a little under the
    generation limit in words (about 0.75 of max_new_tokens for English).

    >>> overlong_penalty(["q"] * 3, ["a b c", "a b c d e", "a " * 9], [None] * 3, max_length=6, buffer=2)
    [0.0, -0.5, -1.0]
    """
    for name, value in (("max_length", max_length), ("buffer", buffer)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise WhetstoneError(f"option {name!r}: got {value!r}; give a whole number.")
    if max_length < 1 or not 0 <= buffer <= max_length:
        raise WhetstoneError(f"options max_length={max_length}, buffer={buffer}: max_length must be 1 or more and "
                             f"buffer from 0 to max_length (DAPO: 20480 and 4096 tokens).")
    if unit not in LENGTH_UNITS:
        raise WhetstoneError(f"option 'unit': got {unit!r}; give 'words' or 'characters'.")
    scores = []
    for completion in completions:
        length = len(completion.split()) if unit == "words" else len(completion)
        if length <= max_length - buffer:
            scores.append(0.0)
        elif length <= max_length:
            scores.append((max_length - buffer - length) / buffer)
        else:
            scores.append(-1.0)
    return scores
