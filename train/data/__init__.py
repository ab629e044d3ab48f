"""Text data for training: an embedded corpus, TFDS `array_record` datasets, SentencePiece, grain pipelines.

Quick start (the embedded King James Bible, a tokenizer trained on first use, packed batches):

    from train import data
    batches = data.make_dataset("kjv", seq_len=128, batch_size=8, seed=0)
    batch = next(batches)         # {"inputs", "segment_ids", "positions"}: [8, 128] int32 each
    state = batches.get_state()   # a JSON-serialisable dict; checkpoint it with the model
    ...
    batches = data.make_dataset("kjv", seq_len=128, batch_size=8, seed=0)
    batches.set_state(state)      # continues with exactly the batch that would have come next

Sources (`open_source`), all read through `tfds.data_source` (random access, no TensorFlow):
  - "kjv" / "embedded": the King James Bible shipped in `corpus/kjv.txt.xz` (4.1 MB of text, 1189
    chapters = documents), written as a TFDS dataset into `data_dir` on first use;
  - a local text file or a directory of `.txt` / `.txt.gz` / `.txt.xz` files (documents separated by blank
    lines, or one per line with `documents="lines"`), likewise written on first use;
  - any TFDS dataset already prepared in `data_dir` as `array_record`, by name ("wikipedia/20230601.en"),
    with its text feature named by `text_key`. Nothing is ever downloaded.
  Our datasets have `train` and `validation` splits (every 50th document is validation).

Tokenizers (`build_tokenizer` -> path, `load_tokenizer` -> processor): SentencePiece trained on the train
split on first use and cached under `cache_dir`, keyed by dataset name/version and options; ids
`<pad>`=0, `<unk>`=1, `<s>`=2, `</s>`=3, `[CLS]`=4, `[SEP]`=5, `[MASK]`=6.

Batches (`make_dataset` -> `DataIterator`): per-process document shards (`shard_index`/`shard_count`,
default `jax.process_index()`/`jax.process_count()`; `batch_size` is per process), shuffled with `seed`
afresh each epoch, tokenized with `</s>` after each document, packed by concatenate-then-split into rows of
`seq_len`, batched. `inputs` are the ids; `segment_ids` number the document pieces in a row (0 = padding);
`positions` restart at 0 with each piece. Same arguments, same batches; `get_state`/`set_state` resume
exactly, and a state from differently configured pipeline is refused.

What the trainer uses (`make_sharded_dataset` -> `ShardedBatches`): a fixed number of shards makes each
global batch (shard 0's rows, then shard 1's, ...), each process reading the shards it owns, so the global
batch does not depend on how many processes share the work.

BART denoising (`make_dataset(..., denoising={...})`, `train/data/denoising.py`): documents tokenized line by
line (a line is a sentence), packed into rows of `seq_len - 2`, each row noised on the host (sentence permutation,
Poisson span infilling) from `(seed, shard, example index)` into encoder/decoder examples of `seq_len` tokens:
`input_ids`, `attention_mask`, `decoder_input_ids`, `decoder_attention_mask`, `labels`.

The lower layers are public too: `TextCorpus` (the TFDS builder), `TextSource`, `read_embedded_corpus`.

Fine-tuning reads the user's labelled files instead (`labelled`: JSONL / CSV rows; `task_features`: rows ->
token features of a task head; `task_batches`: bucketed, resumable batches). `SAMPLES` is the folder of the
small synthetic task files the fine-tuning presets train on.
"""

import os

from train.data.pipeline import DataIterator, ShardedBatches, make_dataset, make_sharded_dataset
from train.data.sources import TextSource, open_source
from train.data.text_corpus import (
    EMBEDDED_CORPUS,
    TextCorpus,
    TextCorpusConfig,
    iter_documents,
    read_embedded_corpus,
)
from train.data.tokenizer import (
    BYTES,
    BOS_ID,
    ByteProcessor,
    CONTROL_SYMBOLS,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    build_tokenizer,
    default_cache_dir,
    load_tokenizer,
)

SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")

__all__ = [
    "SAMPLES",
    "BYTES",
    "BOS_ID",
    "ByteProcessor",
    "CONTROL_SYMBOLS",
    "DataIterator",
    "EMBEDDED_CORPUS",
    "EOS_ID",
    "PAD_ID",
    "ShardedBatches",
    "TextCorpus",
    "TextCorpusConfig",
    "TextSource",
    "UNK_ID",
    "build_tokenizer",
    "default_cache_dir",
    "iter_documents",
    "load_tokenizer",
    "make_dataset",
    "make_sharded_dataset",
    "open_source",
    "read_embedded_corpus",
]
