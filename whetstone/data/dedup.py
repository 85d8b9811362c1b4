"""Exact and near-duplicate detection, within a file and between train and eval.

Exact duplicates share a hash of the record's normalised content (Unicode NFC,
whitespace collapsed; case kept). Near duplicates are found with MinHash over
word 3-gram shingles (lower-cased, punctuation ignored) and LSH banding, so the cost grows with the number of
records, not with the number of pairs:

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
"""

from __future__ import annotations

import hashlib
import itertools
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
_BLOCK = 4096  # signatures per stored block
_BATCH_SHINGLES = 32768  # shingles hashed per numpy batch: (128, 32768) uint64 = 32 MB


def normalize(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, ends stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _turns(messages: Sequence[Message]) -> str:
    return "\x1e".join(f"{m.role}\x1f{normalize(m.content)}" for m in messages)


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
    return "\x1d".join(parts)


def content_hash(content: str) -> int:
    """A 64-bit hash of normalised content (blake2b, stable across processes)."""
    return int.from_bytes(hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def similarity_text(record: Record) -> str:
    """The words near-duplicate detection compares: all text, without roles or labels."""
    pieces = [record.text or ""]
    pieces += [m.content for m in (*record.messages, *record.chosen, *record.rejected, *record.completion)]
    return " ".join(pieces)


class _WordHashes(dict):
    """word -> CRC32, memoised: natural text repeats words, and a dict hit is
    several times cheaper than encoding and hashing the word again."""

    limit = 1_000_000  # distinct words kept; about 100 MB at most

    def __missing__(self, word: str) -> int:
        if len(self) >= self.limit:
            self.clear()
        value = self[word] = zlib.crc32(word.encode("utf-8", "surrogatepass"))
        return value


def words_of(text: str) -> list[str]:
    """Lower-cased, whitespace-separated words, ASCII punctuation removed.

    (``str.translate`` + ``split`` is twice as fast as a ``\\w+`` regex, and
    this runs on every record.) Scripts written without spaces, such as
    Chinese, come out as one word per phrase, so near-duplicate detection is
    coarse for them: only whole phrases match.
    """
    return text.lower().translate(_PUNCTUATION).split()


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
    source or ``cross_matches()`` between sources. Adding is batched: hashing a
    few hundred texts at a time amortises numpy's per-call overhead.
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
        self._blocks: list[np.ndarray] = []  # (_BLOCK, num_perm) uint16 each
        self._count = 0
        self.keys = array("q")
        self.sources = array("b")
        self._pending: list[list[int]] = []  # word hashes of texts not yet signed
        self._word_hashes = _WordHashes()
        self._pending_shingles = 0
        self._result: tuple[dict[int, int], dict[int, set[int]]] | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, text: str, key: int, source: int = 0) -> bool:
        """Index ``text``; False (and nothing indexed) when it has no words."""
        assert self._result is None, "NearDuplicateIndex is read-only once queried"
        words = words_of(text)
        if not words:
            return False
        hashes = list(map(self._word_hashes.__getitem__, words))
        if len(hashes) < SHINGLE:
            hashes += [0] * (SHINGLE - len(hashes))  # a short text is one shingle
        if self._pending_shingles + len(hashes) > _BATCH_SHINGLES:
            self._flush()
        self.keys.append(key)
        self.sources.append(source)
        self._pending.append(hashes)
        self._pending_shingles += len(hashes)
        return True

    def _flush(self) -> None:
        if not self._pending:
            return
        lengths = np.array([len(p) for p in self._pending])
        word_hashes = np.fromiter(
            itertools.chain.from_iterable(self._pending), dtype=np.uint64, count=int(lengths.sum())
        )
        shingles, offsets = shingle_hashes(word_hashes, lengths)
        if len(shingles) > _BATCH_SHINGLES:  # one long document: slices keep (P, S) small
            parts = [
                self._minhash(shingles[i : i + _BATCH_SHINGLES], np.array([0]))
                for i in range(0, len(shingles), _BATCH_SHINGLES)
            ]
            signatures = np.minimum.reduce(parts)
        else:
            signatures = self._minhash(shingles, offsets)
        self._store((signatures & np.uint64(0xFFFF)).astype(np.uint16))
        self._pending, self._pending_shingles = [], 0

    def _minhash(self, shingles: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(texts, P) minima of P multiply-shift hashes over each text's shingles."""
        values = self._a[:, None] * shingles[None, :]  # (P, S); in place below to spare copies
        values += self._b[:, None]
        values >>= np.uint64(32)
        return np.minimum.reduceat(values, offsets, axis=1).T

    def _store(self, signatures: np.ndarray) -> None:
        done = 0
        while done < len(signatures):
            offset = self._count % _BLOCK
            if offset == 0:
                self._blocks.append(np.zeros((_BLOCK, self.num_perm), dtype=np.uint16))
            take = min(len(signatures) - done, _BLOCK - offset)
            self._blocks[-1][offset : offset + take] = signatures[done : done + take]
            self._count += take
            done += take

    def _signature(self, index: int) -> np.ndarray:
        return self._blocks[index // _BLOCK][index % _BLOCK]

    def _band_keys(self, band: int) -> np.ndarray:
        """One uint64 bucket key per text for ``band`` (a hash of its ``rows`` values)."""
        multipliers = (np.arange(1, self.rows + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
        cols = slice(band * self.rows, (band + 1) * self.rows)
        keys = [(block[:, cols].astype(np.uint64) * multipliers).sum(axis=1, dtype=np.uint64) for block in self._blocks]
        return np.concatenate(keys)[: self._count] if keys else np.zeros(0, dtype=np.uint64)

    def _resolve(self) -> tuple[dict[int, int], dict[int, set[int]]]:
        """Union-find parents of same-source duplicates, and cross-source matches."""
        if self._result is not None:
            return self._result
        self._flush()
        parent: dict[int, int] = {}

        def find(i: int) -> int:
            return _find(parent, i)

        sources = np.frombuffer(self.sources, dtype=np.int8) if len(self.sources) else np.zeros(0, np.int8)
        cross: dict[int, set[int]] = {}
        for band in range(self.bands):
            keys = self._band_keys(band)
            order = np.argsort(keys, kind="stable")
            ordered = keys[order]
            edges = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
            starts = np.concatenate(([0], edges))
            ends = np.concatenate((edges, [len(ordered)]))
            for start, end in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
                members = np.sort(order[start:end])
                self._verify_bucket(members, sources[members], find, parent, cross)
        self._result = (parent, cross)
        return self._result

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
