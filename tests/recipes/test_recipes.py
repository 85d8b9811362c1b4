"""The use-case recipes: each build script's data loads, has the split it claims, and trains end to end.

Every recipe (configs/<name>.yaml, examples/<name>/build.py) is run here the way a user runs it,
with three substitutions that keep CI to seconds: the tiny model for the embedded one, a dataset
rebuilt by the recipe's own script with --limit, and two optimizer steps. The full runs and their
before/after figures are in docs/supervised.md ("Use-case recipes"); `make recipe-<name>` reruns one.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

from whetstone.config import load_config
from whetstone.data.formats import load_records

ROOT = Path(__file__).resolve().parents[2]
# recipe -> (records in the shipped train and eval files, the generation metrics summary.json must hold)
RECIPES = {
    "translation": ((600, 100), ("chrf", "bleu")),
    "knowledge_base": ((1070, 64), ("rougeL", "exact_match")),
    "conversation": ((300, 60), ("rougeL",)),
    "summarization": ((300, 60), ("rougeL",)),
}


def source_on_machine(name: str) -> bool:
    """Whether the system files a build script reads are here (the CI image has them; another machine may not)."""
    needs = {
        "translation": [Path(f"/usr/share/locale/fr/LC_MESSAGES/{c}.mo") for c in ("gtk30", "gtk30-properties")],
        "summarization": [Path("/var/lib/dpkg/status")],
    }
    return all(p.is_file() for p in needs.get(name, []))


def build_module(name: str):
    path = ROOT / "examples" / name / "build.py"
    spec = importlib.util.spec_from_file_location(f"recipe_build_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chats(path: Path) -> list:
    result = load_records(str(path))
    assert result.format == "messages" and all(r.kind == "chat" for r in result.records)
    return result.records


def last_exchange(record) -> tuple[str, str]:
    """(the prompt's last user message, the final answer) of a chat record."""
    return record.messages[-2].content, record.messages[-1].content


@pytest.mark.parametrize("name", RECIPES)
def test_shipped_dataset_loads_with_the_documented_sizes(name):
    (n_train, n_eval), _ = RECIPES[name]
    train, evaluation = chats(ROOT / f"examples/{name}/train.jsonl"), chats(ROOT / f"examples/{name}/eval.jsonl")
    assert (len(train), len(evaluation)) == (n_train, n_eval)
    # No eval prompt is a training prompt: eval always asks something training did not.
    train_prompts = {tuple(m.content for m in r.messages[:-1]) for r in train}
    assert not any(tuple(m.content for m in r.messages[:-1]) in train_prompts for r in evaluation)


@pytest.mark.parametrize("name", ["translation", "summarization"])
def test_held_out_sources_are_unseen(name):
    train, evaluation = chats(ROOT / f"examples/{name}/train.jsonl"), chats(ROOT / f"examples/{name}/eval.jsonl")
    sources = {last_exchange(r)[0] for r in train}
    assert not sources & {last_exchange(r)[0] for r in evaluation}


def test_knowledge_base_dev_set_asks_trained_facts_in_an_unseen_wording():
    """data.eval (the dev set) asks trained facts; the three knowledge sets are tested in tests/evaluate."""
    train = chats(ROOT / "examples/knowledge_base/train.jsonl")
    evaluation = chats(ROOT / "examples/knowledge_base/eval.jsonl")
    facts = {}
    for record in train:
        question, answer = last_exchange(record)
        facts.setdefault(re.search(r"`(.+?)`", question).group(1), set()).add((question, answer))
    for record in evaluation:
        question, answer = last_exchange(record)
        trained = facts[re.search(r"standard library: ([\w.]+)\. Describe", question).group(1)]
        assert len(trained) == 5  # five training wordings, all with this very answer
        assert {a for _, a in trained} == {answer} and question not in {q for q, _ in trained}


def dialogue_functions(record) -> list[str]:
    """Full names of the functions a dialogue asks about, in order: the first turn names the module."""
    module = re.search(r"`([\w.]+)\.\w+`", record.messages[0].content).group(1)
    asked = re.findall(r"`([\w.]+)`", " ".join(m.content for m in record.messages if m.role == "user"))
    return [name if "." in name else f"{module}.{name}" for name in asked]


def test_conversation_eval_ends_on_functions_never_trained():
    train = chats(ROOT / "examples/conversation/train.jsonl")
    evaluation = chats(ROOT / "examples/conversation/eval.jsonl")
    trained = {name for record in train for name in dialogue_functions(record)}
    for record in evaluation:
        assert [m.role for m in record.messages] == ["user", "assistant"] * 3
        first, last = dialogue_functions(record)
        assert last not in trained and first.rsplit(".", 1)[0] == last.rsplit(".", 1)[0]


@pytest.mark.parametrize("name", RECIPES)
def test_configs_and_make_target_agree(name):
    """`make recipe-<name>` scores the base model with the same metrics and lengths as the config."""
    config = load_config(ROOT / f"configs/{name}.yaml", [])
    flags = re.search(rf"^EVAL_{name} := (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert re.search(r"--metrics ([\w ]+?) --", flags).group(1).split() == config.eval.metrics
    assert f"--max-new-tokens {config.eval.max_new_tokens} " in flags
    assert f"--batch-size {config.eval.generation_batch_size} " in flags
    assert flags.endswith(f"--max-length {config.data.max_length}")
    assert config.data.train == f"examples/{name}/train.jsonl" and config.model.name == "smollm2-135m-instruct"


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_end_to_end_on_a_truncated_dataset(name, tiny_model_dir, tmp_path):
    from whetstone.train.dispatch import train

    data = tmp_path / "data"
    if source_on_machine(name):
        build_module(name).main(["--out", str(data), "--limit", "6"])
    else:  # another machine: the shipped files are the reference, so train on their first records
        data.mkdir()
        for split, n in (("train", 6 * (5 if name == "knowledge_base" else 1)), ("eval", 6)):
            lines = (ROOT / "examples" / name / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[:n]
            (data / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    train_records, eval_records = chats(data / "train.jsonl"), chats(data / "eval.jsonl")
    assert 0 < len(train_records) <= 30 and 0 < len(eval_records) <= 6  # knowledge_base: 5 wordings per fact
    run = tmp_path / "run"
    config = load_config(ROOT / f"configs/{name}.yaml", [
        f"model={tiny_model_dir}", f"data.train={data / 'train.jsonl'}", f"data.eval={data / 'eval.jsonl'}",
        "train.max_steps=2", "train.batch_size=4", "eval.final_limit=3", "eval.max_new_tokens=6"])
    summary = train(config, run, progress=False)

    written = json.loads((run / "summary.json").read_text())
    _, metrics = RECIPES[name]
    assert written["steps"] == 2 and written["data"]["format"] == "messages"
    replay = config.data.replay.paths if config.data.replay else []  # knowledge_base: distilled self-replay
    replay_records = sum(len((ROOT / path).read_text(encoding="utf-8").splitlines()) for path in replay)
    assert (written["data"]["records"], written["data"]["eval_records"]) == (len(train_records) + replay_records,
                                                                             len(eval_records))
    assert math.isfinite(written["eval_loss"]) and written["final_eval"]["n"] == 3
    for metric in metrics:
        upper = 100.0 if metric in ("chrf", "bleu") else 1.0
        assert 0.0 <= written["final_eval"][metric] <= upper
    assert summary["final_eval"] == written["final_eval"]
    assert (run / "adapter" / "adapter_config.json").is_file()
