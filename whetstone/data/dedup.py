"""Exact and near-duplicate detection, within a file and between train and eval.

Exact duplicates share a hash of the record's normalised content (Unicode NFC,
whitespace collapsed; case kept). Near duplicates are found with MinHash over
word 3-gram shingles (lower-cased, punctuation ignored) and LSH banding, so the
cost grows with the number of records, not with the number of pairs:

1. each record's shingles are hashed with ``num_perm`` universal hash functions
   and the minimum of each is kept (its *signature*); two signatures agree in
   a position with probability equal to the Jaccard similarity of the sets;
2. the signature is cut into ``bands`` bands of ``rows`` values; records that
   agree on a whole band land in the same bucket (found by sorting, not by
   comparing all pairs) and become candidates;
3. candidates are verified by the fraction of agreeing signature positions.

Signatures keep the low 16 bits of each minimum (b-bit MinHash): 256 bytes per
record at 128 permutations, so a million records need 256 MB, and two
different minima collide with probability 1/65536, which biases the estimate
negligibly. Hashing uses CRC32 of the words, so results are the same in every
process (``clean`` and a later ``check`` agree on what is a duplicate).

Signing is batched: ``NearDuplicateIndex.add`` queues a text, and every few
thousand texts are split into words, hashed and signed together by numpy
(about 8 us per text instead of 30 for one text at a time), with the same
signatures bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import string
import unicodedata
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from whetstone.data.records import Message, Record

DEFAULT_THRESHOLD = 0.9
NUM_PERM = 128
SHINGLE = 3  # words per shingle

_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})
# What str.split() splits on: every character for which str.isspace() is true.
_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
_NOT_WORD = _WHITESPACE + string.punctuation
# ASCII punctuation and whitespace -> b" ": what separates words once text is UTF-8.
_ASCII_SEPARATORS = string.punctuation + "".join(c for c in _WHITESPACE if c.isascii())
_SEPARATOR_BYTES = bytes.maketrans(_ASCII_SEPARATORS.encode("ascii"), b" " * len(_ASCII_SEPARATORS))

_BLOCK = 8192  # signatures per stored block: (128, 8192) uint16 = 2 MB
_BATCH_TEXTS = 8192  # texts signed together: (P, 8192) uint64 = 8 MB of running minima
_BATCH_CHARS = 1 << 22  # or fewer when they are long: bounds the byte and word arrays of a batch
_SLOT_MAX = 255  # texts with more shingles are signed alone (_minhash_long)
_LONG_SLICE = 8192  # shingles per (P, slice) uint64 array of a long text: 8 MB
_VECTOR_WORD = 32  # longer words are hashed by zlib one at a time
_PAIR_SLICE = 65536  # candidate pairs verified per numpy call: 2 x 16 MB of signatures


def normalize(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, ends stripped."""
    # Most text is already normal: a printable string has no whitespace but
    # " " (every other whitespace character is a control or a separator), so
    # without doubled or outer spaces, splitting and joining would rebuild it
    # word by word for nothing. That was most of the cost of exact dedup.
    if text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " ":
        return text if text.isascii() else unicodedata.normalize("NFC", text)
    return " ".join(unicodedata.normalize("NFC", text).split())


def _turns(messages: Sequence[Message]) -> str:
    return "\x1e".join([f"{m.role}\x1f{normalize(m.content)}{_tool_part(m)}" for m in messages])


def _tool_part(m: Message) -> str:
    """A turn's reasoning and tool calls, which are trained on too; empty for a plain turn (hashes unchanged)."""
    if not (m.reasoning or m.tool_calls):
        return ""
    calls = [[c.name, c.arguments] for c in m.tool_calls]
    return "\x1f" + json.dumps([normalize(m.reasoning or ""), calls], sort_keys=True, ensure_ascii=False)


def record_content(record: Record) -> str:
    """The normalised content that decides whether two records are duplicates.

    It includes everything a model would learn from (conversation, answers,
    labels) and nothing else (no origin, no extra fields).
    """
    parts: list[str] = [record.kind]
    if record.text is not None:
        parts.append(normalize(record.text))
    if record.messages:
        parts.append(_turns(record.messages))
    if record.chosen or record.rejected:
        parts += [_turns(record.chosen), _turns(record.rejected)]
    if record.completion:
        parts.append(_turns(record.completion))
    if record.label is not None:
        parts.append(str(record.label))
    if record.reference is not None:
        parts.append(normalize(record.reference))
    if record.tools:
        parts.append(json.dumps(record.tools, sort_keys=True, ensure_ascii=False))
    return "\x1d".join(parts)


def content_hash(content: str) -> int:
    """A 64-bit hash of normalised content (blake2b, stable across processes)."""
    return int.from_bytes(hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def similarity_text(record: Record) -> str:
    """The words near-duplicate detection compares: all text, without roles or labels."""
    pieces = [record.text or ""]
    for m in (*record.messages, *record.chosen, *record.rejected, *record.completion):
        pieces.append(m.content)
        if m.reasoning:
            pieces.append(m.reasoning)
        pieces += [json.dumps(c.arguments, ensure_ascii=False) for c in m.tool_calls]
    return " ".join(pieces)


def words_of(text: str) -> list[str]:
    """Lower-cased, whitespace-separated words, ASCII punctuation removed.

    The definition of a word; ``word_hashes`` splits a whole batch of texts
    the same way at once. Scripts written without spaces, such as Chinese,
    come out as one word per phrase, so near-duplicate detection is coarse
    for them: only whole phrases match.
    """
    return text.lower().translate(_PUNCTUATION).split()


def _crc_table() -> np.ndarray:
    """The byte table of CRC-32 (reflected polynomial 0xEDB88320, as in zlib)."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1).astype(np.uint32)
    return table


_CRC_TABLE = _crc_table()


def word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """CRC32 of every word of ``texts``, back to back, and the number of words of each.

    Equal to ``zlib.crc32(word.encode("utf-8", "surrogatepass"))`` for every
    word of ``words_of(text)``, but a few numpy passes over the batch's bytes
    instead of a Python call per word: the texts are joined, lower-cased and
    encoded once, punctuation and whitespace bytes become spaces (one
    ``bytes.translate``), and the words are the runs of other bytes. Non-ASCII
    text first has its Unicode whitespace made single spaces by ``str.split``,
    since only ASCII bytes are mapped; UTF-8 never puts an ASCII byte inside
    a multi-byte character, so the words come out the same.
    """
    joined = " ".join(texts)
    if joined.isascii():
        data = joined.lower().encode("ascii")
        sizes = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    else:
        parts = [
            (t.lower() if t.isascii() else " ".join(t.lower().split())).encode("utf-8", "surrogatepass") for t in texts
        ]
        data = b" ".join(parts)
        sizes = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    buf = np.frombuffer(data.translate(_SEPARATOR_BYTES), dtype=np.uint8)  # (bytes,)
    in_word = (buf != 32).view(np.int8)
    edges = np.flatnonzero(np.diff(in_word, prepend=np.int8(0), append=np.int8(0)))
    starts, ends = edges[0::2], edges[1::2]  # (words,) each
    # Text k is bytes [first[k], first[k] + sizes[k]) of buf, with one space after it.
    first = np.concatenate(([0], np.cumsum(sizes + 1)))
    counts = np.diff(np.searchsorted(starts, first))
    return _crc32(buf, starts, ends - starts), counts


def _crc32(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """CRC32 of the byte runs ``buf[starts[i] : starts[i] + lengths[i]]``, as uint32.

    The table-driven CRC one byte position at a time, for all words at once:
    sorted longest first, the words still running at position j are a
    prefix, so step j is a handful of numpy calls over that prefix. Words
    longer than ``_VECTOR_WORD`` bytes (URLs, base64) are rare and would
    stretch the loop, so zlib hashes them one by one.
    """
    clipped = np.minimum(lengths, _VECTOR_WORD)
    order = np.argsort((_VECTOR_WORD - clipped).astype(np.uint8), kind="stable")  # radix sort, longest first
    positions = starts[order]
    running = len(order) - np.cumsum(np.bincount(clipped, minlength=_VECTOR_WORD + 1))  # words longer than j
    crc = np.full(len(order), 0xFFFFFFFF, dtype=np.uint32)
    for j in range(int(clipped.max(initial=0))):
        c = crc[: running[j]]
        low = buf[positions[: running[j]] + j]
        low ^= c.astype(np.uint8)
        c >>= np.uint32(8)
        c ^= _CRC_TABLE[low]
    crc ^= np.uint32(0xFFFFFFFF)
    result = np.empty_like(crc)
    result[order] = crc
    for i in np.flatnonzero(lengths > _VECTOR_WORD):
        result[i] = zlib.crc32(buf[starts[i] : starts[i] + lengths[i]])
    return result


def shingle_hashes(word_hashes: np.ndarray, lengths: np.ndarray, size: int = SHINGLE) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the word ``size``-grams of many texts at once.

    ``word_hashes`` holds the words of all texts back to back, ``lengths`` the
    number of words of each (every text padded to at least ``size`` words).
    Returns the shingle hashes (uint64, 32 significant bits) and the offset of
    each text's first shingle.
    """
    n_shingles = lengths - size + 1
    text_starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    shingle_starts = np.concatenate(([0], np.cumsum(n_shingles)[:-1]))
    # Position of every shingle's first word in word_hashes: (total shingles,)
    positions = np.arange(n_shingles.sum()) + np.repeat(text_starts - shingle_starts, n_shingles)
    h = np.zeros(len(positions), dtype=np.uint64)
    for i in range(size):
        # A polynomial in the word hashes, so word order matters; the top 32
        # bits of the 64-bit result are the best mixed.
        h = h * np.uint64(0x9E3779B97F4A7C15) + word_hashes[positions + i]
    return h >> np.uint64(32), shingle_starts


def lsh_params(threshold: float, num_perm: int, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows) for LSH: the most rows per band (fewest false candidates)
    that still make a pair of similarity ``threshold`` a candidate with
    probability >= ``recall``.

    A pair of similarity s becomes a candidate with probability 1-(1-s^r)^b
    (Leskovec et al., "Mining of Massive Datasets", ch. 3.4). Candidates are
    verified afterwards, so extra candidates cost time, never correctness.
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            best = (bands, rows)
    return best


class NearDuplicateIndex:
    """MinHash signatures of many texts; finds near-duplicate groups by LSH.

    ``add`` texts with an integer key (a line number) and a source (0 = the
    file being checked, 1 = an eval file), then ask for ``clusters()`` within a
    source or ``cross_matches()`` between sources. ``add`` only queues the
    text: every ``_BATCH_TEXTS`` texts are split, hashed and signed together,
    so a text costs a few numpy passes, not a few dozen Python calls.
    """

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, num_perm: int = NUM_PERM, seed: int = 1):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.num_perm = num_perm
        self.bands, self.rows = lsh_params(threshold, num_perm)
        rng = np.random.default_rng(seed)
        # Multiply-shift hashing: h(x) = (a*x + b) >> 32 over 64-bit words, a odd.
        self._a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
        self._b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self._blocks: list[np.ndarray] = []  # (num_perm, _BLOCK) uint16 each
        self._count = 0
        self.keys = array("q")
        self.sources = array("b")
        self._pending: list[str] = []  # texts not yet signed
        self._pending_chars = 0
        # (minima, values) of _minhash_slots, (2, P, _BATCH_TEXTS) uint64, reused: numpy backs an array
        # of 4 MB or more with huge pages, and a fresh one per batch would page-fault all over again.
        self._scratch: np.ndarray | None = None
        self._result: tuple[dict[int, int], dict[int, set[int]]] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, text: str, key: int, source: int = 0) -> bool:
        """Index ``text``; False (and nothing indexed) when it has no words."""
        assert self._result is None, "NearDuplicateIndex is read-only once queried"
        if not text.strip(_NOT_WORD):  # the same test as `not words_of(text)`, without splitting
            return False
        self.keys.append(key)
        self.sources.append(source)
        self._pending.append(text)
        self._pending_chars += len(text)
        if len(self._pending) >= _BATCH_TEXTS or self._pending_chars >= _BATCH_CHARS:
            self._flush()
        return True

    def _flush(self) -> None:
        if not self._pending:
            return
        words, counts = word_hashes(self._pending)
        lengths = np.maximum(counts, SHINGLE)  # a short text is one shingle, padded with zero words
        padded = words.astype(np.uint64)
        if (counts < SHINGLE).any():
            padded = np.zeros(int(lengths.sum()), dtype=np.uint64)
            shift = np.concatenate(([0], np.cumsum(lengths - counts)[:-1]))
            padded[np.arange(len(words)) + np.repeat(shift, counts)] = words
        shingles, offsets = shingle_hashes(padded, lengths)
        self._store(self._signatures(shingles, offsets, lengths - SHINGLE + 1))
        self._pending, self._pending_chars = [], 0

    def _signatures(self, shingles: np.ndarray, offsets: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """(P, texts) uint16 signatures of the texts whose ``counts`` shingles start at ``offsets``."""
        short, long = np.flatnonzero(counts <= _SLOT_MAX), np.flatnonzero(counts > _SLOT_MAX)
        order = short[np.argsort((_SLOT_MAX - counts[short]).astype(np.uint8), kind="stable")]  # radix, longest first
        columns = [self._minhash_slots(shingles, offsets[order], counts[order])] if len(order) else []
        columns += [self._minhash_long(shingles[offsets[i] : offsets[i] + counts[i]])[:, None] for i in long]
        # Column j belongs to text placed[j]; np.take puts the columns back in text order
        # (a gather along each row: ten times faster than the equivalent scatter).
        placed = np.concatenate((order, long))
        where = np.empty_like(placed)
        where[placed] = np.arange(len(placed))
        return np.take(np.concatenate(columns, axis=1) if len(columns) > 1 else columns[0], where, axis=1)

    def _minhash_slots(self, shingles: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """(P, texts) signatures of short texts sorted by ``counts``, longest first.

        Step ``slot`` hashes the slot-th shingle of every text that has one
        (a prefix, thanks to the order) under all P functions and folds it
        into the running minima. Each numpy call runs over (P, texts) values
        in a row, where a per-text reduction (``reduceat``) pays its overhead
        once per text and function: this takes half the time.
        """
        running = len(counts) - np.cumsum(np.bincount(counts, minlength=_SLOT_MAX + 1))  # texts longer than slot
        a, b = self._a[:, None], self._b[:, None]  # (P, 1)
        if self._scratch is None or self._scratch.shape[2] < len(counts):
            self._scratch = np.empty((2, self.num_perm, max(len(counts), _BATCH_TEXTS)), dtype=np.uint64)
        minima, values = self._scratch[:, :, : len(counts)]  # (P, texts) each
        np.multiply(a, shingles[starts][None, :], out=minima)  # uint64 arithmetic wraps, as hashing wants
        minima += b
        for slot in range(1, int(counts[0])):
            k = running[slot]
            np.multiply(a, shingles[starts[:k] + slot][None, :], out=values[:, :k])
            values[:, :k] += b
            np.minimum(minima[:, :k], values[:, :k], out=minima[:, :k])
        return _low_bits(minima)

    def _minhash_long(self, shingles: np.ndarray) -> np.ndarray:
        """(P,) signature of one long text, in slices that keep (P, slice) small."""
        minima = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        for i in range(0, len(shingles), _LONG_SLICE):
            values = self._a[:, None] * shingles[None, i : i + _LONG_SLICE]  # (P, slice)
            values += self._b[:, None]
            np.minimum(minima, values.min(axis=1), out=minima)
        return _low_bits(minima)

    def _store(self, signatures: np.ndarray) -> None:
        """Append (P, texts) signatures to the (P, _BLOCK) blocks, where a band's rows are contiguous."""
        done = 0
        while done < signatures.shape[1]:
            offset = self._count % _BLOCK
            if offset == 0:
                self._blocks.append(np.zeros((self.num_perm, _BLOCK), dtype=np.uint16))
            take = min(signatures.shape[1] - done, _BLOCK - offset)
            self._blocks[-1][:, offset : offset + take] = signatures[:, done : done + take]
            self._count += take
            done += take

    def _signature(self, index: int) -> np.ndarray:
        return self._blocks[index // _BLOCK][:, index % _BLOCK]

    def _signature_rows(self, indices: np.ndarray) -> np.ndarray:
        """(len(indices), P) signatures, gathered block by block."""
        rows = np.empty((len(indices), self.num_perm), dtype=np.uint16)
        blocks = indices // _BLOCK
        for block in np.unique(blocks):
            chosen = blocks == block
            rows[chosen] = self._blocks[block][:, indices[chosen] % _BLOCK].T
        return rows

    def _band_keys(self, band: int) -> np.ndarray:
        """One uint64 bucket key per text for ``band`` (a hash of its ``rows`` values)."""
        multipliers = (np.arange(1, self.rows + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
        cols = slice(band * self.rows, (band + 1) * self.rows)
        keys = [
            (block[cols].astype(np.uint64) * multipliers[:, None]).sum(axis=0, dtype=np.uint64)
            for block in self._blocks
        ]
        return np.concatenate(keys)[: self._count] if keys else np.zeros(0, dtype=np.uint64)

    def _candidates(self) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Texts that share a bucket in some band: (first, second) of every
        bucket of two (distinct pairs, first < second), and the sorted
        members of every larger bucket.

        Nearly all buckets hold two texts (a near-duplicate pair fills one in
        each band it agrees on), so ``_verify_pairs`` checks them together
        rather than with a Python call each.
        """
        pairs, buckets = [np.zeros(0, dtype=np.int64)], []
        for band in range(self.bands):
            keys = self._band_keys(band)
            order = np.argsort(keys)  # members are sorted below, so the sort need not be stable
            ordered = keys[order]
            same = np.concatenate(([0], ordered[1:] == ordered[:-1], [0])).astype(np.int8)
            if not same.any():
                continue
            change = np.diff(same)
            starts, lasts = np.flatnonzero(change == 1), np.flatnonzero(change == -1)  # bucket: order[s : last + 1]
            two = lasts - starts == 1
            first, second = order[starts[two]], order[lasts[two]]
            pairs.append(np.minimum(first, second) * self._count + np.maximum(first, second))
            buckets += [np.sort(order[s : e + 1]) for s, e in zip(starts[~two], lasts[~two])]
        pairs = np.unique(np.concatenate(pairs))
        return pairs // max(self._count, 1), pairs % max(self._count, 1), buckets

    def _resolve(self) -> tuple[dict[int, int], dict[int, set[int]]]:
        """Union-find parents of same-source duplicates, and cross-source matches."""
        if self._result is not None:
            return self._result
        self._flush()
        self._scratch = None
        parent: dict[int, int] = {}

        def find(i: int) -> int:
            return _find(parent, i)

        sources = np.frombuffer(self.sources, dtype=np.int8) if len(self.sources) else np.zeros(0, np.int8)
        cross: dict[int, set[int]] = {}
        first, second, buckets = self._candidates()
        self._verify_pairs(first, second, sources, find, parent, cross)
        for members in buckets:
            self._verify_bucket(members, sources[members], find, parent, cross)
        self._result = (parent, cross)
        return self._result

    def _verify_pairs(self, first, second, sources, find, parent, cross) -> None:
        """Verify candidate pairs, ``_PAIR_SLICE`` at a time.

        Links them as ``_verify_bucket`` would a bucket of the two: a
        same-source pair is joined, and a source-0 text and a text of another
        source become a cross match.
        """
        for i in range(0, len(first), _PAIR_SLICE):
            ones, twos = first[i : i + _PAIR_SLICE], second[i : i + _PAIR_SLICE]
            similar = (self._signature_rows(ones) == self._signature_rows(twos)).mean(axis=1) >= self.threshold
            for x, y in zip(ones[similar].tolist(), twos[similar].tolist()):
                if sources[x] == sources[y]:
                    a, b = find(x), find(y)
                    if a != b:
                        parent[max(a, b)] = min(a, b)  # the earliest record is the root
                elif sources[x] == 0 or sources[y] == 0:
                    base, other = (x, y) if sources[x] == 0 else (y, x)
                    cross.setdefault(other, set()).add(base)

    def _verify_bucket(self, members, member_sources, find, parent, cross) -> None:
        signatures = np.stack([self._signature(int(i)) for i in members])
        for source in np.unique(member_sources):
            # Star verification: each unmatched member against the earliest
            # unmatched one, repeated until every member is placed.
            left = [k for k in range(len(members)) if member_sources[k] == source]
            if len({find(int(members[k])) for k in left}) == 1:
                continue
            while len(left) > 1:
                pivot, rest = left[0], left[1:]
                similar = (signatures[rest] == signatures[pivot]).mean(axis=1) >= self.threshold
                for k, ok in zip(rest, similar):
                    if ok:
                        a, b = find(int(members[pivot])), find(int(members[k]))
                        if a != b:
                            parent[max(a, b)] = min(a, b)  # the earliest record is the root
                left = [k for k, ok in zip(rest, similar) if not ok]
        others = [k for k in range(len(members)) if member_sources[k] != 0]
        base = [k for k in range(len(members)) if member_sources[k] == 0]
        for k in others:
            if base:
                similar = (signatures[base] == signatures[k]).mean(axis=1) >= self.threshold
                matched = {int(members[b]) for b, ok in zip(base, similar) if ok}
                if matched:
                    cross.setdefault(int(members[k]), set()).update(matched)

    def clusters(self, source: int = 0) -> list[list[int]]:
        """Groups of near-duplicate keys within ``source``, each in file order."""
        parent, _ = self._resolve()
        groups: dict[int, set[int]] = {}
        for index in parent:
            root = _find(parent, index)
            groups.setdefault(root, {root}).add(index)
        return sorted(
            sorted(self.keys[i] for i in members) for root, members in groups.items() if self.sources[root] == source
        )

    def cross_matches(self) -> dict[int, list[int]]:
        """For each source-1 key with near matches in source 0: the matching source-0 keys."""
        _, cross = self._resolve()
        return {self.keys[i]: sorted(self.keys[j] for j in matched) for i, matched in sorted(cross.items())}


def _low_bits(minima: np.ndarray) -> np.ndarray:
    """Bits 32-47 of each minimum, as uint16.

    The hash is the top half of (a*x + b), and the minimum commutes with the
    shift: shifting the minimum once equals shifting every value before it.
    """
    return (minima >> np.uint64(32)).astype(np.uint16)


def _find(parent: dict[int, int], i: int) -> int:
    """Union-find root of ``i``, compressing the path on the way."""
    root = i
    while parent.get(root, root) != root:
        root = parent[root]
    while parent.get(i, i) != root:
        parent[i], i = root, parent[i]
    return root


class ExactIndex:
    """Remembers the first key of every content hash; reports repeats."""

    def __init__(self) -> None:
        self._first: dict[int, int] = {}
        self._repeats: dict[int, list[int]] = {}

    def add(self, digest: int, key: int) -> int | None:
        """Record ``key``; return the key of the first occurrence if it is a duplicate."""
        first = self._first.setdefault(digest, key)
        if first == key:
            return None
        self._repeats.setdefault(digest, [first]).append(key)
        return first

    def first(self, digest: int) -> int | None:
        return self._first.get(digest)

    def clusters(self) -> list[list[int]]:
        return sorted(self._repeats.values())


@dataclass
class Duplicates:
    exact: list[list[str]]  # clusters of origins with identical content
    near: list[list[str]]  # clusters of origins with Jaccard >= threshold (exact copies excluded)


def find_duplicates(records: Sequence[Record], threshold: float = DEFAULT_THRESHOLD) -> Duplicates:
    """Exact and near-duplicate clusters among ``records``, as origins."""
    exact, near = ExactIndex(), NearDuplicateIndex(threshold)
    for i, record in enumerate(records):
        if exact.add(content_hash(record_content(record)), i) is None:
            near.add(similarity_text(record), i)
    origins = [r.origin for r in records]
    return Duplicates(
        exact=[[origins[i] for i in c] for c in exact.clusters()],
        near=[[origins[i] for i in c] for c in near.clusters()],
    )


@dataclass
class Overlap:
    exact: list[tuple[str, str]]  # (eval origin, train origin) with identical content
    near: list[tuple[str, list[str]]]  # (eval origin, near train origins), exact matches excluded


def find_overlap(
    train: Sequence[Record], evaluation: Sequence[Record], threshold: float = DEFAULT_THRESHOLD
) -> Overlap:
    """Eval records that also appear in train, exactly or nearly."""
    first_train: dict[int, int] = {}
    near = NearDuplicateIndex(threshold)
    for i, record in enumerate(train):
        digest = content_hash(record_content(record))
        if first_train.setdefault(digest, i) == i:
            near.add(similarity_text(record), i, source=0)
    exact: list[tuple[str, str]] = []
    for j, record in enumerate(evaluation):
        match = first_train.get(content_hash(record_content(record)))
        if match is not None:
            exact.append((record.origin, train[match].origin))
        else:
            near.add(similarity_text(record), j, source=1)
    near_matches = [
        (evaluation[j].origin, [train[i].origin for i in matched]) for j, matched in near.cross_matches().items()
    ]
    return Overlap(exact, near_matches)
