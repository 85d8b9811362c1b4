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
"""

from __future__ import annotations

import sys
from http.server import ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

from whetstone.errors import WhetstoneError
from whetstone.jsonhttp import JsonHandler
from whetstone.label.page import PAGE_HTML, PAGE_JS
from whetstone.label.store import ANNOTATOR, CHOICES, Conflict, LabelStore, shown_order

MAX_BODY_BYTES = 256 * 1024
MAX_IDEAL_CHARS = 50_000
MAX_NOTE_CHARS = 5_000
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


class LabelServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client never keeps the process alive on shutdown

    def __init__(self, address, store: LabelStore, annotator: str | None, log: bool = True):
        self.store, self.annotator, self.log = store, annotator, log
        super().__init__(address, Handler)


class Handler(JsonHandler):
    server: LabelServer
    server_version = "whetstone-label"
    timeout = 30  # a client that stalls mid-request is dropped
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
        handler()

    # ---- endpoints -------------------------------------------------------------------
    def _page(self) -> None:
        self._send(200, PAGE_HTML.encode(), "text/html; charset=utf-8")

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
