"""Duplicates: exact and near clusters with their origins, train/eval overlap, and cost."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from whetstone.data import dedup
from whetstone.data.dedup import (
    ExactIndex,
    NearDuplicateIndex,
    content_hash,
    find_duplicates,
    find_overlap,
    lsh_params,
    record_content,
    shingle_hashes,
)
from whetstone.data.records import Message, Record

VOCAB = [f"word{i}" for i in range(3000)]


def sentence(rng: random.Random, n: int = 100) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def edit_last_word(text: str) -> str:
    """A near duplicate: 3 of 98 shingles change, Jaccard 95/101 = 0.94."""
    return text.rsplit(" ", 1)[0] + " CHANGED"


def text_record(text: str, line: int) -> Record:
    return Record(kind="text", origin=f"f.jsonl:{line}", text=text)


def test_normalised_content_ignores_spacing_but_not_case_or_labels():
    a = Record(kind="chat", origin="a", messages=(Message("user", "Hi  there\n"), Message("assistant", "Yo")))
    b = Record(kind="chat", origin="b", messages=(Message("user", " Hi there"), Message("assistant", "Yo")))
    c = Record(kind="chat", origin="c", messages=(Message("user", "hi there"), Message("assistant", "Yo")))
    assert content_hash(record_content(a)) == content_hash(record_content(b))
    assert content_hash(record_content(a)) != content_hash(record_content(c))
    pos = Record(kind="classification", origin="x", text="great", label="pos")
    neg = Record(kind="classification", origin="y", text="great", label="neg")
    assert record_content(pos) != record_content(neg)


def test_exact_index_reports_first_occurrence_and_clusters():
    index = ExactIndex()
    assert [index.add(h, line) for line, h in enumerate([7, 8, 7, 9, 7, 8], start=1)] == [None, None, 1, None, 1, 2]
    assert index.clusters() == [[1, 3, 5], [2, 6]]


def test_lsh_parameters_give_high_recall_at_the_threshold():
    assert lsh_params(0.9, 128) == (12, 10)
    bands, rows = lsh_params(0.8, 128)
    assert 1 - (1 - 0.8**rows) ** bands >= 0.99 and bands * rows <= 128


def test_shingles_are_word_trigrams_per_text():
    words = np.array([1, 2, 3, 4, 5, 6, 7], dtype=np.uint64)
    shingles, offsets = shingle_hashes(words, np.array([4, 3]))
    assert len(shingles) == 3 and offsets.tolist() == [0, 2]  # 2 shingles of text 1, 1 of text 2
    again, _ = shingle_hashes(np.array([2, 3, 4], dtype=np.uint64), np.array([3]))
    assert again[0] == shingles[1]  # the same three words hash the same wherever they are


def test_planted_duplicates_are_found_with_their_lines():
    rng = random.Random(0)
    texts = [sentence(rng) for _ in range(300)]
    texts[40] = texts[10]  # exact
    texts[41] = texts[10]  # exact
    texts[77] = edit_last_word(texts[12])  # near
    texts[200] = edit_last_word(texts[150])  # near
    texts[201] = texts[150].upper().replace(" ", "  ")  # case and spacing differ: near, not exact
    records = [text_record(t, i + 1) for i, t in enumerate(texts)]
    found = find_duplicates(records)
    assert found.exact == [["f.jsonl:11", "f.jsonl:41", "f.jsonl:42"]]
    assert found.near == [["f.jsonl:13", "f.jsonl:78"], ["f.jsonl:151", "f.jsonl:201", "f.jsonl:202"]]


def test_threshold_separates_near_from_merely_similar():
    rng = random.Random(1)
    base = sentence(rng, 100)
    words = base.split()
    half = " ".join(words[:50] + [f"other{i}" for i in range(50)])  # Jaccard about 0.32
    records = [text_record(base, 1), text_record(half, 2)]
    assert find_duplicates(records).near == []
    assert find_duplicates(records, threshold=0.2).near == [["f.jsonl:1", "f.jsonl:2"]]


def test_train_eval_overlap_exact_and_near():
    rng = random.Random(2)
    train = [text_record(sentence(rng), i + 1) for i in range(200)]
    evaluation = [
        Record(kind="text", origin="eval.jsonl:1", text=train[5].text),
        Record(kind="text", origin="eval.jsonl:2", text=sentence(rng)),
        Record(kind="text", origin="eval.jsonl:3", text=edit_last_word(train[99].text)),
    ]
    overlap = find_overlap(train, evaluation)
    assert overlap.exact == [("eval.jsonl:1", "f.jsonl:6")]
    assert overlap.near == [("eval.jsonl:3", ["f.jsonl:100"])]


def test_texts_without_words_are_not_indexed():
    index = NearDuplicateIndex()
    assert index.add("!!! ...", 1) is False
    assert index.add("one", 2) and index.add("one", 3)  # short texts are one shingle
    assert index.clusters() == [[2, 3]]


def test_long_documents_are_signed_in_slices():
    rng = random.Random(3)
    long_text = sentence(rng, 70_000)  # more shingles than one numpy batch holds
    index = NearDuplicateIndex()
    index.add(long_text, 1)
    index.add(edit_last_word(long_text), 2)
    index.add(sentence(rng, 50), 3)
    assert index.clusters() == [[1, 2]]


def test_near_dedup_is_not_quadratic(monkeypatch):
    """Distinct texts rarely share a bucket: verification work stays near zero."""
    rng = random.Random(4)
    index = NearDuplicateIndex()
    for i in range(5000):
        index.add(sentence(rng, 40), i)
    buckets = []
    original = NearDuplicateIndex._verify_bucket
    monkeypatch.setattr(
        NearDuplicateIndex, "_verify_bucket", lambda self, m, *a: (buckets.append(len(m)), original(self, m, *a))
    )
    assert index.clusters() == []
    assert sum(buckets) < 50  # an all-pairs method would compare 12.5 million pairs


@pytest.mark.parametrize("threshold", [0.0, 1.5])
def test_threshold_must_be_a_fraction(threshold):
    with pytest.raises(ValueError):
        NearDuplicateIndex(threshold)


TRICKY_TEXTS = [
    "Hello, World!  hello\tworld\n",
    "Ünïcödé wörds\u00a0and\u2003odd\u3000spaces, café",
    "a" * 40 + " " + "b" * 33 + " c",  # words past the vectorised length go through zlib
    "...,,,;;;",  # no words at all
    "x",
    "中文没有空格 mixed 中文",
    "surrogate \ud800 half",
]


def assert_word_hashes_match_zlib(texts: list[str]) -> None:
    """The batched numpy CRC equals zlib.crc32 of every word that words_of finds."""
    hashes, counts = dedup.word_hashes(texts)
    expected = [zlib.crc32(w.encode("utf-8", "surrogatepass")) for t in texts for w in dedup.words_of(t)]
    assert counts.tolist() == [len(dedup.words_of(t)) for t in texts]
    assert hashes.tolist() == expected


def test_batched_word_hashes_on_tricky_texts():
    assert_word_hashes_match_zlib(TRICKY_TEXTS)


@given(st.lists(st.text(max_size=60), min_size=1, max_size=8))
@settings(max_examples=300, deadline=None)
def test_batched_word_hashes_equal_zlib_of_each_word(texts):
    assert_word_hashes_match_zlib(texts)


def test_signatures_do_not_depend_on_the_batch():
    texts = [f"record {i} says " + " ".join(f"w{(i * j) % 97}" for j in range(i % 300 + 1)) for i in range(600)]
    batched = NearDuplicateIndex()
    for i, t in enumerate(texts):
        batched.add(t, i)
    batched._flush()
    one_by_one = NearDuplicateIndex()
    for i, t in enumerate(texts):
        one_by_one.add(t, i)
        one_by_one._flush()  # a batch of one text each time
    rows = np.arange(len(texts))
    assert np.array_equal(batched._signature_rows(rows), one_by_one._signature_rows(rows))
