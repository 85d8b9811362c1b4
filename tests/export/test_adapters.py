"""The adapter library: add, list, show, remove; storage saved; --adapter NAME in generate, chat, eval and serve."""

import json

import pytest
import torch

from whetstone.adapters import AdapterLibrary, resolve_adapter, storage_by_base
from whetstone.cli import main
from whetstone.errors import WhetstoneError


@pytest.fixture
def library(tmp_path, monkeypatch):
    monkeypatch.setenv("WHETSTONE_ADAPTERS", str(tmp_path / "library"))
    return AdapterLibrary()


def test_add_list_show_remove(library, lora_run, second_run, tiny_model_dir, capsys):
    qa = library.add("qa", lora_run, task="addition")
    minus = library.add("minus", second_run)
    summary = json.loads((lora_run / "summary.json").read_text())
    assert qa.base == str(tiny_model_dir) and qa.task == "addition" and qa.rank == 16 and qa.method == "lora"
    assert qa.metrics == {"train_loss": summary["train_loss"], "eval_loss": summary["eval_loss"],
                          "eval_ppl": summary["eval_ppl"]}
    assert qa.bytes == (lora_run / "adapter" / "adapter_model.safetensors").stat().st_size
    assert minus.rank == 4 and minus.bytes < qa.bytes and minus.task is None
    # A copy, not a link: the run can be deleted and the library still serves it.
    assert (library.path("qa") / "adapter_model.safetensors").read_bytes() == (
        lora_run / "adapter" / "adapter_model.safetensors").read_bytes()

    assert main(["adapters", "list"]) == 0
    out = capsys.readouterr().out
    assert "qa" in out and "minus" in out and "addition" in out and "Saved:" in out

    assert main(["adapters", "show", "qa"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["lora"]["r"] == 16 and shown["path"] == str(library.path("qa"))

    assert main(["adapters", "remove", "minus"]) == 0
    assert list(library.entries()) == ["qa"] and not library.path("minus").exists()


def test_storage_saved_against_full_copies(library, lora_run, second_run, tiny_model_dir):
    a, b = library.add("a", lora_run), library.add("b", second_run)
    base_bytes = (tiny_model_dir / "model.safetensors").stat().st_size
    (storage,) = storage_by_base(library.entries())
    assert (storage.adapters, storage.base_bytes) == (2, base_bytes)
    assert storage.full_copies_bytes == 2 * base_bytes
    assert storage.adapter_bytes == a.bytes + b.bytes
    assert storage.saved_bytes == 2 * base_bytes - (base_bytes + a.bytes + b.bytes)


def test_library_errors_name_the_fix(library, lora_run, full_run):
    library.add("qa", lora_run)
    with pytest.raises(WhetstoneError, match="already in the library; pass --overwrite"):
        library.add("qa", lora_run)
    with pytest.raises(WhetstoneError, match="adapter name '../x'"):
        library.add("../x", lora_run)
    with pytest.raises(WhetstoneError, match=r"only adapter runs \(lora, dora, qlora\)"):
        library.add("full", full_run)
    with pytest.raises(WhetstoneError, match="'qaa' is not in the library .* Did you mean 'qa'"):
        library.get("qaa")
    assert main(["adapters", "remove", "nope"]) == 2


def test_resolve_by_name_brings_the_base(library, lora_run, tiny_model_dir, tmp_path):
    library.add("qa", lora_run)
    assert resolve_adapter("qa") == (str(library.path("qa")), str(tiny_model_dir))
    assert resolve_adapter(str(lora_run / "adapter")) == (str(lora_run / "adapter"), None)
    assert resolve_adapter(str(lora_run)) == (str(lora_run / "adapter"), str(tiny_model_dir))
    with pytest.raises(WhetstoneError, match="was trained on .* but --model is"):
        resolve_adapter("qa", "smollm2-135m-instruct")
    with pytest.raises(WhetstoneError, match=r"not an adapter directory .* \(known: qa\)"):
        resolve_adapter("other")


def test_load_for_inference_by_name_equals_by_directory(library, lora_run):
    from whetstone.models.inference import load_for_inference

    library.add("qa", lora_run)
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    by_name, _ = load_for_inference(adapter="qa")
    by_dir, _ = load_for_inference(model=json.loads((lora_run / "adapter" / "adapter_config.json").read_text())[
        "base_model_name_or_path"], adapter=str(lora_run / "adapter"))
    with torch.no_grad():
        torch.testing.assert_close(by_name(ids).logits, by_dir(ids).logits, atol=0, rtol=0)


def test_generate_cli_accepts_a_library_name(library, lora_run, capsys):
    from whetstone.models.inference import generate_answers, load_for_inference

    library.add("qa", lora_run)
    assert main(["generate", "--adapter", "qa", "--max-new-tokens", "6", "What is 2 plus 2?"]) == 0
    printed = capsys.readouterr().out.strip()
    model, tokenizer = load_for_inference(adapter=str(lora_run))
    (expected,) = generate_answers(model, tokenizer, [[{"role": "user", "content": "What is 2 plus 2?"}]], 6)
    assert printed == expected


def test_serve_resolves_library_names_and_named_directories(library, lora_run, second_run, tiny_model_dir):
    from whetstone.serve import adapter_paths

    library.add("qa", lora_run)
    model, adapters = adapter_paths(["qa", f"minus={second_run}"], None)
    assert model == str(tiny_model_dir)
    assert adapters == {"qa": str(library.path("qa")), "minus": str(second_run / "adapter")}
    with pytest.raises(WhetstoneError, match="the name 'qa' is given twice"):
        adapter_paths(["qa", f"qa={second_run}"], None)
