"""What another web page in the labeller's browser can make it send: refused, and nothing is logged.

Each request is forged with http.client on loopback, headers and all, as a browser would send it
for a hostile page: a text/plain POST (no preflight), a foreign Origin, a rebound Host, no token.
"""

import json
import signal
import socket
import subprocess

import pytest
from labelkit import ROOT, events, page_token, request, serve_command, serve_subprocess, start, stop, write_tasks


@pytest.fixture
def served(tmp_path):
    tasks = write_tasks(tmp_path / "tasks.jsonl", n=6)
    server, store, port = start(tasks, tmp_path / "labels.jsonl")
    yield port, tmp_path / "labels.jsonl"
    stop(server, store)


def _judge(port, task, **headers):
    """A well-formed judgement with the page's headers, some replaced (a None value leaves one out)."""
    sent = {"Content-Type": "application/json", "X-Whetstone-Token": page_token(port)} | headers
    return request(port, "POST", "/api/judge", {"task": task, "choice": "A"},
                   headers={k: v for k, v in sent.items() if v is not None})


def _logged(labels):
    return [e["task"] for e in events(labels)] if labels.exists() else []


def test_a_post_not_declared_json_is_415(served):
    port, labels = served
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        status, payload = _judge(port, "t0", **{"Content-Type": content_type})
        assert status == 415 and "Content-Type: application/json" in payload["error"]["message"]
    assert _judge(port, "t0", **{"Content-Type": "application/json; charset=utf-8"})[0] == 200
    assert _logged(labels) == ["t0"]


def test_writes_need_this_servers_page_token(served, tmp_path):
    port, labels = served
    other, other_store, other_port = start(write_tasks(tmp_path / "other.jsonl", n=1), tmp_path / "other-labels.jsonl")
    try:
        stale = page_token(other_port)  # a page from another server (or an earlier start of this one)
    finally:
        stop(other, other_store)
    for token in (None, "", "guess", stale):
        status, payload = _judge(port, "t0", **{"X-Whetstone-Token": token})
        assert status == 403 and "token" in payload["error"]["message"]
    assert request(port, "POST", "/api/undo", {}, headers={"Content-Type": "application/json"})[0] == 403
    assert _judge(port, "t0")[0] == 200  # no Origin at all: a script on this machine, with the token
    assert _logged(labels) == ["t0"]


def test_only_the_servers_own_page_may_call_it(served):
    port, labels = served
    for origin in ("http://evil.example", "null", f"http://evil.example:{port}", f"https://127.0.0.1:{port}",
                   f"http://127.0.0.1:{port + 1}", f"http://127.0.0.1:{port}@evil.example"):
        status, payload = _judge(port, "t0", Origin=origin)
        assert status == 403 and "refused" in payload["error"]["message"], origin
        assert request(port, "GET", "/api/state", headers={"Origin": origin})[0] == 403
    assert _judge(port, "t0", Origin=f"http://127.0.0.1:{port}")[0] == 200
    assert _judge(port, "t1", Origin=f"http://localhost:{port}")[0] == 200
    assert _logged(labels) == ["t0", "t1"]


@pytest.mark.parametrize("path", ["/", "/page.js", "/api/state", "/health"])
def test_a_rebound_host_name_is_refused_on_every_request(served, path):
    port, _ = served
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}", f"127.0.0.1.evil.example:{port}"):
        status, payload = request(port, "GET", path, headers={"Host": host})
        assert status == 421 and f"localhost:{port}" in payload["error"]["message"], host
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"LOCALHOST:{port}"):
        assert request(port, "GET", path, headers={"Host": host})[0] == 200


def test_a_rebound_host_cannot_write_even_with_the_token(served):
    port, labels = served
    assert _judge(port, "t0", Host=f"evil.example:{port}")[0] == 421
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # HTTP/1.0 without a Host
        sock.sendall(b"GET /api/state HTTP/1.0\r\n\r\n")
        reply = b"".join(iter(lambda: sock.recv(4096), b""))
    assert reply.startswith(b"HTTP/1.1 421") and json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["status"] == 421
    assert _logged(labels) == []


def test_a_second_server_on_the_same_label_file_is_refused_until_the_first_is_gone(tmp_path):
    tasks, labels = write_tasks(tmp_path / "tasks.jsonl", n=3), tmp_path / "labels.jsonl"
    first, port, _ = serve_subprocess(tasks, labels)
    try:
        second = subprocess.run(serve_command(tasks, labels), cwd=ROOT, capture_output=True, text=True, timeout=60,
                                check=False)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        message = second.stderr.strip()
        assert message.startswith("error: ") and "\n" not in message
        assert f"{labels} is already being written by process {first.pid}" in message
        assert f"{labels}.lock" in message
        assert request(port, "POST", "/api/judge", {"task": "t0", "choice": "A"})[0] == 200  # the first serves on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    # kill -9 leaves the lock file behind, but not the lock: a restart takes it.
    again, port, banner = serve_subprocess(tasks, labels)
    try:
        assert "1 done by ann" in banner
    finally:
        again.send_signal(signal.SIGKILL)
        again.wait(timeout=10)
