"""Programmatic rewards of the GRPO example (configs/grpo.yaml), named there as
'examples/preferences/rewards.py:choice' and 'examples/preferences/rewards.py:answer_format'.

Each is called with the batch's prompts (the text of the last user turn), the
completions and the reference answers (the function the docstring describes), and
returns one float per completion.
"""

from __future__ import annotations

import re

# A bare function name, optionally in backticks, with a module prefix or a final period: `chdir`, os.chdir.
ANSWER = re.compile(r"^`?(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*)`?\.?$")
OPTIONS = re.compile(r"Answer with one of: (.*)\.\s*$")


def choice(prompts: list[str], completions: list[str], references: list[str]) -> list[float]:
    """Exact match: 1.0 for exactly the right name; 0.5 when a longer answer names it and no other option; else 0."""
    scores = []
    for prompt, completion, reference in zip(prompts, completions, references):
        match = ANSWER.match(completion.strip())
        if match:
            scores.append(float(match.group(1) == reference))
            continue
        options = re.findall(r"`(\w+)`", OPTIONS.search(prompt).group(1)) if OPTIONS.search(prompt) else [reference]
        named = {o for o in options if re.search(rf"(?<![\w]){re.escape(o)}(?![\w])", completion)}
        scores.append(0.5 if named == {reference} else 0.0)
    return scores


def answer_format(prompts: list[str], completions: list[str], references: list[str]) -> list[float]:
    """1.0 when the completion is a bare function name, as the prompt asks; else 0 (a regex format check)."""
    return [float(ANSWER.match(c.strip()) is not None) for c in completions]
