"""The JSON-over-HTTP plumbing of whetstone's two local servers (`serve` and `label serve`).

Both answer every request with JSON, accept only bounded bodies with a Content-Length,
and must survive anything a client sends: a client mistake gets a 4xx in the server's own
error shape, a client that leaves is let go, and a bug costs one request (a 500), never
the server. A server subclasses `JsonServer` and `JsonHandler`, names its error type, and
implements `dispatch` (routing) and `body_limit`.

Both run on the user's machine next to their browser, so what a web page can make the
browser send is part of the threat: `refuse_foreign_pages` turns away a Host that is not
this server (DNS rebinding: evil.example resolved to 127.0.0.1) and an Origin that is not
this server's own page (a cross-site POST). Resources are bounded per connection too: a
whole request must arrive within `request_deadline` seconds (a client that sends one byte
every few seconds never trips a per-read timeout), and at most `max_connections` are
open: at the limit a new connection takes the place of the longest-idle keep-alive one
(clients pool connections, so idle ones are common), and if none is idle it gets 503 at
once instead of a thread.
"""

from __future__ import annotations

import io
import ipaddress
import json
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
ANY_ADDRESS = frozenset({"", "0.0.0.0", "::"})


def names_this_server(authority: str, bound: tuple[str, int]) -> bool:
    """Whether a Host header (or an Origin's host:port) names the server bound at `bound`.

    Accepted: the bound address or a loopback name, with the bound port. Bound to every
    address, any IP literal is accepted: DNS rebinding needs a host *name*, and which
    addresses this machine has cannot be listed reliably.
    """
    if not authority or any(c in authority for c in "/\\@?# \t"):
        return False
    try:
        parts = urlsplit("//" + authority)
        hostname, port = parts.hostname or "", parts.port or 80
    except ValueError:  # a port that is not a number, or out of range
        return False
    bound_host, bound_port = bound[0].lower(), bound[1]
    if port != bound_port:
        return False
    if hostname in LOOPBACK_NAMES or hostname == bound_host:
        return True
    return bound_host in ANY_ADDRESS and _is_ip(hostname)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # the client has already gone
        pass


class _DeadlineReader(io.RawIOBase):
    """A socket reader that fails once the current request's deadline has passed."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.deadline: float | None = None  # time.monotonic(); None while no request is being read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request did not arrive within the server's deadline")
            self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class JsonServer(ThreadingHTTPServer):
    """A thread per connection, at most `max_connections` of them; past that, 503 from the accept loop.

    `server_close` ends every open connection and waits for its thread. The threads are
    daemons, so one stuck past `close_wait_s` never keeps the process alive; but a thread
    still running when the interpreter finalizes is stopped wherever it is, and stopped
    inside torch (freeing the last reference to a model, say) that aborts the whole
    process with "terminate called without an active exception".
    """

    daemon_threads = True
    block_on_close = False  # server_close waits its own way: connections shut first, the wait bounded
    close_wait_s = 10.0

    def __init__(self, address, handler: type[JsonHandler], max_connections: int):
        self.max_connections = max_connections
        self.slots = threading.BoundedSemaphore(max_connections)
        self.idle: dict[socket.socket, float] = {}  # connections waiting for a request line, since when
        self.workers: dict[socket.socket, threading.Thread] = {}  # every open connection and its thread
        # Guards idle and workers. A socket is shut down only under it, and leaves workers under it
        # before it is closed: a shutdown never reaches a closed socket's reused file descriptor.
        self.connections_lock = threading.Lock()
        self.closing = threading.Event()  # set by server_close; a long request checks it to stop early
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False) and not self._evict_idle():
            self._refuse_busy(request)
            return
        worker = threading.Thread(target=self.process_request_thread, args=(request, client_address), daemon=True)
        with self.connections_lock:
            self.workers[request] = worker
        try:
            worker.start()
        except BaseException:
            with self.connections_lock:
                del self.workers[request]
            self.slots.release()  # no thread started, so nothing else will
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def shutdown_request(self, request) -> None:
        with self.connections_lock:
            self.workers.pop(request, None)
        super().shutdown_request(request)

    def server_close(self) -> None:
        """Stop listening, end every open connection, and wait up to `close_wait_s` for their threads.

        Call it once `serve_forever` has returned (after `shutdown()` from another thread, or
        a KeyboardInterrupt), so that no new connection is accepted meanwhile.
        """
        super().server_close()
        self.closing.set()
        with self.connections_lock:
            workers = list(self.workers.values())
            for sock in self.workers:
                _shut(sock)  # a handler waiting for a request sees EOF; one writing, a broken pipe
        deadline = time.monotonic() + self.close_wait_s
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        stuck = sum(worker.is_alive() for worker in workers)
        if stuck:
            print(f"warning: {stuck} request thread(s) still running {self.close_wait_s:g} s after the server "
                  f"closed; the process may abort if it exits while they run.", file=sys.stderr)

    def _evict_idle(self) -> bool:
        """Close the longest-idle connection and take its slot, once its thread has seen the close."""
        with self.connections_lock:
            if not self.idle:
                return False
            oldest = min(self.idle, key=self.idle.__getitem__)
            del self.idle[oldest]
            _shut(oldest)  # its readline returns b"", and the handler ends
        return self.slots.acquire(timeout=1.0)

    def _refuse_busy(self, request: socket.socket) -> None:
        """Answer 503 from the accept loop: a small write into an empty socket buffer never blocks it."""
        error = self.RequestHandlerClass.client_error(
            503, f"the server has its limit of {self.max_connections} open connections; try again in a moment.")
        body = json.dumps(error.body()).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        try:
            request.settimeout(1.0)
            request.sendall(head + body)
            request.shutdown(socket.SHUT_WR)
            # Closing with an unread request in the buffer would send a reset, which can
            # overtake the 503; read what has already arrived, without waiting for more.
            while request.recv(65536, socket.MSG_DONTWAIT):
                pass
        except OSError:
            pass
        request.close()


class JsonHandler(BaseHTTPRequestHandler):
    server: JsonServer
    protocol_version = "HTTP/1.1"  # keep-alive between requests
    error_type: type[Exception]  # the server's RequestError: built as error_type(status, message), has .status, .body()
    extra_headers: ClassVar[dict[str, str]] = {}  # sent with every response (e.g. a Content-Security-Policy)
    request_deadline: float = 30.0  # seconds from waiting for a request line to its last body byte

    # ---- what a server provides ------------------------------------------------------
    def dispatch(self, method: str) -> None:
        """Route the request and answer it; raise `client_error(...)` for a client mistake."""
        raise NotImplementedError

    def body_limit(self) -> int:
        """Largest request body accepted, in bytes (413 above it)."""
        raise NotImplementedError

    @classmethod
    def client_error(cls, status: int, message: str) -> Exception:
        return cls.error_type(status, message)

    # ---- the connection --------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # replaced by a reader that knows the request's deadline
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.deadline = time.monotonic() + self.request_deadline
        self._responded = False
        with self.server.connections_lock:
            self.server.idle[self.connection] = time.monotonic()
        try:
            super().handle_one_request()
        finally:
            self._not_idle()

    def parse_request(self) -> bool:
        self._not_idle()  # the request line is in: from here on this connection is busy
        return super().parse_request()

    def _not_idle(self) -> None:
        with self.server.connections_lock:
            self.server.idle.pop(self.connection, None)

    def send_response(self, code: int, message: str | None = None) -> None:
        # The request has been read: from here the plain per-operation timeout applies.
        self._reader.deadline = None
        self.connection.settimeout(self.timeout)
        self._responded = True
        super().send_response(code, message)

    # ---- checks a server calls from `dispatch` ---------------------------------------
    def refuse_foreign_pages(self) -> None:
        """421 for a Host that is not this server, 403 for an Origin that is not its own page.

        A browser always sends Host, and sends Origin with every cross-site POST, so
        together they stop a web page from using this server through the labeller's
        browser; clients that are not browsers send no Origin and pass.
        """
        bound = self.server.server_address[:2]
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1 or not names_this_server(hosts[0], bound):
            self.close_connection = True
            shown = ", ".join(repr(h[:100]) for h in hosts) or "none"
            address = "an IP address of this machine" if bound[0] in ANY_ADDRESS else bound[0]
            raise self.client_error(421, f"this server answers only to Host localhost:{bound[1]} or {address} with "
                                         f"port {bound[1]}, not {shown}; open it by one of those addresses.")
        origin = self.headers.get("Origin")
        if origin is not None and not self._own_origin(origin, hosts[0], bound):
            self.close_connection = True
            raise self.client_error(403, f"requests from the page at {origin[:100]!r} are refused; only this "
                                         f"server's own page (http://{hosts[0]}) may call it.")

    @staticmethod
    def _own_origin(origin: str, host: str, bound: tuple[str, int]) -> bool:
        scheme, _, authority = origin.partition("://")
        if scheme.lower() != "http" or not names_this_server(authority, bound):
            return False
        # Bound to every address, another machine's page on the same port would pass the check above.
        return bound[0] not in ANY_ADDRESS or authority.lower() == host.lower()

    def require_json_type(self) -> None:
        """415 unless the body is declared JSON: a page can send text/plain cross-site without a preflight."""
        media = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if media != "application/json":
            self.close_connection = True
            raise self.client_error(415, f"a POST must have Content-Type: application/json, got "
                                         f"{media[:60] or 'none'!r}.")

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
        except TimeoutError:
            self.close_connection = True
            self._answer(self.client_error(408, f"the request did not arrive within {self.request_deadline:g} s."))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client left; nothing to answer
        except Exception as exc:  # noqa: BLE001 (a bug must cost one request, never the server)
            traceback.print_exc(file=sys.stderr)
            self._answer(self.client_error(500, f"internal error: {type(exc).__name__}: {exc}"))

    def _answer(self, error: Exception) -> None:
        """Send an error; a client that already left (a truncated body, then gone) is simply let go."""
        if self._responded:  # a status line is out (a stream): a second response would corrupt it
            self.close_connection = True
            return
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
