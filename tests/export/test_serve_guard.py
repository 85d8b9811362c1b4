"""`serve` against hostile pages and clients: forged Host/Origin, bad sampling numbers, faults mid-stream,
too many connections, slow-drip requests. Each is forged on a raw socket or http.client on loopback."""

import http.client
import json
import select
import socket
import threading
import time

import pytest

from whetstone.serve import Engine, ServeLimits, make_server

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return Engine(str(tiny_model_dir))


@pytest.fixture
def start(engine):
    """start(**make_server kwargs) -> a running server's port; after the test every server is stopped, and
    every thread it started has ended."""
    running = []

    def run(**kwargs):
        server = make_server(engine, port=0, log=False, **kwargs)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        running.append((server, thread))
        return server.server_address[1]

    yield run
    for server, thread in running:
        server.shutdown()
        thread.join()
        server.server_close()  # ends the open connections and joins their threads


def _request(port, method, path, body=None, headers=None, timeout=30):
    """(status, JSON reply) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                 headers={"Content-Type": "application/json"} | (headers or {}))
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    return response.status, payload


def _chat(engine, port, headers=None, **fields):
    return _request(port, "POST", "/v1/chat/completions", {"model": engine.base_id} | CHAT | fields, headers)


def _read_until_closed(sock) -> bytes:
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    return reply


def test_without_a_key_only_this_servers_host_and_pages_are_served(engine, start):
    port = start()
    for host in (f"evil.example:{port}", f"127.0.0.1:{port + 1}"):  # DNS rebinding: the browser sends its name
        status, payload = _request(port, "GET", "/health", headers={"Host": host})
        assert status == 421 and payload["error"]["type"] == "permission_error", host
        assert _chat(engine, port, {"Host": host})[0] == 421
    status, payload = _chat(engine, port, {"Origin": "http://evil.example"})  # a cross-site POST
    assert status == 403 and "evil.example" in payload["error"]["message"]
    assert _chat(engine, port, {"Origin": "null"})[0] == 403
    assert _chat(engine, port, {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"})[0] == 200
    assert _chat(engine, port)[0] == 200  # a client that is not a browser sends no Origin


def test_with_a_key_the_key_is_the_credential(engine, start):
    port = start(api_key="s3cret")
    forged = {"Host": f"evil.example:{port}", "Origin": "http://evil.example"}
    assert _chat(engine, port, forged)[0] == 401  # a page cannot know the key
    assert _chat(engine, port, forged | {"Authorization": "Bearer s3cret"})[0] == 200


@pytest.mark.parametrize("field, value, fragment", [
    ("temperature", 1e-300, "at least 0.01"),  # logits / 1e-300 is inf, softmax nan: was a 500
    ("temperature", 0.001, "at least 0.01"),
    ("temperature", 10**400, "must be a finite number"),  # float() of it overflows: was a 500
    ("temperature", float("nan"), "must be a finite number"),  # Python's JSON parser reads NaN
    ("top_p", float("inf"), "must be a finite number"),
    ("seed", 2**70, "seed must be between"),  # torch cannot seed with it: was a 500
], ids=["temperature-1e-300", "temperature-0.001", "temperature-10**400", "temperature-nan", "top_p-inf", "seed-2**70"])
def test_sampling_numbers_that_would_break_sampling_are_400(engine, start, field, value, fragment):
    port = start()
    status, payload = _chat(engine, port, **({"temperature": 1.0} | {field: value}))
    assert status == 400 and payload["error"]["param"] == field and fragment in payload["error"]["message"]
    assert _chat(engine, port, temperature=0.01, seed=2**64 - 1)[0] == 200  # the edges still sample


def test_an_error_mid_stream_is_an_event_in_the_stream_not_a_second_response(engine, start, monkeypatch):
    def broken(*args, **kwargs):
        yield "Hel"
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "stream", broken)
    port = start()
    body = json.dumps({"model": engine.base_id, "stream": True} | CHAT).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        reply = _read_until_closed(sock).decode()
    head, _, stream = reply.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200") and "text/event-stream" in head and reply.count("HTTP/1.1") == 1
    events = [line[len("data: "):] for line in stream.split("\n\n") if line]
    assert events[-1] == "[DONE]" and json.loads(events[1])["choices"][0]["delta"]["content"] == "Hel"
    assert json.loads(events[-2])["error"] == {"message": "internal error: RuntimeError: boom",
                                               "type": "server_error", "param": None, "code": 500}
    monkeypatch.undo()
    assert _chat(engine, port)[0] == 200  # the model lock was released


def _busy(port):
    """A connection whose request is being read: headers in, the 100-byte body still to come."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n".encode())
    return sock


def test_connections_past_the_cap_get_503_at_once_and_slots_come_back(engine, start):
    port = start(limits=ServeLimits(max_connections=2))
    busy = [_busy(port) for _ in range(2)]
    try:
        time.sleep(0.2)  # both are past their request line
        began = time.monotonic()
        status, payload = _request(port, "GET", "/health", timeout=5)
        assert status == 503 and payload["error"]["type"] == "server_busy" and time.monotonic() - began < 2
        assert "limit of 2 open connections" in payload["error"]["message"]
    finally:
        for sock in busy:
            sock.close()
    deadline = time.monotonic() + 10
    while _request(port, "GET", "/health")[0] != 200:  # the threads see EOF and give their slots back
        assert time.monotonic() < deadline, "the slots of closed connections never came back"
        time.sleep(0.05)


def test_at_the_cap_an_idle_keep_alive_connection_makes_room(engine, start):
    port = start(limits=ServeLimits(max_connections=2))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # a pooled client: served, then left open
    conn.request("GET", "/health")
    assert conn.getresponse().read() and conn.sock is not None
    busy = _busy(port)
    try:
        time.sleep(0.2)
        assert _request(port, "GET", "/health", timeout=5)[0] == 200
        assert conn.sock.recv(1) == b""  # the idle one was closed to make room, not the busy one
        assert not select.select([busy], [], [], 0)[0]
    finally:
        busy.close()
        conn.close()


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_slow_drip_request_is_cut_at_the_deadline_while_others_are_served(engine, start, phase):
    port = start(limits=ServeLimits(read_timeout_s=1.0, timeout_s=30))
    start_line = f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
    if phase == "body":
        start_line += "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(start_line.encode())
        began, reply = time.monotonic(), b""
        while time.monotonic() - began < 8:  # one byte every 0.2 s: never idle long enough for a per-read timeout
            try:
                sock.sendall(b"x")
            except OSError:
                break  # the server reset the connection
            if select.select([sock], [], [], 0.2)[0]:
                reply = _read_until_closed(sock)
                break
            if 0.4 < time.monotonic() - began < 0.7:
                assert _request(port, "GET", "/health", timeout=5)[0] == 200  # the drip holds no one else up
        cut_after = time.monotonic() - began
    assert 0.8 < cut_after < 3.0
    if phase == "body":  # the headers had arrived, so the server can say why
        assert reply.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in reply
    assert _request(port, "GET", "/health")[0] == 200


def test_health_names_the_models_without_their_directories(engine, start, tiny_model_dir):
    port = start()
    status, payload = _request(port, "GET", "/health")
    assert (status, payload) == (200, {"status": "ok", "models": [tiny_model_dir.name]})
    assert str(tiny_model_dir.parent) not in json.dumps(payload)


def test_closing_ends_idle_and_busy_connections_and_waits_for_their_threads(engine, monkeypatch):
    def endless(*args, **kwargs):  # a generation that would never finish by itself
        while True:
            time.sleep(0.02)
            yield "x"

    monkeypatch.setattr(engine, "stream", endless)
    server = make_server(engine, port=0, log=False)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    serving.start()
    port = server.server_address[1]
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)  # a pooled client: served, then left open
    idle.request("GET", "/health")
    assert idle.getresponse().read() and idle.sock is not None
    body = json.dumps({"model": engine.base_id} | CHAT).encode()
    busy = socket.create_connection(("127.0.0.1", port), timeout=10)
    busy.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    try:
        time.sleep(0.3)  # the busy one is generating
        workers = list(server.workers.values())
        assert len(workers) == 2
        server.shutdown()
        serving.join()
        began = time.monotonic()
        server.server_close()
        assert time.monotonic() - began < 2 and not any(worker.is_alive() for worker in workers)
        assert not server.workers and idle.sock.recv(1) == b""
    finally:
        busy.close()
        idle.close()
