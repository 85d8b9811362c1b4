"""Building blocks for the labelling tests: task files, an in-process server, a tiny HTTP client."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from whetstone.label.server import make_server
from whetstone.label.store import LabelStore, read_tasks

ROOT = Path(__file__).resolve().parents[2]
SCRIPT_ANSWER = "<script>window.pwned = 1</script><b>bold?</b> & <img src=x onerror=\"window.pwned=2\">"


def task_rows(n: int, script_at: int | None = None) -> list[dict]:
    """n tasks; answer m0 says "good <i>", m1 says "bad <i>"; one answer may carry markup and a script."""
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": f"Question {i}: say something {'good' if i % 2 else 'nice'}."}]
        if i == 1:  # one multi-turn prompt
            prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}, *prompt]
        good = SCRIPT_ANSWER if i == script_at else f"good answer {i}"
        rows.append({"id": f"t{i}", "prompt": prompt,
                     "answers": [{"id": "m0", "text": good, "source": "model-x"},
                                 {"id": "m1", "text": f"bad answer {i}", "source": "model-y"}],
                     "settings": {"seed": 0}})
    return rows


def write_tasks(path: Path, n: int = 6, script_at: int | None = None) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in task_rows(n, script_at)))
    return path


def start(tasks: Path, labels: Path, annotator: str | None = "ann"):
    """(server, store, port): a label server on a free loopback port, in a daemon thread."""
    store = LabelStore(read_tasks(tasks), labels)
    server = make_server(store, port=0, annotator=annotator, log=False)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, store, server.server_address[1]


def serve_command(tasks: Path, labels: Path) -> list[str]:
    return [sys.executable, "-m", "whetstone", "label", "serve", str(tasks), "--out", str(labels), "--port", "0",
            "--annotator", "ann", "--quiet"]


def serve_subprocess(tasks: Path, labels: Path):
    """(process, port, banner) of `whetstone label serve` on a free port, once it has said where it listens."""
    proc = subprocess.Popen(serve_command(tasks, labels), cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    banner = ""
    for _ in range(5):  # warnings (a torn last line) come before the banner
        banner += proc.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", banner)
        if match:
            return proc, int(match.group(1)), banner
    proc.kill()
    raise AssertionError(f"no banner from label serve: {banner}")


def stop(server, store) -> None:
    server.shutdown()
    server.server_close()
    store.close()


def page_token(port: int) -> str:
    """The write token the server embeds in its page, read as the page's script reads it."""
    _, html = request(port, "GET", "/")
    return re.search(r'<meta name="whetstone-token" content="([^"]+)">', html).group(1)


def request(port: int, method: str, path: str, body=None, raw: bytes | None = None, headers=None):
    """(status, parsed JSON or text) of one request on a fresh connection; a POST sends what the page sends."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if headers is None:
        headers = {"Content-Type": "application/json", "X-Whetstone-Token": page_token(port)} \
            if method == "POST" else {}
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    payload = response.read().decode()
    conn.close()
    is_json = response.getheader("Content-Type", "").startswith("application/json")
    return response.status, json.loads(payload) if is_json else payload


def events(labels: Path) -> list[dict]:
    return [json.loads(line) for line in labels.read_text().splitlines()]


def pick(state: dict, answer_id: str, annotator: str = "ann") -> str:
    """The side ("A"/"B") on which `answer_id` of the state's task is shown to `annotator`."""
    from whetstone.label.store import Answer, Task, shown_order

    task = Task(state["task"]["id"], (), (Answer("m0", "", ""), Answer("m1", "", "")))
    return "AB"[shown_order(task, annotator).index(answer_id)]
