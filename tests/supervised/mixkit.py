"""Small multi-task data for the mixture and stage tests: arithmetic, echo, and general text for replay."""

from __future__ import annotations

from pathlib import Path

from tiny_runs import write_jsonl


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def arithmetic_file(path: Path, n: int = 24) -> Path:
    return write_jsonl(path, [chat(f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.") for i in range(n)])


def echo_file(path: Path, n: int = 12) -> Path:
    words = ["river", "stone", "cloud", "ember", "maple", "quartz", "harbor", "lantern", "meadow", "falcon"]
    return write_jsonl(path, [chat(f"Repeat after me: {words[i % 10]} {i}", f"{words[i % 10]} {i}") for i in range(n)])


def general_file(path: Path, n: int = 10) -> Path:
    return write_jsonl(path, [{"text": f"General note {i}: the library opens at {8 + i % 4} in the morning."}
                              for i in range(n)])
