"""BART's denoising examples: sentence permutation then text infilling, built on the host from packed rows.

The BART paper's best setting (Lewis et al. 2019, section 5): the sentences of each document are shuffled, then
spans of tokens whose lengths are drawn from Poisson(lambda=3) are each replaced by one `[MASK]` until 30% of the
tokens are masked; a span of length 0 inserts a `[MASK]` without removing anything. The encoder reads the noised
text, the decoder is trained to write the original (fairseq `DenoisingDataset` with `replace_length=1`,
`mask_length="span-poisson"`, `permute_sentences=1.0`, `insert=0`, `rotate=0`).

Where this differs from fairseq, on purpose:
  - spans count tokens, not whole words (fairseq counts BPE word starts), and never overlap: the masked count is
    exactly `round(mask_ratio * tokens)`, where fairseq's overlapping spans mask a little less than asked;
  - a zero-length span inserts its `[MASK]` at a uniformly random place among the other spans and tokens (fairseq
    draws the insertions separately afterwards);
  - sentences are the lines of a document (the embedded corpus has one verse per line) and are shuffled within
    their document piece of the packed row; the `</s>` ending a document stays where it is.

Each example is a pure function of its packed row and `(seed, shard index, example index)` (a NumPy
`SeedSequence` of the three), so the same arguments give the same batches and a resumed pipeline (whose state
holds the example counter) draws exactly the noise an uninterrupted one draws.

An example of `length` tokens per side:
  input_ids            `<s> noised </s> <pad>...`       (the noised text is cut to `length - 2` in the rare case
                                                         that insertions make it longer than the original)
  attention_mask       1 on the encoder tokens
  labels               `<s> original </s> -100...`       (HF convention: -100 is ignored)
  decoder_input_ids    `shift_tokens_right(labels, <pad>, decoder_start_token_id)`, as HF BART builds them
  decoder_attention_mask  1 where labels are not -100
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from train.data.tokenizer import BOS_ID, EOS_ID, PAD_ID

MASK_ID = 6  # `[MASK]`, a control symbol of every tokenizer in train.data: `encode` never produces it
IGNORE_INDEX = -100
KEYS = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask", "labels")


@dataclasses.dataclass(frozen=True)
class DenoisingOptions:
    """The noising of `train.objectives`' `denoising` objective (its options, checked there and here)."""

    mask_ratio: float = 0.3
    poisson_lambda: float = 3.0
    permute_sentence_ratio: float = 1.0
    decoder_start_token_id: int = EOS_ID  # BART starts decoding with `</s>`

    def __post_init__(self):
        for name, low, high in (("mask_ratio", 0.0, 1.0), ("permute_sentence_ratio", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"{name}={value!r}: expected a number in [{low}, {high}]")
        lam = self.poisson_lambda
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 < lam <= 64 or not math.isfinite(lam):
            raise ValueError(f"poisson_lambda={lam!r}: expected a number in (0, 64]")
        start = self.decoder_start_token_id
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"decoder_start_token_id={start!r}: expected an int >= 0")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def example_rng(seed: int, shard_index: int, index: int) -> np.random.Generator:
    """The generator of example `index` of data shard `shard_index` under `seed`."""
    return np.random.default_rng([int(seed), int(shard_index), int(index)])


def shift_tokens_right(labels: np.ndarray, pad_token_id: int, decoder_start_token_id: int) -> np.ndarray:
    """`[start, l0, ..., l_{T-2}]` with -100 -> pad, as HF BART's `shift_tokens_right` (`[..., length]`)."""
    shifted = np.empty_like(labels)
    shifted[..., 0] = decoder_start_token_id
    shifted[..., 1:] = labels[..., :-1]
    return np.where(shifted == IGNORE_INDEX, pad_token_id, shifted)


def sentence_pieces(starts: np.ndarray, segments: np.ndarray, tokens: np.ndarray,
                    pinned_id: int = EOS_ID) -> list[tuple[int, int, int, bool]]:
    """`(begin, end, block, pinned)` per sentence piece of a packed row: a piece begins at a sentence start, a new
    document piece (segment), and at and after each `pinned_id` token, which is a piece of its own that never moves.
    `block` numbers the runs of movable pieces that may be shuffled among themselves (one document piece, between
    pinned tokens)."""
    n = len(tokens)
    if n == 0:
        return []
    pinned = tokens == pinned_id
    begins = starts.astype(bool).copy()
    begins[0] = True
    begins[1:] |= (segments[1:] != segments[:-1]) | pinned[:-1]
    begins |= pinned
    edges = list(np.flatnonzero(begins)) + [n]
    pieces, block = [], 0
    for begin, end in zip(edges[:-1], edges[1:]):
        is_pinned = bool(pinned[begin])
        if is_pinned or (pieces and segments[begin] != segments[pieces[-1][0]]):
            block += 1
        pieces.append((int(begin), int(end), block, is_pinned))
        if is_pinned:
            block += 1
    return pieces


def permute_sentences(tokens: np.ndarray, starts: np.ndarray, segments: np.ndarray, rng: np.random.Generator,
                      ratio: float = 1.0) -> np.ndarray:
    """Shuffles the sentences of each block (see `sentence_pieces`): as fairseq, `round(ratio * count)` of a block's
    sentences are picked and shuffled among their own places; the rest stay. Returns the permuted `[n]` tokens."""
    pieces = sentence_pieces(starts, segments, tokens)
    if ratio <= 0 or len(pieces) < 2:
        return tokens.copy()
    order = list(range(len(pieces)))
    by_block: dict[int, list[int]] = {}
    for i, (_, _, block, pinned) in enumerate(pieces):
        if not pinned:
            by_block.setdefault(block, []).append(i)
    for members in by_block.values():
        count = len(members)
        picked = int(round(ratio * count))
        if count < 2 or picked < 2:
            continue
        chosen = rng.permutation(count)[:picked]
        targets = chosen[rng.permutation(picked)]
        for place, source in zip(chosen, targets):
            order[members[place]] = members[source]
    return np.concatenate([tokens[pieces[i][0]:pieces[i][1]] for i in order]).astype(tokens.dtype)


def span_lengths(rng: np.random.Generator, num_to_mask: int, poisson_lambda: float) -> np.ndarray:
    """Poisson(`poisson_lambda`) span lengths drawn until they cover `num_to_mask` tokens, the last one cut so they
    sum to exactly `num_to_mask` (fairseq's recipe); zeros (insertions) included. `[spans]` int64."""
    if num_to_mask <= 0:
        return np.zeros((0,), np.int64)
    lengths = rng.poisson(poisson_lambda, size=num_to_mask)
    while lengths.sum() < num_to_mask:
        lengths = np.concatenate([lengths, rng.poisson(poisson_lambda, size=num_to_mask)])
    total = np.cumsum(lengths)
    last = int(np.searchsorted(total, num_to_mask))  # first span reaching the budget
    lengths = lengths[:last + 1].copy()
    lengths[last] = num_to_mask - (total[last - 1] if last else 0)
    return lengths.astype(np.int64)


def infill(tokens: np.ndarray, rng: np.random.Generator, *, mask_ratio: float = 0.3, poisson_lambda: float = 3.0,
           mask_id: int = MASK_ID) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Text infilling of `tokens [n]`: spans of `span_lengths` placed uniformly at random without overlap (every
    arrangement of the spans among the kept tokens is equally likely), each replaced by one `mask_id`.

    Returns `(noised [n - masked + spans], lengths [spans] in text order, masked [n] bool)`.
    """
    n = len(tokens)
    lengths = span_lengths(rng, int(round(mask_ratio * n)), poisson_lambda)
    k, masked_count = len(lengths), int(lengths.sum())
    items = n - masked_count + k  # kept tokens and spans, in text order
    is_span = np.zeros(items, bool)
    is_span[rng.choice(items, size=k, replace=False)] = True
    used = np.ones(items, np.int64)
    used[is_span] = lengths
    begin = np.cumsum(used) - used  # where each item starts in the original text
    noised = np.full(items, mask_id, tokens.dtype)
    noised[~is_span] = tokens[begin[~is_span]]
    covered = np.zeros(n + 1, np.int64)  # +1 at a span's start, -1 after its end
    np.add.at(covered, begin[is_span], 1)
    np.add.at(covered, begin[is_span] + lengths, -1)
    return noised, lengths, np.cumsum(covered[:n]) > 0


def denoising_example(row: Mapping[str, np.ndarray], rng: np.random.Generator, options: DenoisingOptions,
                      length: int) -> dict[str, np.ndarray]:
    """One encoder/decoder example (see the module docstring) from a packed row of `length - 2` tokens:
    `{"inputs", "inputs_segment_ids", "sentence_starts"}` (segment 0 is padding, only at the end of a row)."""
    valid = row["inputs_segment_ids"] > 0
    n = int(valid.sum())
    tokens = row["inputs"][:n]
    out = {k: np.zeros((length,), np.int32) for k in KEYS}
    out["labels"][:] = IGNORE_INDEX
    if n == 0:  # an all-padding row at the end of a finite run: nothing to learn
        out["decoder_input_ids"][:] = shift_tokens_right(out["labels"], PAD_ID, options.decoder_start_token_id)
        return out
    permuted = permute_sentences(tokens, row["sentence_starts"][:n], row["inputs_segment_ids"][:n], rng,
                                 options.permute_sentence_ratio)
    noised, _, _ = infill(permuted, rng, mask_ratio=options.mask_ratio, poisson_lambda=options.poisson_lambda)
    noised = noised[:length - 2]
    source = np.concatenate([[BOS_ID], noised, [EOS_ID]])
    out["input_ids"][:len(source)] = source
    out["attention_mask"][:len(source)] = 1
    out["labels"][:n + 2] = np.concatenate([[BOS_ID], tokens, [EOS_ID]])
    out["decoder_attention_mask"][:n + 2] = 1
    out["decoder_input_ids"][:] = shift_tokens_right(out["labels"], PAD_ID, options.decoder_start_token_id)
    return out


class DenoisingTransform:
    """`(example index, packed row) -> example`, for grain's `map_with_index` (whose counter is in its state)."""

    def __init__(self, options: DenoisingOptions, *, length: int, seed: int, shard_index: int):
        self.options, self.length, self.seed, self.shard_index = options, length, seed, shard_index

    def __call__(self, index: int, row: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return denoising_example(row, example_rng(self.seed, self.shard_index, index), self.options, self.length)
