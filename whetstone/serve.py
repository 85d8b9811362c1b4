"""`whetstone serve`: a local OpenAI-compatible HTTP server for a base model and its adapters.

    POST /v1/chat/completions   messages (and tools) -> the chat template -> tokens; "stream": true sends
                                SSE chunks. The reply is taken apart as the template writes it
                                (whetstone/data/tool_parse.py): reasoning_content, content, tool_calls
    POST /v1/completions        a raw prompt, no template
    GET  /v1/models             the base model's id and every adapter's name
    GET  /health                no auth; for scripts waiting on start-up

The request's `model` field picks the weights: the base model's id, or an adapter
name. All adapters sit on one PeftModel over one copy of the base, so N adapters cost
N small weight files, and switching is `set_adapter` (no reload).

Safety: it binds 127.0.0.1 unless told otherwise; an API key can be required
(`Authorization: Bearer KEY`); without one, the Host and Origin of each request must
be this server's own (so a web page in the user's browser cannot use it). Every
request is bounded in body size, in tokens and in time, and the open connections in
number. A bad request gets a 4xx with an OpenAI-style JSON error, and no request can
take the server down: each one runs in its own thread inside a catch-all.

One generation runs at a time (a lock around the model): on CPU a second one in
parallel would only halve the speed of both. A request waits for the lock at most
its timeout, then gets 503.
"""

from __future__ import annotations

import hmac
import inspect
import json
import math
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from whetstone.data.tool_parse import THINK_OPEN, TOOL_CALL_FORMATS, parse_reply, reasoning_format, tool_call_format
from whetstone.errors import WhetstoneError
from whetstone.jsonhttp import JsonHandler, JsonServer

ROLES = ("system", "developer", "user", "assistant", "tool")
TOOL_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # OpenAI's rule for a function name
MIN_TEMPERATURE = 0.01  # below it logits / T overflows float32 (1e-300 gives inf - inf = nan), and it is greedy anyway
SEEDS = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


@dataclass
class ServeLimits:
    max_tokens: int = 512
    """Most new tokens one request may ask for (and the default when it does not say)."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted (413 above it)."""
    timeout_s: float = 60.0
    """Wall-clock budget of one request: waiting for the model plus generating (503/504 past it)."""
    read_timeout_s: float = 30.0
    """Seconds a client has to send a whole request, headers and body; a slower one is disconnected."""
    max_connections: int = 8
    """Open connections served at once; one more gets 503 straight away."""


class RequestError(Exception):
    """A client mistake: answered with `status` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


# ---------------------------------------------------------------------------
# The engine: one model, named adapters, token-by-token generation.


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
# Request bodies: parse and check every field, so a bad one is a 400, not a crash.


def _get(body: dict, key: str, kinds: tuple, default=None, *, required: bool = False):
    if key not in body or body[key] is None:
        if required:
            raise RequestError(400, f"'{key}' is required.", key)
        return default
    value = body[key]
    if isinstance(value, bool) and bool not in kinds:
        raise RequestError(400, f"'{key}' must be {_kind_names(kinds)}, got a boolean.", key)
    if not isinstance(value, kinds):
        raise RequestError(400, f"'{key}' must be {_kind_names(kinds)}, got {type(value).__name__}.", key)
    return value


def _kind_names(kinds: tuple) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list",
             dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


@dataclass
class Sampling:
    model: str
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None
    stream: bool


def parse_sampling(body: dict, engine: Engine, limits: ServeLimits) -> Sampling:
    model = _get(body, "model", (str,), required=True)
    if model not in engine.model_ids:
        raise RequestError(404, f"model {model!r} is not served here; choose one of {engine.model_ids}.", "model",
                           kind="model_not_found")
    max_tokens = _get(body, "max_completion_tokens", (int,)) or _get(body, "max_tokens", (int,), limits.max_tokens)
    if not 1 <= max_tokens <= limits.max_tokens:
        raise RequestError(400, f"max_tokens must be between 1 and {limits.max_tokens} (the server's limit), got "
                                f"{max_tokens}.", "max_tokens")
    temperature = _finite(body, "temperature", 1.0)
    if not (temperature == 0.0 or MIN_TEMPERATURE <= temperature <= 2.0):
        raise RequestError(400, f"temperature must be in [0, 2]: 0 for greedy decoding, else at least "
                                f"{MIN_TEMPERATURE} (smaller ones overflow the softmax); got {temperature:g}.",
                           "temperature")
    top_p = _finite(body, "top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise RequestError(400, f"top_p must be in (0, 1], got {top_p:g}.", "top_p")
    seed = _get(body, "seed", (int,))
    if seed is not None and not SEEDS[0] <= seed <= SEEDS[1]:
        raise RequestError(400, f"seed must be between -2**63 and 2**64 - 1, got {seed}.", "seed")
    stop = _get(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(400, "stop must be a non-empty string or a list of up to 4 of them.", "stop")
    n = _get(body, "n", (int,), 1)
    if n != 1:
        raise RequestError(400, f"n={n}: this server returns one choice per request.", "n")
    return Sampling(model, max_tokens, temperature, top_p, stop, seed, bool(_get(body, "stream", (bool,), False)))


def _finite(body: dict, key: str, default: float) -> float:
    value = _get(body, key, (int, float), default)
    try:
        number = float(value)  # JSON allows 1e999 and Python's parser NaN; an int past 1e308 overflows here
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise RequestError(400, f"'{key}' must be a finite number, got {str(value)[:40]}.", key)
    return number


def parse_messages(body: dict) -> list[dict]:
    """The request's messages as the dicts chat templates read (render.message_dicts), every field checked."""
    from whetstone.data.records import Message
    from whetstone.data.render import message_dicts

    messages = _get(body, "messages", (list,), required=True)
    if not messages:
        raise RequestError(400, "'messages' must hold at least one message.", "messages")
    out = []
    names: dict[str, str] = {}  # tool call id -> its function, for a tool message that does not name it
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(400, f"{where} must be an object with 'role' and 'content'.", where)
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(400, f"{where}.role must be one of {list(ROLES)}, got {role!r}.", f"{where}.role")
        calls = _tool_calls(message, where) if role == "assistant" else ()
        content = _content(message, where, optional=bool(calls))
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise RequestError(400, f"{where}.tool_call_id must be the id of the call this message answers.",
                                   f"{where}.tool_call_id")
            name = message.get("name") if isinstance(message.get("name"), str) else names.get(call_id)
            out.append(Message("tool", content, tool_call_id=call_id, name=name))
            continue
        reasoning = message.get("reasoning_content") if role == "assistant" else None
        if reasoning is not None and not isinstance(reasoning, str):
            raise RequestError(400, f"{where}.reasoning_content must be a string.", f"{where}.reasoning_content")
        names.update((call.id, call.name) for call in calls if call.id)
        out.append(Message("system" if role == "developer" else role, content, reasoning=reasoning,
                           tool_calls=calls))
    return message_dicts(out)


def _content(message: dict, where: str, optional: bool) -> str:
    content = message.get("content")
    if content is None and optional:  # an assistant turn that only calls tools
        return ""
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise RequestError(400, f"{where}.content: only text parts are supported.", f"{where}.content")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise RequestError(400, f"{where}.content must be a string.", f"{where}.content")
    return content


def _tool_calls(message: dict, where: str) -> tuple:
    """An assistant message's tool_calls (OpenAI's shape, arguments a JSON string) as records.ToolCall."""
    from whetstone.data.records import ToolCall

    calls = message.get("tool_calls")
    if calls is None:
        return ()
    shape = '{"id": ..., "type": "function", "function": {"name": ..., "arguments": "{...}"}}'
    if not isinstance(calls, list):
        raise RequestError(400, f"{where}.tool_calls must be a list of {shape}.", f"{where}.tool_calls")
    out = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"] \
                or call.get("type", "function") != "function":
            raise RequestError(400, f"{at} must be {shape}.", at)
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                raise RequestError(400, f"{at}.function.arguments is not valid JSON; send the arguments object "
                                        f"encoded as a JSON string, as OpenAI's API does.",
                                   f"{at}.function.arguments") from None
        if not isinstance(arguments, dict):
            raise RequestError(400, f"{at}.function.arguments must hold a JSON object, got "
                                    f"{type(arguments).__name__}.", f"{at}.function.arguments")
        call_id = call.get("id")
        if call_id is not None and not isinstance(call_id, str):
            raise RequestError(400, f"{at}.id must be a string.", f"{at}.id")
        out.append(ToolCall(function["name"], arguments, call_id))
    return tuple(out)


def parse_tools(body: dict) -> list[dict] | None:
    """The functions the model may call, as templates take them; None when none are offered or
    tool_choice is "none" (the prompt then shows no tools, and the reply is not searched for calls)."""
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("auto", "none"):
        raise RequestError(400, f"tool_choice {json.dumps(choice)[:80]}: this server supports \"auto\" and \"none\" "
                                f"only (it cannot force a call); leave it out or send \"auto\".", "tool_choice")
    tools = _get(body, "tools", (list,), [])
    shape = '{"type": "function", "function": {"name": ..., "description": ..., "parameters": {...}}}'
    out, names = [], set()
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function":
            raise RequestError(400, f"{at} must be {shape}.", at)
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise RequestError(400, f"{at}.function.name must be 1 to 64 letters, digits, '_', '-' or '.', got "
                                    f"{json.dumps(name)[:80]}.", f"{at}.function.name")
        if name in names:
            raise RequestError(400, f"{at}.function.name {name!r} is offered twice; give each tool once.",
                               f"{at}.function.name")
        if not isinstance(function.get("description", ""), str):
            raise RequestError(400, f"{at}.function.description must be a string.", f"{at}.function.description")
        if not isinstance(function.get("parameters", {}), dict):
            raise RequestError(400, f"{at}.function.parameters must be a JSON Schema object, e.g. "
                                    f'{{"type": "object", "properties": {{...}}}}.', f"{at}.function.parameters")
        names.add(name)
        out.append({"type": "function", "function": function})
    return out if out and choice != "none" else None


def parse_prompt(body: dict) -> str:
    prompt = _get(body, "prompt", (str, list), required=True)
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise RequestError(400, "'prompt' must be a string (or a list of exactly one string).", "prompt")
        prompt = prompt[0]
    return prompt


# ---------------------------------------------------------------------------
# HTTP.


class Server(JsonServer):
    def __init__(self, address, engine: Engine, limits: ServeLimits, api_key: str | None, log: bool = True):
        self.engine, self.limits, self.api_key, self.log = engine, limits, api_key, log
        super().__init__(address, Handler, limits.max_connections)


class Handler(JsonHandler):
    server: Server
    server_version = "whetstone"
    error_type = RequestError
    # OpenAI's error "type" for the statuses the shared plumbing raises (others: invalid_request_error).
    KINDS: ClassVar[dict[int, str]] = {403: "permission_error", 404: "not_found", 405: "method_not_allowed",
                                       408: "timeout", 413: "request_too_large", 421: "permission_error",
                                       500: "server_error", 503: "server_busy"}

    def setup(self) -> None:
        self.timeout = self.server.limits.timeout_s  # a client that stalls mid-request is dropped
        self.request_deadline = self.server.limits.read_timeout_s
        super().setup()

    def log_message(self, format: str, *args) -> None:
        if self.server.log:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def body_limit(self) -> int:
        return self.server.limits.max_body_bytes

    @classmethod
    def client_error(cls, status: int, message: str) -> RequestError:
        return RequestError(status, message, kind=cls.KINDS.get(status, "invalid_request_error"))

    # ---- routing ---------------------------------------------------------------------
    def dispatch(self, method: str) -> None:
        if not self.server.api_key:  # with a key, the key is the credential; without, only this machine's pages
            self.refuse_foreign_pages()
        path = self.path.split("?", 1)[0].rstrip("/")
        routes = {"/v1/chat/completions": ("POST", self._chat), "/v1/completions": ("POST", self._completion),
                  "/v1/models": ("GET", self._models), "/health": ("GET", self._health)}
        if path.startswith("/v1/models/"):
            routes[path] = ("GET", lambda: self._model(path[len("/v1/models/"):]))
        if path not in routes:
            self._drain()
            raise RequestError(404, f"no route {path!r}; this server has {sorted(routes)}.", kind="not_found")
        want, handler = routes[path]
        if method != want:
            self._drain()
            raise RequestError(405, f"{path} takes {want}, not {method}.", kind="method_not_allowed")
        if path != "/health":
            self._authorize()
        handler()

    def _authorize(self) -> None:
        key = self.server.api_key
        if not key:
            return
        given = self.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            self._drain()
            raise RequestError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'.",
                               kind="authentication_error")

    # ---- endpoints -------------------------------------------------------------------
    def _health(self) -> None:
        # Needs no key, so it names the models without the directories they were loaded from.
        names = [Path(model_id).name or model_id for model_id in self.server.engine.model_ids]
        self._send_json(200, {"status": "ok", "models": names})

    def _model_card(self, model_id: str) -> dict:
        card = {"id": model_id, "object": "model", "created": 0, "owned_by": "whetstone"}
        if model_id != self.server.engine.base_id:
            card["parent"] = self.server.engine.base_id
        return card

    def _models(self) -> None:
        self._send_json(200, {"object": "list", "data": [self._model_card(m) for m in self.server.engine.model_ids]})

    def _model(self, model_id: str) -> None:
        if model_id not in self.server.engine.model_ids:
            raise RequestError(404, f"model {model_id!r} is not served here.", kind="model_not_found")
        self._send_json(200, self._model_card(model_id))

    def _chat(self) -> None:
        body = self._read_json()
        engine = self.server.engine
        sampling = parse_sampling(body, engine, self.server.limits)
        messages = parse_messages(body)
        tools = parse_tools(body)
        if tools and tool_call_format(engine.tokenizer) is None:
            raise RequestError(400, f"'tools': this model's chat template writes tool calls in a format this server "
                                    f"cannot read back (it reads {', '.join(TOOL_CALL_FORMATS)}); leave 'tools' out "
                                    f"and parse the text yourself.", "tools")
        try:
            prompt_ids = engine.chat_prompt(messages, tools)
        except WhetstoneError as exc:
            raise RequestError(400, str(exc), "tools" if tools else "messages") from None
        reply = None
        if tools or reasoning_format(engine.tokenizer):
            opened = engine.tokenizer.decode(prompt_ids[-16:]).rstrip().endswith(THINK_OPEN)  # a prefilled <think>
            reply = ReplyFormat(tools=bool(tools), opened=opened)
        self._generate(sampling, prompt_ids, chat=True, reply=reply)

    def _completion(self) -> None:
        body = self._read_json()
        sampling = parse_sampling(body, self.server.engine, self.server.limits)
        if body.get("echo") or body.get("logprobs") or (body.get("best_of") or 1) != 1:
            raise RequestError(400, "echo, logprobs and best_of are not supported.")
        self._generate(sampling, self.server.engine.text_prompt(parse_prompt(body)), chat=False)

    def _generate(self, sampling: Sampling, prompt_ids: list[int], chat: bool, reply: ReplyFormat | None = None
                  ) -> None:
        engine, limits = self.server.engine, self.server.limits
        if len(prompt_ids) + sampling.max_tokens > engine.context_length:
            raise RequestError(400, f"the prompt has {len(prompt_ids)} tokens; with max_tokens={sampling.max_tokens} "
                                    f"it exceeds the model's context of {engine.context_length}.", "max_tokens")
        deadline = time.monotonic() + limits.timeout_s
        if not engine.lock.acquire(timeout=limits.timeout_s):
            raise RequestError(503, "the server is busy with other requests; try again.", kind="server_busy")
        result = Generation(prompt_tokens=len(prompt_ids))
        deltas = engine.stream(sampling.model, prompt_ids, sampling.max_tokens, sampling.temperature,
                               sampling.top_p, sampling.stop, sampling.seed, deadline, result)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        try:
            if sampling.stream:
                self._stream(ident, sampling.model, deltas, result, chat, reply)
            else:
                for _ in deltas:
                    self._stop_if_closing()
                message = reply_message(engine, result, reply) if chat else None
                self._send_json(200, _final_body(ident, sampling.model, result, message))
        finally:
            deltas.close()  # leave the adapter context (a client may have left mid-stream) before unlocking
            engine.lock.release()

    def _stop_if_closing(self) -> None:
        # Checked between tokens, so server_close waits for one token, not for a whole generation.
        if self.server.closing.is_set():
            raise RequestError(503, "the server is shutting down.", kind="server_busy")

    def _stream(self, ident: str, model: str, deltas: Iterator[str], result: Generation, chat: bool,
                reply: ReplyFormat | None) -> None:
        """Send the deltas as they come; or, when the reply is taken apart (reply), the whole message in one
        chunk at the end, since a tool call or a reasoning block cannot be split off before it is complete."""
        self.close_connection = True  # the stream ends when the connection does
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        created = int(time.time())

        def event(payload: dict) -> None:
            self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
            self.wfile.flush()

        def chunk(delta: str | dict | None, finish: str | None, first: bool = False) -> dict:
            if chat:
                if first:
                    delta = {"role": "assistant", "content": ""}
                elif not isinstance(delta, dict):  # a piece of text
                    delta = {"content": delta} if delta else {}
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
                return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [choice]}
            return {"id": ident, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}]}

        if chat:
            event(chunk(None, None, first=True))
        try:
            for delta in deltas:
                self._stop_if_closing()
                if reply is None:
                    event(chunk(delta, None))
            finish = result.finish_reason
            if reply is not None:
                message, finish = reply_message(self.server.engine, result, reply)
                del message["role"]  # sent in the first chunk
                if "tool_calls" in message:
                    message["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
                event(chunk(message, None))
        except RequestError as exc:  # a timeout or shutdown, after the headers went out: say so in the stream
            event(exc.body())
        except OSError:
            raise  # the client left or stopped reading: nothing more can reach it
        except Exception as exc:  # noqa: BLE001 (a bug mid-stream: the status line is out, so it goes in the stream)
            traceback.print_exc(file=sys.stderr)
            event(self.client_error(500, f"internal error: {type(exc).__name__}: {exc}").body())
        else:
            final = chunk(None, finish)
            final["usage"] = _usage(result)
            event(final)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _usage(result: Generation) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def _final_body(ident: str, model: str, result: Generation, message: tuple[dict, str | None] | None) -> dict:
    """A chat completion when `message` (reply_message's) is given, else a text completion."""
    if message is not None:
        choice = {"index": 0, "message": message[0], "finish_reason": message[1], "logprobs": None}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}
        kind = "text_completion"
    return {"id": ident, "object": kind, "created": int(time.time()), "model": model, "choices": [choice],
            "usage": _usage(result)}


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


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                limits: ServeLimits | None = None, log: bool = True) -> Server:
    try:
        return Server((host, port), engine, limits or ServeLimits(), api_key, log)
    except OSError as exc:
        raise WhetstoneError(f"serve: cannot listen on {host}:{port} ({exc.strerror}); choose another --port or "
                             f"--host.") from None
