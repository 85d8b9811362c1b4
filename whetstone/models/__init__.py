"""Models: loading from every source, tokenizers and chat templates."""

from whetstone.models.load import ResolvedModel, load_model, load_tokenizer, resolve_model

__all__ = ["ResolvedModel", "load_model", "load_tokenizer", "resolve_model"]
