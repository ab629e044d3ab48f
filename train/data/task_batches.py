"""Batches of task features padded to a few static lengths, resumable exactly (a grain pipeline).

    batches = TaskBatches(split.features, batch_size=32, seed=0, buckets=(32, 64, 128), token_keys=...,
                          pad_values=..., identity={...})
    batch = next(batches)        # {"input_ids": [32, 64], "attention_mask": ..., "labels": [32], ...}
    state = batches.get_state()  # JSON; set_state(state) continues with exactly the next batch

Every process holds the whole (small) file's features and draws the same global batches; it returns its own
rows of each (`process_index` of `process_count` equal parts), so the data does not depend on how many processes
share the work and a checkpoint's data state restores under any process count.

Padding: a batch is padded to the smallest bucket length that holds its longest feature, so a run compiles one
step per bucket at most (not one per length). `token_keys` are the arrays with a length axis (their last);
each is padded with its `pad_values` entry (the tokenizer's pad id, 0 for masks and token types, -100 for token
labels).
"""

from __future__ import annotations

import bisect
from typing import Any, Iterator, Mapping, Sequence

import grain
import numpy as np

from train.data.pipeline import DataIterator


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= `length` (buckets ascending; a feature is never longer than the last)."""
    index = bisect.bisect_left(buckets, length)
    if index == len(buckets):
        raise ValueError(f"a feature of {length} tokens is longer than the longest bucket {buckets[-1]}")
    return buckets[index]


class Collate:
    """Features (dicts of unpadded arrays) -> one batch dict, token arrays padded to the batch's bucket."""

    def __init__(self, buckets: Sequence[int], token_keys: Sequence[str], pad_values: Mapping[str, int],
                 fixed_lengths: Mapping[str, int] | None = None):
        """`fixed_lengths`: token keys padded to a length of their own instead of the batch's bucket (a seq2seq
        target, read by the decoder)."""
        self.buckets = tuple(buckets)
        self.token_keys = tuple(token_keys)
        self.pad_values = dict(pad_values)
        self.fixed_lengths = dict(fixed_lengths or {})

    def __call__(self, features: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        bucket = bucket_length(max(f["input_ids"].shape[-1] for f in features), self.buckets)
        batch = {}
        for key in features[0]:
            if key in self.token_keys:
                length = self.fixed_lengths.get(key, bucket)
                rows = [np.pad(f[key], [(0, 0)] * (f[key].ndim - 1) + [(0, length - f[key].shape[-1])],
                               constant_values=self.pad_values.get(key, 0)) for f in features]
            else:
                rows = [f[key] for f in features]
            batch[key] = np.stack(rows)
        return batch


def _rows_of_process(batch: Mapping[str, np.ndarray], process_index: int, process_count: int) -> dict:
    rows = len(next(iter(batch.values()))) // process_count
    return {k: v[process_index * rows:(process_index + 1) * rows] for k, v in batch.items()}


class TaskBatches(DataIterator):
    """Endless shuffled global batches of `features` (a new order every epoch), this process's rows of each.

    `identity` fixes what the batches are (file digest, kind, sizes, seed, ...): `set_state` refuses a state saved
    by batches of another identity, naming what differs.
    """

    def __init__(self, features: Sequence[Mapping[str, np.ndarray]], *, batch_size: int, seed: int,
                 collate: Collate, identity: Mapping[str, Any], process_index: int = 0, process_count: int = 1):
        if batch_size % process_count:
            raise ValueError(f"config.batch_size={batch_size}: must be a multiple of the {process_count} processes")
        # Random access all the way down: grain's state is then just the index of the next batch.
        dataset = grain.MapDataset.source(list(features)).shuffle(seed=seed).repeat(None).batch(
            batch_size, batch_fn=collate)
        super().__init__(iter(dataset), {**identity, "batch_size": int(batch_size), "seed": int(seed),
                                         "buckets": list(collate.buckets)})
        self._process = (process_index, process_count)

    def __next__(self) -> dict[str, np.ndarray]:
        return _rows_of_process(next(self._parent), *self._process)


def eval_batches(features: Sequence[Mapping[str, np.ndarray]], *, batch_size: int, collate: Collate,
                 process_index: int = 0, process_count: int = 1) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """`(this process's rows of a global batch, how many of the global batch's rows are real)` over `features`
    once, in order. The last batch is filled up with copies of its last feature (static shapes); their outputs
    are to be dropped."""
    for start in range(0, len(features), batch_size):
        part = list(features[start:start + batch_size])
        real = len(part)
        part += [part[-1]] * (batch_size - real)
        yield _rows_of_process(collate(part), process_index, process_count), real
