"""Ship a run: a PEFT adapter, a merged HF model, or a GGUF file, checked against base + adapter.

This package file stays free of torch imports, so the CLI starts fast; the work is in
formats.py (peft, merged, orchestration), gguf.py (the GGUF writer) and
consistency.py (train/serve checks).
"""

FORMATS = ("peft", "merged", "gguf")
GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0")
DTYPES = {"peft": ("f32", "f16", "bf16"), "merged": ("f32", "f16", "bf16"), "gguf": GGUF_DTYPES}
DEFAULT_DTYPE = {"peft": "f32", "merged": "f32", "gguf": "f16"}

_LAZY = {"export_run": "formats", "read_run": "formats", "ExportResult": "formats", "write_gguf": "gguf",
         "check_consistency": "consistency", "ConsistencyError": "consistency"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"whetstone.export.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'whetstone.export' has no attribute {name!r}")


__all__ = ["DTYPES", "FORMATS", *_LAZY]
