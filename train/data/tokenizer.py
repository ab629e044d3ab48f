"""SentencePiece models trained on a corpus on first use and cached, keyed by corpus identity and options.

Every model built here has the same special ids, which the pipeline and objectives rely on:
`<pad>`=0 (so zero padding is padding), `<unk>`=1, `<s>`=2, `</s>`=3, then the control symbols `[CLS]`=4,
`[SEP]`=5, `[MASK]`=6 that BERT-style objectives need (they never come out of `encode`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from typing import Iterator

import numpy as np
import sentencepiece as spm

from train.data import sources

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
CONTROL_SYMBOLS = ("[CLS]", "[SEP]", "[MASK]")
MODEL_TYPES = ("unigram", "bpe")
# Part of the cache key: bump it whenever the training options below change, so old models are not reused.
_RECIPE = 2
# SentencePiece drops training sentences longer than `max_sentence_length` bytes, so longer lines are cut at
# a space first; 4000 characters stay under the byte limit below even at 4 bytes a character.
_MAX_SENTENCE_CHARS = 4000
_MAX_SENTENCE_BYTES = 16384


def default_cache_dir() -> str:
    """`$XDG_CACHE_HOME/jaxmodels/sentencepiece`, or `~/.cache/jaxmodels/sentencepiece`."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "jaxmodels", "sentencepiece")


def _sentences(source: sources.TextSource, max_sentences: int) -> Iterator[str]:
    """Lines of the documents, visited in a fixed random order so a capped sample spans the whole corpus."""
    count = 0
    for index in np.random.default_rng(0).permutation(len(source)):
        for line in source[int(index)].split("\n"):
            line = line.strip()
            while line:
                cut = len(line)
                if cut > _MAX_SENTENCE_CHARS:
                    cut = line.rfind(" ", 0, _MAX_SENTENCE_CHARS)
                    cut = cut if cut > 0 else _MAX_SENTENCE_CHARS
                yield line[:cut]
                line = line[cut:].lstrip()
                count += 1
                if count >= max_sentences:
                    return


def build_tokenizer(
    source: str | sources.TextSource = "kjv",
    *,
    vocab_size: int = 8000,
    model_type: str = "unigram",
    max_sentences: int = 1_000_000,
    cache_dir: str | None = None,
    data_dir: str | None = None,
) -> str:
    """Returns the path of a SentencePiece model for `source`, training it only if it is not cached yet.

    The cache file is keyed by the dataset's TFDS name and version, split, text feature, and the arguments
    below, so a second call (or a second run) loads instead of training. Training takes seconds: ~10 s for
    the 4 MB embedded corpus at 8000 pieces with the unigram model on two cores (bpe trains faster).

    Args:
      source: a `TextSource`, or a source string opened with `open_source(source, split="train")`.
      vocab_size: upper bound on the number of pieces; a small corpus may yield fewer, but every id is
        below `vocab_size`, so it is safe to size embeddings with it.
      model_type: "unigram" (as ALBERT and T5) or "bpe".
      max_sentences: at most this many lines are read (visited in a fixed random order of documents).
      cache_dir: where models live; None means `default_cache_dir()`.
      data_dir: TFDS data directory for a string `source`.

    Returns:
      Path of the `.model` file (load it with `load_tokenizer`). A `.json` file beside it records the key.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 16:
        raise ValueError(f"vocab_size={vocab_size!r}: expected an int >= 16")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r}: expected one of {MODEL_TYPES}")
    if not isinstance(max_sentences, int) or max_sentences < 1:
        raise ValueError(f"max_sentences={max_sentences!r}: expected a positive int")
    if isinstance(source, str):
        source = sources.open_source(source, split="train", data_dir=data_dir)
    key = {
        "source": source.name,
        "split": source.split,
        "text_key": source.text_key,
        "vocab_size": vocab_size,
        "model_type": model_type,
        "max_sentences": max_sentences,
        "recipe": _RECIPE,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9]+", "_", source.name).strip("_")
    cache_dir = os.path.expanduser(cache_dir or default_cache_dir())
    path = os.path.join(cache_dir, f"{slug}-{model_type}{vocab_size}-{digest}.model")
    if os.path.exists(path):
        return path

    os.makedirs(cache_dir, exist_ok=True)
    # Train into a private folder and rename: a crash or a concurrent run never leaves a half-written model.
    work_dir = tempfile.mkdtemp(prefix=".train-", dir=cache_dir)
    try:
        spm.set_random_generator_seed(0)
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sentences(source, max_sentences),
            model_prefix=os.path.join(work_dir, "spm"),
            vocab_size=vocab_size,
            model_type=model_type,
            hard_vocab_limit=False,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_piece="<pad>",
            unk_piece="<unk>",
            bos_piece="<s>",
            eos_piece="</s>",
            control_symbols=list(CONTROL_SYMBOLS),
            character_coverage=1.0,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            max_sentence_length=_MAX_SENTENCE_BYTES,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
        with open(path.removesuffix(".model") + ".json", "w") as f:
            json.dump(key, f, indent=2, sort_keys=True)
        os.replace(os.path.join(work_dir, "spm.model"), path)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return path


BYTES = "bytes"  # `config.data.tokenizer = "bytes"`: character-level (UTF-8 bytes) models, no training


class ByteProcessor:
    """Byte-level tokenization with the special ids every tokenizer here has: a text's UTF-8 bytes as ids
    ``byte + 7`` (after `<pad>`=0 ... `[MASK]`=6), so ``get_piece_size()`` is 263. The subset of
    ``SentencePieceProcessor``'s interface the pipeline and the trainer use. Character-level LMs (the enwik8
    setting) train on it; bits per character is then the loss per byte over ln 2 (for ASCII text)."""

    OFFSET = 4 + len(CONTROL_SYMBOLS)  # <pad>, <unk>, <s>, </s>, then the control symbols

    def encode(self, text: str) -> list[int]:
        return [b + self.OFFSET for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        data = bytes(int(i) - self.OFFSET for i in ids if self.OFFSET <= int(i) < self.OFFSET + 256)
        return data.decode("utf-8", errors="replace")

    def get_piece_size(self) -> int:
        return self.OFFSET + 256

    def eos_id(self) -> int:
        return EOS_ID

    def pad_id(self) -> int:
        return PAD_ID

    def serialized_model_proto(self) -> bytes:
        """What identifies this tokenizer in a data pipeline's state (as a SentencePiece model's bytes do)."""
        return b"jaxmodels-bytes-v1"


def load_tokenizer(path: str) -> spm.SentencePieceProcessor | ByteProcessor:
    """Loads a SentencePiece `.model` file (from `build_tokenizer` or elsewhere), or `"bytes"`: a `ByteProcessor`."""
    if path == BYTES:
        return ByteProcessor()
    if not os.path.isfile(path):
        raise ValueError(f"tokenizer={path!r}: no such SentencePiece model file (or \"{BYTES}\" for bytes)")
    return spm.SentencePieceProcessor(model_file=path)


def task_tokenizer(path: str):
    """A SentencePiece model built here (or any `.model` with the same control symbols) as a
    `jaxmodels.tokenization.Tokenizer` with the `BERT` template, `[CLS] A [SEP] B [SEP]`: what fine-tuning a model
    trained from scratch tokenizes with (`<pad>`=0 pads, `[CLS]` / `[SEP]` frame the texts)."""
    from jaxmodels.tokenization import BERT, SentencePieceVocab, Tokenizer

    if not os.path.isfile(path):
        raise ValueError(f"tokenizer={path!r}: no such SentencePiece model file")
    return Tokenizer(SentencePieceVocab(path), BERT, unk_token="<unk>", pad_token="<pad>", cls_token="[CLS]",
                     sep_token="[SEP]", mask_token="[MASK]")
