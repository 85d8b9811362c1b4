"""Model sources: local dirs, GGUF, hub ids, and the errors for each."""

import json

import pytest
import torch

from whetstone.config import ModelConfig
from whetstone.errors import WhetstoneError
from whetstone.models import load_model, resolve_model


def test_local_directory(tiny_model_dir):
    resolved = resolve_model(str(tiny_model_dir))
    assert resolved.kind == "local"
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64


def test_hub_id_without_a_hub_is_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("someorg/some-model").kind == "hub"
    with pytest.raises(WhetstoneError) as info:
        load_model(ModelConfig(name="someorg/some-model"))
    message = str(info.value)
    assert "could not load 'someorg/some-model' from the Hugging Face Hub" in message
    assert "\n" not in message


@pytest.mark.parametrize("spec, fragment", [
    ("missing.gguf", "the GGUF file missing.gguf does not exist"),
    ("./no/such/dir", "is not an embedded model"),
    ("not a model", "is not an embedded model"),
])
def test_bad_model_specs(spec, fragment):
    with pytest.raises(WhetstoneError, match=fragment):
        resolve_model(spec)


def test_pickle_weights_are_refused_unless_allowed(tmp_path, tiny_model_dir):
    directory = tmp_path / "pickled"
    directory.mkdir()
    (directory / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    torch.save({"x": torch.zeros(1)}, directory / "pytorch_model.bin")
    with pytest.raises(WhetstoneError, match="only pickle weights .*pytorch_model.bin"):
        load_model(ModelConfig(name=str(directory)))


def test_directory_without_config_json(tmp_path):
    with pytest.raises(WhetstoneError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_gguf_file_round_trip_through_the_cache(tmp_path, tiny_model_dir, monkeypatch):
    """A .gguf model path converts once into the cache; the second resolve is a cache hit."""
    pytest.importorskip("gguf")
    from whetstone.models.embedded import cached_hf_dir

    monkeypatch.setenv("WHETSTONE_CACHE", str(tmp_path / "cache"))
    gguf_path = _write_tiny_gguf(tiny_model_dir, tmp_path / "tiny.gguf")
    resolved = resolve_model(str(gguf_path))
    assert resolved.kind == "gguf" and resolved.path == str(cached_hf_dir(gguf_path.resolve()))
    config = json.loads((cached_hf_dir(gguf_path.resolve()) / "config.json").read_text())
    assert "quantization_config" not in config
    model, _ = load_model(ModelConfig(name=str(gguf_path)))
    reference, _ = load_model(ModelConfig(name=str(tiny_model_dir)))
    ids = torch.tensor([[5, 17, 42, 99]])
    torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-4, rtol=0)


def _write_tiny_gguf(model_dir, out):
    """The tiny Llama as an f32 GGUF, through whetstone's exporter (llama.cpp's layout)."""
    from safetensors.torch import load_file

    from whetstone.export.gguf import write_gguf
    from whetstone.models import load_tokenizer

    config = json.loads((model_dir / "config.json").read_text())
    weights = load_file(str(model_dir / "model.safetensors"))
    return write_gguf(weights, config, load_tokenizer(str(model_dir)), out, "f32", name="tiny", pre="gpt2")

