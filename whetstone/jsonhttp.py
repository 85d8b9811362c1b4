"""The JSON-over-HTTP plumbing of whetstone's two local servers (`serve` and `label serve`).

Both answer every request with JSON, accept only bounded bodies with a Content-Length,
and must survive anything a client sends: a client mistake gets a 4xx in the server's own
error shape, a client that leaves is let go, and a bug costs one request (a 500), never
the server. A server subclasses `JsonHandler`, names its error type, and implements
`dispatch` (routing) and `body_limit`.
"""

from __future__ import annotations

import json
import sys
import traceback
from http.server import BaseHTTPRequestHandler
from typing import ClassVar


class JsonHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive between requests
    error_type: type[Exception]  # the server's RequestError: built as error_type(status, message), has .status, .body()
    extra_headers: ClassVar[dict[str, str]] = {}  # sent with every response (e.g. a Content-Security-Policy)

    # ---- what a server provides ------------------------------------------------------
    def dispatch(self, method: str) -> None:
        """Route the request and answer it; raise `client_error(...)` for a client mistake."""
        raise NotImplementedError

    def body_limit(self) -> int:
        """Largest request body accepted, in bytes (413 above it)."""
        raise NotImplementedError

    def client_error(self, status: int, message: str) -> Exception:
        return self.error_type(status, message)

    # ---- the catch-all ---------------------------------------------------------------
    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def _handle(self, method: str) -> None:
        try:
            self.dispatch(method)
        except self.error_type as exc:
            self._answer(exc)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client left; nothing to answer
        except Exception as exc:  # noqa: BLE001 (a bug must cost one request, never the server)
            traceback.print_exc(file=sys.stderr)
            self._answer(self.client_error(500, f"internal error: {type(exc).__name__}: {exc}"))

    def _answer(self, error: Exception) -> None:
        """Send an error; a client that already left (a truncated body, then gone) is simply let go."""
        try:
            self._send_json(error.status, error.body())
        except OSError:
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own rejections (a broken request line, oversized headers) in the JSON shape too."""
        self.close_connection = True
        self._answer(self.client_error(code, message or explain or "bad request"))

    # ---- bodies ----------------------------------------------------------------------
    def _drain(self) -> None:
        """Read a small body we will not use, so keep-alive stays in sync; else close."""
        length = self.headers.get("Content-Length")
        if length and length.isdigit() and int(length) <= self.body_limit():
            self.rfile.read(int(length))
        elif length or self.headers.get("Transfer-Encoding"):
            self.close_connection = True

    def _read_json(self) -> dict:
        """The request's body as a JSON object, or a 4xx: 411 without a length, 413 past the limit, 400 if not JSON."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise self.client_error(411, "chunked bodies are not accepted; send Content-Length.")
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            self.close_connection = True
            raise self.client_error(411, "a POST needs a Content-Length header.")
        size, limit = int(length), self.body_limit()
        if size > limit:
            self.close_connection = True  # the unread body would be parsed as the next request
            raise self.client_error(413, f"the body is {size} bytes; this server accepts at most {limit}.")
        raw = self.rfile.read(size)
        if len(raw) != size:
            self.close_connection = True
            raise self.client_error(400, f"the body ended after {len(raw)} of {size} bytes.")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self.client_error(400, f"the body is not valid UTF-8 JSON ({exc}).") from None
        if not isinstance(body, dict):
            raise self.client_error(400, f"the body must be a JSON object, got {type(body).__name__}.")
        return body

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in self.extra_headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _send_json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")
