"""Shot selection: deterministic, never leaks the question, 'similar' follows TF-IDF cosine."""

import math

import pytest

from whetstone.data.records import Message, Record
from whetstone.errors import WhetstoneError
from whetstone.evaluate.fewshot import Example, TfidfIndex, as_example, select_shots, shots_for_records, with_shots


def ex(question: str, answer: str = "a") -> Example:
    return Example((Message("user", question),), answer)


POOL = [ex(f"question number {i} about topic {i % 4}", f"answer {i}") for i in range(20)]


def test_random_selection_is_deterministic_and_seeded():
    questions = [ex(f"new question {i}") for i in range(10)]
    first = select_shots(questions, POOL, 3, "random", seed=1)
    assert first == select_shots(questions, POOL, 3, "random", seed=1)
    assert first != select_shots(questions, POOL, 3, "random", seed=2)
    assert all(len(s) == 3 and len(set(map(id, s))) == 3 for s in first)
    # A question's shots do not depend on which other questions are evaluated with it.
    assert select_shots(questions[4:5], POOL, 3, "random", seed=1)[0] == first[4]


def test_the_question_itself_is_never_a_shot():
    question = POOL[7]
    for selection in ("random", "similar"):
        for seed in range(20):
            shots = select_shots([question], POOL, 5, selection, seed)[0]
            assert question not in shots


def test_similar_selection_follows_tfidf_cosine():
    pool = [ex("how do I bake bread"), ex("what is the capital of france"), ex("how long to bake bread at home"),
            ex("capital city of spain")]
    (shots,) = select_shots([ex("bake bread")], pool, 2, "similar")
    assert [s.question_text for s in shots] == ["how long to bake bread at home", "how do I bake bread"]  # best last


def test_tfidf_cosine_hand_computed():
    index = TfidfIndex(["a b", "a c"])
    idf_a = math.log(3 / 3) + 1  # in both documents
    idf_b = math.log(3 / 2) + 1  # in one
    doc0 = [idf_a, idf_b]
    cos = idf_a * idf_a / (math.hypot(*doc0) * idf_a)  # query "a": only the shared word
    assert index.similarities("a") == pytest.approx([cos, cos])
    assert index.similarities("b")[1] == 0.0


def test_with_shots_builds_earlier_turns_after_the_system_message():
    question = Example((Message("system", "Be brief."), Message("user", "Q?")), "A")
    prompt = with_shots(question, [ex("q1", "a1"), ex("q2", "a2")])
    assert [(m.role, m.content) for m in prompt] == [
        ("system", "Be brief."), ("user", "q1"), ("assistant", "a1"), ("user", "q2"), ("assistant", "a2"),
        ("user", "Q?")]


def test_records_become_examples_and_text_records_get_no_shots():
    chat = Record("chat", "f:1", messages=(Message("user", "hi"), Message("assistant", "hello")))
    label = Record("classification", "f:2", text="great film", label="pos")
    text = Record("text", "f:3", text="plain text")
    assert as_example(chat) == ex("hi", "hello")
    assert as_example(label, ["neg", "pos"]).prompt[0].content.endswith("Text: great film")
    assert as_example(text) is None
    shots = shots_for_records([chat, text], [chat, *[Record("chat", "p", messages=(
        Message("user", f"q{i}"), Message("assistant", f"a{i}"))) for i in range(3)]], 2)
    assert len(shots[0]) == 2 and shots[1] == []


def test_bad_requests_are_user_errors():
    with pytest.raises(WhetstoneError, match="only 3 usable"):
        select_shots([ex("q")], POOL[:3], 4)
    with pytest.raises(WhetstoneError, match="shot-selection"):
        select_shots([ex("q")], POOL, 2, "closest")
    assert select_shots([ex("q")], POOL, 0) == [[]]
