"""Figures for shipping a run: export sizes and logit deltas, and the local server's latency and tokens/s.

    flock /tmp/whetstone-cpu.lock .venv/bin/python bench/ship_figures.py runs/demo --out /tmp/ship

Exports RUN_DIR as peft (f32), merged (f32) and gguf (f32, f16, q8_0), each verified
against base + adapter, then serves base + adapter on loopback and times chat requests
with the `openai` client (greedy, fixed prompts). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

from whetstone.export import export_run

PROMPTS = [
    "How do I read a file line by line in Python?",
    "What does os.path.join do?",
    "Explain list comprehensions in one sentence.",
    "How can I sort a dict by its values?",
    "What is the difference between a tuple and a list?",
]


def export_figures(run: Path, out: Path) -> list[dict]:
    rows = []
    for fmt, dtype in (("peft", "f32"), ("merged", "f32"), ("gguf", "f32"), ("gguf", "f16"), ("gguf", "q8_0")):
        target = out / (f"{fmt}-{dtype}.gguf" if fmt == "gguf" else f"{fmt}-{dtype}")
        result = export_run(run, fmt, target, dtype, overwrite=True)
        rows.append({k: getattr(result, k) for k in ("format", "dtype", "bytes", "logit_delta", "top1_agreement",
                                                     "tolerance", "seconds")})
    return rows


def serve_figures(run: Path, max_tokens: int) -> dict:
    import openai

    from whetstone.config import read_yaml
    from whetstone.serve import Engine, ServeLimits, make_server

    base = read_yaml(run / "config.yaml")["model"]["name"]
    engine = Engine(base, {"tuned": str(run / "adapter")})
    server = make_server(engine, port=0, limits=ServeLimits(max_tokens=max_tokens, timeout_s=300), log=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="x", max_retries=0)
    figures = {}
    try:
        for model_id in ("tuned", base):
            client.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=4, temperature=0)  # warm-up
            latencies, tokens, first = [], [], []
            for prompt in PROMPTS:
                messages = [{"role": "user", "content": prompt}]
                t0 = time.perf_counter()
                r = client.chat.completions.create(model=model_id, messages=messages, max_tokens=max_tokens,
                                                   temperature=0)
                latencies.append(time.perf_counter() - t0)
                tokens.append(r.usage.completion_tokens)
                t0 = time.perf_counter()
                stream = client.chat.completions.create(model=model_id, messages=messages, max_tokens=max_tokens,
                                                        temperature=0, stream=True)
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        first.append(time.perf_counter() - t0)
                        break
                for _ in stream:
                    pass
            figures["adapter" if model_id == "tuned" else "base"] = {
                "requests": len(PROMPTS),
                "median_latency_s": round(statistics.median(latencies), 3),
                "mean_completion_tokens": round(statistics.mean(tokens), 1),
                "tokens_per_s": round(sum(tokens) / sum(latencies), 1),
                "median_time_to_first_token_s": round(statistics.median(first), 3),
            }
    finally:
        server.shutdown()
        server.server_close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=Path("/tmp/whetstone-ship"))
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--skip-export", action="store_true")
    args = parser.parse_args()
    adapter = args.run / "adapter" / "adapter_model.safetensors"
    report = {"run": str(args.run), "adapter_bytes": adapter.stat().st_size}
    if not args.skip_export:
        report["exports"] = export_figures(args.run, args.out)
    report["serve"] = serve_figures(args.run, args.max_tokens)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
