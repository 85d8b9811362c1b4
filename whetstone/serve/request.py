"""A request to `whetstone serve`: the server's limits, the client-error type, and the body's fields parsed and
checked, so that a bad one is a 400 with an OpenAI-style error body, not a crash."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

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


def parse_sampling(body: dict, model_ids: list[str], limits: ServeLimits) -> Sampling:
    """The sampling fields of a request for one of `model_ids` (the engine's), within `limits`."""
    model = _get(body, "model", (str,), required=True)
    if model not in model_ids:
        raise RequestError(404, f"model {model!r} is not served here; choose one of {model_ids}.", "model",
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
