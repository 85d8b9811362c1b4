"""Rollouts that call tools: a completion may stop at a tool call; whetstone runs it and the policy goes on.

One completion is a list of segments, in order:

    assistant tokens (sampled, trained)  ->  tool result (rendered by the chat template, NOT trained)  ->
    assistant tokens (sampled, trained)  ->  ...  up to max_tool_calls results, then the final answer

A sampled segment ends at the template's end of turn (or EOS, or the token budget). When it holds a tool call in
the template's format (data/tool_parse.py) and calls remain, each call runs (whetstone/tools.py, with its time
limit), and the tokens the template puts between that assistant turn and the next one (the end of the turn, the
tool messages, the next turn's generation prompt) are appended as a segment the policy did not write. The
rollout's `mask` is 1 on sampled tokens only, so tool results count in neither the loss nor the KL; the
attention mask covers them, so the policy reads them.

The completion budget (objective.max_new_tokens) counts every token of the completion, tool results included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from whetstone.data.render import end_of_turn_ids, render_or_none, render_prompt, stop_ids
from whetstone.data.tool_parse import parse_tool_calls, split_reasoning, tool_call_format
from whetstone.tools import Tool, run_tool

Generate = Callable[[list[list[int]], int], list[list[int]]]
"""(token contexts, max new tokens) -> each context's new tokens, ending at (and including) a stop token if one came."""


@dataclass
class Turns:
    """One completion as it grows: its segments, and the conversation that the template renders."""

    messages: list[dict]  # the prompt's turns, then each assistant turn and tool result so far
    segments: list[tuple[list[int], bool]] = field(default_factory=list)  # (token ids, sampled by the policy)
    calls: int = 0
    done: bool = False

    @property
    def length(self) -> int:
        return sum(len(ids) for ids, _ in self.segments)

    def ids(self) -> list[int]:
        return [t for ids, _ in self.segments for t in ids]

    def mask(self) -> list[float]:
        return [1.0 if sampled else 0.0 for ids, sampled in self.segments for _ in ids]


def tool_rollout(prompts: list[tuple[list[int], list[dict]]], generate: Generate, tokenizer, tools: dict[str, Tool],
                 max_new_tokens: int, max_tool_calls: int, timeout: float) -> list[Turns]:
    """Each prompt's completion, with up to `max_tool_calls` tool results spliced in.

    `prompts`: (rendered prompt ids, prompt messages as dicts). `generate` samples for every unfinished
    completion at once; the contexts it gets are each prompt's ids followed by its completion so far.
    """
    family = tool_call_format(tokenizer)
    schemas = [tool.schema for tool in tools.values()]
    turns = [Turns(list(messages)) for _, messages in prompts]
    while True:
        active = [i for i, t in enumerate(turns) if not t.done and t.length < max_new_tokens]
        if not active:
            return turns
        budget = max_new_tokens - min(turns[i].length for i in active)
        contexts = [prompts[i][0] + turns[i].ids() for i in active]
        for i, new in zip(active, generate(contexts, budget)):
            turn = turns[i]
            new = new[: max_new_tokens - turn.length]
            turn.segments.append((new, True))
            text = tokenizer.decode(new, skip_special_tokens=False)
            _, answer = split_reasoning(_strip_stop(text, tokenizer), tokenizer)
            content, calls = parse_tool_calls(answer, family)
            if not calls or turn.calls >= max_tool_calls or not _ended(new, tokenizer):
                turn.done = True
                continue
            calls = calls[: max_tool_calls - turn.calls]
            turn.calls += len(calls)
            # Templates read a call's arguments as a mapping (message_dicts does the same for training data).
            assistant = {"role": "assistant", "content": content, "tool_calls": [
                {**call, "function": {"name": call["function"]["name"], "arguments": _arguments(call)}}
                for call in calls]}
            results = [{"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"],
                        "content": run_tool(tools.get(call["function"]["name"]), _arguments(call), timeout)}
                       for call in calls]
            between = tool_result_ids(tokenizer, turn.messages, assistant, results, schemas)
            turn.messages += [assistant, *results]
            if between is None:  # the template cannot show a tool result: the completion ends at its call
                turn.done = True
                continue
            turn.segments.append((between[: max_new_tokens - turn.length], False))


def tool_result_ids(tokenizer, messages: list[dict], assistant: dict, results: list[dict],
                    schemas: list[dict]) -> list[int] | None:
    """The tokens the template puts after an assistant turn that called tools: the rest of that turn after its end
    token, the tool messages, and the next assistant turn's generation prompt. None when it cannot render them."""
    with_call = render_or_none(tokenizer, messages + [assistant], False, schemas)
    with_results = render_or_none(tokenizer, messages + [assistant, *results], True, schemas)
    if with_call is None or with_results is None or not with_results.startswith(with_call):
        return None
    ends = [tokenizer.decode([t]) for t in end_of_turn_ids(tokenizer)]
    cut = max((with_call.rfind(end) + len(end) for end in ends if end and end in with_call), default=len(with_call))
    # The sampled turn stopped at its end token; what the template writes after that token (a newline) comes first.
    return tokenizer(with_call[cut:] + with_results[len(with_call):], add_special_tokens=False)["input_ids"]


def _ended(new: list[int], tokenizer) -> bool:
    return bool(new) and new[-1] in set(stop_ids(tokenizer))


def _strip_stop(text: str, tokenizer) -> str:
    for stop in stop_ids(tokenizer):
        piece = tokenizer.decode([stop])
        if piece and text.endswith(piece):
            return text[: -len(piece)]
    return text


def _arguments(call: dict) -> dict:
    import json

    try:
        arguments = json.loads(call["function"]["arguments"])
    except ValueError:
        return {}
    return arguments if isinstance(arguments, dict) else {}


def rollout_tensors(prompt_ids: list[list[int]], turns: list[Turns], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Left-padded prompts (N, P) and right-padded completions (N, L), as a Rollout holds them."""
    width = max(len(ids) for ids in prompt_ids)
    length = max(1, max(t.length for t in turns))
    input_ids = torch.full((len(turns), width + length), pad_id, dtype=torch.long)  # (N, P + L)
    attention_mask = torch.zeros((len(turns), width + length), dtype=torch.long)  # (N, P + L)
    mask = torch.zeros((len(turns), length))  # (N, L): 1 on sampled tokens only
    for row, (ids, turn) in enumerate(zip(prompt_ids, turns)):
        input_ids[row, width - len(ids) : width] = torch.tensor(ids)
        attention_mask[row, width - len(ids) : width] = 1
        completion = turn.ids()
        input_ids[row, width : width + len(completion)] = torch.tensor(completion, dtype=torch.long)
        attention_mask[row, width : width + len(completion)] = 1
        mask[row, : len(completion)] = torch.tensor(turn.mask())
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device), "mask": mask.to(device),
            "n_prompt": width}


def render_tool_prompt(tokenizer, messages: list[dict], tools: dict[str, Tool]) -> str:
    """The prompt with the tools shown, as the template shows them."""
    return render_prompt(tokenizer, messages, tools=[tool.schema for tool in tools.values()])


def policy_sampler(model, tokenizer, temperature: float, top_p: float, device) -> Generate:
    """`Generate` by sampling from `model` (no top-k, no repetition penalty: the distribution the log-probs read),
    every context at once, left-padded, stopping at the template's end of turn or EOS."""
    from transformers import GenerationConfig

    pad_id, stops = tokenizer.pad_token_id, stop_ids(tokenizer)

    @torch.no_grad()
    def generate(contexts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        width = max(len(c) for c in contexts)
        ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)  # (N, W), left-padded
        attention = torch.zeros((len(contexts), width), dtype=torch.long)
        for row, context in enumerate(contexts):
            ids[row, width - len(context) :] = torch.tensor(context)
            attention[row, width - len(context) :] = 1
        config = GenerationConfig(do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                                  max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad_id)
        out = model.generate(input_ids=ids.to(device), attention_mask=attention.to(device), generation_config=config)
        new = []
        for row in out[:, width:].tolist():  # up to and including the first stop token; after it, padding
            end = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))
            new.append(row[:end])
        return new

    return generate
