"""Train/serve consistency: template, tokens, EOS and pad are checked, and every mismatch is an error."""

import json

import pytest

import whetstone.export.consistency as consistency
from whetstone.data.batches import collate
from whetstone.data.render import IGNORE
from whetstone.export import export_run
from whetstone.export.consistency import ConsistencyError, check_consistency
from whetstone.models import load_tokenizer
from whetstone.models.tiny import CHATML_TEMPLATE


@pytest.fixture
def tokenizers(tiny_model_dir):
    """(as trained, as served): two independent loads of the same tokenizer."""
    return load_tokenizer(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))


def test_identical_tokenizers_pass_every_check(tokenizers):
    trained, served = tokenizers
    report = check_consistency(trained, served, [served.eos_token_id], "test")
    assert [c.split(":")[0] for c in report.checks] == ["chat template", "tokens", "EOS", "pad"]
    assert "differs from EOS" in report.checks[-1]


def test_a_different_template_is_an_error(tokenizers):
    trained, served = tokenizers
    served.chat_template = CHATML_TEMPLATE.replace("<|im_start|>", "<|im_start|> ")
    with pytest.raises(ConsistencyError, match="chat template: the generation prompt renders as"):
        check_consistency(trained, served, [served.eos_token_id], "test")
    served.chat_template = None
    with pytest.raises(ConsistencyError, match="has no chat template"):
        check_consistency(trained, served, [served.eos_token_id], "test")


def test_a_different_eos_or_stop_list_is_an_error(tokenizers):
    trained, served = tokenizers
    with pytest.raises(ConsistencyError, match=r"lacks the training EOS '<\|im_end\|>' \(id 2\)"):
        check_consistency(trained, served, [0], "test")
    served.eos_token = "<|endoftext|>"
    with pytest.raises(ConsistencyError, match="EOS: the exported tokenizer's EOS is '<|endoftext|>'"):
        check_consistency(trained, served, [served.eos_token_id], "test")


def test_pad_equal_to_eos_is_accepted_because_the_masking_accounts_for_it(tokenizers):
    """SmolLM2's case: pad and EOS are both <|im_end|>. Training keeps EOS labels; serving keeps EOS visible."""
    trained, served = tokenizers
    trained.pad_token = served.pad_token = "<|im_end|>"
    report = check_consistency(trained, served, [served.eos_token_id], "test")
    assert report.checks[-1].startswith("pad == EOS '<|im_end|>' (id 2), accounted for")
    assert "attention mask from padding" in report.notes[0]


def test_pad_equal_to_eos_with_id_based_masking_is_an_error(tokenizers, monkeypatch):
    """A collator that masks labels by pad id would erase every EOS label: the check must catch it."""
    trained, served = tokenizers
    trained.pad_token = served.pad_token = "<|im_end|>"

    def masks_by_pad_id(examples, pad_id):
        batch = collate(examples, pad_id)
        batch["labels"][batch["input_ids"] == pad_id] = IGNORE
        return batch

    monkeypatch.setattr(consistency, "collate", masks_by_pad_id)
    with pytest.raises(ConsistencyError, match="the collator masks EOS labels as padding"):
        check_consistency(trained, served, [served.eos_token_id], "test")


def test_missing_pad_is_an_error(tokenizers):
    trained, served = tokenizers
    served.pad_token = None
    with pytest.raises(ConsistencyError, match="has no pad token"):
        check_consistency(trained, served, [served.eos_token_id], "test")


def test_export_refuses_a_run_whose_saved_template_drifted(run_copy, tmp_path):
    """The run's adapter/ tokenizer renders differently from what training used: every format refuses."""
    template = run_copy / "adapter" / "chat_template.jinja"
    config_file = run_copy / "adapter" / "tokenizer_config.json"
    if template.is_file():
        template.write_text(template.read_text().replace("<|im_start|>", "<|im_start|> "))
    else:
        config = json.loads(config_file.read_text())
        config["chat_template"] = config["chat_template"].replace("<|im_start|>", "<|im_start|> ")
        config_file.write_text(json.dumps(config))
    for fmt in ("merged", "gguf"):
        expected = f"(?s)export {fmt} .*chat template: the generation prompt renders as"
        with pytest.raises(ConsistencyError, match=expected):
            export_run(run_copy, fmt, tmp_path / fmt, verify=False)
