"""The page in headless Chromium (Debian's, driven by Playwright; no browser download): clicks, keys, escaping."""

import shutil
import subprocess

import pytest
from labelkit import SCRIPT_ANSWER, events, start, stop, write_tasks

from whetstone.report.browser import find_chromium

playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")


@pytest.fixture(scope="module")
def chromium():
    """Debian's chromium; installed here when missing (root + apt-get), else the browser tests skip."""
    if find_chromium() is None and shutil.which("apt-get"):
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            if subprocess.run(cmd, capture_output=True, env=env, timeout=600, check=False).returncode != 0:
                break
    path = find_chromium()
    if path is None:
        pytest.skip("Chromium is not installed and `apt-get install chromium` was not possible here")
    return path


@pytest.fixture
def page(chromium):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser.new_page(viewport={"width": 1200, "height": 900})
        finally:
            browser.close()


def test_clicks_and_keys_make_judgements_and_markup_stays_text(tmp_path, page):
    expect = playwright.expect
    tasks = write_tasks(tmp_path / "tasks.jsonl", n=5, script_at=0)
    labels = tmp_path / "labels.jsonl"
    server, store, port = start(tasks, labels, annotator=None)
    try:
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"http://127.0.0.1:{port}/?annotator=ann")
        progress = page.locator("#progress")
        expect(progress).to_have_text("0 / 5")

        # Task t0 carries <script> and an <img onerror>: shown as characters, never run or parsed.
        shown = page.locator("#answer-A").text_content() + page.locator("#answer-B").text_content()
        assert SCRIPT_ANSWER in shown
        assert page.locator(".answers script, .answers img, .answers b").count() == 0
        assert page.evaluate("window.pwned") is None

        # Clicks: a rating for A, an ideal answer (started from B), a note, then "A is better".
        page.click('.rate[data-side="A"][data-value="4"]')
        page.click('.rate[data-side="B"][data-value="2"]')
        page.click('.rate[data-side="B"][data-value="2"]')  # a second click clears it
        page.click("#copy-B")
        page.fill("#note", "first")
        page.click("#choose-A")
        expect(progress).to_have_text("1 / 5")
        expect(page.locator("#ideal")).to_have_value("")  # a fresh form for the next task

        # Keys: b, then t, then u (undo the tie), s (skip it instead).
        page.keyboard.press("b")
        expect(progress).to_have_text("2 / 5")
        page.keyboard.press("t")
        expect(progress).to_have_text("3 / 5")
        page.keyboard.press("u")
        expect(progress).to_have_text("2 / 5")
        page.keyboard.press("s")
        expect(progress).to_have_text("3 / 5")
        # Typing in a text box is text, not shortcuts; Escape leaves the box and the keys work again.
        page.click("#note")
        page.keyboard.type("bats")
        expect(progress).to_have_text("3 / 5")
        page.keyboard.press("Escape")
        page.keyboard.press("2")
        expect(progress).to_have_text("4 / 5")
        page.click("#choose-tie")
        expect(page.locator("#done-card")).to_be_visible()
        expect(progress).to_have_text("5 / 5")
        assert errors == []
    finally:
        stop(server, store)

    lines = events(labels)
    assert [(e["event"], e["task"], e.get("choice")) for e in lines] == [
        ("judgement", "t0", "A"), ("judgement", "t1", "B"), ("judgement", "t2", "tie"), ("undo", "t2", None),
        ("judgement", "t2", "skip"), ("judgement", "t3", "B"), ("judgement", "t4", "tie")]
    first = lines[0]
    assert first["annotator"] == "ann" and first["preferred"] == first["shown"][0]
    assert first["ratings"] == {first["shown"][0]: 4}  # B's rating was cleared
    texts = {a["id"]: a["text"] for a in first["answers"]}
    assert (first["ideal"], first["note"]) == (texts[first["shown"][1]], "first")
    assert lines[1]["preferred"] == lines[1]["shown"][1] and lines[3]["undoes"] == lines[2]["id"]
    assert lines[5]["note"] == "bats" and lines[5]["preferred"] == lines[5]["shown"][1]
