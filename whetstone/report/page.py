"""report.html: one self-contained page that shows what a run did and what it cost.

It reads only the run directory (config.yaml, metrics.jsonl, summary.json,
samples.jsonl, the weight directories), so it can be rebuilt at any time with
`whetstone report RUN_DIR`. Everything is inline (CSS, SVG): no script, no font,
no network. Results that other parts of whetstone add to summary.json ("eval",
"ladder", "forgetting", or anything else) are rendered generically: scalars as
tables, mappings of numbers as tables with bars, lists of records as tables.
"""

from __future__ import annotations

import json
import math
import time
from html import escape
from pathlib import Path

import yaml

from whetstone.report.charts import PALETTE, Series, bar_chart, line_chart
from whetstone.rundir import RunDir

# summary.json keys shown in their own sections; the rest goes under "Other results".
_SHOWN = {"train_loss", "eval_loss", "eval_ppl", "steps", "total_steps", "stopped_early", "tokens",
          "supervised_tokens", "tokens_per_s", "train_s", "wall_s", "peak_memory_mb", "trainable_params",
          "total_params", "trainable_pct", "method", "device", "precision", "data", "eval", "ladder", "forgetting",
          "samples"}
_MAX_ROWS = 200
_COMPARISON = {"before", "after", "base", "tuned", "delta", "change"}  # keys that name the columns of a comparison

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:28px 0 10px;border-bottom:1px solid #d8dce3;padding-bottom:4px}
h3{font-size:15px;margin:16px 0 6px}.sub{color:#5a6272;margin:0 0 16px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:10px}
.card{background:#fff;border:1px solid #d8dce3;border-radius:8px;padding:10px 12px}
.card b{display:block;font-size:20px}.card span{color:#5a6272;font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:14px}
.panel{background:#fff;border:1px solid #d8dce3;border-radius:8px;padding:8px;overflow-x:auto}
table{border-collapse:collapse;background:#fff;font-size:13px}th,td{border:1px solid #d8dce3;padding:4px 8px;
text-align:left;vertical-align:top}th{background:#eef0f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.text{white-space:pre-wrap;max-width:420px}.bar{display:inline-block;height:8px;background:#1f77b4;
vertical-align:middle;margin-left:6px;border-radius:2px}.bar.neg{background:#d62728}
pre{background:#fff;border:1px solid #d8dce3;border-radius:8px;padding:10px;overflow-x:auto;font-size:12px}
.empty{color:#5a6272;font-style:italic}svg .title{font-weight:600;font-size:13px}
svg .tick,svg .legend,svg .label{font-size:11px;fill:#3b4252}svg .grid{stroke:#e6e8ec}svg .axis{stroke:#8a93a3}
details summary{cursor:pointer;font-weight:600}
"""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def _weights(run: RunDir) -> Path:
    """adapter/ once the run has one, else model/: the output the cost section sizes."""
    return run.adapter_dir if run.adapter_dir.is_dir() else run.model_dir


def _bytes(path: Path) -> int:
    if not path.exists():
        return 0
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _seconds(s) -> str:
    if not isinstance(s, (int, float)):
        return "n/a"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def _num(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return escape(str(v))
    if isinstance(v, int):
        return f"{v:,}"
    if not math.isfinite(v):
        return str(v)
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"


# ---------------------------------------------------------------------------
# Generic rendering of whatever summary.json holds.


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _cell(v, scale: float | None = None) -> str:
    if _is_num(v):
        bar = ""
        if scale:
            width = 80 * abs(v) / scale
            bar = f'<span class="bar{" neg" if v < 0 else ""}" style="width:{width:.0f}px"></span>'
        return f'<td class="num">{_num(v)}{bar}</td>'
    if isinstance(v, str):
        return f'<td class="text">{escape(v)}</td>'
    if v is None:
        return "<td></td>"
    return f'<td class="text">{escape(json.dumps(v)[:400])}</td>'


def _table(header: list[str], rows: list[list], bars: str | None = None) -> str:
    """A table; bars="columns" or "rows" draws inline bars scaled within each column or row.

    Bars compare like with like: a column of one metric over methods, or a row of one
    metric before and after. A key/value table mixes units, so it gets none.
    """
    def scale(values) -> float | None:
        nums = [abs(v) for v in values if _is_num(v)]
        return max(nums) if len(nums) > 1 and max(nums) > 0 else None

    width = len(header)
    padded = [[r[c] if c < len(r) else None for c in range(width)] for r in rows[:_MAX_ROWS]]
    if bars == "columns":
        col_scales = [scale(r[c] for r in padded) for c in range(width)]
        scales = [col_scales for _ in padded]
    elif bars == "rows":
        scales = [[scale(r[1:])] * width for r in padded]
    else:
        scales = [[None] * width for _ in padded]
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v, sc) for v, sc in zip(r, row_scales)) + "</tr>"
                   for r, row_scales in zip(padded, scales))
    more = f'<p class="empty">{len(rows) - _MAX_ROWS} more rows not shown.</p>' if len(rows) > _MAX_ROWS else ""
    return f'<div class="panel"><table><tr>{head}</tr>{body}</table></div>{more}'


def render_value(value, title: str, chart: bool = False) -> str:
    """Any JSON value as HTML; `chart` adds a bar chart for mappings of numbers."""
    if _scalar(value):
        return f"<p>{_num(value)}</p>"
    if isinstance(value, list):
        if all(isinstance(v, dict) for v in value) and value:
            keys = list(dict.fromkeys(k for v in value for k in v))
            rows = [[v.get(k) for k in keys] for v in value]
            html = _table(keys, rows, bars="columns")
            if chart:
                html += _records_chart(value, keys, title)
            return html
        if all(_scalar(v) for v in value):
            return f"<p>{', '.join(_num(v) for v in value)}</p>"
        return "".join(render_value(v, f"{title}[{i}]") for i, v in enumerate(value[:_MAX_ROWS]))
    # A mapping.
    if all(_scalar(v) for v in value.values()):
        html = _table(["key", "value"], [[k, v] for k, v in value.items()])
        nums = {k: v for k, v in value.items() if _is_num(v)}
        if chart and len(nums) > 1:
            html += f'<div class="panel">{bar_chart(list(nums), [(title, list(nums.values()))], title)}</div>'
        return html
    if all(isinstance(v, dict) and all(_scalar(x) for x in v.values()) for v in value.values()):
        # {column: {row: number}}, e.g. {"before": {"loss": 2.1}, "after": {"loss": 1.7}}; turned around
        # when the inner keys are the comparison ({"arc": {"before": .5, "after": .45}}) or the fewer.
        inner = list(dict.fromkeys(k for v in value.values() for k in v))
        if set(inner) <= _COMPARISON or (len(inner) < len(value) and not set(value) <= _COMPARISON):
            value = {c: {r: value[r].get(c) for r in value if c in value[r]} for c in inner}
        columns = list(value)
        row_keys = list(dict.fromkeys(k for v in value.values() for k in v))
        rows = [[k] + [value[c].get(k) for c in columns] for k in row_keys]
        header = ["metric"] + columns
        if len(columns) == 2 and all(_is_num(r[1]) and _is_num(r[2]) for r in rows):
            header.append(f"{columns[1]} − {columns[0]}")
            rows = [r + [r[2] - r[1]] for r in rows]
        html = _table(header, rows, bars="rows")
        if chart:
            series = [(c, [value[c].get(k) if _is_num(value[c].get(k)) else float("nan") for k in row_keys])
                      for c in columns]
            html += f'<div class="panel">{bar_chart(row_keys, series, title)}</div>'
        return html
    return "".join(f"<details open><summary>{escape(str(k))}</summary>{render_value(v, f'{title}.{k}', chart)}"
                   f"</details>" for k, v in value.items())


def _records_chart(records: list[dict], keys: list[str], title: str) -> str:
    """Bars for a list of records: the first text column names them, numeric columns are the series."""
    label = next((k for k in keys if all(isinstance(r.get(k), str) for r in records)), None)
    numeric = [k for k in keys if all(_is_num(r.get(k)) for r in records)][:4]
    if label is None or not numeric or len(records) > 30:
        return ""
    series = [(k, [float(r[k]) for r in records]) for k in numeric]
    return f'<div class="panel">{bar_chart([str(r[label]) for r in records], series, title)}</div>'


# ---------------------------------------------------------------------------
# The sections.


def _curves(rows: list[dict]) -> str:
    def series(key: str, name: str, color: str, markers: bool = False) -> Series:
        pts = [(r["step"], r[key]) for r in rows if _is_num(r.get(key)) and _is_num(r.get("step"))]
        return Series(name, [p[0] for p in pts], [p[1] for p in pts], color, markers)

    charts = [
        line_chart([series("loss", "train loss", PALETTE[0]), series("eval_loss", "eval loss", PALETTE[1], True)],
                   "Loss", y_label="loss"),
        line_chart([series("lr", "learning rate", PALETTE[2])], "Learning rate", y_label="lr"),
        line_chart([series("grad_norm", "grad norm", PALETTE[3])], "Gradient norm (before clipping)",
                   y_label="L2 norm"),
        line_chart([series("tokens_per_s", "tokens / s", PALETTE[4])], "Throughput", y_label="tokens / s"),
    ]
    # Objectives that log more than a loss get their own curves: what PPO/GRPO optimise and how far
    # they drift (reward, KL to the reference), and what preference objectives rank (accuracy).
    logged = {key for row in rows for key in row}
    extra = [
        (("reward", "eval_reward"), "Reward", "mean reward"),
        (("kl", "eval_kl"), "KL to the reference", "nats"),
        (("accuracy", "eval_accuracy"), "Accuracy", "accuracy"),
    ]
    for (train_key, eval_key), title, y_label in extra:
        if logged & {train_key, eval_key}:
            charts.append(line_chart([series(train_key, f"train {title.lower()}", PALETTE[0]),
                                      series(eval_key, f"eval {title.lower()}", PALETTE[1], True)],
                                     title, y_label=y_label))
    return '<div class="grid">' + "".join(f'<div class="panel">{c}</div>' for c in charts) + "</div>"


def _cards(summary: dict, output_bytes: int) -> str:
    cards = [
        ("train loss", _num(summary.get("train_loss"))),
        ("eval loss", _num(summary.get("eval_loss"))),
        ("eval perplexity", _num(summary.get("eval_ppl"))),
        ("steps", f"{_num(summary.get('steps'))} / {_num(summary.get('total_steps'))}"),
        ("wall time", _seconds(summary.get("wall_s"))),
        ("tokens", _num(summary.get("tokens"))),
        ("tokens / s", _num(summary.get("tokens_per_s"))),
        ("peak memory", f"{_num(summary.get('peak_memory_mb'))} MB"),
        ("output size", human_bytes(output_bytes)),
    ]
    return '<div class="cards">' + "".join(f"<div class=\"card\"><b>{v}</b><span>{escape(k)}</span></div>"
                                           for k, v in cards) + "</div>"


def _cost(summary: dict, run: RunDir) -> str:
    weights = _weights(run)
    rows = [
        ["wall time", _seconds(summary.get("wall_s"))],
        ["training time (steps only)", _seconds(summary.get("train_s"))],
        ["tokens (real, non-padding)", summary.get("tokens")],
        ["supervised tokens", summary.get("supervised_tokens")],
        ["throughput, tokens / s", summary.get("tokens_per_s")],
        ["peak memory, MB", summary.get("peak_memory_mb")],
        ["trainable / total parameters",
         f"{_num(summary.get('trainable_params'))} / {_num(summary.get('total_params'))} "
         f"({_num(summary.get('trainable_pct'))} %)"],
        [f"output size ({weights.name}/)", human_bytes(_bytes(weights))],
        ["checkpoints size", human_bytes(_bytes(run.checkpoints))],
        ["device / precision / base dtype", f"{summary.get('device', 'n/a')} / {_precision(summary)} / "
                                            f"{summary.get('model_dtype', 'n/a')}"],
    ]
    return _table(["cost", "value"], rows)


def _precision(summary: dict) -> str:
    """The resolved precision; a run from before `train.precision: auto` recorded only the asked string."""
    precision = summary.get("precision", "n/a")
    return precision["resolved"] if isinstance(precision, dict) else str(precision)


def _data(summary: dict) -> str:
    data = dict(summary.get("data") or {})
    for key in ("tokens", "supervised_tokens"):
        if key in summary:
            data[key] = summary[key]
    if not data:
        return '<p class="empty">No data statistics in summary.json.</p>'
    return render_value(data, "data")


def _samples(run: RunDir, summary: dict) -> str:
    samples = run.samples() or summary.get("samples") or []
    if isinstance(summary.get("eval"), dict) and not samples:
        samples = summary["eval"].get("samples") or []
    if not samples:
        return (f'<p class="empty">No sample generations yet: run <code>whetstone report {escape(str(run.path))} '
                f'--samples 4</code> to answer a few eval prompts with the base and the tuned model.</p>')
    return render_value(samples, "samples")


def build_report(run_dir: str | Path) -> str:
    """The HTML text of a run's report."""
    run = RunDir(run_dir)
    summary = _read_json(run.summary_path)
    rows = run.metrics()
    config_text = run.config_path.read_text() if run.config_path.is_file() else None
    weights = _weights(run)
    try:
        config = yaml.safe_load(config_text) if config_text else None
    except yaml.YAMLError:
        config = None
    model = (config.get("model") if isinstance(config, dict) else None) or {}  # a cut or hand-edited file: "?"
    model = model.get("name", "?") if isinstance(model, dict) else str(model)
    status = ("stopped early" if summary.get("stopped_early") else "finished") if summary else "running or failed"
    sections = [
        f"<h1>Run report: {escape(run.path.resolve().name)}</h1>",
        f'<p class="sub">{escape(str(summary.get("method", "?")))} on {escape(model)} · {status} · '
        f'{len(rows)} logged steps · generated {time.strftime("%Y-%m-%d %H:%M")}</p>',
        _cards(summary, _bytes(weights)),
        "<h2>Training curves</h2>", _curves(rows),
    ]
    for key, title in (("eval", "Evaluation: before / after"), ("ladder", "Ladder"), ("forgetting", "Forgetting")):
        if summary.get(key) not in (None, {}, []):
            sections += [f"<h2>{title}</h2>", render_value(summary[key], title, chart=key != "eval")]
    other = {k: v for k, v in summary.items() if k not in _SHOWN}
    if other:
        sections += ["<h2>Other results</h2>", render_value(other, "other")]
    sections += ["<h2>Sample generations</h2>", _samples(run, summary),
                 "<h2>Data</h2>", _data(summary),
                 "<h2>Cost</h2>", _cost(summary, run),
                 "<h2>Config</h2>", f"<pre>{escape(config_text)}</pre>" if config_text is not None else
                 "<p>This run directory has no config.yaml, so the config it ran with is not known.</p>"]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>whetstone report: "
            f"{escape(run.path.resolve().name)}</title><style>{_CSS}</style></head><body><main>"
            + "\n".join(sections) + "</main></body></html>\n")


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html (atomically) and return its path."""
    run = RunDir(run_dir)
    out = run.report_path
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(build_report(run.path), encoding="utf-8")
    tmp.replace(out)
    return out
