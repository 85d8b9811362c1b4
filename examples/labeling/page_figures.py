"""The page's figures: server latency per judgement, and the screenshot in docs/label.png.

    python examples/labeling/page_figures.py latency [--n 200]
    python examples/labeling/page_figures.py screenshot [--tasks runs/labeling/tasks.jsonl] [-o docs/label.png]

latency: starts `whetstone label serve` on a task file of N synthetic tasks and
times N POST /api/judge round trips from a client on the same machine (each one:
parse, validate, one append + fsync of LABELS.jsonl, the next task's state). That is
the time the page adds to a judgement; reading the answers is the person's.

screenshot: opens the page in headless Chromium (Debian's, through Playwright),
rates answer A, starts an ideal answer, and saves a PNG.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def synthetic_tasks(path: Path, n: int) -> Path:
    rows = [{"id": f"t{i}", "prompt": [{"role": "user", "content": f"Question {i}: what does `os.getcwd` return?"}],
             "answers": [{"id": "m0", "text": "A string with the current working directory. " * 4, "source": "x"},
                         {"id": "m1", "text": "The current directory, as bytes. " * 4, "source": "x"}]}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def latency(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tasks = synthetic_tasks(Path(tmp) / "tasks.jsonl", n)
        server = subprocess.Popen([sys.executable, "-m", "whetstone", "label", "serve", str(tasks), "--out",
                                   str(Path(tmp) / "labels.jsonl"), "--port", "0", "--annotator", "bench", "--quiet"],
                                  cwd=ROOT, stderr=subprocess.PIPE, text=True)
        try:
            port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", server.stderr.readline()).group(1))
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:  # the write token
                token = re.search(r'name="whetstone-token" content="([^"]+)"', response.read().decode()).group(1)
            times = []
            for i in range(n):
                body = json.dumps({"task": f"t{i}", "choice": "AB"[i % 2], "ratings": {"A": 4, "B": 2},
                                   "note": "timing"}).encode()
                request = urllib.request.Request(f"http://127.0.0.1:{port}/api/judge", data=body,
                                                 headers={"Content-Type": "application/json",
                                                          "X-Whetstone-Token": token}, method="POST")
                start = time.perf_counter()
                with urllib.request.urlopen(request, timeout=30) as response:
                    response.read()
                times.append(time.perf_counter() - start)
        finally:
            server.terminate()
            server.wait(timeout=30)
        lines = (Path(tmp) / "labels.jsonl").read_text().splitlines()
    times_ms = sorted(1000 * t for t in times)
    print(f"{n} judgements (POST /api/judge, append + fsync, next state), {len(lines)} lines written: "
          f"median {statistics.median(times_ms):.2f} ms, p90 {times_ms[int(0.9 * n) - 1]:.2f} ms, "
          f"max {times_ms[-1]:.2f} ms")


def screenshot(tasks: Path | None, output: Path) -> None:
    from playwright.sync_api import sync_playwright

    from whetstone.label.server import make_server
    from whetstone.label.store import LabelStore, read_tasks
    from whetstone.report.browser import find_chromium

    with tempfile.TemporaryDirectory() as tmp:
        if tasks is None:
            tasks = synthetic_tasks(Path(tmp) / "tasks.jsonl", 12)
        store = LabelStore(read_tasks(tasks), Path(tmp) / "labels.jsonl")
        for task in store.tasks[:3]:  # some progress on the bar
            store.judge("alice", task.id, "A", {}, None, None)
        server = make_server(store, port=0, annotator="alice", log=False)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=find_chromium(), args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1200, "height": 860})
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.wait_for_selector("#task:not([hidden])")
            page.click('.rate[data-side="A"][data-value="3"]')
            page.click('.rate[data-side="B"][data-value="1"]')
            page.click("#copy-A")
            page.fill("#note", "Both miss that it sets the supplementary group ids; A is closer.")
            output.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(output), full_page=True)
            browser.close()
        server.shutdown()
        store.close()
    print(f"wrote {output}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("latency")
    p.add_argument("--n", type=int, default=200)
    p = sub.add_parser("screenshot")
    p.add_argument("--tasks", type=Path, default=None)
    p.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "label.png")
    args = parser.parse_args()
    if args.what == "latency":
        latency(args.n)
    else:
        screenshot(args.tasks, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
