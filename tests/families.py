"""Tiny random models of six chat families, each with its real chat template and special tokens.

A family is a transformers config (hidden 64, 2 layers) and a tokenizer: the embedded model's byte-level BPE
vocabulary, with the family's special tokens added, its bos/eos/pad, and its real chat template read from
trl's installed `chat_templates/` (Mistral's [INST] format has no string-content template there, so it is
written out below). The model's vocab_size is the tokenizer's length, so every added token has an embedding.

The base checkpoints' generation_config.json names only the tokenizer's EOS, as a carelessly uploaded model
would: whatever stops on the end-of-turn token where it differs from EOS (Gemma's <end_of_turn>, Phi-3's
<|end|>) must come from whetstone, not from the fixture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

# Mistral-7B-Instruct's format (v0.1/v0.2 tokenizer_config.json): [INST] user [/INST] answer</s>; a system
# message is prepended to the first user turn. Written out because trl ships only a multimodal [INST] template.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] + '\\n\\n' %}{% set messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str
    template: str  # a file in trl's chat_templates/, or the template itself
    special: tuple[str, ...]  # added as special tokens, in this order
    eos: str
    end_of_turn: str  # the token that ends an assistant turn in the template
    bos: str | None = None
    plain: tuple[str, ...] = ()  # added tokens that are not special (Qwen's <think>, <tool_call>)
    pad: str | None = None  # None: pad is EOS
    linear: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    config: dict = field(default_factory=dict)
    gguf: bool = False  # whetstone's GGUF writer supports the architecture

    def chat_template(self) -> str:
        if self.template.endswith(".jinja"):
            return (files("trl") / "chat_templates" / self.template).read_text()
        return self.template


FAMILIES = {
    f.name: f for f in (
        Family("llama", "llama", "llama3_2.jinja",
               ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
                "<|eot_id|>", "<|python_tag|>"),
               eos="<|eot_id|>", end_of_turn="<|eot_id|>", bos="<|begin_of_text|>",
               config=dict(tie_word_embeddings=True, rope_theta=500000.0), gguf=True),
        Family("qwen2", "qwen2", "qwen2_5.jinja", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
               eos="<|im_end|>", end_of_turn="<|im_end|>", pad="<|endoftext|>", plain=("<tool_call>", "</tool_call>"),
               config=dict(tie_word_embeddings=True, use_sliding_window=False)),
        Family("qwen3", "qwen3", "qwen3.jinja", ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
               eos="<|im_end|>", end_of_turn="<|im_end|>", pad="<|endoftext|>",
               plain=("<tool_call>", "</tool_call>", "<think>", "</think>"),
               config=dict(tie_word_embeddings=True, head_dim=16)),
        Family("gemma3", "gemma3_text", "gemma3.jinja", ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"),
               eos="<eos>", end_of_turn="<end_of_turn>", bos="<bos>", pad="<pad>",
               # Gemma 3 alternates local (sliding) and global attention; a 16-token window is shorter than the
               # probe conversations, so the local layer's mask is exercised.
               config=dict(tie_word_embeddings=True, head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
                           layer_types=["sliding_attention", "full_attention"])),
        Family("mistral", "mistral", MISTRAL_TEMPLATE, ("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
               eos="</s>", end_of_turn="</s>", bos="<s>",
               config=dict(tie_word_embeddings=False, sliding_window=None), gguf=True),
        Family("phi3", "phi3", "phi3_5.jinja",
               ("<unk>", "<s>", "<|endoftext|>", "<|assistant|>", "<|end|>", "<|system|>", "<|user|>"),
               eos="<|endoftext|>", end_of_turn="<|end|>", bos="<s>", pad="<|endoftext|>",
               linear=("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
               config=dict(tie_word_embeddings=False)),
    )
}


def family_tokenizer(family: Family):
    """The embedded model's tokenizer turned into `family`'s: its special tokens, bos/eos/pad and chat template."""
    from whetstone.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    tokenizer.add_special_tokens({"additional_special_tokens": list(family.special)})
    tokenizer.add_tokens(list(family.plain))
    tokenizer.bos_token = family.bos
    tokenizer.eos_token = family.eos
    tokenizer.pad_token = family.pad or family.eos
    tokenizer.chat_template = family.chat_template()
    return tokenizer


def build_family(family: Family, path: Path, seed: int = 0) -> Path:
    """Write a random-init tiny `family` model (2 layers, hidden 64) and its tokenizer to `path`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = family_tokenizer(family)
    config = AutoConfig.for_model(
        family.model_type, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **family.config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
