"""ALBERT tokenizer: the shared `jaxmodels.tokenization.Tokenizer` over SentencePiece, with ALBERT's text hook.

Behaves like the slow `transformers.AlbertTokenizer` (same tokens, ids, `[CLS] A [SEP] B [SEP]` layout, padding,
truncation and decoding) with only `sentencepiece`, `tokenizers` and `numpy` imported. It reads and writes the
`spiece.model` + `tokenizer_config.json` pair that `transformers` uses, so a directory saved by either side loads in
the other. What is ALBERT's own is here: the text normalisation (`AlbertText`) and the defaults.

    tok = AlbertTokenizer.from_pretrained("albert-base-v2-dir")
    batch = tok(["a [MASK] sentence"], padding=True, return_tensors="np")   # int32 [batch, length] arrays
"""

from __future__ import annotations

import dataclasses
import os
import unicodedata
from typing import Any, Mapping, Optional, Union

from jaxmodels.tokenization import (
    BERT,
    SPIECE_UNDERLINE,
    SentencePieceVocab,
    SpecialToken,
    Tokenizer,
    special_token,
)

__all__ = ["AlbertTokenizer", "AlbertText", "SpecialToken"]


@dataclasses.dataclass(frozen=True)
class AlbertText:
    """ALBERT's text hook for `SentencePieceVocab`: normalise the text, then cut it into pieces.

    `remove_space` strips the text and collapses runs of whitespace; `keep_accents=False` NFKD-decomposes and drops
    combining marks ("Café" -> "Cafe"); `do_lower_case` lowercases.
    """

    remove_space: bool = True
    keep_accents: bool = False
    do_lower_case: bool = True

    def preprocess(self, text: str) -> str:
        """ALBERT's normalisation applied before SentencePiece (the same steps, in the same order, as HF)."""
        if self.remove_space:
            text = " ".join(text.strip().split())
        # The original ALBERT data was PTB-style: `` and '' are opening / closing double quotes.
        text = text.replace("``", '"').replace("''", '"')
        if not self.keep_accents:
            text = unicodedata.normalize("NFKD", text)
            text = "".join(c for c in text if not unicodedata.combining(c))
        if self.do_lower_case:
            text = text.lower()
        return text

    def __call__(self, sp_model: Any, text: str) -> list[str]:
        """Pieces of `text` (which holds no special token)."""
        pieces = sp_model.encode(self.preprocess(text), out_type=str)
        out: list[str] = []
        for piece in pieces:
            if len(piece) > 1 and piece[-1] == "," and piece[-2].isdigit():
                # ALBERT's vocab has pieces such as "▁9," that would glue a number to the comma after it;
                # like BERT's tokenizer, split "9,9" as ["▁9", ",", "9"] so numbers stay numbers.
                sub = sp_model.encode(piece[:-1].replace(SPIECE_UNDERLINE, ""), out_type=str)
                if piece[0] != SPIECE_UNDERLINE and sub[0][0] == SPIECE_UNDERLINE:
                    # The piece continued a word, so the re-encoding must not start a new one.
                    sub = sub[1:] if len(sub[0]) == 1 else [sub[0][1:]] + sub[1:]
                out.extend(sub)
                out.append(piece[-1])
            else:
                out.append(piece)
        return out

    def config(self) -> dict:
        """The `tokenizer_config.json` entries of these flags (`do_lower_case` is the tokenizer's)."""
        return {"remove_space": self.remove_space, "keep_accents": self.keep_accents}


class AlbertTokenizer(Tokenizer):
    """SentencePiece tokenizer with ALBERT's preprocessing and `[CLS] A [SEP] B [SEP]` inputs.

    Args:
        vocab_file: path to a SentencePiece model (`spiece.model`).
        do_lower_case: lowercase the text (special tokens excepted) before SentencePiece.
        remove_space: strip the text and collapse runs of whitespace to one space.
        keep_accents: when False, NFKD-decompose and drop combining marks ("Café" -> "Cafe").
        bos_token, eos_token, unk_token, sep_token, pad_token, cls_token, mask_token: the special tokens, as
            strings or `SpecialToken`s. A plain-string `mask_token` strips the whitespace on its left, as in
            transformers. Tokens missing from the SentencePiece vocabulary get ids after it, in the order above.
        sp_model_kwargs: keyword arguments of `sentencepiece.SentencePieceProcessor` (e.g. subword sampling).
        options: the shared `Tokenizer`'s keyword options (`model_max_length`, `clean_up_tokenization_spaces`,
            `padding_side`, `truncation_side`, `additional_special_tokens`).
    """

    vocab_file_name = "spiece.model"
    tokenizer_classes = ("AlbertTokenizer", "AlbertTokenizerFast")
    config_flags = ("do_lower_case", "remove_space", "keep_accents", "sp_model_kwargs")

    def __init__(
        self,
        vocab_file: str,
        do_lower_case: bool = True,
        remove_space: bool = True,
        keep_accents: bool = False,
        bos_token: Union[str, SpecialToken] = "[CLS]",
        eos_token: Union[str, SpecialToken] = "[SEP]",
        unk_token: Union[str, SpecialToken] = "<unk>",
        sep_token: Union[str, SpecialToken] = "[SEP]",
        pad_token: Union[str, SpecialToken] = "<pad>",
        cls_token: Union[str, SpecialToken] = "[CLS]",
        mask_token: Union[str, SpecialToken] = "[MASK]",
        *,
        sp_model_kwargs: Optional[Mapping[str, Any]] = None,
        **options: Any,
    ):
        if not isinstance(vocab_file, (str, os.PathLike)) or not os.path.isfile(vocab_file):
            raise ValueError(f"`vocab_file` must be the path of a SentencePiece model file, got {vocab_file!r}.")
        text = AlbertText(bool(remove_space), bool(keep_accents), bool(do_lower_case))
        vocab = SentencePieceVocab(vocab_file, file_name=self.vocab_file_name, pieces=text, special_decoding="spaced",
                                   sp_model_kwargs=sp_model_kwargs)
        mask_token = special_token(mask_token, "mask_token", lstrip=True)
        super().__init__(vocab, BERT, bos_token=bos_token, eos_token=eos_token, unk_token=unk_token,
                         sep_token=sep_token, pad_token=pad_token, cls_token=cls_token, mask_token=mask_token,
                         do_lower_case=do_lower_case, tokenizer_class="AlbertTokenizer", **options)

    vocab_file = property(lambda self: self.vocab.model_file, doc="Path of the SentencePiece model.")
    sp_model = property(lambda self: self.vocab.sp_model, doc="The `sentencepiece.SentencePieceProcessor`.")
    remove_space = property(lambda self: self.vocab.pieces.remove_space)
    keep_accents = property(lambda self: self.vocab.pieces.keep_accents)

    def preprocess_text(self, text: str) -> str:
        """ALBERT's normalisation applied before SentencePiece (the same steps, in the same order, as HF)."""
        return self.vocab.pieces.preprocess(text)

    def __repr__(self) -> str:
        return (
            f"AlbertTokenizer(vocab_file={self.vocab_file!r}, vocab_size={self.vocab_size}, "
            f"do_lower_case={self.do_lower_case}, remove_space={self.remove_space}, "
            f"keep_accents={self.keep_accents})"
        )
