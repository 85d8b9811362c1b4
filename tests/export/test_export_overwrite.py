"""export --overwrite and the adapter library replace only what whetstone wrote, and only after the check passed."""

import json
import os
from pathlib import Path

import pytest

from whetstone.adapters import AdapterLibrary
from whetstone.errors import WhetstoneError
from whetstone.export import export_run, formats


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (or `root` itself) by relative path, with its bytes."""
    if root.is_file():
        return {root.name: root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fail_check(*args, **kwargs):
    raise WhetstoneError("forced consistency failure")


@pytest.mark.parametrize("fmt", ["peft", "merged"])
def test_overwrite_refuses_a_directory_whetstone_did_not_write(tmp_path, lora_run, fmt):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    with pytest.raises(WhetstoneError, match="is not a whetstone export .* so it is not deleted"):
        export_run(lora_run, fmt, notes, overwrite=True)
    # A model directory of the user's looks like an export but has no manifest or marker.
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(WhetstoneError, match="is not a whetstone export"):
        export_run(lora_run, fmt, model, overwrite=True)
    assert snapshot(notes) == {"todo.txt": b"mine"} and snapshot(model) == {"config.json": b"{}"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "notes"]  # no staging directory left


def test_overwrite_refuses_an_export_holding_a_file_whetstone_did_not_write(tmp_path, lora_run):
    out = tmp_path / "out"
    export_run(lora_run, "peft", out)
    (out / "README.md").write_text("model card")
    before = snapshot(out)
    with pytest.raises(WhetstoneError, match=r"holds README\.md, which whetstone did not write, so it is not deleted"):
        export_run(lora_run, "peft", out, overwrite=True)
    assert snapshot(out) == before


def test_overwrite_replaces_a_previous_export_whole(tmp_path, lora_run):
    out = tmp_path / "out"
    export_run(lora_run, "peft", out)
    marker = json.loads((out / ".whetstone-export").read_text())
    assert marker["kind"] == "export" and marker["format"] == "peft" and marker["source"] == str(lora_run.resolve())
    export_run(lora_run, "merged", out, overwrite=True)
    assert json.loads((out / ".whetstone-export").read_text())["format"] == "merged"
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()  # old one gone
    # An export written before markers existed (export.json, known files only) is replaced too.
    (out / ".whetstone-export").unlink()
    export_run(lora_run, "peft", out, overwrite=True)
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # a plain mkdir's mode, not a private temp dir's 0700


@pytest.mark.parametrize("step", ["check_consistency", "_measure"])
def test_failed_check_leaves_the_old_export_byte_identical(tmp_path, lora_run, monkeypatch, step):
    out = tmp_path / "out"
    export_run(lora_run, "peft", out)
    before = snapshot(out)
    monkeypatch.setattr(formats, step, fail_check)
    with pytest.raises(WhetstoneError, match="forced consistency failure"):
        export_run(lora_run, "merged", out, overwrite=True)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the half-built export is gone
    # A first export that fails its check leaves nothing under the name.
    with pytest.raises(WhetstoneError, match="forced consistency failure"):
        export_run(lora_run, "merged", tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_gguf_overwrite_replaces_only_a_gguf_and_only_after_its_check(tmp_path, lora_run, monkeypatch):
    notes = tmp_path / "notes.gguf"
    notes.write_text("not a model")
    with pytest.raises(WhetstoneError, match="is not a GGUF export .* so it is not replaced"):
        export_run(lora_run, "gguf", notes, "f32", overwrite=True)
    assert notes.read_text() == "not a model"
    out = tmp_path / "tiny.gguf"
    export_run(lora_run, "gguf", out, "f32")
    before = snapshot(out) | snapshot(tmp_path / "tiny.export.json")
    with pytest.raises(WhetstoneError, match="already exists. Pass --overwrite"):
        export_run(lora_run, "gguf", out, "f32")
    monkeypatch.setattr(formats, "check_consistency", fail_check)
    with pytest.raises(WhetstoneError, match="forced consistency failure"):
        export_run(lora_run, "gguf", out, "f32", overwrite=True)
    assert snapshot(out) | snapshot(tmp_path / "tiny.export.json") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.gguf", "tiny.export.json", "tiny.gguf"]
    monkeypatch.undo()
    result = export_run(lora_run, "gguf", out, "f16", overwrite=True)
    assert json.loads((tmp_path / "tiny.export.json").read_text())["dtype"] == "f16" == result.dtype
    assert out.stat().st_size < len(before["tiny.gguf"])  # f16 replaced f32


@pytest.mark.parametrize("where", [".", "..", "~"])
def test_export_into_the_current_parent_or_home_directory_is_refused(tmp_path, lora_run, monkeypatch, where):
    home, work = tmp_path / "home", tmp_path / "home" / "project"
    work.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    (work / "pyproject.toml").write_text("[project]\n")
    target = home if where == "~" else Path(where)
    with pytest.raises(WhetstoneError, match="that is (the current directory|a directory above|your home)"):
        export_run(lora_run, "merged", target, overwrite=True)
    assert snapshot(home) == {"project/pyproject.toml": b"[project]\n"}


def test_library_add_never_replaces_a_directory_it_did_not_write(tmp_path, lora_run, second_run):
    library = AdapterLibrary(tmp_path / "library")
    mine = tmp_path / "library" / "qa"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(WhetstoneError, match="is not in the catalogue, so the library did not write it"):
            library.add("qa", lora_run, overwrite=overwrite)
    assert snapshot(mine) == {"notes.txt": b"mine"}
    # What the library did write it replaces, whole.
    library.add("other", lora_run)
    library.add("other", second_run, overwrite=True)
    assert snapshot(library.path("other")) == {
        name: (second_run / "adapter" / name).read_bytes() for name in snapshot(library.path("other"))}
    assert sorted(p.name for p in library.root.iterdir()) == ["catalogue.json", "other", "qa"]
