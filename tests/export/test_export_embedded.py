"""Export on the real embedded model (SmolLM2-135M): a 49k-token tokenizer, pad == EOS, the smollm pre-tokenizer."""

import pytest
import torch

from whetstone.config import dump_config, load_config
from whetstone.export import export_run
from whetstone.export.gguf import read_gguf_metadata

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    """A run directory holding a random rank-2 LoRA on the embedded model (as a finished run lays it out)."""
    from peft import LoraConfig, get_peft_model

    from whetstone.models import load_model, load_tokenizer

    run = tmp_path_factory.mktemp("embedded") / "run"
    config = load_config(None, ["model=smollm2-135m-instruct", "data.train=unused.jsonl", "method.r=2"])
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(config))
    base, resolved = load_model(config.model)
    torch.manual_seed(0)
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, lora)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.mul_(0.05)  # a nudge that changes logits without wrecking the model
    model.peft_config["default"].base_model_name_or_path = resolved.path
    model.save_pretrained(run / "adapter")
    load_tokenizer(config.model).save_pretrained(run / "adapter")
    return run


def test_merged_and_gguf_of_the_embedded_model(embedded_run, tmp_path):
    merged = export_run(embedded_run, "merged", tmp_path / "merged")
    # The bound is fp32 rounding at 30 layers and the logits' scale (2.4e-3 here); the nudged adapter moves
    # the logits by far more, so passing it means the merge is right, on any CPU's kernels.
    assert merged.logit_delta <= merged.tolerance < 5e-3 and merged.top1_agreement == 1.0
    # SmolLM2's pad is its EOS; the export accepts that only because the masking was checked.
    assert any(c.startswith("pad == EOS '<|im_end|>' (id 2), accounted for") for c in merged.checks)

    gguf = export_run(embedded_run, "gguf", tmp_path / "model.gguf", "q8_0")
    meta = read_gguf_metadata(tmp_path / "model.gguf")
    assert meta["tokenizer.ggml.pre"] == "smollm"  # taken from the embedded GGUF the base came from
    assert meta["tokenizer.ggml.tokens"] == 49152 and meta["llama.block_count"] == 30
    assert (meta["tokenizer.ggml.eos_token_id"], meta["tokenizer.ggml.padding_token_id"]) == (2, 2)
    assert "tokens: the probe conversation gives the same" in " ".join(gguf.checks)
    assert gguf.logit_delta <= gguf.tolerance and gguf.top1_agreement >= 0.95
    assert gguf.bytes < merged.bytes / 3  # q8_0 (8.5 bits) against f32
