"""`whetstone label stats`: what the annotators did, whether they agree, and which side wins.

Agreement is Cohen's kappa between each pair of annotators, over the tasks both
judged (skips left out). A judgement's category is the answer preferred (by answer
id, not by side: each annotator saw the sides in their own random order) or "tie":

    kappa = (p_o - p_e) / (1 - p_e)

p_o is the fraction of common tasks on which they agree; p_e the agreement expected
by chance, sum over categories c of p_1(c) * p_2(c), from each annotator's own
category frequencies (Cohen 1960, "A coefficient of agreement for nominal scales").
1 is perfect agreement, 0 no better than chance. Kappa is undefined (None) when
p_e = 1: both annotators gave one and the same category to every task.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass

from whetstone.label.store import current_judgements


@dataclass
class Agreement:
    annotators: tuple[str, str]
    tasks: int  # judged by both, neither skipped
    observed: float | None  # p_o
    kappa: float | None


def cohen_kappa(first: list[str], second: list[str]) -> float | None:
    """Cohen's kappa of two equally long lists of category labels; None when chance agreement is 1."""
    assert len(first) == len(second), "one label per item from each rater"
    n = len(first)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(first, second)) / n
    counts1, counts2 = Counter(first), Counter(second)
    expected = sum(counts1[c] * counts2[c] for c in counts1) / (n * n)
    if expected == 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def category(judgement: dict) -> str:
    return judgement["preferred"] if judgement["choice"] in ("A", "B") else judgement["choice"]


def agreements(events: list[dict]) -> list[Agreement]:
    active = current_judgements(events)
    out = []
    for a, b in itertools.combinations(sorted(active), 2):
        common = [t for t in active[a] if t in active[b]
                  and active[a][t]["choice"] != "skip" and active[b][t]["choice"] != "skip"]
        first = [category(active[a][t]) for t in common]
        second = [category(active[b][t]) for t in common]
        observed = sum(x == y for x, y in zip(first, second)) / len(common) if common else None
        out.append(Agreement((a, b), len(common), observed, cohen_kappa(first, second)))
    return out


def summarize(events: list[dict]) -> dict:
    """Per annotator counts and position bias, agreement, and wins per answer source."""
    active = current_judgements(events)
    annotators = {}
    for name, judgements in sorted(active.items()):
        choices = Counter(j["choice"] for j in judgements.values())
        decided = choices["A"] + choices["B"]
        annotators[name] = {
            "judged": len(judgements), **{c: choices[c] for c in ("A", "B", "tie", "skip")},
            # Sides are shuffled, so an unbiased annotator picks A about half the time.
            "picks_left": choices["A"] / decided if decided else None,
            "ratings": sum(len(j.get("ratings") or {}) for j in judgements.values()),
            "ideal_answers": sum(bool(j.get("ideal")) for j in judgements.values()),
            "notes": sum(bool(j.get("note")) for j in judgements.values()),
            "undos": sum(e["event"] == "undo" and e["annotator"] == name for e in events),
        }
    return {"annotators": annotators,
            "agreement": [vars(a) | {"annotators": list(a.annotators)} for a in agreements(events)],
            "sources": source_wins(active)}


def source_wins(active: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """{source: {wins, losses, ties, win_rate}} over every annotator's A/B/tie judgements of cross-source pairs.

    Only pairs whose answers come from different sources count (`prepare --against`).
    """
    table: dict[str, Counter] = {}
    for judgements in active.values():
        for judgement in judgements.values():
            answers = judgement.get("answers") or []
            if judgement["choice"] == "skip" or len({a.get("source") for a in answers}) != 2:
                continue
            for answer in answers:
                row = table.setdefault(answer["source"], Counter())
                if judgement["choice"] == "tie":
                    row["ties"] += 1
                else:
                    row["wins" if judgement["preferred"] == answer["id"] else "losses"] += 1
    return {source: {"wins": c["wins"], "losses": c["losses"], "ties": c["ties"],
                     "win_rate": c["wins"] / (c["wins"] + c["losses"]) if c["wins"] + c["losses"] else None}
            for source, c in sorted(table.items())}


def render(summary: dict) -> str:
    def fmt(x) -> str:
        return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)

    lines = ["annotator        judged     A     B   tie  skip  picks_left  ratings  ideal  notes  undos"]
    for name, s in summary["annotators"].items():
        lines.append(f"{name:<16} {s['judged']:>6} {s['A']:>5} {s['B']:>5} {s['tie']:>5} {s['skip']:>5} "
                     f"{fmt(s['picks_left']):>11} {s['ratings']:>8} {s['ideal_answers']:>6} {s['notes']:>6} "
                     f"{s['undos']:>6}")
    if not summary["annotators"]:
        lines.append("(no judgements yet)")
    if summary["agreement"]:
        lines += ["", "agreement (Cohen's kappa over tasks both judged, skips left out)"]
        for a in summary["agreement"]:
            lines.append(f"  {a['annotators'][0]} / {a['annotators'][1]}: {a['tasks']} tasks, observed "
                         f"{fmt(a['observed'])}, kappa {fmt(a['kappa'])}")
    if summary.get("sources"):
        lines += ["", "wins by answer source (every annotator's judgements)"]
        for source, s in summary["sources"].items():
            lines.append(f"  {source}: {s['wins']} wins, {s['losses']} losses, {s['ties']} ties, win rate "
                         f"{fmt(s['win_rate'])}")
    return "\n".join(lines)
