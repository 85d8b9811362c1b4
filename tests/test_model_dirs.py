"""Broken model directories and shared run directories, through the real CLI: each ends in one sentence that
names the file and the fix, never in a traceback, in every command that loads a model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from whetstone.cli import main

WEIGHTS = "model.safetensors"


def _config(d: Path, **changes) -> None:
    config = json.loads((d / "config.json").read_text())
    config.update(changes)
    (d / "config.json").write_text(json.dumps(config))


def _drop_tensor(d: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(d / WEIGHTS))
    del tensors["model.norm.weight"]
    save_file(tensors, str(d / WEIGHTS), metadata={"format": "pt"})


def _shard(d: Path, index: str) -> None:
    (d / WEIGHTS).rename(d / "model-00001-of-00002.safetensors")
    (d / "model.safetensors.index.json").write_text(index)


def _pickle_only(d: Path) -> None:
    (d / WEIGHTS).unlink()
    (d / "pytorch_model.bin").write_bytes(b"not really a pickle")
    (d / "tokenizer.json").unlink()  # the tokenizer would fail too: the pickle refusal must come first


SHARDS = json.dumps({"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                                                    "model.norm.weight": "model-00002-of-00002.safetensors"}})

# name -> (how to break a copy of the tiny model, the file the message must name)
BROKEN_DIRS = {
    "no tokenizer": (lambda d: [(d / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")],
                     "tokenizer.json"),
    "invalid tokenizer.json": (lambda d: (d / "tokenizer.json").write_text("{nope"), "tokenizer.json"),
    "empty tokenizer.json": (lambda d: (d / "tokenizer.json").write_text(""), "tokenizer.json"),
    "no config.json": (lambda d: (d / "config.json").unlink(), "config.json"),
    "invalid config.json": (lambda d: (d / "config.json").write_text("{nope"), "config.json"),
    "config.json not an object": (lambda d: (d / "config.json").write_text("[1, 2]"), "config.json"),
    "unknown architecture": (lambda d: _config(d, model_type="nonsense"), "config.json"),
    "no model_type": (lambda d: _config(d, model_type=None), "config.json"),
    "no weights": (lambda d: (d / WEIGHTS).unlink(), "safetensors"),
    "empty safetensors": (lambda d: (d / WEIGHTS).write_bytes(b""), WEIGHTS),
    "truncated safetensors header": (lambda d: (d / WEIGHTS).write_bytes((d / WEIGHTS).read_bytes()[:500]), WEIGHTS),
    "truncated safetensors data": (lambda d: (d / WEIGHTS).write_bytes((d / WEIGHTS).read_bytes()[:-999]), WEIGHTS),
    "garbage safetensors": (lambda d: (d / WEIGHTS).write_bytes(b"\x00" * 64), WEIGHTS),
    "wrong shapes": (lambda d: _config(d, hidden_size=128, intermediate_size=256), "config.json"),
    "a tensor missing": (_drop_tensor, "model.norm.weight"),
    "shard missing from the index": (lambda d: _shard(d, SHARDS), "model-00002-of-00002.safetensors"),
    "invalid shard index": (lambda d: _shard(d, "{nope"), "model.safetensors.index.json"),
    "pickle only": (_pickle_only, "pytorch_model.bin"),
}


@pytest.fixture(scope="module")
def gguf_files(tiny_model_dir, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """A valid GGUF of the tiny model, cut short; and GGUFs transformers cannot read."""
    import gguf
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from whetstone.export.gguf import write_gguf

    root = tmp_path_factory.mktemp("gguf")
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    data = write_gguf(model.state_dict(), model.config.to_dict(), tokenizer, root / "tiny.gguf", "f32", name="tiny",
                      pre="gpt2").read_bytes()
    (root / "truncated.gguf").write_bytes(data[: len(data) // 2])
    (root / "header-only.gguf").write_bytes(data[:100])
    (root / "not-gguf.gguf").write_bytes(b"not a gguf file" * 8)
    writer = gguf.GGUFWriter(str(root / "nonsense.gguf"), "nonsense")  # an architecture transformers cannot build
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {name: (root / name, name) for name in ("truncated.gguf", "header-only.gguf", "not-gguf.gguf",
                                                   "nonsense.gguf")}


@pytest.fixture(scope="module")
def broken_dirs(tiny_model_dir, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    root = tmp_path_factory.mktemp("broken")
    out = {}
    for i, (name, (breaks, names)) in enumerate(BROKEN_DIRS.items()):
        d = root / f"case{i}"
        shutil.copytree(tiny_model_dir, d)
        breaks(d)
        out[name] = (d, names)
    return out


def _fake_run(root: Path, model: str, **model_keys) -> Path:
    """A finished adapter run on `model`, as far as loading its base goes."""
    run = root / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": model, **model_keys},
                                                               "data": {"train": "train.jsonl"}}))
    return run


def _commands(model: Path, tmp: Path, qa_file: Path) -> dict[str, list[str]]:
    return {
        "generate": ["generate", "--model", str(model), "--max-new-tokens", "1", "hi"],
        "train": ["train", "--quiet", "-o", str(tmp / "out"), "--set", f"model={model}", "--set",
                  f"data.train={qa_file}", "--set", "train.max_steps=1"],
        "export": ["export", str(_fake_run(tmp, str(model))), "--format", "peft", "-o", str(tmp / "exported")],
        "eval": ["eval", "--model", str(model), "--data", str(qa_file), "--metrics", "loss"],
        "serve": ["serve", "--model", str(model), "--port", "0", "--quiet"],
    }


def test_every_broken_model_dir_is_a_sentence_in_every_command(broken_dirs, gguf_files, tmp_path, qa_file, capsys,
                                                               monkeypatch):
    monkeypatch.setenv("WHETSTONE_CACHE", str(tmp_path / "cache"))  # GGUF conversions land here

    def never_serve(*args, **kwargs):  # a broken model that loaded would otherwise serve until killed
        raise AssertionError("serve loaded a broken model")

    monkeypatch.setattr("whetstone.serve.make_server", never_serve)
    tried, tracebacks, unnamed = 0, [], []
    for name, (model, names) in {**broken_dirs, **gguf_files}.items():
        for command, argv in _commands(model, tmp_path / name.replace(" ", "-"), qa_file).items():
            tried += 1
            try:
                code = main(argv)
            except Exception as exc:  # noqa: BLE001 - what the user would have seen as a traceback
                tracebacks.append(f"{name} / {command}: {type(exc).__name__}: {exc}"[:300])
                continue
            err = capsys.readouterr().err
            if code == 0 or names not in err or "Traceback" in err or "error: " not in err:
                unnamed.append(f"{name} / {command} (exit {code}): {err.strip()[:300]}")
    print(f"model-dir fuzz: {tried} cases, {len(tracebacks)} tracebacks")
    assert tried == (len(BROKEN_DIRS) + 4) * 5  # generate, train, export, eval, serve
    assert tracebacks == []
    assert unnamed == [], "\n".join(unnamed)


def test_a_pickle_dir_loads_when_the_command_allows_it_and_still_refuses_real_pickles(broken_dirs, capsys):
    model, _ = broken_dirs["pickle only"]
    assert main(["generate", "--model", str(model), "hi"]) == 2
    assert "--allow-pickle" in capsys.readouterr().err
    # With the flag the pickle check passes and the next problem, the missing tokenizer, is named instead.
    assert main(["generate", "--model", str(model), "--allow-pickle", "hi"]) == 2
    assert "tokenizer.json" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# A run directory cannot grant itself powers.


def _labelled(path: Path) -> Path:
    """Four classification records (text, label)."""
    rows = [{"text": f"the number {i}", "label": "even" if i % 2 == 0 else "odd"} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("key, flag", [("trust_remote_code", "--trust-remote-code"),
                                       ("allow_pickle", "--allow-pickle")])
@pytest.mark.parametrize("command", ["generate", "eval", "export", "resume", "predict", "audit", "score", "serve"])
def test_a_run_dir_asking_for_powers_is_refused_without_the_flag(tiny_model_dir, tmp_path, qa_file, capsys, key,
                                                                 flag, command):
    run = _fake_run(tmp_path, str(tiny_model_dir), **{key: True})
    argv = {"generate": ["generate", "--run", str(run), "hi"],
            "eval": ["eval", "--run", str(run), "--data", str(qa_file), "--limit", "1"],
            "export": ["export", str(run), "--format", "peft", "-o", str(tmp_path / "out")],
            "resume": ["train", "--resume", str(run)],
            "predict": ["predict", "--run", str(run), "--data", str(_labelled(tmp_path / "cls.jsonl"))],
            "audit": ["audit", "--run", str(run), "--n", "1"],
            "score": ["score", "--run", str(run), "--data", str(qa_file)],
            "serve": ["serve", "--adapter", f"tuned={run}"]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{run / 'config.yaml'} asks for model.{key}: true" in err
    assert "could run arbitrary code" in err and f"pass {flag} on this command" in err


def test_the_flag_grants_what_the_run_dir_asks(tiny_model_dir, tmp_path):
    from whetstone.models.load import run_model_config

    source = tmp_path / "config.yaml"
    granted = run_model_config({"name": str(tiny_model_dir), "allow_pickle": True}, trust_remote_code=False,
                               allow_pickle=True, source=source)
    assert (granted.allow_pickle, granted.trust_remote_code) == (True, False)
    # A run that asks for nothing gets only what the command grants.
    plain = run_model_config(str(tiny_model_dir), trust_remote_code=False, allow_pickle=False, source=source)
    assert (plain.name, plain.allow_pickle, plain.trust_remote_code) == (str(tiny_model_dir), False, False)


def test_generate_from_a_run_with_the_flag_loads_it(tiny_model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "model")  # a full run: model/ holds every weight
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": str(tiny_model_dir), "allow_pickle": True},
                                                               "data": {"train": "train.jsonl"}}))
    assert main(["generate", "--run", str(run), "--max-new-tokens", "2", "hi"]) == 2
    assert main(["generate", "--run", str(run), "--allow-pickle", "--max-new-tokens", "2", "hi"]) == 0


def _pickle_run(root: Path, base: Path, train_file: Path) -> Path:
    """A finished full run whose model/ holds only pickle weights, and whose config.yaml asks to load them."""
    import torch
    from safetensors.torch import load_file

    run = root / "pickle-run"
    shutil.copytree(base, run / "model")
    torch.save(load_file(str(run / "model" / WEIGHTS)), run / "model" / "pytorch_model.bin")
    (run / "model" / WEIGHTS).unlink()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"name": str(base), "allow_pickle": True},
                                                     "method": {"name": "full"}, "data": {"train": str(train_file)}}))
    return run


def test_the_flag_lets_predict_audit_and_export_load_a_run_that_asks(tiny_model_dir, tmp_path, qa_file, capsys):
    run = _pickle_run(tmp_path, tiny_model_dir, qa_file)
    labelled, predictions = _labelled(tmp_path / "cls.jsonl"), tmp_path / "predictions.jsonl"
    assert main(["predict", "--run", str(run), "--data", str(labelled), "-o", str(predictions), "--allow-pickle"]) == 0
    assert [json.loads(line)["gold"] for line in predictions.read_text().splitlines()] == ["even", "odd"] * 2
    capsys.readouterr()
    assert main(["audit", "--run", str(run), "--n", "1", "--alternatives", "2", "--max-new-tokens", "2",
                 "--allow-pickle", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run"] == str(run)
    # Export reloads model/ (pickle only) as its reference: the grant must reach that load too, not only the base.
    assert main(["export", str(run), "--format", "merged", "-o", str(tmp_path / "merged"), "--allow-pickle"]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_score_and_training_rewards_grant_a_reward_run_only_from_the_users_own_command_or_config(
        tiny_model_dir, tmp_path, qa_file, capsys):
    from whetstone.config import load_config
    from whetstone.errors import WhetstoneError
    from whetstone.train.dispatch import train

    reward_run = _fake_run(tmp_path, str(tiny_model_dir), allow_pickle=True)
    asks = f"{reward_run / 'config.yaml'} asks for model.allow_pickle: true"
    assert main(["score", "--run", str(reward_run), "--data", str(qa_file)]) == 2
    assert asks in capsys.readouterr().err
    # Granted, loading goes on to the next check: this fake run is not a reward model.
    assert main(["score", "--run", str(reward_run), "--data", str(qa_file), "--allow-pickle"]) == 2
    err = capsys.readouterr().err
    assert "not 'reward'" in err and "asks for" not in err

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What is {i} plus {i}?"}) + "\n" for i in range(4)))
    keys = [f"model={tiny_model_dir}", "objective=grpo", f"data.train={prompts}", "objective.num_generations=2",
            f"objective.reward=[{{run: '{reward_run}'}}]", "train.max_steps=1"]
    with pytest.raises(WhetstoneError, match=asks.replace(".", r"\.")):
        train(load_config(None, keys), tmp_path / "grpo", progress=False)
    with pytest.raises(WhetstoneError, match="not 'reward'"):  # the user's own config grants it
        train(load_config(None, keys + ["model.allow_pickle=true"]), tmp_path / "grpo2", progress=False)


def test_resume_through_the_library_needs_the_grant_too(tiny_model_dir, tmp_path):
    from whetstone.errors import WhetstoneError
    from whetstone.train.dispatch import train

    run = _fake_run(tmp_path, str(tiny_model_dir), trust_remote_code=True)
    with pytest.raises(WhetstoneError, match="asks for model.trust_remote_code: true, and a run directory cannot"):
        train(None, run, resume=True, progress=False)
    with pytest.raises(WhetstoneError) as granted:  # past the grant: the fake run's data is missing
        train(None, run, resume=True, progress=False, trust_remote_code=True)
    assert "asks for" not in str(granted.value)

    pipeline = tmp_path / "pipeline"
    pipeline.mkdir()
    (pipeline / "config.yaml").write_text(yaml.safe_dump({
        "model": {"name": str(tiny_model_dir), "allow_pickle": True},
        "stages": [{"name": "only", "data": {"train": "train.jsonl"}}]}))
    with pytest.raises(WhetstoneError, match="asks for model.allow_pickle: true"):
        train(None, pipeline, resume=True, progress=False)


def test_serve_loads_what_its_own_flags_grant(tiny_model_dir, tmp_path, qa_file):
    from whetstone.cli import build_parser
    from whetstone.serve import Engine, adapter_paths

    run = _fake_run(tmp_path, str(tiny_model_dir), allow_pickle=True)
    assert adapter_paths([f"tuned={run}"], None, allow_pickle=True) == (str(tiny_model_dir),
                                                                         {"tuned": str(run / "adapter")})
    assert build_parser().parse_args(["serve", "--allow-pickle", "--trust-remote-code"]).allow_pickle
    pickled = _pickle_run(tmp_path, tiny_model_dir, qa_file) / "model"
    with pytest.raises(Exception, match="pass --allow-pickle"):
        Engine(str(pickled))
    assert Engine(str(pickled), allow_pickle=True).model_ids == [str(pickled)]


def test_a_headed_full_run_loads_model_dir_with_the_granted_powers(tmp_path, monkeypatch):
    import whetstone.models
    from whetstone.config import ModelConfig, config_from_dict
    from whetstone.models.headed import load_headed_run

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    config = config_from_dict({"data": {"train": "t.jsonl"}, "method": {"name": "full"}})
    config.model = ModelConfig(name="base", allow_pickle=True, trust_remote_code=True)  # as run_model_config grants
    seen = []

    def load_model(cfg, device="cpu"):
        seen.append(cfg)
        raise RuntimeError("stop here")

    monkeypatch.setattr(whetstone.models, "load_model", load_model)
    with pytest.raises(RuntimeError, match="stop here"):
        load_headed_run(tmp_path, config, lambda m: m, "score", "--run x")
    assert (seen[0].name, seen[0].allow_pickle, seen[0].trust_remote_code) == (str(tmp_path / "model"), True, True)
