"""Metrics against hand-computed values and against direct sacrebleu / rouge-score calls."""

import pytest
import sacrebleu

from whetstone.evaluate.metrics import (
    accuracy,
    bleu,
    chrf,
    contains_answer,
    exact_match,
    example_score,
    generation_scores,
    group_by_task,
    label_scores,
    macro_f1,
    normalize_answer,
    rouge,
)

HYPS = ["The cat sat on the mat.", "Return the absolute value of x", "Ein Haus am See", ""]
REFS = ["The cat is sitting on the mat.", "Return the absolute value of a number.", "Ein Haus am Meer", "nothing"]


def test_chrf_and_bleu_equal_direct_sacrebleu_calls():
    assert chrf(HYPS, REFS) == sacrebleu.corpus_chrf(HYPS, [REFS]).score
    assert bleu(HYPS, REFS) == sacrebleu.corpus_bleu(HYPS, [REFS]).score
    # Corpus-level, not a mean of sentence scores: the two differ on this set.
    sentence_mean = sum(sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(HYPS, REFS)) / len(HYPS)
    assert bleu(HYPS, REFS) != pytest.approx(sentence_mean)
    assert 0 < chrf(HYPS, REFS) < 100 and 0 < bleu(HYPS, REFS) < 100


def test_rouge_hand_computed():
    # unigrams: 5 of 6 shared -> 5/6; bigrams: the cat, on the, the mat of 5 -> 0.6; LCS "the cat on the mat" = 5.
    scores = rouge(["the cat lay on the mat"], ["the cat sat on the mat"])
    assert scores == pytest.approx({"rouge1": 5 / 6, "rouge2": 0.6, "rougeL": 5 / 6})
    # Mean over examples of the F-measure; a perfect and an empty answer average to 0.5.
    assert rouge(["a b c", ""], ["a b c", "x y"]) == pytest.approx({"rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.5})
    # Precision and recall differ: hyp "the cat" vs ref "the cat sat": P=1, R=2/3, F=0.8.
    assert rouge(["the cat"], ["the cat sat"])["rouge1"] == pytest.approx(0.8)


def test_exact_match_normalizes_case_punctuation_and_spaces():
    assert normalize_answer("  The  Answer, is: 42! ") == "the answer is 42"
    assert exact_match(["The answer.", "4 2", "Paris"], ["the  answer", "42", "paris"]) == pytest.approx(2 / 3)


def test_contains_answer_matches_whole_words_only():
    assert contains_answer("It is 42.", "42")
    assert not contains_answer("It is 142.", "42")
    assert contains_answer("The capital is New Delhi!", "new delhi")
    assert not contains_answer("anything", "")


def test_accuracy_and_macro_f1_hand_computed():
    golds = ["a", "a", "b", "b", "c"]
    preds = ["a", "b", "b", "b", "a"]
    # F1(a) = 2*1/(2+1+1) = 0.5; F1(b) = 2*2/(4+1+0) = 0.8; F1(c) = 0 (never predicted).
    assert accuracy(preds, golds) == pytest.approx(0.6)
    assert macro_f1(preds, golds) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    # A predicted class that is never gold counts too (sklearn's labels = gold | predicted).
    assert macro_f1(["a", "z"], ["a", "a"]) == pytest.approx((2 / 3 + 0.0) / 2)
    assert label_scores(["accuracy", "macro_f1"], preds, golds) == {"accuracy": 0.6,
                                                                     "macro_f1": pytest.approx(0.4333, abs=1e-4)}


def test_generation_scores_expand_rouge_and_skip_unasked():
    out = generation_scores(["rouge", "exact_match"], ["a b"], ["a b"])
    assert out == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "exact_match": 1.0}


def test_example_scores():
    assert example_score("rougeL", "the cat lay on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    assert example_score("chrf", HYPS[0], REFS[0]) == sacrebleu.sentence_chrf(HYPS[0], [REFS[0]]).score
    assert example_score("exact_match", "Paris.", "paris") == 1.0
    with pytest.raises(ValueError):
        example_score("accuracy", "a", "a")


def test_group_by_task_keeps_first_seen_order():
    assert group_by_task(["b", None, "a", "b"]) == {"b": [0, 3], "default": [1], "a": [2]}
