"""report.html: written by training and by `whetstone report`, self-contained, and rendered by headless Chromium."""

import json
import re
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whetstone.cli import main
from whetstone.report import write_report
from whetstone.report.browser import dump_dom, find_chromium, screenshot
from whetstone.report.charts import PALETTE, nice_ticks
from whetstone.report.page import render_value


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium; installed here when missing (root + apt-get), else the browser tests skip."""
    if find_chromium() is None and shutil.which("apt-get"):
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            if subprocess.run(cmd, capture_output=True, env=env, timeout=600).returncode != 0:
                break
    path = find_chromium()
    if path is None:
        pytest.skip("Chromium is not installed and `apt-get install chromium` was not possible here")
    return path


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_writes_a_self_contained_report(lora_run):
    html = (lora_run / "report.html").read_text()
    rows = _rows(lora_run)
    # Four curves; the loss path has one point per logged step, eval loss one marker per eval.
    assert html.count('<svg class="chart"') == 4
    loss_path = re.search(r'data-series="train loss" d="([^"]+)"', html).group(1)
    assert loss_path.count("L") + 1 == len(rows)
    assert html.count("<title>eval loss at") == sum("eval_loss" in r for r in rows) == 2
    for key in ("Learning rate", "Gradient norm", "Throughput", "Cost", "Config", "Data", "Sample generations"):
        assert key in html
    # Offline: nothing fetched from anywhere.
    assert not re.search(r"<script|<link|<img|@import|url\(", html)
    assert set(re.findall(r"https?://[^\s\"'<]+", html)) <= {"http://www.w3.org/2000/svg"}
    # Cost, from summary.json and the run directory.
    summary = json.loads((lora_run / "summary.json").read_text())
    assert f"{summary['peak_memory_mb']:.4g}" in html and "output size (adapter/)" in html


def test_online_and_preference_runs_get_reward_kl_and_accuracy_curves(run_copy):
    rows = [{"step": 0, "eval_reward": 0.1, "eval_kl": 0.0}]
    rows += [{"step": s, "loss": 0.5, "reward": 0.1 * s, "kl": 0.5 * s, "accuracy": 0.5 + 0.1 * s} for s in (1, 2, 3)]
    rows += [{"step": 3, "eval_reward": 0.4, "eval_kl": 1.2, "eval_accuracy": 0.9}]
    (run_copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    html = write_report(run_copy).read_text()
    assert html.count('<svg class="chart"') == 1 + 3  # loss, then the three; lr, grad norm, tokens/s were not logged
    for title in ("Reward", "KL to the reference", "Accuracy"):
        assert f'aria-label="{title}"' in html
    reward_path = re.search(r'data-series="train reward" d="([^"]+)"', html).group(1)
    assert reward_path.count("L") + 1 == 3  # one point per logged train step
    assert html.count("<title>eval reward at") == 2  # before training and after


def test_eval_ladder_and_forgetting_render_whatever_their_shape(run_copy):
    summary = json.loads((run_copy / "summary.json").read_text())
    summary["eval"] = {"before": {"loss": 2.5, "exact_match": 0.1}, "after": {"loss": 1.75, "exact_match": 0.4}}
    summary["ladder"] = [{"method": "zero-shot", "exact_match": 0.1}, {"method": "lora", "exact_match": 0.4}]
    summary["forgetting"] = {"arc": {"before": 0.5, "after": 0.45}, "hellaswag": {"before": 0.4, "after": 0.41}}
    summary["canaries"] = {"exposure": [1.5, 2.0], "detail": {"deep": [{"a": None}], "x": float("nan")}}
    (run_copy / "summary.json").write_text(json.dumps(summary))
    (run_copy / "samples.jsonl").write_text(json.dumps(
        {"prompt": "2+2?", "reference": "4", "base": "<b>five</b>", "tuned": "4"}) + "\n")
    html = (write_report(run_copy)).read_text()
    assert "Evaluation: before / after" in html and "after − before" in html
    assert '<td class="num">-0.75' in html and '<td class="num">0.3' in html  # the deltas, after - before
    assert "Ladder" in html and html.count('aria-label="Ladder"') == 1  # a bar chart of the ladder
    assert 'aria-label="Forgetting"' in html and "arc / after: 0.45" in html
    assert "Other results" in html and "exposure" in html
    assert "<th>prompt</th><th>reference</th><th>base</th><th>tuned</th>" in html  # side by side
    assert "&lt;b&gt;five&lt;/b&gt;" in html and "<b>five</b>" not in html


@settings(max_examples=60, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20))
def test_any_json_renders_and_is_escaped(value):
    html = render_value(value, "x", chart=True) + render_value({"<script>": value}, "y")
    assert "<script>" not in html


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(5.21, 6.02) == [5.2, 5.4, 5.6, 5.8, 6.0, 6.2]
    assert nice_ticks(3.0, 3.0)[0] <= 3.0 <= nice_ticks(3.0, 3.0)[-1]


def test_report_cli_with_samples(run_copy, capsys):
    from whetstone.models.inference import generate_answers, load_for_inference

    (run_copy / "report.html").unlink()
    assert main(["report", str(run_copy), "--samples", "2"]) == 0
    assert "report:" in capsys.readouterr().out and (run_copy / "report.html").is_file()
    samples = [json.loads(line) for line in (run_copy / "samples.jsonl").read_text().splitlines()]
    assert [s["prompt"] for s in samples] == ["What is 16 plus 16?", "What is 17 plus 17?"]  # the eval prompts
    model, tokenizer = load_for_inference(run=str(run_copy))
    expected = generate_answers(model, tokenizer, [[{"role": "user", "content": s["prompt"]}] for s in samples], 96)
    assert [s["tuned"] for s in samples] == expected
    assert "What is 17 plus 17?" in (run_copy / "report.html").read_text()
    assert main(["report", str(run_copy / "missing")]) == 2


def test_chromium_renders_the_charts(chromium, lora_run, tmp_path):
    Image = pytest.importorskip("PIL.Image")

    report = lora_run / "report.html"
    dom = dump_dom(report)
    assert dom.count('<path class="series"') == 5 and dom.count("<circle") >= 2
    png = screenshot(report, tmp_path / "report.png", width=1280, height=1400)
    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 1400)
    pixels = list(image.getdata())

    def count(hex_color: str) -> int:
        target = tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
        return sum(1 for p in pixels if all(abs(a - b) <= 24 for a, b in zip(p, target)))

    # Every curve is drawn in its colour: loss, eval loss, lr, grad norm, throughput.
    drawn = {color: count(color) for color in PALETTE[:5]}
    assert all(n > 40 for n in drawn.values()), drawn


@pytest.mark.parametrize("config", [None, "- a list, not a mapping\n", "model: [unclosed\n"])
def test_a_run_without_a_readable_config_still_gets_a_report(tmp_path, config):
    (tmp_path / "summary.json").write_text(json.dumps({"method": "lora", "train_loss": 1.5}))
    if config is not None:
        (tmp_path / "config.yaml").write_text(config)
    html = write_report(tmp_path).read_text()
    assert "lora on ? ·" in html  # the model is unknown, not a crash
    if config is None:
        assert "This run directory has no config.yaml, so the config it ran with is not known." in html
    else:
        assert f"<pre>{config.strip()}" in html.replace("&#x27;", "'")
