"""Reformer tokenizers, on ``sentencepiece`` / ``tokenizers`` / ``numpy`` alone (no torch / transformers).

- ``ReformerTokenizer``: the slow ``transformers.ReformerTokenizer`` (``google/reformer-crime-and-punishment``) on the
  shared ``jaxmodels.tokenization.Tokenizer``: plain SentencePiece pieces, no special tokens added around a sequence
  (the ``NONE`` template), special tokens written in the text (``</s>``, ``<unk>``, additional ones) kept as single
  tokens. Reads / writes ``spiece.model`` + ``tokenizer_config.json`` as transformers does.
- ``ByteTokenizer``: the byte-level scheme of ``google/reformer-enwik8`` (no vocabulary file): the UTF-8 bytes of
  the text shifted by 2 (id = byte + 2; 0 is padding, 1 unused); decoding maps ids > 1 back with ``chr(id - 2)``
  (one character per byte, as HF's model card does) and drops 0 / 1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxmodels.tokenization import NONE, SentencePieceVocab, Tokenizer


class ReformerTokenizer(Tokenizer):
    """SentencePiece tokenizer equal to the slow ``transformers.ReformerTokenizer`` on its ids and decoding.

    ``pad_token`` is None by default, as in transformers: pass one (e.g. ``"<pad>"``) to pad batches. Everything else
    (``tokenize``, ``encode``, ``decode``, ``__call__``, ``save_pretrained``) is the shared ``Tokenizer``'s.
    """

    vocab_file_name = "spiece.model"
    tokenizer_classes = ("ReformerTokenizer", "ReformerTokenizerFast")
    config_flags = ("sp_model_kwargs",)

    def __init__(self, vocab_file: str, eos_token: Any = "</s>", unk_token: Any = "<unk>",
                 additional_special_tokens: Sequence[Any] = (), pad_token: Any = None, *,
                 sp_model_kwargs: dict | None = None, **options: Any):
        if not os.path.isfile(vocab_file):
            raise ValueError(f"vocab_file={vocab_file!r} is not a SentencePiece model file")
        vocab = SentencePieceVocab(vocab_file, file_name=self.vocab_file_name, sp_model_kwargs=sp_model_kwargs)
        super().__init__(vocab, NONE, eos_token=eos_token, unk_token=unk_token, pad_token=pad_token,
                         additional_special_tokens=additional_special_tokens, tokenizer_class="ReformerTokenizer",
                         **options)

    vocab_file = property(lambda self: self.vocab.model_file, doc="Path of the SentencePiece model.")

    def __call__(self, text, text_pair=None, *, padding=False, return_tensors=None, **kwargs) -> dict:
        """The shared ``__call__`` (``{"input_ids", "attention_mask"}``), except that ``return_tensors="np"`` pads
        to the longest row when ``padding`` is off (this tokenizer's first version did; rows must be equal in an
        array). Padding needs a ``pad_token``."""
        if return_tensors == "np" and padding in (False, "do_not_pad"):
            padding = True
        return super().__call__(text, text_pair, padding=padding, return_tensors=return_tensors, **kwargs)


class ByteTokenizer:
    """Byte-level tokenizer of the enwik8 Reformer: id = UTF-8 byte + 2; 0 pads; 258 ids in all."""

    OFFSET = 2
    vocab_size = 258
    pad_token_id = 0

    def encode(self, texts, *, max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Texts (str or bytes) -> ``(input_ids [batch, length] int32, attention_mask [batch, length] int32)``,
        right-padded with 0 to the longest (or ``max_length``, truncating)."""
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        data = [t if isinstance(t, bytes) else t.encode("utf-8") for t in texts]
        width = max_length if max_length is not None else max((len(d) for d in data), default=0)
        ids = np.zeros((len(data), width), np.int32)
        mask = np.zeros((len(data), width), np.int32)
        for row, d in enumerate(data):
            d = d[:width]
            ids[row, :len(d)] = np.frombuffer(d, np.uint8).astype(np.int32) + self.OFFSET
            mask[row, :len(d)] = 1
        return ids, mask

    def decode(self, ids) -> list[str]:
        """``[batch, length]`` (or ``[length]``) ids -> strings; ids 0 and 1 are dropped."""
        ids = np.asarray(ids)
        rows = ids[None] if ids.ndim == 1 else ids
        return ["".join(chr(int(i) - self.OFFSET) for i in row if i > 1) for row in rows]

    def decode_bytes(self, ids) -> list[bytes]:
        """Exact inverse of ``encode`` for any UTF-8 text: the bytes, to be decoded by the caller."""
        ids = np.asarray(ids)
        rows = ids[None] if ids.ndim == 1 else ids
        return [bytes(int(i) - self.OFFSET for i in row if i > 1) for row in rows]
