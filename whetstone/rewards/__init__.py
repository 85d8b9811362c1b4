"""Rewards for online RL (ppo, grpo): reward-model runs and Python functions, summed with weights.

A config names each reward:

    reward:
      - {run: runs/rm, weight: 1.0}                                    # objective: reward run
      - {function: whetstone.rewards:exact_match, weight: 1.0}          # a module on the path
      - {function: examples/preferences/rewards.py:answer_format}      # or a file
      - {function: whetstone.rewards.verifiable:regex_format, options: {pattern: '\\d+'}}

A reward function is called once per batch of completions as

    f(prompts=[str], completions=[str], references=[str | None], **options) -> [float]

where a prompt is the text of its last user turn and a reference is the
record's reference answer (format 'prompt'); `options` is the reward's options:
mapping from the config, passed as keyword arguments (none when it has none).
Only the modules and files named in the config are imported. The functions
below are ready to name; so are the verifiable rewards (numeric answers, format
checks, tool calls, an overlong penalty) in whetstone/rewards/verifiable.py.

A reward run whose config.yaml asks for model.trust_remote_code or model.allow_pickle
loads only when the training config grants it, with the same key under its own model:
(or the `train --resume` flag of that name). The reward run's config.yaml alone grants
nothing: it may be someone else's (models/load.py run_model_config).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from whetstone.config import RewardSource
from whetstone.data.records import Message
from whetstone.errors import WhetstoneError

# (prompt messages, completion texts, references) -> one float per completion
ScoreFn = Callable[[list[tuple[Message, ...]], list[str], list[str | None]], list[float]]


@dataclass
class Reward:
    name: str  # for the metrics: reward/<name>
    weight: float
    score: ScoreFn


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip("`'\".").strip()).lower()


def exact_match(prompts: list[str], completions: list[str], references: list[str | None]) -> list[float]:
    """1.0 when the completion equals the reference (case, spaces, quotes and a final period ignored)."""
    return [float(ref is not None and _normalize(c) == _normalize(ref)) for c, ref in zip(completions, references)]


def contains_reference(prompts: list[str], completions: list[str], references: list[str | None]) -> list[float]:
    """1.0 when the reference appears in the completion (case and spaces ignored)."""
    return [float(ref is not None and _normalize(ref) in _normalize(c)) for c, ref in zip(completions, references)]


def length_penalty(prompts: list[str], completions: list[str], references: list[str | None]) -> list[float]:
    """-0.01 per word: with a small weight it breaks ties in favour of shorter answers."""
    return [-0.01 * len(c.split()) for c in completions]


# ---------------------------------------------------------------------------
# Loading what the config names.


def import_function(spec: str, what: str = "objective.reward function") -> Callable:
    """'package.module:function' or 'path/to/file.py:function' -> the function; errors name it as `what`."""
    target, _, name = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise WhetstoneError(f"{what} {spec!r}: the file {target} does not exist.")
        module_name = f"whetstone_reward_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise WhetstoneError(
                f"{what} {spec!r}: cannot import module {target!r} ({exc}). Install it, or name "
                f"a file instead: 'path/to/rewards.py:{name}'."
            ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise WhetstoneError(f"{what} {spec!r}: {target} has no function named {name!r}.")
    return function


BATCH_ARGUMENTS = ("prompts", "completions", "references")  # what every reward function is called with


def check_options(function: Callable, spec: str, options: dict, key: str) -> None:
    """Raise unless `function` takes each of `options` as a keyword and every keyword it needs is among them.

    `key` is where the options sit in the config ("objective.reward[0]"), for the message.
    """
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin or C function: no signature to read
        return
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    missing = [name for name in BATCH_ARGUMENTS if name not in parameters and not takes_any]
    if missing:
        raise WhetstoneError(
            f"{key}: {spec} has no parameter {' or '.join(map(repr, missing))}; a reward function is called as "
            f"f(prompts=[...], completions=[...], references=[...], **options), so it must take those three names."
        )
    named = [name for name, p in parameters.items()
             if name not in BATCH_ARGUMENTS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes = f"it takes {', '.join(named)}" if named else "it takes no options"
    problems = []
    for name in options:
        if name in BATCH_ARGUMENTS:
            problems.append(f"{key}.options.{name}: the loader passes {name} itself; remove it from options")
        elif name not in named and not takes_any:
            close = difflib.get_close_matches(name, named, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            problems.append(f"{key}.options.{name}: {spec} has no parameter {name!r}; {hint}{takes}")
    for name in named:
        if parameters[name].default is inspect.Parameter.empty and name not in options:
            problems.append(f"{key}.options: {spec} needs the option {name!r}; add options: {{{name}: ...}}")
    if problems:
        raise WhetstoneError("; ".join(problems) + ".")


def _function_reward(spec: str, options: dict, key: str) -> ScoreFn:
    function = import_function(spec)
    check_options(function, spec, options, key)
    if options:  # an empty batch, so a bad option value fails now rather than after the first rollout
        try:
            function(prompts=[], completions=[], references=[], **options)
        except WhetstoneError as exc:
            raise WhetstoneError(f"{key}.options ({spec}): {exc}") from None

    def score(prompts: list[tuple[Message, ...]], completions: list[str], references: list[str | None]) -> list[float]:
        texts = [next((m.content for m in reversed(p) if m.role == "user"), "") for p in prompts]
        values = function(prompts=texts, completions=completions, references=references, **options)
        values = list(values) if values is not None else []
        if len(values) != len(completions):
            raise WhetstoneError(
                f"objective.reward function {spec!r} returned {len(values)} values for {len(completions)} completions; "
                f"it must return one float per completion."
            )
        return [float(v) for v in values]

    return score


def _model_reward(run: str, device, grants: dict[str, bool]) -> ScoreFn:
    from whetstone.objectives.reward import load_reward_model

    reward_model = load_reward_model(run, device, **grants)

    def score(prompts: list[tuple[Message, ...]], completions: list[str], references: list[str | None]) -> list[float]:
        answers = [(Message("assistant", c),) for c in completions]
        return reward_model.score(prompts, answers)

    return score


def load_rewards(sources: list[RewardSource], device, *, trust_remote_code: bool = False,
                 allow_pickle: bool = False) -> list[Reward]:
    """The rewards `sources` name; reward runs get the powers granted here (the training config's model:)."""
    grants = {"trust_remote_code": trust_remote_code, "allow_pickle": allow_pickle}
    rewards: list[Reward] = []
    for i, source in enumerate(sources):
        if source.run is not None:
            name, score = Path(source.run).name, _model_reward(source.run, device, grants)
        else:
            score = _function_reward(source.function, source.options, f"objective.reward[{i}]")
            name = source.function.rpartition(":")[2]
        if any(r.name == name for r in rewards):
            name = f"{name}_{len(rewards)}"
        rewards.append(Reward(name, source.weight, score))
    return rewards


def score_completions(rewards: list[Reward], prompts: list[tuple[Message, ...]], completions: list[str],
                      references: list[str | None]) -> tuple[list[float], dict[str, list[float]]]:
    """(weighted sum per completion, each reward's own values by name)."""
    parts = {reward.name: reward.score(prompts, completions, references) for reward in rewards}
    total = [sum(r.weight * parts[r.name][i] for r in rewards) for i in range(len(completions))]
    return total, parts
