"""The grain pipeline: documents -> shard -> shuffle -> repeat -> tokenize -> pack -> batch.

Packing is concatenate-then-split (grain's `ConcatThenSplitIterDataset`): documents, each followed by `</s>`,
are laid end to end and cut every `seq_len` tokens, so no token is dropped and there is padding only at the
very end of a finite run. A row therefore holds the tail of one document, whole documents, and the head of
another; `segment_ids` number those pieces 1, 2, ... within the row (0 marks padding) and `positions`
count from 0 at the start of each piece. Models that must not attend across documents mask with
`segment_ids[:, :, None] == segment_ids[:, None, :]`; a causal LM that ignores them sees a plain token stream.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, Mapping

import grain
import numpy as np
import sentencepiece as spm

from train.data import denoising as denoising_lib
from train.data import sources
from train.data import tokenizer as tokenizers

# Prefetch a little ahead in two threads: enough to hide tokenization, small enough for a 2-core machine.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=32)


class _Tokenize:
    """Document text -> {"inputs": [num_tokens] int32}, ending with `</s>` when the model has one."""

    def __init__(self, processor: spm.SentencePieceProcessor):
        self._processor = processor
        self._eos = [processor.eos_id()] if processor.eos_id() >= 0 else []

    def __call__(self, text: str) -> dict[str, np.ndarray]:
        return {"inputs": np.asarray(self._processor.encode(text) + self._eos, dtype=np.int32)}


class _TokenizeSentences(_Tokenize):
    """Document text -> {"inputs", "sentence_starts"}: each line encoded apart (a sentence, for sentence
    permutation), `sentence_starts` 1 on the first token of each line, then `</s>`."""

    def __call__(self, text: str) -> dict[str, np.ndarray]:
        ids, starts = [], []
        for line in text.split("\n"):
            piece = self._processor.encode(line)
            if piece:
                ids += piece
                starts += [1] + [0] * (len(piece) - 1)
        return {"inputs": np.asarray(ids + self._eos, dtype=np.int32),
                "sentence_starts": np.asarray(starts + [0] * len(self._eos), dtype=np.int32)}


def _to_json(value: Any) -> Any:
    """Tuples become lists, as `json.dumps` would make them, so a state equals its JSON round trip."""
    if isinstance(value, Mapping):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    """Lists back to tuples: grain states hold no lists, and the packer compares slices to `(-1, -1)`."""
    if isinstance(value, Mapping):
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return tuple(_from_json(v) for v in value)
    return value


class DataIterator(grain.DatasetIterator):
    """Iterator of packed batches with a JSON-serialisable state that resumes exactly.

    Each `next()` returns {"inputs", "segment_ids", "positions"}, each [batch_size, seq_len] int32 (with
    `denoising`: the encoder/decoder examples of `train.data.denoising`, each [batch_size, seq_len] int32).
    `get_state()` returns a dict of JSON types: {"pipeline": the arguments that fix the data order,
    "grain": grain's own state}. `set_state` refuses a state saved by a pipeline with other arguments.
    Being a `grain.DatasetIterator`, it also works with `grain.checkpoint.CheckpointSave/Restore`.
    """

    def __init__(self, parent: grain.DatasetIterator, pipeline: Mapping[str, Any]):
        super().__init__(parent)
        self._pipeline = dict(pipeline)

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._parent)
        if "input_ids" in batch:  # encoder/decoder examples (denoising): already named as model inputs
            return batch
        return {
            "inputs": batch["inputs"],
            "segment_ids": batch["inputs_segment_ids"],
            "positions": batch["inputs_positions"],
        }

    def get_state(self) -> dict[str, Any]:
        return {"pipeline": dict(self._pipeline), "grain": _to_json(self._parent.get_state())}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or set(state) != {"pipeline", "grain"}:
            raise ValueError("state: expected a dict with keys 'pipeline' and 'grain' from get_state()")
        differing = sorted(k for k in set(self._pipeline) | set(state["pipeline"])
                           if self._pipeline.get(k) != state["pipeline"].get(k))
        if differing:
            detail = ", ".join(
                f"{k}: saved {state['pipeline'].get(k)!r}, here {self._pipeline.get(k)!r}" for k in differing
            )
            raise ValueError(f"state: saved by a pipeline with other arguments ({detail})")
        self._parent.set_state(_from_json(state["grain"]))


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an int >= {minimum}")


def make_dataset(
    source: str | sources.TextSource = "kjv",
    *,
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    split: str | None = None,
    tokenizer: str | spm.SentencePieceProcessor | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_epochs: int | None = None,
    data_dir: str | None = None,
    cache_dir: str | None = None,
    denoising: Mapping[str, Any] | denoising_lib.DenoisingOptions | None = None,
) -> DataIterator:
    """Packed, shuffled, sharded batches of token ids from a text corpus.

    Documents are split among processes first (process `shard_index` takes documents `shard_index`,
    `shard_index + shard_count`, ...; disjoint and together complete), then shuffled with `seed`, freshly
    each epoch, then tokenized and packed (see the module docstring). The order depends only on the
    arguments, never on timing or thread count.

    Args:
      source: a `TextSource` from `open_source`, or a source string for it ("kjv", a path, a TFDS name).
      seq_len: tokens per row.
      batch_size: rows per batch *on this process* (the global batch is `batch_size * shard_count`).
      seed: shuffle seed; the same seed gives the same batches.
      split: for a string `source`, the split to read (default "train"); for a `TextSource`, None or its
        own split.
      tokenizer: a SentencePiece processor or `.model` path; None builds (or loads from `cache_dir`) the
        default `build_tokenizer` model on the "train" split of the same dataset.
      shard_index, shard_count: this process's shard; default `jax.process_index()` / `process_count()`.
      num_epochs: passes over the shard; None repeats forever. A finite run ends with its last row and
        last batch zero-padded (`segment_ids` 0) so every batch has the same shape.
      data_dir: TFDS data directory for a string `source`.
      cache_dir: tokenizer cache for `tokenizer=None`.
      denoising: BART denoising examples instead of packed rows (`train.data.denoising.DenoisingOptions` or a
        dict of its fields): documents are tokenized line by line (a line is a sentence), packed into rows of
        `seq_len - 2` tokens, and each row becomes `<s> noised </s>` / `<s> row </s>` encoder/decoder sides of
        `seq_len` tokens, noised from `(seed, shard_index, example index)`.

    Returns:
      A `DataIterator` yielding {"inputs", "segment_ids", "positions"}, each [batch_size, seq_len] int32 (with
      `denoising`: {"input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask", "labels"}).
    """
    _check_int("seq_len", seq_len, 2)
    _check_int("batch_size", batch_size, 1)
    _check_int("seed", seed, 0)
    if denoising is not None:
        if not isinstance(denoising, denoising_lib.DenoisingOptions):
            try:
                denoising = denoising_lib.DenoisingOptions(**dict(denoising))
            except (TypeError, ValueError) as error:
                raise ValueError(f"denoising={denoising!r}: {error}") from None
        _check_int("seq_len", seq_len, 3)  # <s>, at least one token, </s>
    if num_epochs is not None:
        _check_int("num_epochs", num_epochs, 1)
    if shard_index is None or shard_count is None:
        import jax  # Only for the defaults: the pipeline itself never touches devices.

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    _check_int("shard_count", shard_count, 1)
    _check_int("shard_index", shard_index, 0)
    if shard_index >= shard_count:
        raise ValueError(f"shard_index={shard_index}: must be < shard_count={shard_count}")

    if isinstance(source, sources.TextSource):
        if split is not None and split != source.split:
            raise ValueError(f"split={split!r}: conflicts with the TextSource's split {source.split!r}")
    else:
        source = sources.open_source(source, split=split or "train", data_dir=data_dir)

    if tokenizer is None:
        train_split = source if source.split == "train" else sources.open_source(
            source.name, split="train", data_dir=source.data_dir, text_key=source.text_key
        )
        tokenizer = tokenizers.build_tokenizer(train_split, cache_dir=cache_dir)
    if isinstance(tokenizer, str):
        tokenizer = tokenizers.load_tokenizer(tokenizer)
    if not isinstance(tokenizer, (spm.SentencePieceProcessor, tokenizers.ByteProcessor)):
        raise ValueError(f"tokenizer={tokenizer!r}: expected a SentencePieceProcessor, a .model path, \"bytes\" "
                         "or None")

    documents = grain.MapDataset.source(source)[shard_index::shard_count]
    if len(documents) == 0:
        raise ValueError(
            f"shard_count={shard_count}: shard {shard_index} of {source.name} {source.split!r} "
            f"({len(source)} documents) is empty"
        )
    # Shuffle before repeat: grain then draws a new permutation for every epoch.
    tokenize = _Tokenize(tokenizer) if denoising is None else _TokenizeSentences(tokenizer)
    tokens = (
        documents.shuffle(seed=seed)
        .repeat(num_epochs)
        .map(tokenize)
        .to_iter_dataset(_READ_OPTIONS)
    )
    if denoising is None:
        rows = grain.experimental.ConcatThenSplitIterDataset(tokens, length_struct={"inputs": seq_len})
    else:
        rows = grain.experimental.ConcatThenSplitIterDataset(
            tokens, length_struct={"inputs": seq_len - 2, "sentence_starts": seq_len - 2})
        # The example counter is part of map_with_index's state: a resumed pipeline draws the same noise.
        rows = rows.map_with_index(denoising_lib.DenoisingTransform(denoising, length=seq_len, seed=seed,
                                                                    shard_index=shard_index))
    batches = rows.batch(
        batch_size, batch_fn=functools.partial(grain.experimental.batch_and_pad, batch_size=batch_size)
    )
    pipeline = {
        "source": source.name,
        "split": source.split,
        "text_key": source.text_key,
        "num_documents": len(source),
        "tokenizer": _fingerprint(tokenizer),
        "seq_len": int(seq_len),
        "batch_size": int(batch_size),
        "seed": int(seed),
        "shard_index": int(shard_index),
        "shard_count": int(shard_count),
        "num_epochs": num_epochs,
    }
    if denoising is not None:  # only then, so states saved before this option existed still restore
        pipeline["denoising"] = denoising.to_json()
    return DataIterator(iter(batches), pipeline)


def _fingerprint(processor: spm.SentencePieceProcessor) -> str:
    return hashlib.sha256(processor.serialized_model_proto()).hexdigest()[:16]


class ShardedBatches:
    """This process's rows of each global batch, read as fixed data shards whatever the process count.

    The corpus is cut into `num_shards` document shards (see `make_dataset`); each shard yields
    `global_batch_size // num_shards` rows per batch, and global batch k is shard 0's batch k, then shard 1's,
    and so on. A process owns a contiguous run of shards and returns their rows concatenated, in order, so
    the global batch (what the devices see once each process contributes its rows) depends only on
    `num_shards`: one process with two devices and two processes with one device each train on the same rows.

    `get_state()` holds the states of this process's shards, `{"num_shards": n, "shards": {"i": state}}`;
    `set_state` accepts any state with the same `num_shards` that contains this process's shards (a state
    gathered from every process, as the trainer checkpoints it, restores under any process count that
    divides `num_shards`).
    """

    def __init__(self, shards: Mapping[int, DataIterator], num_shards: int):
        self._shards = dict(sorted(shards.items()))
        self.num_shards = int(num_shards)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        parts = [next(it) for it in self._shards.values()]
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def get_state(self) -> dict[str, Any]:
        return {"num_shards": self.num_shards,
                "shards": {str(i): it.get_state() for i, it in self._shards.items()}}

    def set_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or "shards" not in state:
            # A checkpoint from before sharded batches: one pipeline's state, valid for a single shard.
            if self.num_shards != 1:
                raise ValueError(f"state: a single-shard data state cannot restore {self.num_shards} shards")
            state = {"num_shards": 1, "shards": {"0": state}}
        if state.get("num_shards") != self.num_shards:
            raise ValueError(f"state: saved with data.shards={state.get('num_shards')}, "
                             f"this run has {self.num_shards} (keep config.data.shards fixed to resume)")
        missing = [i for i in self._shards if str(i) not in state["shards"]]
        if missing:
            raise ValueError(f"state: holds no state for data shard(s) {missing} of this process")
        for i, it in self._shards.items():
            it.set_state(state["shards"][str(i)])


def make_sharded_dataset(
    source: str | sources.TextSource = "kjv",
    *,
    seq_len: int,
    global_batch_size: int,
    num_shards: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    **kwargs,
) -> ShardedBatches:
    """This process's part of each global batch of `global_batch_size` rows (see `ShardedBatches`).

    `num_shards` (default: the process count) must be a multiple of the process count and divide the global
    batch; process p reads shards `p * k ... (p + 1) * k - 1` with `k = num_shards // process_count`.
    `kwargs` go to `make_dataset` (seed, split, tokenizer, num_epochs, data_dir, cache_dir, denoising).
    Returns batches of `[global_batch_size // process_count, seq_len]` arrays.
    """
    if process_index is None or process_count is None:
        import jax  # Only for the defaults, as in make_dataset.

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    num_shards = process_count if num_shards in (None, 0) else num_shards
    _check_int("num_shards", num_shards, 1)
    _check_int("global_batch_size", global_batch_size, 1)
    if num_shards % process_count:
        raise ValueError(f"num_shards={num_shards}: must be a multiple of the {process_count} processes")
    if global_batch_size % num_shards:
        raise ValueError(f"num_shards={num_shards}: must divide the global batch size {global_batch_size}")
    if isinstance(source, str):
        source = sources.open_source(source, split=kwargs.pop("split", None) or "train",
                                     data_dir=kwargs.get("data_dir"))
    if isinstance(kwargs.get("tokenizer"), str):
        kwargs["tokenizer"] = tokenizers.load_tokenizer(kwargs["tokenizer"])
    per_process = num_shards // process_count
    first = process_index * per_process
    shards = {i: make_dataset(source, seq_len=seq_len, batch_size=global_batch_size // num_shards,
                              shard_index=i, shard_count=num_shards, **kwargs)
              for i in range(first, first + per_process)}
    return ShardedBatches(shards, num_shards)
