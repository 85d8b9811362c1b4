"""Sequence packing for SFT and DPO: the examples of a micro-batch share rows instead of padding.

A micro-batch of short and long examples padded to the longest wastes most of
its compute on padding. Packing concatenates whole examples into rows of at most
data.max_length tokens (as few rows as first-fit decreasing finds, then balanced
to about equal length; an example is never split), so a micro-batch of 8 short
examples may become 2 or 3 dense rows.

Packing changes only the layout, never what is computed:

- position_ids restart at 0 for each example (rotary embeddings see the same
  positions as unpacked);
- attention is confined to each example. transformers (masking_utils:
  find_packed_sequence_indices) builds that block-diagonal causal mask itself
  when it gets position_ids and no attention_mask, for sdpa and eager; so a
  packed batch carries no 2D mask into the model (models/forward.py leaves it
  out). flash_attention_2 reads packing from position_ids only when the batch
  is one row (modeling_flash_attention_utils._is_packed_sequence, then its
  varlen kernel over the examples' spans), so with flash_attention_2 a packed
  micro-batch is ONE row of all its examples back to back, unpadded
  (row_capacity: no limit). Shared prefixes need a 4D mask, which flash
  cannot read, so they stay with sdpa and eager;
- the first token of each example gets the label -100, as it has in its own
  row: it must not be predicted from the previous example's last token;
- `example_ids` says which example of the micro-batch each token belongs to, so
  per-example (per-task) losses stay right.

The step's examples, its supervised-token count and so the loss normalisation
are those of the unpacked batch: a packed run follows the unpacked trajectory up
to float summation order. Dropout is the exception: its masks follow the tensor
layout, so packed and unpacked runs agree exactly only with dropout 0.
"""

from __future__ import annotations

import torch

from whetstone.data.batches import with_distill_mask
from whetstone.data.render import IGNORE, Rendered


def row_capacity(max_length: int, attn_implementation: str) -> int | None:
    """Tokens a packed row may hold: data.max_length, or None (no limit: the micro-batch in one row) for flash.

    flash_attention_2 cannot take the block-diagonal mask sdpa and eager build from several rows' position ids;
    it runs its varlen kernel over the examples of a batch of ONE row, split where the position ids restart.
    That row is the micro-batch's tokens exactly, so it costs no padding at all, and as many tokens as the rows.
    """
    return None if attn_implementation == "flash_attention_2" else max_length


def pack_rows(lengths: list[int], capacity: int | None) -> list[list[int]]:
    """Indices of the examples in each row, each row holding at most `capacity` tokens; an example is never split.

    capacity None (row_capacity, for flash_attention_2): one row of every example, in the order given.

    First-fit decreasing finds how few rows the examples fit in, k. Its rows are as full as it can make
    them, and the last one is often nearly empty, yet the batch pads every row to the longest. So the
    examples are then dealt over k rows, longest first, each to the row with the fewest tokens so far
    (longest-processing-time order): the rows come out about equally long, and the padding goes. Should
    that overfill a row, the first-fit rows are kept. An example longer than `capacity` (not produced by
    data/render.py, which truncates) gets a row of its own. Deterministic: ties go to the lower index.
    """
    if capacity is None:
        return [list(range(len(lengths)))]
    first_fit = _first_fit_decreasing(lengths, capacity)
    rows: list[list[int]] = [[] for _ in first_fit]
    filled = [0] * len(first_fit)
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = min(range(len(rows)), key=lambda r: filled[r])
        rows[row].append(index)
        filled[row] += lengths[index]
    if any(total > capacity and len(row) > 1 for total, row in zip(filled, rows)):
        return first_fit
    return rows


def _first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for row, free in enumerate(room):
            if lengths[index] <= free:
                rows[row].append(index)
                room[row] -= lengths[index]
                break
        else:
            rows.append([index])
            room.append(capacity - lengths[index])
    return rows


def collate_packed_shared(examples: list[Rendered], pad_id: int, max_length: int) -> dict[str, torch.Tensor]:
    """collate_packed with the prefix each row's examples share read once (objective.share_prompt for SFT)."""
    batch = pack_shared_prefix_rows([(e.input_ids, e.labels) for e in examples], pad_id, max_length)
    if any(e.distill for e in examples):  # "distill" follows each token's example, wherever the layout put it
        flags = torch.tensor([e.distill for e in examples])  # (B,)
        batch["distill"] = (batch["example_ids"] >= 0) & flags[batch["example_ids"].clamp(min=0)]  # (R, T)
    return batch


def collate_packed(examples: list[Rendered], pad_id: int, max_length: int | None) -> dict[str, torch.Tensor]:
    """Pack `examples` into rows of at most `max_length` tokens (None: one row), right-padded to the longest row.

    Besides input_ids, labels and attention_mask (1 on real tokens: the loop counts real tokens with it),
    the batch holds position_ids and example_ids (-1 on padding), each (R, T).
    """
    batch, rows = pack_sequences([(e.input_ids, e.labels) for e in examples], pad_id, max_length)
    return with_distill_mask(batch, examples, rows)


def pack_sequences(sequences: list[tuple[list[int], list[int]]], pad_id: int,
                   max_length: int | None) -> tuple[dict[str, torch.Tensor], list[list[int]]]:
    """(input_ids, labels) sequences packed into rows (collate_packed's batch), and which sequences each row holds.

    example_ids numbers the sequences in the order given.
    """
    lengths = [len(ids) for ids, _ in sequences]
    rows = pack_rows(lengths, max_length)
    length = max(sum(lengths[i] for i in row) for row in rows)
    shape = (len(rows), length)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)  # (R, T)
    labels = torch.full(shape, IGNORE, dtype=torch.long)  # (R, T)
    attention_mask = torch.zeros(shape, dtype=torch.long)  # (R, T)
    position_ids = torch.zeros(shape, dtype=torch.long)  # (R, T)
    example_ids = torch.full(shape, -1, dtype=torch.long)  # (R, T)
    for r, members in enumerate(rows):
        start = 0
        for index in members:
            n = lengths[index]
            span = slice(start, start + n)
            input_ids[r, span] = torch.tensor(sequences[index][0])
            labels[r, span] = torch.tensor(sequences[index][1])
            labels[r, start] = IGNORE  # would be predicted from the previous sequence's last token
            attention_mask[r, span] = 1
            position_ids[r, span] = torch.arange(n)
            example_ids[r, span] = index
            start += n
        # Padding counts from 0 as well: transformers then sees it as one more sequence, which
        # attends only to itself, so real tokens never attend to it.
        position_ids[r, start:] = torch.arange(length - start)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
             "position_ids": position_ids, "example_ids": example_ids}
    return batch, rows


Sequence = tuple[list[int], list[int], int]  # input ids, labels, and the sequence's number in the batch


def pack_shared_prompts(pairs: list[tuple[list[int], list[int], list[int], list[int]]], pad_id: int,
                        max_length: int) -> dict[str, torch.Tensor]:
    """DPO pairs (chosen ids, chosen labels, rejected ids, rejected labels), packed with each pair's common prompt
    read once: a unit of [prompt, chosen's rest, rejected's rest] (objective.share_prompt). Chosen i is sequence
    i and rejected i is sequence B + i, as collate_pairs numbers its rows."""
    units = [_shared_unit([(a, a_labels, i), (b, b_labels, len(pairs) + i)])
             for i, (a, a_labels, b, b_labels) in enumerate(pairs)]
    return layout_shared_prefixes(units, pack_rows([len(u["ids"]) for u in units], max_length), pad_id)


def pack_shared_prefix_rows(sequences: list[tuple[list[int], list[int]]], pad_id: int,
                            max_length: int) -> dict[str, torch.Tensor]:
    """SFT examples packed into rows as pack_sequences packs them, each row then reading the prefix its examples
    share once (a chat template's system prompt, say): a unit of [prefix, rest 1, rest 2, ...] per row."""
    rows = pack_rows([len(ids) for ids, _ in sequences], max_length)
    units = [_shared_unit([(*sequences[i], i) for i in row]) for row in rows]
    return layout_shared_prefixes(units, [[u] for u in range(len(units))], pad_id)


def layout_shared_prefixes(units: list[dict], rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Lay out units of sequences that share a prefix (_shared_unit), each unit's prefix once, the units of rows[r]
    in row r.

    A unit is [prefix, rest of sequence 1, rest of sequence 2, ...]. The prefix is the sequences' common start,
    stopped before the first supervised token of any of them, so every supervised token sits in its own
    sequence's rest. Each rest keeps the position ids it has in its own sequence and attends to the prefix and
    to itself, never to another rest, so every token sees what it sees alone. Besides pack_sequences' keys:

    - segment_ids and prefix_ids (R, T): each prefix and each rest is a segment; prefix_ids holds the segment
      of the prefix a position branches from (its own, on a prefix); -1 on padding. models/forward.py builds
      the attention mask from them (shared_prefix_mask);
    - predict_from (R, T): the column whose hidden state predicts the token: the previous column, except for
      a rest's first token, which the prefix's last token predicts;
    - example_ids: each sequence's number, on its rest (a prefix carries the unit's first sequence's);
    - sequence_tokens: the tokens of the sequences unshared (a prefix once per sequence), so that token counts
      mean the same with and without sharing.
    """
    lengths = [len(u["ids"]) for u in units]
    shape = (len(rows), max(sum(lengths[u] for u in row) for row in rows))
    batch = {"input_ids": torch.full(shape, pad_id, dtype=torch.long), "labels": torch.full(shape, IGNORE),
             "attention_mask": torch.zeros(shape, dtype=torch.long), "position_ids": torch.zeros(shape, dtype=torch.long),
             "example_ids": torch.full(shape, -1), "segment_ids": torch.full(shape, -1),
             "prefix_ids": torch.full(shape, -1), "predict_from": torch.full(shape, -1)}  # each (R, T)
    segments = 0
    for r, members in enumerate(rows):
        start = 0
        for index in members:
            unit, span = units[index], slice(start, start + lengths[index])
            for key, source in (("input_ids", "ids"), ("labels", "labels"), ("position_ids", "positions"),
                                ("example_ids", "owners")):
                batch[key][r, span] = torch.tensor(unit[source])
            batch["labels"][r, start] = IGNORE  # would be predicted from the previous unit's last token
            batch["attention_mask"][r, span] = 1
            batch["segment_ids"][r, span] = torch.tensor(unit["segments"]) + segments
            batch["prefix_ids"][r, span] = segments
            batch["predict_from"][r, span] = torch.tensor(unit["predict"]) + start
            segments += unit["sequences"] + 1
            start += lengths[index]
    batch["sequence_tokens"] = torch.tensor(sum(unit["sequence_tokens"] for unit in units))
    return batch


def _common_prefix(unit: list[Sequence]) -> int:
    """How many leading tokens every sequence of the unit shares, stopped before any supervised token."""
    limit = min(min(_first_supervised(labels), len(ids)) for ids, labels, _ in unit)
    k = 0
    while k < limit and all(ids[k] == unit[0][0][k] for ids, _, _ in unit):
        k += 1
    return k


def _shared_unit(unit: list[Sequence]) -> dict:
    """One unit's tokens laid out as [prefix, rest 1, rest 2, ...]; segments 0 (prefix), 1, 2, ...; `predict`
    relative to the unit's start; how many sequences it holds, and their tokens unshared."""
    k = _common_prefix(unit)
    first_ids, first_labels, first_owner = unit[0]
    out = {"ids": list(first_ids[:k]), "labels": list(first_labels[:k]), "positions": list(range(k)),
           "segments": [0] * k, "owners": [first_owner] * k, "predict": list(range(-1, k - 1))}
    for branch, (ids, labels, owner) in enumerate(unit, start=1):
        rest, begin = len(ids) - k, len(out["ids"])
        rest_labels = list(labels[k:])
        if rest and k == 0:
            rest_labels[0] = IGNORE  # the sequence's first token: nothing before it predicts it
        out["ids"] += ids[k:]
        out["labels"] += rest_labels
        out["positions"] += range(k, len(ids))
        out["segments"] += [branch] * rest
        out["owners"] += [owner] * rest
        out["predict"] += ([k - 1] + list(range(begin, begin + rest - 1)))[:rest]
    out["sequences"], out["sequence_tokens"] = len(unit), sum(len(ids) for ids, _, _ in unit)
    return out


def shared_prefix_mask(segment_ids: torch.Tensor, prefix_ids: torch.Tensor) -> torch.Tensor:
    """(R, 1, T, T) bool, True where a query may attend a key: causal, within its own segment or its prefix.

    Padding (segment -1) attends to itself only, so no query row is empty.
    """
    query, key = segment_ids[:, :, None], segment_ids[:, None, :]  # (R, T, 1), (R, 1, T)
    length = segment_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()  # (T, T)
    same = (key == query) | (key == prefix_ids[:, :, None])  # own segment, or the prefix it branches from
    allowed = causal & same & (query >= 0) & (key >= 0)
    allowed |= torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    return allowed[:, None]


def _first_supervised(labels: list[int]) -> int:
    """The first position whose label is learnt; a label at position 0 never is (nothing predicts it)."""
    return next((i for i, label in enumerate(labels) if i and label != IGNORE), len(labels))


def token_owners(batch: dict[str, torch.Tensor], keep: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(which sequence each supervised token belongs to (N,), row-major over `keep` (R, T-1); the sequence count).

    A packed batch numbers its sequences by example_ids; otherwise each row is one sequence.
    """
    if "example_ids" in batch:
        return batch["example_ids"][:, 1:][keep], int(batch["example_ids"].max()) + 1
    return keep.nonzero()[:, 0], int(batch["labels"].shape[0])


def sequence_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Real tokens of the batch's sequences: its non-padding positions, or with shared prompts, the tokens the
    sequences hold unshared (a pair's prompt counts twice, as in its two sequences, though read once)."""
    if "sequence_tokens" in batch:
        return int(batch["sequence_tokens"])
    return int(batch["attention_mask"].sum())


def padding_fraction(batches: list[dict[str, torch.Tensor]]) -> float:
    """Share of the positions in `batches` that are padding, i.e. compute spent on nothing."""
    total = sum(b["attention_mask"].numel() for b in batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    return 1.0 - real / max(total, 1)
