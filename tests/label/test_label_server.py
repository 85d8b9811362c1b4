"""The label server: validation (4xx, and it keeps serving), no duplicates, undo, resume after kill -9."""

import json
import re
import signal
import socket

import pytest
from labelkit import SCRIPT_ANSWER, events, pick, request, serve_subprocess, start, stop, write_tasks


@pytest.fixture
def served(tmp_path):
    tasks = write_tasks(tmp_path / "tasks.jsonl", n=6, script_at=2)
    server, store, port = start(tasks, tmp_path / "labels.jsonl")
    yield port, tmp_path / "labels.jsonl"
    stop(server, store)


def test_judging_walks_the_tasks_and_logs_each_judgement_with_its_side(served):
    port, labels = served
    status, state = request(port, "GET", "/api/state")
    assert status == 200 and (state["done"], state["total"], state["task"]["id"]) == (0, 6, "t0")
    assert [a["side"] for a in state["task"]["answers"]] == ["A", "B"]
    assert "source" not in json.dumps(state) and "m0" not in json.dumps(state)  # blind: no ids, no sources
    side = pick(state, "m0")
    status, state = request(port, "POST", "/api/judge", {"task": "t0", "choice": side, "ratings": {side: 5},
                                                         "ideal": "the best answer", "note": "clear"})
    assert status == 200 and (state["done"], state["task"]["id"], state["last"]) == (
        1, "t1", {"task": "t0", "choice": side})
    (line,) = events(labels)
    assert (line["event"], line["annotator"], line["task"], line["choice"], line["preferred"]) == (
        "judgement", "ann", "t0", side, "m0")
    assert line["shown"][" AB".index(side) - 1] == "m0" and line["ratings"] == {"m0": 5}
    assert (line["ideal"], line["note"]) == ("the best answer", "clear")
    assert line["answers"][0] == {"id": "m0", "text": "good answer 0", "source": "model-x"}
    # Model output travels as a JSON string, verbatim: escaping is the page's job (textContent).
    request(port, "POST", "/api/judge", {"task": "t1", "choice": "skip"})
    _, state = request(port, "GET", "/api/state")
    assert SCRIPT_ANSWER in [a["text"] for a in state["task"]["answers"]]


def test_sides_are_shuffled_per_task_and_stable(served):
    from whetstone.label.store import Answer, Task, shown_order

    tasks = [Task(f"t{i}", (), (Answer("m0", "", ""), Answer("m1", "", ""))) for i in range(200)]
    firsts = [shown_order(t, "ann")[0] for t in tasks]
    assert 70 < firsts.count("m0") < 130  # about half: binomial(200, 0.5) is within 70..130 with p > 0.9999
    assert firsts == [shown_order(t, "ann")[0] for t in tasks]  # the same after a restart
    assert firsts != [shown_order(t, "bob")[0] for t in tasks]  # each annotator their own order


BAD = [
    ({"task": "t0", "choice": "C"}, 400, "choice"),
    ({"task": "t0", "choice": "a"}, 400, "choice"),
    ({"task": "t0"}, 400, "choice"),
    ({"choice": "A"}, 400, "task"),
    ({"task": 3, "choice": "A"}, 400, "task"),
    ({"task": "nope", "choice": "A"}, 404, "task"),
    ({"task": "t0", "choice": "A", "ratings": {"A": 6}}, 400, "ratings.A"),
    ({"task": "t0", "choice": "A", "ratings": {"A": 0}}, 400, "ratings.A"),
    ({"task": "t0", "choice": "A", "ratings": {"A": 4.5}}, 400, "ratings.A"),
    ({"task": "t0", "choice": "A", "ratings": {"A": True}}, 400, "ratings.A"),
    ({"task": "t0", "choice": "A", "ratings": {"C": 3}}, 400, "ratings"),
    ({"task": "t0", "choice": "A", "ratings": [3, 4]}, 400, "ratings"),
    ({"task": "t0", "choice": "A", "ideal": 5}, 400, "ideal"),
    ({"task": "t0", "choice": "A", "note": "x" * 5001}, 400, "note"),
    ({"task": "t0", "choice": "A", "annotator": "../etc"}, 400, "annotator"),
    ({"task": "t0", "choice": "A", "annotator": ""}, 400, "annotator"),
    ({"task": "t0", "choice": "A", "extra": 1}, 400, "extra"),
]


@pytest.mark.parametrize("body,status,field", BAD, ids=[f"{b}" for b, _, _ in BAD])
def test_bad_judgements_get_a_4xx_naming_the_field_and_log_nothing(served, body, status, field):
    port, labels = served
    got, payload = request(port, "POST", "/api/judge", body)
    assert (got, payload["error"]["field"]) == (status, field)
    assert not labels.exists() or labels.read_text() == ""
    assert request(port, "GET", "/api/state")[1]["done"] == 0


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(served):
    port, labels = served
    assert request(port, "POST", "/api/judge", raw=b"{not json")[0] == 400
    assert request(port, "POST", "/api/judge", raw=b"[1, 2]")[0] == 400
    assert request(port, "POST", "/api/judge", raw=b"\xff\xfe")[0] == 400
    assert request(port, "POST", "/api/judge", raw=b"x" * (300 * 1024))[0] == 413
    assert request(port, "GET", "/api/judge")[0] == 405
    assert request(port, "DELETE", "/api/state")[0] == 405
    assert request(port, "GET", "/../../etc/passwd")[0] == 404
    assert request(port, "GET", "/api/state?annotator=%3Cscript%3E")[0] == 400
    assert request(port, "POST", "/api/undo", {"annotator": "ann", "x": 1})[0] == 400
    # Garbage on the wire, and a client that sends half a body and leaves.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"\x00\x01 NON SENSE HTTP/1.1\r\n\r\n")
        reply = b"".join(iter(lambda: sock.recv(4096), b""))  # the server closes after an error like this
        assert reply.startswith(b"HTTP/1.1 400") and b'"status": 400' in reply
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /api/judge HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"task\"")
    status, _ = request(port, "POST", "/api/judge", {"task": "t0", "choice": "tie"})
    assert status == 200 and len(events(labels)) == 1


def test_no_duplicates_and_undo_appends_an_event(served):
    port, labels = served
    assert request(port, "POST", "/api/undo", {})[0] == 409  # nothing to undo yet
    assert request(port, "POST", "/api/judge", {"task": "t0", "choice": "A", "ratings": {"B": 2},
                                                "note": "hmm"})[0] == 200
    status, payload = request(port, "POST", "/api/judge", {"task": "t0", "choice": "B"})
    assert status == 409 and "already judged" in payload["error"]["message"]
    status, state = request(port, "POST", "/api/undo", {})
    assert status == 200 and state["task"]["id"] == "t0" and state["done"] == 0 and state["last"] is None
    assert state["undone"] == {"task": "t0", "choice": "A", "ideal": None, "note": "hmm", "ratings": {"B": 2}}
    assert request(port, "POST", "/api/judge", {"task": "t0", "choice": "B"})[0] == 200
    lines = events(labels)
    assert [e["event"] for e in lines] == ["judgement", "undo", "judgement"]
    assert lines[1]["undoes"] == lines[0]["id"] and lines[2]["choice"] == "B"


def test_annotators_label_the_same_tasks_under_their_own_names(tmp_path):
    tasks = write_tasks(tmp_path / "tasks.jsonl", n=3)
    server, store, port = start(tasks, tmp_path / "labels.jsonl", annotator=None)
    try:
        assert request(port, "GET", "/api/state")[0] == 400  # no --annotator: the page must say who
        for name in ("ann", "bob"):
            assert request(port, "POST", "/api/judge", {"annotator": name, "task": "t0", "choice": "tie"})[0] == 200
        _, state = request(port, "GET", "/api/state?annotator=bob")
        assert (state["annotator"], state["done"], state["task"]["id"]) == ("bob", 1, "t1")
        assert request(port, "GET", "/api/state?annotator=cy")[1]["done"] == 0
    finally:
        stop(server, store)


def test_page_has_no_inline_script_and_a_strict_policy(served):
    port, _ = served
    conn = __import__("http.client").client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/")
    response = conn.getresponse()
    html = response.read().decode()
    policy = response.getheader("Content-Security-Policy")
    conn.close()
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/page.js">']
    _, script = request(port, "GET", "/page.js")
    assert "innerHTML" not in script and "outerHTML" not in script and "insertAdjacentHTML" not in script


def test_kill_9_mid_session_then_restart_resumes_at_the_first_unlabelled_task(tmp_path):
    tasks = write_tasks(tmp_path / "tasks.jsonl", n=6)
    labels = tmp_path / "labels.jsonl"
    proc, port, _ = serve_subprocess(tasks, labels)
    try:
        for task, choice in (("t0", "A"), ("t1", "B"), ("t2", "tie")):
            assert request(port, "POST", "/api/judge", {"task": task, "choice": choice})[0] == 200
        assert request(port, "POST", "/api/undo", {})[0] == 200  # t2 withdrawn
        assert request(port, "POST", "/api/judge", {"task": "t2", "choice": "skip"})[0] == 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    # A crash in the middle of a later write leaves half a line; it was never acknowledged.
    with open(labels, "a") as fh:
        fh.write('{"event": "judgement", "id": "x", "annot')
    proc, port, banner = serve_subprocess(tasks, labels)
    try:
        assert "ignoring a half-written last line" in banner and "3 done by ann" in banner
        _, state = request(port, "GET", "/api/state")
        assert (state["done"], state["task"]["id"]) == (3, "t3")
        for task in ("t3", "t4", "t5"):
            assert request(port, "POST", "/api/judge", {"task": task, "choice": "A"})[0] == 200
        assert request(port, "GET", "/api/state")[1]["task"] is None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    lines = events(labels)  # every line parses: the torn tail was cut before appending
    from whetstone.label.store import current_judgements

    active = current_judgements(lines)["ann"]
    assert list(active) == ["t0", "t1", "t2", "t3", "t4", "t5"]
    assert [active[t]["choice"] for t in active] == ["A", "B", "skip", "A", "A", "A"]
    assert sum(e["event"] == "judgement" for e in lines) == 7 and sum(e["event"] == "undo" for e in lines) == 1
