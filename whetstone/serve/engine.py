"""The engine of `whetstone serve`: one model, named adapters, token-by-token generation.

All adapters sit on one PeftModel over one copy of the base, so N adapters cost N small
weight files, and switching is `set_adapter` (no reload).
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from whetstone.data.tool_parse import parse_reply
from whetstone.errors import WhetstoneError
from whetstone.serve.request import RequestError


@dataclass
class Generation:
    """What one request produced, filled in while it streams."""

    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str | None = None
    text: str = ""  # as a person reads it: the tokenizer's special tokens left out
    raw_text: str = ""  # with them: the markup (<|channel|>, [TOOL_CALLS], ...) that tool_parse reads
    started: float = field(default_factory=time.perf_counter)


class Engine:
    def __init__(self, model_spec: str, adapters: dict[str, str] | None = None, device: str = "cpu", *,
                 trust_remote_code: bool = False, allow_pickle: bool = False):
        from whetstone.config import ModelConfig
        from whetstone.models.load import load_model, load_tokenizer

        self.base_id = model_spec
        # Only `serve`'s own flags grant these: never a run directory or the adapter catalogue (run_model_config).
        base = ModelConfig(name=model_spec, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        self.tokenizer = load_tokenizer(base)
        model, _ = load_model(base, device=device)
        self.adapters = dict(adapters or {})
        if self.base_id in self.adapters:
            raise WhetstoneError(f"--adapter {self.base_id}: an adapter cannot share the base model's id.")
        if self.adapters:
            from peft import PeftModel

            names = list(self.adapters)
            model = PeftModel.from_pretrained(model, self.adapters[names[0]], adapter_name=names[0])
            for name in names[1:]:
                model.load_adapter(self.adapters[name], adapter_name=name)
        self.model = model.eval()
        # transformers 5 renamed the KV-cache argument; this file is where that quirk lives.
        forward = self.model.get_base_model().forward if self.adapters else self.model.forward
        params = inspect.signature(forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.context_length = getattr(self.model.config, "max_position_embeddings", None) or 2048
        from whetstone.data.render import stop_ids

        self.stop_ids = set(stop_ids(self.tokenizer))  # the template's end of turn (Gemma, Phi-3) and EOS
        # Longest first, so that no special token is removed from inside another.
        self.special_texts = sorted({t.content for t in self.tokenizer.added_tokens_decoder.values() if t.special},
                                    key=len, reverse=True)
        self.lock = threading.Lock()

    @property
    def model_ids(self) -> list[str]:
        return [self.base_id, *self.adapters]

    def _weights(self, model_id: str):
        """A context in which self.model computes with `model_id`'s weights."""
        if not self.adapters:
            return nullcontext()
        if model_id == self.base_id:
            return self.model.disable_adapter()
        self.model.set_adapter(model_id)
        return nullcontext()

    def chat_prompt(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        from whetstone.data.render import render_prompt

        text = render_prompt(self.tokenizer, messages) if not tools else render_with_tools(self.tokenizer, messages,
                                                                                           tools)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def visible(self, text: str) -> str:
        """`text` without the tokenizer's special tokens (what decode(skip_special_tokens=True) leaves)."""
        for special in self.special_texts:
            text = text.replace(special, "")
        return text.strip()

    def text_prompt(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    @torch.no_grad()
    def stream(self, model_id: str, prompt_ids: list[int], max_tokens: int, temperature: float, top_p: float,
               stop: list[str], seed: int | None, deadline: float, result: Generation) -> Iterator[str]:
        """Yield text deltas; fill `result`. The caller holds self.lock.

        Each step feeds one token and reuses the KV cache: O(T) work per token
        instead of re-running the whole prefix.
        """
        generator = torch.Generator().manual_seed(seed if seed is not None else int(time.time_ns() % 2**31))
        device = next(self.model.parameters()).device
        ids: list[int] = []
        sent = ""
        with self._weights(model_id):
            from transformers import DynamicCache

            cache = DynamicCache(config=self.model.config)  # filled in place by each forward
            step_input = torch.tensor([prompt_ids], device=device)  # (1, T) first, then (1, 1)
            for _ in range(max_tokens):
                if time.monotonic() > deadline:
                    raise RequestError(504, f"the request ran past the server's timeout after {len(ids)} tokens; "
                                            f"ask for fewer max_tokens.", kind="timeout")
                # logits_to_keep=1: the prompt's other positions need no (T, V) projection.
                out = self.model(input_ids=step_input, use_cache=True, logits_to_keep=1, **{self._cache_arg: cache})
                next_id = _choose(out.logits[0, -1].float(), temperature, top_p, generator)  # logits (V,)
                if next_id in self.stop_ids:
                    result.finish_reason = "stop"
                    break
                ids.append(next_id)
                result.completion_tokens = len(ids)
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                cut = _stop_at(text, stop)
                if cut is not None:
                    text, result.finish_reason = text[:cut], "stop"
                # Hold back an unfinished UTF-8 character and any tail that may grow into a stop string.
                ready = len(text) if cut is not None else _safe_length(text, stop)
                if ready > len(sent):
                    delta, sent = text[len(sent) : ready], text[:ready]
                    yield delta
                if cut is not None:
                    break
                step_input = torch.tensor([[next_id]], device=device)
            else:
                result.finish_reason = "length"
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cut = _stop_at(text, stop)
        text = text[:cut] if cut is not None else text
        if len(text) > len(sent) and text.startswith(sent):
            yield text[len(sent) :]
        result.text = text
        raw = self.tokenizer.decode(ids, skip_special_tokens=False)
        cut = _stop_at(raw, stop)
        result.raw_text = raw[:cut] if cut is not None else raw


def render_with_tools(tokenizer, messages: list[dict], tools: list[dict]) -> str:
    """render.render_prompt with the functions a request offers.

    A template that ignores `tools` would leave the model unaware of them: that is an error, not a
    prompt quietly without them.
    """
    from whetstone.data.render import render_prompt

    plain = render_prompt(tokenizer, messages)  # raises the user-facing error for a missing or broken template
    text = render_prompt(tokenizer, messages, tools)
    if text == plain:
        raise WhetstoneError("this model's chat template does not show tools to the model, so it cannot call them; "
                             "leave 'tools' out, or serve a model whose template renders them.")
    return text


@dataclass
class ReplyFormat:
    """How a chat reply is taken apart (tool_parse.parse_reply)."""

    tools: bool  # the request offered tools: read tool calls
    opened: bool  # the prompt ends inside <think>: the reply starts with reasoning


def reply_message(engine: Engine, result: Generation, reply: ReplyFormat | None) -> tuple[dict, str | None]:
    """(the assistant message of a chat reply, its finish_reason)."""
    if reply is None:
        return {"role": "assistant", "content": result.text}, result.finish_reason
    parsed = parse_reply(result.raw_text, engine.tokenizer, tools=reply.tools, opened=reply.opened)
    calls = parsed["tool_calls"]
    if parsed["reasoning"] is None and not calls and parsed["content"] == result.raw_text:
        content = result.text  # nothing was taken apart
    else:
        content = engine.visible(parsed["content"])
    message = {"role": "assistant", "content": content if content or not calls else None}
    if parsed["reasoning"] is not None:
        message["reasoning_content"] = engine.visible(parsed["reasoning"])
    if calls:
        message["tool_calls"] = calls
        return message, "tool_calls"
    return message, result.finish_reason


def _choose(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """Greedy at temperature 0; else sample from the top-p nucleus of softmax(logits / T)."""
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)  # (V,)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < top_p  # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def _stop_at(text: str, stop: list[str]) -> int | None:
    hits = [text.find(s) for s in stop if s and s in text]
    return min(hits) if hits else None


def _safe_length(text: str, stop: list[str]) -> int:
    """How much of `text` can be sent: not a trailing replacement char, not a partial stop string."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    for s in stop:
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[:end].endswith(s[:k]):
                end -= k
                break
    return end


# ---------------------------------------------------------------------------
# Start-up.


def adapter_paths(specs: list[str], model: str | None, *, trust_remote_code: bool = False,
                  allow_pickle: bool = False) -> tuple[str, dict[str, str]]:
    """(base model, {adapter name: directory}) for `--model M --adapter SPEC ...`.

    SPEC is a library name, or NAME=DIR for an adapter or run directory; a run asking for more than the
    grants give is refused (see resolve_adapter).
    """
    from whetstone.adapters import resolve_adapter

    adapters: dict[str, str] = {}
    for spec in specs:
        name, _, where = spec.partition("=") if "=" in spec else (spec, "", spec)
        if name in adapters:
            raise WhetstoneError(f"--adapter {spec}: the name {name!r} is given twice.")
        path, base = resolve_adapter(where, model, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        if model is None:
            model = base
        adapters[name] = path
    from whetstone.config import EMBEDDED_MODEL

    return model or EMBEDDED_MODEL, adapters


def check_adapter_tokenizers(engine: Engine) -> None:
    """Every adapter must have been trained with the tokenizer and template the server uses."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from whetstone.export.consistency import check_consistency

    for name, path in engine.adapters.items():
        if not (Path(path) / "tokenizer_config.json").is_file():
            continue
        trained = AutoTokenizer.from_pretrained(path)
        check_consistency(trained, engine.tokenizer, sorted(engine.stop_ids), f"serve --adapter {name}")
