"""Ship a run: a PEFT adapter, a merged HF model, or a GGUF file, checked against base + adapter."""

from whetstone.export.consistency import ConsistencyError, check_consistency
from whetstone.export.formats import FORMATS, ExportResult, export_run, read_run
from whetstone.export.gguf import write_gguf

__all__ = ["ConsistencyError", "ExportResult", "FORMATS", "check_consistency", "export_run", "read_run", "write_gguf"]
