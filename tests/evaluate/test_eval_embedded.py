"""The bundled general probe on the real embedded model: the base model must be able to pass it."""

import pytest

from whetstone.evaluate.forgetting import Probe, load_probe, run_probe
from whetstone.models.inference import load_for_inference

pytestmark = pytest.mark.slow


def test_the_base_model_answers_most_general_questions():
    model, tokenizer = load_for_inference("smollm2-135m-instruct")
    probe = load_probe()
    # Every 4th question and passage keeps this under ~20 s on two cores; the full probe gives 58.4%.
    sample = Probe(probe.texts[::4], probe.questions[::4], probe.sources)
    result = run_probe(model, tokenizer, sample, batch_size=21)
    assert result.n_qa == 41 and result.n_text == 15
    # A probe the base model fails cannot show forgetting; one it aces cannot show small losses.
    assert 0.35 <= result.qa_accuracy <= 0.9
    assert 5.0 < result.text_ppl < 100.0
