"""`whetstone label serve`: the labelling page and its small JSON API, on 127.0.0.1.

    GET  /                        the page (page.py); ?annotator=NAME labels under NAME
    GET  /page.js                 its script (a separate file, so the CSP can forbid inline scripts)
    GET  /api/state?annotator=N   progress and the first task N has not judged
    POST /api/judge               {annotator, task, choice, ratings?, ideal?, note?} -> the next state
    POST /api/undo                {annotator} -> withdraws N's last judgement, the state shows it again
    GET  /health                  for scripts waiting on start-up

The server checks every field it is sent (the page is only a convenience: anyone on
the machine can POST), answers a bad request with a 4xx and a JSON error, and keeps
running whatever arrives: each request runs in its own thread inside a catch-all.
Model output reaches the page only as JSON strings that the script places with
textContent; the Content-Security-Policy forbids inline and foreign scripts besides.

Other web pages open in the labeller's browser are kept out: a Host that is not this
server is refused (421, DNS rebinding), so is an Origin that is not its page (403), a
POST must be declared JSON (415: a cross-site text/plain POST needs no preflight), and
a write must carry the token embedded in the page (403), which another site cannot read.
One process at a time writes a label log: `claim_label_log` holds LABELS.jsonl.lock.
"""

from __future__ import annotations

import fcntl
import hmac
import os
import secrets
import sys
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

from whetstone.errors import WhetstoneError
from whetstone.jsonhttp import JsonHandler, JsonServer
from whetstone.label.page import PAGE_HTML, PAGE_JS
from whetstone.label.store import ANNOTATOR, CHOICES, Conflict, LabelStore, shown_order

MAX_BODY_BYTES = 256 * 1024
MAX_IDEAL_CHARS = 50_000
MAX_NOTE_CHARS = 5_000
MAX_CONNECTIONS = 32  # a browser keeps up to 6 per server open; room for a few annotators
TOKEN_HEADER = "X-Whetstone-Token"
JUDGE_KEYS = {"annotator", "task", "choice", "ratings", "ideal", "note"}
CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class RequestError(Exception):
    """A client mistake: answered with `status` and {"error": {"message", "field"}}."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field

    def body(self) -> dict:
        return {"error": {"message": self.message, "field": self.field, "status": self.status}}


# ---------------------------------------------------------------------------
# What the page sees: the task without answer ids or sources (judging is blind).


def state(store: LabelStore, annotator: str) -> dict:
    task = store.next_task(annotator)
    last = store.last(annotator)
    view = None
    if task is not None:
        shown = shown_order(task, annotator)
        view = {"id": task.id, "prompt": list(task.prompt),
                "answers": [{"side": side, "text": task.answer(answer_id).text} for side, answer_id in zip("AB", shown)]}
    return {"annotator": annotator, "done": store.done(annotator), "total": len(store.tasks), "task": view,
            "last": {"task": last["task"], "choice": last["choice"]} if last else None}


# ---------------------------------------------------------------------------
# Request checks: every field, with the field's name in the error.


def parse_annotator(value, default: str | None) -> str:
    annotator = default if value is None else value
    if annotator is None:
        raise RequestError(400, "'annotator' is required (the server was started without --annotator).", "annotator")
    if not isinstance(annotator, str) or not ANNOTATOR.match(annotator):
        raise RequestError(400, f"'annotator' must be 1-64 letters, digits, '.', '_', '@' or '-', got "
                                f"{str(annotator)[:80]!r}.", "annotator")
    return annotator


def parse_judgement(body: dict, store: LabelStore, default_annotator: str | None) -> dict:
    unknown = sorted(set(body) - JUDGE_KEYS)
    if unknown:
        raise RequestError(400, f"unknown field(s) {unknown}; a judgement has {sorted(JUDGE_KEYS)}.", unknown[0])
    annotator = parse_annotator(body.get("annotator"), default_annotator)
    task = body.get("task")
    if not isinstance(task, str):
        raise RequestError(400, "'task' must be the id (a string) of the task being judged.", "task")
    if task not in store.by_id:
        raise RequestError(404, f"task {task[:200]!r} is not in this task file.", "task")
    choice = body.get("choice")
    if choice not in CHOICES:
        raise RequestError(400, f"'choice' must be one of {list(CHOICES)}, got {str(choice)[:40]!r}.", "choice")
    ratings = body.get("ratings") or {}
    if not isinstance(ratings, dict):
        raise RequestError(400, "'ratings' must be an object like {\"A\": 4, \"B\": 2}.", "ratings")
    for side, value in ratings.items():
        if side not in ("A", "B"):
            raise RequestError(400, f"ratings: the sides are 'A' and 'B', got {str(side)[:20]!r}.", "ratings")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
            raise RequestError(400, f"ratings.{side} must be a whole number from 1 to 5, got {value!r}.",
                               f"ratings.{side}")
    ideal = _optional_text(body, "ideal", MAX_IDEAL_CHARS)
    note = _optional_text(body, "note", MAX_NOTE_CHARS)
    return {"annotator": annotator, "task_id": task, "choice": choice, "ratings": ratings, "ideal": ideal,
            "note": note}


def _optional_text(body: dict, key: str, limit: int) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(400, f"'{key}' must be a string or null.", key)
    if len(value) > limit:
        raise RequestError(400, f"'{key}' has {len(value)} characters; at most {limit} are accepted.", key)
    return value if value.strip() else None


# ---------------------------------------------------------------------------
# HTTP.


class LabelServer(JsonServer):
    def __init__(self, address, store: LabelStore, annotator: str | None, log: bool = True):
        self.store, self.annotator, self.log = store, annotator, log
        self.token = secrets.token_urlsafe(32)  # new at every start: a page from an old run must reload
        super().__init__(address, Handler, MAX_CONNECTIONS)


class Handler(JsonHandler):
    server: LabelServer
    server_version = "whetstone-label"
    timeout = 30  # a client that stalls mid-request is dropped
    request_deadline = 30.0
    error_type = RequestError
    extra_headers: ClassVar[dict[str, str]] = {
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Content-Security-Policy": CSP,
    }

    def log_message(self, format: str, *args) -> None:
        if self.server.log:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    def body_limit(self) -> int:
        return MAX_BODY_BYTES

    def dispatch(self, method: str) -> None:
        self.refuse_foreign_pages()
        if method == "POST":
            self.require_json_type()
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        routes = {"/": ("GET", self._page), "/page.js": ("GET", self._script), "/health": ("GET", self._health),
                  "/api/state": ("GET", lambda: self._state(url.query)), "/api/judge": ("POST", self._judge),
                  "/api/undo": ("POST", self._undo)}
        if path not in routes:
            self._drain()
            raise RequestError(404, f"no route {path[:100]!r}; this server has {sorted(routes)}.")
        want, handler = routes[path]
        if method != want:
            self._drain()
            raise RequestError(405, f"{path} takes {want}, not {method}.")
        if method == "POST":
            self._require_token()
        handler()

    def _require_token(self) -> None:
        given = self.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.server.token.encode()):
            self.close_connection = True
            raise RequestError(403, f"a write needs the page's token in the {TOKEN_HEADER} header; reload the page "
                                    f"(the token changes each time the server starts).")

    # ---- endpoints -------------------------------------------------------------------
    def _page(self) -> None:
        page = PAGE_HTML.replace("__TOKEN__", self.server.token)  # url-safe characters: nothing to escape
        self._send(200, page.encode(), "text/html; charset=utf-8")

    def _script(self) -> None:
        self._send(200, PAGE_JS.encode(), "text/javascript; charset=utf-8")

    def _health(self) -> None:
        self._send_json(200, {"status": "ok", "tasks": len(self.server.store.tasks)})

    def _state(self, query: str) -> None:
        values = parse_qs(query).get("annotator")
        annotator = parse_annotator(values[0] if values else None, self.server.annotator)
        self._send_json(200, state(self.server.store, annotator))

    def _judge(self) -> None:
        judgement = parse_judgement(self._read_json(), self.server.store, self.server.annotator)
        try:
            self.server.store.judge(**judgement)
        except Conflict as exc:
            raise RequestError(409, str(exc), "task") from None
        self._send_json(200, state(self.server.store, judgement["annotator"]))

    def _undo(self) -> None:
        body = self._read_json()
        unknown = sorted(set(body) - {"annotator"})
        if unknown:
            raise RequestError(400, f"unknown field(s) {unknown}; an undo has only 'annotator'.", unknown[0])
        annotator = parse_annotator(body.get("annotator"), self.server.annotator)
        try:
            undone = self.server.store.undo(annotator)
        except Conflict as exc:
            raise RequestError(409, str(exc)) from None
        # The page refills the form with what was withdrawn, so a slip costs one keystroke.
        sides = {answer_id: side for side, answer_id in zip("AB", undone["shown"])}
        payload = state(self.server.store, annotator)
        payload["undone"] = {"task": undone["task"], "choice": undone["choice"], "ideal": undone["ideal"],
                             "note": undone["note"],
                             "ratings": {sides[k]: v for k, v in undone["ratings"].items() if k in sides}}
        self._send_json(200, payload)


def make_server(store: LabelStore, host: str = "127.0.0.1", port: int = 8765, annotator: str | None = None,
                log: bool = True) -> LabelServer:
    if annotator is not None and not ANNOTATOR.match(annotator):
        raise WhetstoneError(f"--annotator {annotator!r}: use 1-64 letters, digits, '.', '_', '@' or '-'.")
    try:
        return LabelServer((host, port), store, annotator, log)
    except OSError as exc:
        raise WhetstoneError(f"label serve: cannot listen on {host}:{port} ({exc.strerror}); choose another --port.") \
            from None


def claim_label_log(labels: str | Path) -> int:
    """Lock LABELS.jsonl.lock for as long as the returned descriptor is open, or say who holds it.

    Two servers appending to one log would each replay only their own judgements and
    undo against a stale stack. flock is released by the kernel when the process dies,
    even by kill -9, so a stale lock file never blocks a restart.
    """
    path = Path(f"{labels}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        who = f"process {holder}" if holder.isdigit() else "another process"
        raise WhetstoneError(f"{labels} is already being written by {who}, which holds the lock {path}; stop that "
                             f"`whetstone label serve` first, or give this one another --out.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
