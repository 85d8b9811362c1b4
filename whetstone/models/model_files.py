"""Check a local model directory's files before transformers reads them.

transformers reports a broken directory with whatever its innermost reader raised
("incomplete metadata", "Couldn't instantiate the backend tokenizer", a JSON
error without a file name). These checks read only config.json and the
safetensors headers, so they are cheap, and each failure names the file and the
fix. They run before the tokenizer loads, so a pickle-only directory meets the
pickle refusal and not a tokenizer error.
"""

from __future__ import annotations

import json
from pathlib import Path

from whetstone.errors import WhetstoneError

_INDEX = "model.safetensors.index.json"


def check_model_dir(directory: Path, spec: str, *, allow_pickle: bool, trust_remote_code: bool) -> None:
    """Raise a WhetstoneError naming the file if `directory` cannot load as a model: config, then weights."""
    _check_config(directory / "config.json", trust_remote_code)
    for weights in _weight_files(directory, spec, allow_pickle):
        _check_safetensors(weights)


def _check_config(path: Path, trust_remote_code: bool) -> None:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise WhetstoneError(f"model: {path} is not valid JSON ({exc}); copy config.json again from where the model "
                             f"came from.") from None
    if not isinstance(config, dict):
        raise WhetstoneError(f"model: {path} holds {type(config).__name__}, not a JSON object; copy config.json "
                             f"again from where the model came from.")
    model_type = config.get("model_type")
    if model_type in CONFIG_MAPPING or (trust_remote_code and "auto_map" in config):
        return
    import transformers

    if not model_type:
        raise WhetstoneError(f"model: {path} has no model_type, so transformers cannot tell which architecture to "
                             f"build; add the model_type of the model it came from (e.g. \"llama\").")
    raise WhetstoneError(
        f"model: {path} has model_type {model_type!r}, which transformers {transformers.__version__} does not know. "
        f"Fix model_type (e.g. \"llama\"), or upgrade transformers if the model is newer than it."
    )


def _weight_files(directory: Path, spec: str, allow_pickle: bool) -> list[Path]:
    """The safetensors files the model loads from (transformers prefers model.safetensors, then the index)."""
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    if (directory / _INDEX).is_file():
        return _indexed_shards(directory / _INDEX)
    others = sorted(directory.glob("*.safetensors"))
    if others:
        return others
    pickled = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
    if pickled and not allow_pickle:
        raise WhetstoneError(
            f"model: {spec} holds only pickle weights ({', '.join(pickled[:3])}), which can run code when "
            f"loaded. Convert them to safetensors, or pass --allow-pickle (model.allow_pickle: true in your own "
            f"config) if you trust the source."
        )
    if not pickled:
        raise WhetstoneError(f"model: {spec} has no weight files (*.safetensors); copy the model's weights into it.")
    return []


def _indexed_shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (ValueError, UnicodeDecodeError, AttributeError):
        weight_map = None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise WhetstoneError(f"model: {index} is not a valid shard index (a JSON object with a weight_map of tensor "
                             f"name to file); copy it again with its shards.")
    shards = [index.parent / name for name in sorted(set(weight_map.values()))]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise WhetstoneError(f"model: {index} lists {len(shards)} shard(s), but {', '.join(missing[:3])} "
                             f"{'is' if len(missing) == 1 else 'are'} missing from {index.parent}; copy every shard.")
    return shards


def _check_safetensors(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    # safe_open reads the header and checks that the tensors cover the file exactly, without reading them.
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as exc:
        raise WhetstoneError(
            f"model: {path} is not a complete safetensors file ({exc}); it is truncated or corrupt. Copy or "
            f"download it again."
        ) from None
