"""`whetstone label prepare`: sample answers to prompts and write them as pairs to judge.

Two ways to make a pair:

- one model, N samples per prompt (temperature > 0): every pair of its samples is a
  task (N=2 gives one pair, N=3 three), so people rank the model against itself, which
  is the data a reward model or DPO needs;
- `--against SPEC`: N samples per side, sample k of the model against sample k of the
  other run, adapter or model: an A/B comparison of two runs.

Everything that decides an answer is written into each task's `settings`: the model
source, temperature, max_new_tokens, batch size and the torch seed of the batch the
answer came from (`seed + 1000 * sample + batch`), so a task file can be regenerated.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from whetstone.errors import WhetstoneError
from whetstone.label.store import Answer, Task, task_to_json
from whetstone.overwrite import refuse_input_as_output
from whetstone.rundir import RunDir


@dataclass(frozen=True)
class Source:
    """One side's weights, as `load_for_inference` takes them."""

    model: str | None = None
    adapter: str | None = None
    run: str | None = None

    @property
    def label(self) -> str:
        if self.run:
            return f"run:{self.run}"
        base = self.model or "smollm2-135m-instruct"
        return f"{base}+adapter:{self.adapter}" if self.adapter else base


def against_source(spec: str, model: str | None) -> Source:
    """--against SPEC: a run directory, an adapter (directory or library name) on --model, or a model."""
    path = Path(spec)
    if RunDir.is_run(path):
        return Source(run=spec)
    if (path / "adapter_config.json").is_file():
        return Source(model=model, adapter=spec)
    from whetstone.adapters import AdapterLibrary

    if spec in AdapterLibrary().entries():
        return Source(model=model, adapter=spec)
    return Source(model=spec)


@dataclass
class PrepareResult:
    prompts: int
    tasks: int
    identical: int  # pairs dropped because both answers were the same text
    path: Path


def read_prompts(path: str) -> list[tuple[str, tuple[dict, ...]]]:
    """(origin, prompt messages) of every record that has a prompt; chat records lose their last answer."""
    from whetstone.data.formats import load_records

    out = []
    for record in load_records(path).records:
        if record.kind == "text" or record.kind == "classification":
            raise WhetstoneError(f"{path}: {record.kind} records have no prompt; give a file of prompts "
                                 f"(`prompt`, `messages`, `prompt/completion`, preference or KTO rows).")
        messages = list(record.messages)
        while messages and messages[-1].role == "assistant":  # a chat record's answer is not part of the prompt
            messages.pop()
        if not messages or messages[-1].role != "user":
            raise WhetstoneError(f"{record.origin}: the prompt must end on a user turn.")
        out.append((record.origin, tuple({"role": m.role, "content": m.content} for m in messages)))
    return out


def prepare(prompts_path: str, output: str | Path, source: Source, against: Source | None = None, n: int = 2,
            limit: int | None = None, seed: int = 0, temperature: float = 0.7, max_new_tokens: int = 128,
            batch_size: int = 8, overwrite: bool = False, progress: bool = True, trust_remote_code: bool = False,
            allow_pickle: bool = False) -> PrepareResult:
    output = Path(output)
    refuse_input_as_output(prompts_path, output, "label prepare")
    if output.exists() and not overwrite:
        raise WhetstoneError(f"{output} exists; labels refer to its task ids, so it is not replaced. Pass "
                             f"--overwrite, or write to another file.")
    if n < (1 if against else 2):
        raise WhetstoneError(f"--n {n}: one model needs at least 2 answers per prompt to make a pair (or give "
                             f"--against for a second model, where --n 1 is enough).")
    if temperature < 0:
        raise WhetstoneError(f"--temperature must be >= 0, got {temperature}.")
    if temperature == 0 and n > 1:
        raise WhetstoneError(f"--temperature 0 is greedy: the {n} samples of a prompt would be identical. Use "
                             f"--temperature > 0 (e.g. 0.7), or --n 1 with --against to compare two models greedily.")
    if max_new_tokens < 1 or batch_size < 1:
        raise WhetstoneError("--max-new-tokens and --batch-size must be at least 1.")
    prompts = read_prompts(prompts_path)
    if limit is not None:
        if limit < 1:
            raise WhetstoneError(f"--limit must be at least 1, got {limit}.")
        if limit < len(prompts):  # a seeded sample, kept in file order
            keep = sorted(random.Random(seed).sample(range(len(prompts)), limit))
            prompts = [prompts[i] for i in keep]
    sides = [("m", source)] + ([("o", against)] if against else [])
    batches = -(-len(prompts) // batch_size)
    settings = {"seed": seed, "temperature": temperature, "max_new_tokens": max_new_tokens,
                "batch_size": batch_size, "n": n, "prompts": str(prompts_path), "limit": limit,
                "sources": {prefix: side.label for prefix, side in sides}}

    from tqdm import tqdm

    bar = tqdm(total=len(sides) * n * batches, unit="batch", desc="sampling", file=sys.stderr, dynamic_ncols=True,
               disable=not progress)
    # answers[prefix][k][i]: sample k of prompt i from that side; seeds likewise
    answers: dict[str, list[list[str]]] = {}
    seeds: dict[str, list[list[int]]] = {}
    try:
        for prefix, side in sides:
            answers[prefix], seeds[prefix] = _sample(side, [p for _, p in prompts], n, seed, temperature,
                                                     max_new_tokens, batch_size, bar,
                                                     trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    finally:
        bar.close()

    tasks, identical = [], 0
    for i, (origin, prompt) in enumerate(prompts):
        if against:
            pairs = [(("m", k), ("o", k)) for k in range(n)]
        else:
            pairs = list(itertools.combinations([("m", k) for k in range(n)], 2))
        for left, right in pairs:
            pair = [Answer(f"{p}{k}", answers[p][k][i], dict(sides)[p].label) for p, k in (left, right)]
            if pair[0].text == pair[1].text:
                identical += 1  # nothing to choose between
                continue
            task_settings = dict(settings, prompt_origin=origin,
                                 answer_seeds={f"{p}{k}": seeds[p][k][i] for p, k in (left, right)})
            tasks.append(Task(f"p{i}-{pair[0].id}-{pair[1].id}", prompt, (pair[0], pair[1]), task_settings))
    if not tasks:
        raise WhetstoneError(f"every pair of answers was identical ({identical}); raise --temperature or "
                             f"--max-new-tokens so the answers differ.")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text("".join(json.dumps(task_to_json(t), ensure_ascii=False) + "\n" for t in tasks), encoding="utf-8")
    os.replace(tmp, output)  # a half-written task file never appears under the real name
    return PrepareResult(len(prompts), len(tasks), identical, output)


def _sample(side: Source, prompts: list[tuple[dict, ...]], n: int, seed: int, temperature: float,
            max_new_tokens: int, batch_size: int, bar, *, trust_remote_code: bool,
            allow_pickle: bool) -> tuple[list[list[str]], list[list[int]]]:
    """n samples of every prompt from one side, a batch at a time: ([k][i] answers, [k][i] seeds)."""
    from whetstone.models.inference import generate_answers, load_for_inference

    model, tokenizer = load_for_inference(side.model, side.adapter, side.run, trust_remote_code=trust_remote_code,
                                          allow_pickle=allow_pickle)
    texts: list[list[str]] = []
    seeds: list[list[int]] = []
    for k in range(n):
        texts.append([])
        seeds.append([])
        for b, start in enumerate(range(0, len(prompts), batch_size)):
            chunk = [list(p) for p in prompts[start : start + batch_size]]
            batch_seed = seed + 1000 * k + b  # one seed per batch: regenerate any answer from its task alone
            texts[k].extend(generate_answers(model, tokenizer, chunk, max_new_tokens, temperature,
                                             batch_size=batch_size, seed=batch_seed))
            seeds[k].extend([batch_seed] * len(chunk))
            bar.update(1)
    del model  # the other side loads next; one model in memory at a time
    return texts, seeds
