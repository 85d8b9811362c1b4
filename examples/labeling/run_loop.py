"""The human-feedback loop end to end, with scripted annotators standing in for people.

    python examples/labeling/run_loop.py                       # prepare -> label -> stats -> export -> reward model
    python examples/labeling/run_loop.py --then dpo            # ... -> DPO instead of a reward model
    python examples/labeling/run_loop.py --then ppo            # ... -> reward model -> PPO
    python examples/labeling/run_loop.py --stop-after export   # only the labelling part (no training)

Each step is the command a person would run (printed before it runs); only the
judging is scripted. The annotators talk to the real `whetstone label serve` over
HTTP, as the page does: each prefers the answer that shares more words with the
question's reference docstring (prompts.jsonl carries one), and "bob" disagrees
with that rule on 20% of tasks (seeded), as a second person would now and then.
Every fourth task gets the reference as its edited ideal answer, which the SFT
export collects.

prompts.jsonl: 32 questions about Python standard-library functions and their
docstrings' first paragraphs (license-clean: PSF), taken from
examples/preferences/questions_train.jsonl (built by examples/preferences/build.py).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shlex
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
WORD = re.compile(r"[a-z0-9_]+")


def whetstone(*args: str) -> None:
    cmd = [sys.executable, "-m", "whetstone", *args]
    print("$ whetstone " + shlex.join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def overlap(answer: str, reference: str) -> float:
    """Word-level F1 between an answer and the reference: the scripted annotator's taste."""
    a, r = set(WORD.findall(answer.lower())), set(WORD.findall(reference.lower()))
    common = len(a & r)
    return 0.0 if not common else 2 * common / (len(a) + len(r))


def page_token(port: int) -> str:
    """The write token the server puts in its page: its script sends it with every write, and so must we."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as response:
        return re.search(r'name="whetstone-token" content="([^"]+)"', response.read().decode()).group(1)


def post(port: int, path: str, body: dict, token: str) -> tuple[dict, float]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "X-Whetstone-Token": token},
                                     method="POST")
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = json.loads(response.read())
    return payload, time.perf_counter() - start


def get_state(port: int, annotator: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state?annotator={annotator}", timeout=30) as response:
        return json.loads(response.read())


def annotate(port: int, annotator: str, references: dict[str, str], flip: float, seed: int) -> list[float]:
    """Judge every task as `annotator`; returns each POST's round-trip time in seconds."""
    rng = random.Random(seed)
    latencies = []
    token = page_token(port)
    state = get_state(port, annotator)
    while state["task"] is not None:
        task = state["task"]
        reference = references[task["prompt"][-1]["content"]]
        scores = {a["side"]: overlap(a["text"], reference) for a in task["answers"]}
        if abs(scores["A"] - scores["B"]) < 0.02:
            choice = "tie"
        else:
            choice = max(scores, key=scores.get)
            if rng.random() < flip:
                choice = "B" if choice == "A" else "A"
        body = {"annotator": annotator, "task": task["id"], "choice": choice,
                "ratings": {side: 1 + round(4 * min(1.0, 2 * s)) for side, s in scores.items()}}
        if len(latencies) % 4 == 0:
            body["ideal"] = reference
        state, seconds = post(port, "/api/judge", body, token)
        latencies.append(seconds)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/labeling", help="where the tasks, labels, exports and runs go")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--limit", type=int, default=32, help="prompts to sample from prompts.jsonl")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--steps", type=int, default=30, help="training steps of the reward model / DPO")
    parser.add_argument("--then", choices=("reward", "ppo", "dpo"), default="reward")
    parser.add_argument("--stop-after", choices=("prepare", "label", "export", "train"), default="train")
    args = parser.parse_args()
    out = Path(args.out) if Path(args.out).is_absolute() else ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    tasks, labels = out / "tasks.jsonl", out / "labels.jsonl"

    # 1. prepare: two answers per prompt from the embedded model, sampled at temperature 0.9, seeded.
    whetstone("label", "prepare", "--model", args.model, "--prompts", str(HERE / "prompts.jsonl"), "--n", "2",
              "--limit", str(args.limit), "--temperature", "0.9", "--max-new-tokens", str(args.max_new_tokens),
              "--seed", "0", "-o", str(tasks), "--overwrite")
    if args.stop_after == "prepare":
        return 0

    # 2. label: the real server; two scripted annotators in place of people.
    labels.unlink(missing_ok=True)
    print(f"$ whetstone label serve {tasks} --out {labels} --port 0   (annotators: alice, bob; scripted)", flush=True)
    server = subprocess.Popen([sys.executable, "-m", "whetstone", "label", "serve", str(tasks), "--out", str(labels),
                               "--port", "0", "--quiet"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        banner = server.stderr.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", banner).group(1))
        references = {json.loads(line)["prompt"]: json.loads(line)["reference"]
                      for line in (HERE / "prompts.jsonl").read_text().splitlines()}
        latencies = annotate(port, "alice", references, flip=0.0, seed=1)
        latencies += annotate(port, "bob", references, flip=0.2, seed=2)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"{len(latencies)} judgements; server round trip per judgement: median "
          f"{1000 * statistics.median(latencies):.2f} ms, max {1000 * max(latencies):.2f} ms")
    whetstone("label", "stats", str(labels))
    if args.stop_after == "label":
        return 0

    # 3. export: pairs for the reward model and DPO, unpaired feedback for KTO, ideal answers for SFT.
    for kind in ("preference", "kto", "sft"):
        whetstone("label", "export", str(labels), "--as", kind, "-o", str(out / f"{kind}.jsonl"), "--overwrite")
    whetstone("data", "check", str(out / "preference.jsonl"), "--no-near-dedup")
    if args.stop_after == "export":
        return 0

    # 4. train on the labels: the shipped recipes with data.train pointed at the export.
    steps = f"train.max_steps={args.steps}"
    if args.then == "dpo":
        whetstone("train", "configs/dpo.yaml", "-o", str(out / "dpo"), "--overwrite", "--quiet",
                  "--set", f"data.train={out / 'preference.jsonl'}", "--set", steps, "--set", f"eval.every={args.steps}")
        return 0
    whetstone("train", "configs/rlhf_reward.yaml", "-o", str(out / "reward"), "--overwrite", "--quiet",
              "--set", f"data.train={out / 'preference.jsonl'}", "--set", steps, "--set", f"eval.every={args.steps}")
    if args.then == "ppo":
        whetstone("train", "configs/rlhf_ppo.yaml", "-o", str(out / "ppo"), "--overwrite", "--quiet",
                  "--set", f"objective.reward=[{{run: {out / 'reward'}, weight: 1.0}}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
