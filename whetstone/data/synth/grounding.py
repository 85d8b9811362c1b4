"""Is an answer supported by its chunk? The share of the answer's content words that the chunk contains.

Content words are the lower-cased word tokens of a text (letters, digits and underscores; ``base64.b64encode``
is two tokens) without English stop words, each cut to a crude stem (a trailing -s, -es, -ed or -ing), so that
"Decodes" in an answer finds "decode" in the chunk. An answer with no content word ("Yes.") is never supported.

``THRESHOLD`` is measured (tests/data/test_data_synth.py, test_the_measured_threshold_...) on the
knowledge-base documents (examples/knowledge_base/docs.jsonl, 70 chunks): each of the 214 answers that extraction
takes from its chunk has support 1.0; the same answers against each of the 69 other chunks (14,766 wrong pairs)
have a median support of 0.125 and a 99th percentile of 0.625. At 0.8, every right pair is kept and 38 wrong
pairs (0.26%) pass: answers that another chunk of the same module states in the same words ("Decode a line of
base64 data."), which no bag of words can tell apart. At 0.7 84 pass (0.57%), at 0.9 12. 0.8 lets a teacher
reword one content word in five.
"""

from __future__ import annotations

import re

THRESHOLD = 0.8

STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below between both but
by can could did do does doing down during each few for from further had has have having he her here hers herself
him himself his how i if in into is it its itself just me more most my myself no nor not of off on once only or
other our ours ourselves out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where which while who whom why
will with would you your yours yourself yourselves also may might must shall one two e g eg ie etc use used using
""".split())
_WORD = re.compile(r"[a-z0-9_]+")


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> list[str]:
    """The stemmed, lower-cased words of ``text`` that carry content."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]


def support(answer: str, chunk_text: str) -> float:
    """The share of ``answer``'s content words found in ``chunk_text``; 0.0 when it has none."""
    words = content_words(answer)
    if not words:
        return 0.0
    found = set(content_words(chunk_text))
    return sum(w in found for w in words) / len(words)


def is_grounded(answer: str, chunk_text: str, threshold: float = THRESHOLD) -> bool:
    return support(answer, chunk_text) >= threshold
