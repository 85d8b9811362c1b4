"""The HTTP side of `whetstone serve`: routing, authorization, and JSON or server-sent-event replies."""

from __future__ import annotations

import hmac
import json
import sys
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from whetstone.data.tool_parse import THINK_OPEN, TOOL_CALL_FORMATS, reasoning_format, tool_call_format
from whetstone.errors import WhetstoneError
from whetstone.jsonhttp import JsonHandler, JsonServer
from whetstone.serve.engine import Engine, Generation, ReplyFormat, reply_message
from whetstone.serve.request import (
    RequestError,
    Sampling,
    ServeLimits,
    parse_messages,
    parse_prompt,
    parse_sampling,
    parse_tools,
)


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
        sampling = parse_sampling(body, engine.model_ids, self.server.limits)
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
        sampling = parse_sampling(body, self.server.engine.model_ids, self.server.limits)
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


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                limits: ServeLimits | None = None, log: bool = True) -> Server:
    try:
        return Server((host, port), engine, limits or ServeLimits(), api_key, log)
    except OSError as exc:
        raise WhetstoneError(f"serve: cannot listen on {host}:{port} ({exc.strerror}); choose another --port or "
                             f"--host.") from None
