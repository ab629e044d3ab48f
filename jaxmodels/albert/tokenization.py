"""ALBERT tokenizer: SentencePiece plus ALBERT's text normalisation, on `sentencepiece` alone.

Behaves like the slow `transformers.AlbertTokenizer` (same tokens, ids, special-token layout, padding,
truncation and decoding) without importing torch or transformers, so data pipelines and TPU hosts can
tokenize with only `sentencepiece` and `numpy` installed. It reads and writes the `spiece.model` +
`tokenizer_config.json` pair that `transformers` uses, so a directory saved by either side loads in the
other.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import unicodedata
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import sentencepiece as spm

SPIECE_UNDERLINE = "\u2581"
VOCAB_FILE_NAME = "spiece.model"
CONFIG_FILE_NAME = "tokenizer_config.json"

# transformers writes this sentinel for "no model maximum length"; anything above LARGE_INTEGER means unset.
_VERY_LARGE_INTEGER = int(1e30)
_LARGE_INTEGER = int(1e20)

# Order matters: it is the order in which transformers lists special tokens (and so the order in which
# tokens missing from the SentencePiece vocabulary receive new ids).
_SPECIAL_TOKEN_ATTRIBUTES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)

# tokenizer_config.json keys that map one-to-one onto constructor arguments.
_CONFIG_FLAGS = (
    "do_lower_case",
    "remove_space",
    "keep_accents",
    "clean_up_tokenization_spaces",
    "sp_model_kwargs",
    "padding_side",
    "truncation_side",
)

_PADDING_STRATEGIES = ("do_not_pad", "longest", "max_length")
_TRUNCATION_STRATEGIES = ("do_not_truncate", "longest_first", "only_first", "only_second")

TextOrPair = Union[str, Sequence[str]]


@dataclasses.dataclass(frozen=True)
class SpecialToken:
    """A special token and how it swallows the whitespace around it in raw text.

    Mirrors the fields of `tokenizers.AddedToken` that matter to the slow tokenizer: `lstrip` / `rstrip`
    remove whitespace on that side of the token before the neighbouring text is tokenized (ALBERT's
    `[MASK]` uses `lstrip=True` so that "a [MASK]" tokenizes like "a" followed by the mask), and
    `single_word` only treats the token as special when it is not glued to other non-space text.
    """

    content: str
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False

    def to_json(self, special: bool = True) -> dict:
        """The `added_tokens_decoder` entry transformers writes for this token."""
        return {
            "content": self.content,
            "lstrip": self.lstrip,
            "normalized": False,
            "rstrip": self.rstrip,
            "single_word": self.single_word,
            "special": special,
        }


def _as_special_token(value: Any, name: str, default_lstrip: bool = False) -> SpecialToken:
    """Accepts a string, a `SpecialToken`, or a transformers-style dict (as found in saved configs)."""
    if isinstance(value, SpecialToken):
        return value
    if isinstance(value, str):
        if not value:
            raise ValueError(f"`{name}` must be a non-empty string, got {value!r}.")
        return SpecialToken(value, lstrip=default_lstrip)
    if isinstance(value, Mapping) and isinstance(value.get("content"), str) and value["content"]:
        return SpecialToken(
            value["content"],
            lstrip=bool(value.get("lstrip", False)),
            rstrip=bool(value.get("rstrip", False)),
            single_word=bool(value.get("single_word", False)),
        )
    raise ValueError(
        f"`{name}` must be a non-empty string, a SpecialToken or a dict with a 'content' string, got {value!r}."
    )


def _lowercase_outside(text: str, keep: "re.Pattern[str]") -> str:
    """Lowercases `text` one character at a time, leaving the matches of `keep` (special tokens) untouched.

    Character-wise lowering matters: `str.lower` on a whole string applies context rules (Greek final
    sigma) that transformers' per-character lowering does not, and ids must match it exactly.
    """
    parts = keep.split(text)
    # With one capturing group, odd positions of the split are the kept matches.
    return "".join(part if i % 2 else "".join(map(str.lower, part)) for i, part in enumerate(parts))


class AlbertTokenizer:
    """SentencePiece tokenizer with ALBERT's preprocessing and `[CLS] A [SEP] B [SEP]` inputs.

    Args:
        vocab_file: path to a SentencePiece model (`spiece.model`).
        do_lower_case: lowercase the text (special tokens excepted) before SentencePiece.
        remove_space: strip the text and collapse runs of whitespace to one space.
        keep_accents: when False, NFKD-decompose and drop combining marks ("Café" -> "Cafe").
        bos_token, eos_token, unk_token, sep_token, pad_token, cls_token, mask_token: the special tokens, as
            strings or `SpecialToken`s. A plain-string `mask_token` strips the whitespace on its left, as in
            transformers. Tokens missing from the SentencePiece vocabulary get ids after it, in the order above.
        model_max_length: default length for `truncation` and `padding="max_length"` when `max_length` is not
            given; None means no default.
        clean_up_tokenization_spaces: default of `decode`'s flag of the same name (removes the space before
            punctuation such as " ." and " n't").
        sp_model_kwargs: keyword arguments of `sentencepiece.SentencePieceProcessor` (e.g. subword sampling).
        padding_side: "right" or "left".
        truncation_side: "right" or "left".
    """

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
        model_max_length: Optional[int] = None,
        clean_up_tokenization_spaces: bool = False,
        sp_model_kwargs: Optional[Mapping[str, Any]] = None,
        padding_side: str = "right",
        truncation_side: str = "right",
    ):
        if not isinstance(vocab_file, (str, os.PathLike)) or not os.path.isfile(vocab_file):
            raise ValueError(f"`vocab_file` must be the path of a SentencePiece model file, got {vocab_file!r}.")
        if padding_side not in ("right", "left"):
            raise ValueError(f"`padding_side` must be 'right' or 'left', got {padding_side!r}.")
        if truncation_side not in ("right", "left"):
            raise ValueError(f"`truncation_side` must be 'right' or 'left', got {truncation_side!r}.")
        if model_max_length is not None and (
            not isinstance(model_max_length, int) or isinstance(model_max_length, bool) or model_max_length < 1
        ):
            raise ValueError(f"`model_max_length` must be a positive int or None, got {model_max_length!r}.")

        self.vocab_file = os.fspath(vocab_file)
        self.do_lower_case = bool(do_lower_case)
        self.remove_space = bool(remove_space)
        self.keep_accents = bool(keep_accents)
        self.model_max_length = model_max_length
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.sp_model_kwargs = dict(sp_model_kwargs or {})
        self.padding_side = padding_side
        self.truncation_side = truncation_side

        self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.Load(self.vocab_file)

        given = dict(
            bos_token=bos_token,
            eos_token=eos_token,
            unk_token=unk_token,
            sep_token=sep_token,
            pad_token=pad_token,
            cls_token=cls_token,
            mask_token=mask_token,
        )
        self._special: dict[str, SpecialToken] = {
            name: _as_special_token(value, name, default_lstrip=(name == "mask_token"))
            for name, value in given.items()
        }
        self._init_special_ids({})

    # ----------------------------------------------------------------------------------------------
    # Special tokens and vocabulary

    def _init_special_ids(self, fixed_ids: Mapping[str, int]) -> None:
        """Gives every special token an id: its saved id, its SentencePiece id, or a new one after the vocab.

        `fixed_ids` maps token content to the id a saved config recorded for it.
        """
        # One entry per distinct content; the same content under two attributes (bos/cls) is one token,
        # and the first attribute's stripping flags win, as in transformers.
        self._special_by_content: dict[str, SpecialToken] = {}
        for token in self._special.values():
            self._special_by_content.setdefault(token.content, token)
        self._special_to_id: dict[str, int] = {}
        next_id = self.vocab_size
        for content in self._special_by_content:
            if content in fixed_ids:
                self._special_to_id[content] = int(fixed_ids[content])
            elif self._piece_in_vocab(content):
                self._special_to_id[content] = self.sp_model.PieceToId(content)
            else:
                self._special_to_id[content] = next_id
                next_id += 1
        self._id_to_special = {i: c for c, i in self._special_to_id.items()}
        self._total_size = max([self.vocab_size] + [i + 1 for i in self._special_to_id.values()])
        # Longest first so that, of two special tokens starting at the same place, the longer one wins.
        alternatives = sorted(self._special_by_content, key=len, reverse=True)
        self._special_pattern = re.compile("|".join(re.escape(c) for c in alternatives))
        # Lowercasing skips special tokens trying them in declaration order (transformers' regex), which
        # differs from the split above only when one special token is a prefix of another.
        self._keep_case_pattern = re.compile("(" + "|".join(re.escape(c) for c in self._special_by_content) + ")")

    def _piece_in_vocab(self, piece: str) -> bool:
        """Whether `piece` is a SentencePiece vocabulary entry (PieceToId maps unknown pieces to unk)."""
        index = self.sp_model.PieceToId(piece)
        return index != self.sp_model.unk_id() or self.sp_model.IdToPiece(index) == piece

    @property
    def vocab_size(self) -> int:
        """Size of the SentencePiece vocabulary (special tokens appended after it not counted)."""
        return self.sp_model.GetPieceSize()

    def __len__(self) -> int:
        """Size of the full vocabulary, including special tokens appended after the SentencePiece one."""
        return self._total_size

    def get_vocab(self) -> dict[str, int]:
        """Token -> id for the whole vocabulary."""
        vocab = {self.sp_model.IdToPiece(i): i for i in range(self.vocab_size)}
        vocab.update(self._special_to_id)
        return vocab

    @property
    def special_tokens(self) -> dict[str, SpecialToken]:
        """Attribute name (`cls_token`, ...) -> `SpecialToken`."""
        return dict(self._special)

    @property
    def all_special_tokens(self) -> list[str]:
        """The distinct special token strings, in transformers' order."""
        return list(self._special_by_content)

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of `all_special_tokens`, in the same order."""
        return [self._special_to_id[c] for c in self._special_by_content]

    bos_token = property(lambda self: self._special["bos_token"].content, doc="Beginning-of-sequence token.")
    eos_token = property(lambda self: self._special["eos_token"].content, doc="End-of-sequence token.")
    unk_token = property(lambda self: self._special["unk_token"].content, doc="Unknown token.")
    sep_token = property(lambda self: self._special["sep_token"].content, doc="Separator token.")
    pad_token = property(lambda self: self._special["pad_token"].content, doc="Padding token.")
    cls_token = property(lambda self: self._special["cls_token"].content, doc="Classifier token.")
    mask_token = property(lambda self: self._special["mask_token"].content, doc="Mask token.")

    bos_token_id = property(lambda self: self._special_to_id[self.bos_token], doc="Id of `bos_token`.")
    eos_token_id = property(lambda self: self._special_to_id[self.eos_token], doc="Id of `eos_token`.")
    unk_token_id = property(lambda self: self._special_to_id[self.unk_token], doc="Id of `unk_token`.")
    sep_token_id = property(lambda self: self._special_to_id[self.sep_token], doc="Id of `sep_token`.")
    pad_token_id = property(lambda self: self._special_to_id[self.pad_token], doc="Id of `pad_token`.")
    cls_token_id = property(lambda self: self._special_to_id[self.cls_token], doc="Id of `cls_token`.")
    mask_token_id = property(lambda self: self._special_to_id[self.mask_token], doc="Id of `mask_token`.")

    @property
    def pad_token_type_id(self) -> int:
        """token_type_ids value written at padded positions."""
        return 0

    # ----------------------------------------------------------------------------------------------
    # Text -> tokens

    def preprocess_text(self, text: str) -> str:
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

    def _tokenize_plain(self, text: str) -> list[str]:
        """Tokenizes text that holds no special tokens."""
        pieces = self.sp_model.encode(self.preprocess_text(text), out_type=str)
        out: list[str] = []
        for piece in pieces:
            if len(piece) > 1 and piece[-1] == "," and piece[-2].isdigit():
                # ALBERT's vocab has pieces such as "▁9," that would glue a number to the comma after it;
                # like BERT's tokenizer, split "9,9" as ["▁9", ",", "9"] so numbers stay numbers.
                sub = self.sp_model.encode(piece[:-1].replace(SPIECE_UNDERLINE, ""), out_type=str)
                if piece[0] != SPIECE_UNDERLINE and sub[0][0] == SPIECE_UNDERLINE:
                    # The piece continued a word, so the re-encoding must not start a new one.
                    sub = sub[1:] if len(sub[0]) == 1 else [sub[0][1:]] + sub[1:]
                out.extend(sub)
                out.append(piece[-1])
            else:
                out.append(piece)
        return out

    def _split_on_special(self, text: str) -> list[str]:
        """Cuts `text` into plain segments and special-token segments, applying the tokens' stripping rules."""
        segments: list[str] = []
        start = 0
        for match in self._special_pattern.finditer(text):
            segments.append(text[start : match.start()])
            segments.append(match.group())
            start = match.end()
        segments.append(text[start:])
        segments = [s for s in segments if s]

        # Same sequential, in-place pass as transformers, so neighbouring special tokens interact alike.
        for i, segment in enumerate(segments):
            token = self._special_by_content.get(segment)
            if token is None:
                continue
            left = segments[i - 1] if i > 0 else None
            right = segments[i + 1] if i < len(segments) - 1 else None
            if token.rstrip and right:
                segments[i + 1] = right.lstrip()
            if token.lstrip and left:
                segments[i - 1] = left.rstrip()
            if token.single_word and left and left[-1] != " ":
                segments[i - 1] += segment
                segments[i] = ""
            elif token.single_word and right and right[0] != " ":
                segments[i + 1] = segment + segments[i + 1]
                segments[i] = ""
        return segments

    def tokenize(self, text: str) -> list[str]:
        """Splits `text` into SentencePiece pieces; special tokens written in the text stay whole."""
        if not isinstance(text, str):
            raise ValueError(f"`text` must be a str, got {type(text).__name__}.")
        if self.do_lower_case:
            text = _lowercase_outside(text, self._keep_case_pattern)
        tokens: list[str] = []
        for segment in self._split_on_special(text):
            if not segment:
                continue
            if segment in self._special_by_content:
                tokens.append(segment)
            else:
                tokens.extend(self._tokenize_plain(segment))
        return tokens

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]) -> Union[int, list[int]]:
        """Token (or tokens) -> id (or ids); tokens outside the vocabulary map to SentencePiece's unk id."""
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def _token_to_id(self, token: str) -> int:
        special = self._special_to_id.get(token)
        return special if special is not None else self.sp_model.PieceToId(token)

    def convert_ids_to_tokens(
        self, ids: Union[int, Sequence[int]], skip_special_tokens: bool = False
    ) -> Union[str, list[str]]:
        """Id (or ids) -> token (or tokens); `skip_special_tokens` drops special ids from a sequence."""
        if isinstance(ids, (int, np.integer)):
            return self._id_to_token(int(ids))
        special_ids = set(self.all_special_ids)
        tokens = []
        for index in ids:
            index = int(index)
            if skip_special_tokens and index in special_ids:
                continue
            tokens.append(self._id_to_token(index))
        return tokens

    def _id_to_token(self, index: int) -> str:
        special = self._id_to_special.get(index)
        if special is not None:
            return special
        if not 0 <= index < self.vocab_size:
            raise ValueError(f"`ids` holds {index}, outside the vocabulary [0, {len(self)}).")
        return self.sp_model.IdToPiece(index)

    # ----------------------------------------------------------------------------------------------
    # Tokens -> text

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Joins pieces into text; special tokens are copied verbatim rather than decoded by SentencePiece."""
        out = ""
        pending: list[str] = []
        prev_is_special = False
        for token in tokens:
            if token in self._special_by_content:
                if not prev_is_special:
                    out += " "
                out += self.sp_model.decode(pending) + token
                prev_is_special = True
                pending = []
            else:
                pending.append(token)
                prev_is_special = False
        out += self.sp_model.decode(pending)
        return out.strip()

    @staticmethod
    def clean_up_tokenization(text: str) -> str:
        """Removes the spaces that word-level tokenization leaves before punctuation and English clitics."""
        for before, after in (
            (" .", "."),
            (" ?", "?"),
            (" !", "!"),
            (" ,", ","),
            (" ' ", "'"),
            (" n't", "n't"),
            (" 'm", "'m"),
            (" 's", "'s"),
            (" 've", "'ve"),
            (" 're", "'re"),
        ):
            text = text.replace(before, after)
        return text

    def decode(
        self,
        token_ids: Union[int, Sequence[int], np.ndarray],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: Optional[bool] = None,
    ) -> str:
        """Ids (int, list or 1-D array) -> text.

        `clean_up_tokenization_spaces=None` uses the tokenizer's default (False unless its config said so).
        """
        ids = _ids_as_list(token_ids, "token_ids")
        if isinstance(ids, int):
            ids = [ids]
        elif ids and isinstance(ids[0], list):
            raise ValueError("`token_ids` must be one sequence of ids; use batch_decode for a batch.")
        tokens = self.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)
        text = self.convert_tokens_to_string(tokens) if tokens else ""
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        return self.clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def batch_decode(
        self,
        sequences: Union[Sequence[Sequence[int]], np.ndarray],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: Optional[bool] = None,
    ) -> list[str]:
        """`decode` over a batch (list of id lists or a 2-D array)."""
        if isinstance(sequences, (list, tuple)):
            # Rows may differ in length, so they cannot go through one array.
            rows = [_ids_as_list(row, "sequences") for row in sequences]
        else:
            rows = _ids_as_list(sequences, "sequences")
        if isinstance(rows, int) or any(not isinstance(row, list) for row in rows):
            raise ValueError("`sequences` must be a batch (list of id lists or a 2-D array).")
        return [self.decode(row, skip_special_tokens, clean_up_tokenization_spaces) for row in rows]

    # ----------------------------------------------------------------------------------------------
    # Model inputs

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: Optional[list[int]] = None
    ) -> list[int]:
        """`[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`."""
        cls, sep = [self.cls_token_id], [self.sep_token_id]
        if token_ids_1 is None:
            return cls + list(token_ids_0) + sep
        return cls + list(token_ids_0) + sep + list(token_ids_1) + sep

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: Optional[list[int]] = None
    ) -> list[int]:
        """0 for `[CLS] A [SEP]`, 1 for `B [SEP]`."""
        first = [0] * (len(token_ids_0) + 2)
        if token_ids_1 is None:
            return first
        return first + [1] * (len(token_ids_1) + 1)

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: Optional[list[int]] = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        """1 where `build_inputs_with_special_tokens` puts (or already put) a special token, else 0."""
        if already_has_special_tokens:
            if token_ids_1 is not None:
                raise ValueError("`token_ids_1` must be None when `already_has_special_tokens` is True.")
            special_ids = set(self.all_special_ids)
            return [1 if i in special_ids else 0 for i in token_ids_0]
        if token_ids_1 is None:
            return [1] + [0] * len(token_ids_0) + [1]
        return [1] + [0] * len(token_ids_0) + [1] + [0] * len(token_ids_1) + [1]

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """How many special tokens `build_inputs_with_special_tokens` adds (2 single, 3 pair)."""
        return 3 if pair else 2

    def _text_to_ids(self, text: Any, name: str) -> list[int]:
        """A string, a list of tokens or a list of ids -> ids."""
        if isinstance(text, str):
            return self.convert_tokens_to_ids(self.tokenize(text))
        if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            return self.convert_tokens_to_ids(list(text))
        if isinstance(text, (list, tuple)) and all(
            isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in text
        ):
            return [int(t) for t in text]
        raise ValueError(f"`{name}` must be a str, a list of tokens or a list of ids, got {text!r}.")

    def _truncate(
        self, ids: list[int], pair_ids: Optional[list[int]], num_to_remove: int, strategy: str
    ) -> tuple[list[int], Optional[list[int]]]:
        """Removes `num_to_remove` ids following `strategy` (transformers' arithmetic)."""
        if num_to_remove <= 0:
            return ids, pair_ids

        def cut(seq: list[int], n: int) -> list[int]:
            if n <= 0:
                return seq
            return seq[:-n] if self.truncation_side == "right" else seq[n:]

        if strategy == "only_first" or (strategy == "longest_first" and pair_ids is None):
            # transformers refuses (with a logged error) to empty the sequence entirely; so do we, loudly.
            if len(ids) <= num_to_remove:
                raise ValueError(
                    f"truncation={strategy!r} must remove {num_to_remove} tokens from the first sequence, which "
                    f"has only {len(ids)}; raise `max_length` or use another `truncation` strategy."
                )
            return cut(ids, num_to_remove), pair_ids
        if strategy == "only_second":
            if pair_ids is None:
                raise ValueError("truncation='only_second' needs a `text_pair`; there is no second sequence to cut.")
            if len(pair_ids) <= num_to_remove:
                raise ValueError(
                    f"truncation='only_second' must remove {num_to_remove} tokens from the second sequence, "
                    f"which has only {len(pair_ids)}; raise `max_length` or use another `truncation` strategy."
                )
            return ids, cut(pair_ids, num_to_remove)
        # longest_first on a pair: first even out the lengths, then take the rest alternately (the longer
        # sequence, or the second on a tie, gives up the odd token).
        first_remove = min(abs(len(pair_ids) - len(ids)), num_to_remove)
        second_remove = num_to_remove - first_remove
        if len(ids) > len(pair_ids):
            ids_cut = first_remove + second_remove // 2
            pair_cut = second_remove - second_remove // 2
        else:
            ids_cut = second_remove // 2
            pair_cut = first_remove + second_remove - second_remove // 2
        return cut(ids, ids_cut), cut(pair_ids, pair_cut)

    def _prepare(
        self,
        ids: list[int],
        pair_ids: Optional[list[int]],
        add_special_tokens: bool,
        truncation: str,
        max_length: Optional[int],
    ) -> dict[str, list[int]]:
        """Truncates, then adds special tokens; returns unpadded `input_ids` and `token_type_ids`."""
        pair = pair_ids is not None
        specials = self.num_special_tokens_to_add(pair) if add_special_tokens else 0
        total = len(ids) + (len(pair_ids) if pair else 0) + specials
        if truncation != "do_not_truncate" and total > max_length:
            if max_length < specials:
                raise ValueError(
                    f"`max_length`={max_length} leaves no room for the {specials} special tokens of "
                    f"{'a pair' if pair else 'a sequence'}."
                )
            ids, pair_ids = self._truncate(ids, pair_ids, total - max_length, truncation)
        if add_special_tokens:
            input_ids = self.build_inputs_with_special_tokens(ids, pair_ids)
            token_type_ids = self.create_token_type_ids_from_sequences(ids, pair_ids)
        else:
            # Without special tokens there is no segment boundary to mark, so all zeros (as transformers).
            input_ids = list(ids) + (list(pair_ids) if pair else [])
            token_type_ids = [0] * len(input_ids)
        return {"input_ids": input_ids, "token_type_ids": token_type_ids}

    def _pad(self, example: dict[str, list[int]], length: int) -> dict[str, list[int]]:
        """Pads one example to `length` on `padding_side`; adds `attention_mask`. Longer ones stay as they are."""
        n = len(example["input_ids"])
        missing = max(length - n, 0)
        pads = {
            "input_ids": [self.pad_token_id] * missing,
            "token_type_ids": [self.pad_token_type_id] * missing,
            "attention_mask": [0] * missing,
        }
        values = dict(example, attention_mask=[1] * n)
        if self.padding_side == "right":
            return {k: v + pads[k] for k, v in values.items()}
        return {k: pads[k] + v for k, v in values.items()}

    def _resolve_strategies(
        self,
        padding: Any,
        truncation: Any,
        max_length: Optional[int],
        pad_to_multiple_of: Optional[int],
    ) -> tuple[str, str, Optional[int]]:
        """Validates `padding` / `truncation` / `max_length` and resolves them as transformers does."""
        if padding is True:
            padding = "longest"
        elif padding is False:
            padding = "do_not_pad"
        if not isinstance(padding, str) or padding not in _PADDING_STRATEGIES:
            raise ValueError(f"`padding` must be a bool or one of {_PADDING_STRATEGIES}, got {padding!r}.")

        if truncation is None:
            # transformers' legacy rule: a bare max_length (no padding) means "truncate to it".
            truncation = "longest_first" if (max_length is not None and padding == "do_not_pad") else False
        if truncation is True:
            truncation = "longest_first"
        elif truncation is False:
            truncation = "do_not_truncate"
        if not isinstance(truncation, str) or truncation not in _TRUNCATION_STRATEGIES:
            raise ValueError(
                f"`truncation` must be a bool, None or one of {_TRUNCATION_STRATEGIES}, got {truncation!r}."
            )

        if max_length is not None and (
            not isinstance(max_length, (int, np.integer)) or isinstance(max_length, bool) or max_length < 1
        ):
            raise ValueError(f"`max_length` must be a positive int or None, got {max_length!r}.")
        if pad_to_multiple_of is not None and (
            not isinstance(pad_to_multiple_of, (int, np.integer))
            or isinstance(pad_to_multiple_of, bool)
            or pad_to_multiple_of < 1
        ):
            raise ValueError(f"`pad_to_multiple_of` must be a positive int or None, got {pad_to_multiple_of!r}.")

        needs_length = padding == "max_length" or truncation != "do_not_truncate"
        if max_length is None and needs_length:
            if self.model_max_length is None:
                what = f"padding={padding!r}" if padding == "max_length" else f"truncation={truncation!r}"
                raise ValueError(
                    f"{what} needs `max_length` (this tokenizer has no `model_max_length` to fall back on)."
                )
            max_length = self.model_max_length
        if (
            truncation != "do_not_truncate"
            and padding != "do_not_pad"
            and pad_to_multiple_of is not None
            and max_length is not None
            and max_length % pad_to_multiple_of != 0
        ):
            raise ValueError(
                f"Truncating to `max_length`={max_length} and padding to a multiple of "
                f"`pad_to_multiple_of`={pad_to_multiple_of} disagree; make max_length a multiple of it."
            )
        return padding, truncation, None if max_length is None else int(max_length)

    def encode(
        self,
        text: Union[str, Sequence[str], Sequence[int]],
        text_pair: Optional[Union[str, Sequence[str], Sequence[int]]] = None,
        add_special_tokens: bool = True,
        *,
        truncation: Union[bool, str, None] = None,
        max_length: Optional[int] = None,
    ) -> list[int]:
        """One sequence (or pair) -> ids: `[CLS] A [SEP] (B [SEP])`, truncated like `__call__`.

        `text` / `text_pair` may be strings, lists of tokens or lists of ids.
        """
        _, truncation, max_length = self._resolve_strategies(False, truncation, max_length, None)
        ids = self._text_to_ids(text, "text")
        pair_ids = None if text_pair is None else self._text_to_ids(text_pair, "text_pair")
        return self._prepare(ids, pair_ids, add_special_tokens, truncation, max_length)["input_ids"]

    def __call__(
        self,
        text: Union[TextOrPair, Sequence[TextOrPair]],
        text_pair: Optional[Union[str, Sequence[str]]] = None,
        *,
        padding: Union[bool, str] = False,
        truncation: Union[bool, str, None] = None,
        max_length: Optional[int] = None,
        return_tensors: Optional[str] = None,
        return_attention_mask: bool = True,
        return_token_type_ids: Optional[bool] = None,
        add_special_tokens: bool = True,
        pad_to_multiple_of: Optional[int] = None,
    ) -> dict[str, Any]:
        """Tokenizes one example or a batch into model inputs.

        Args:
            text: a string, or a batch: a list of strings or of (first, second) string pairs.
            text_pair: the second sequence(s): a string for a single `text`, a list as long as a batch `text`.
            padding: False / "do_not_pad"; True / "longest" (to the longest in the batch); "max_length".
            truncation: True / "longest_first", "only_first", "only_second", False / "do_not_truncate"; None
                means "longest_first" when only `max_length` is given, else no truncation (transformers' rule).
                Lengths count the special tokens.
            max_length: target length for truncation and `padding="max_length"`; defaults to
                `model_max_length` when that is set.
            return_tensors: None for python lists, "np" for int32 arrays `[batch, length]` (a single example
                gets a batch axis of 1).
            return_attention_mask: include `attention_mask` (1 on tokens, 0 on padding).
            return_token_type_ids: include `token_type_ids` (None means yes); padding positions get 0.
            add_special_tokens: add `[CLS]` / `[SEP]`.
            pad_to_multiple_of: round the padded length up to a multiple of this.

        Returns:
            dict with `input_ids`, and `token_type_ids` / `attention_mask` unless turned off.
        """
        padding, truncation, max_length = self._resolve_strategies(
            padding, truncation, max_length, pad_to_multiple_of
        )
        if return_tensors not in (None, "np"):
            raise ValueError(f"`return_tensors` must be None or 'np', got {return_tensors!r}.")
        if return_token_type_ids and not add_special_tokens:
            raise ValueError(
                "`return_token_type_ids=True` with `add_special_tokens=False` is undefined (no segment "
                "boundary); leave return_token_type_ids as None or add special tokens."
            )

        batched = isinstance(text, (list, tuple))
        pairs = self._split_inputs(text, text_pair, batched)
        examples = [
            self._prepare(
                self._text_to_ids(first, "text"),
                None if second is None else self._text_to_ids(second, "text_pair"),
                add_special_tokens,
                truncation,
                max_length,
            )
            for first, second in pairs
        ]

        if padding == "longest":
            length = max(len(e["input_ids"]) for e in examples)
        elif padding == "max_length":
            length = max_length
        else:
            length = 0
        if padding != "do_not_pad" and pad_to_multiple_of is not None and length % pad_to_multiple_of:
            length = (length // pad_to_multiple_of + 1) * pad_to_multiple_of
        examples = [self._pad(e, length) for e in examples]

        keys = ["input_ids"]
        if return_token_type_ids or return_token_type_ids is None:
            keys.append("token_type_ids")
        if return_attention_mask:
            keys.append("attention_mask")
        out = {k: [e[k] for e in examples] for k in keys}

        if return_tensors == "np":
            lengths = {len(row) for row in out["input_ids"]}
            if len(lengths) > 1:
                raise ValueError(
                    f"return_tensors='np' needs equal lengths, got lengths {sorted(lengths)}; "
                    "pass `padding=True` or `padding='max_length'` (with `truncation` for long inputs)."
                )
            return {k: np.asarray(v, dtype=np.int32).reshape(len(v), -1) for k, v in out.items()}
        if not batched:
            return {k: v[0] for k, v in out.items()}
        return out

    @staticmethod
    def _split_inputs(text: Any, text_pair: Any, batched: bool) -> list[tuple[Any, Any]]:
        """Normalises `__call__`'s inputs to a list of (first, second-or-None)."""
        if not batched:
            if not isinstance(text, str):
                raise ValueError(f"`text` must be a str or a list of them, got {type(text).__name__}.")
            if text_pair is not None and not isinstance(text_pair, str):
                raise ValueError(
                    f"`text_pair` must be a str when `text` is a single str, got {type(text_pair).__name__}."
                )
            return [(text, text_pair)]
        if len(text) == 0:
            raise ValueError("`text` is an empty batch.")
        if text_pair is not None:
            if not isinstance(text_pair, (list, tuple)):
                raise ValueError("`text_pair` must be a list as long as `text` when `text` is a batch.")
            if len(text_pair) != len(text):
                raise ValueError(
                    f"`text` has {len(text)} examples but `text_pair` has {len(text_pair)}; they must match."
                )
            for name, batch in (("text", text), ("text_pair", text_pair)):
                for item in batch:
                    if not isinstance(item, str):
                        raise ValueError(f"every item of `{name}` must be a str, got {item!r}.")
            return list(zip(text, text_pair))
        out = []
        for item in text:
            if isinstance(item, str):
                out.append((item, None))
            elif isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(s, str) for s in item):
                out.append((item[0], item[1]))
            else:
                raise ValueError(f"every item of `text` must be a str or a (str, str) pair, got {item!r}.")
        return out

    # ----------------------------------------------------------------------------------------------
    # Files

    def save_pretrained(self, directory: str) -> tuple[str, str]:
        """Writes `spiece.model` and a `tokenizer_config.json` that `transformers.AlbertTokenizer` loads."""
        os.makedirs(directory, exist_ok=True)
        vocab_path = os.path.join(directory, VOCAB_FILE_NAME)
        if os.path.isfile(self.vocab_file):
            if os.path.abspath(self.vocab_file) != os.path.abspath(vocab_path):
                shutil.copyfile(self.vocab_file, vocab_path)
        else:
            with open(vocab_path, "wb") as f:
                f.write(self.sp_model.serialized_model_proto())
        config = {
            "tokenizer_class": "AlbertTokenizer",
            "do_lower_case": self.do_lower_case,
            "remove_space": self.remove_space,
            "keep_accents": self.keep_accents,
            **{name: token.content for name, token in self._special.items()},
            "added_tokens_decoder": {
                str(self._special_to_id[c]): t.to_json() for c, t in self._special_by_content.items()
            },
            "model_max_length": _VERY_LARGE_INTEGER if self.model_max_length is None else self.model_max_length,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "sp_model_kwargs": self.sp_model_kwargs,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
        }
        config_path = os.path.join(directory, CONFIG_FILE_NAME)
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True, ensure_ascii=False)
            f.write("\n")
        return vocab_path, config_path

    @classmethod
    def from_pretrained(cls, directory: str, **overrides: Any) -> "AlbertTokenizer":
        """Loads a directory written by `save_pretrained` here or in transformers.

        Reads `spiece.model` and, when present, the flags, special tokens (with their stripping rules and
        ids) and defaults of `tokenizer_config.json`. `overrides` are constructor arguments that win over it.
        """
        vocab_path = os.path.join(directory, VOCAB_FILE_NAME)
        if not os.path.isfile(vocab_path):
            raise FileNotFoundError(f"No {VOCAB_FILE_NAME} in `directory` {directory!r}.")
        config: dict[str, Any] = {}
        config_path = os.path.join(directory, CONFIG_FILE_NAME)
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)

        tokenizer_class = config.get("tokenizer_class")
        if tokenizer_class is not None and tokenizer_class not in ("AlbertTokenizer", "AlbertTokenizerFast"):
            raise ValueError(f"{config_path} is for {tokenizer_class!r}, not an ALBERT tokenizer.")
        if config.get("additional_special_tokens"):
            raise ValueError(
                f"{config_path} lists additional_special_tokens {config['additional_special_tokens']!r}, "
                "which this tokenizer does not support."
            )

        saved = {}
        for key, value in config.get("added_tokens_decoder", {}).items():
            saved[value["content"]] = (int(key), value)
        kwargs: dict[str, Any] = {}
        for name in _CONFIG_FLAGS:
            if name in config:
                kwargs[name] = config[name]
        max_len = config.get("model_max_length")
        if isinstance(max_len, int) and max_len <= _LARGE_INTEGER:
            kwargs["model_max_length"] = max_len
        for name in _SPECIAL_TOKEN_ATTRIBUTES:
            value = config.get(name)
            if value is None:
                continue
            token = _as_special_token(value, name, default_lstrip=(name == "mask_token"))
            if token.content in saved:
                # The added_tokens_decoder entry carries the stripping flags transformers actually used.
                token = _as_special_token(saved[token.content][1], name)
            kwargs[name] = token
        kwargs.update(overrides)

        tokenizer = cls(vocab_path, **kwargs)
        special_contents = set(tokenizer.all_special_tokens)
        extra = sorted(c for c in saved if c not in special_contents)
        if extra:
            raise ValueError(
                f"{config_path} adds tokens {extra} beyond the special ones; added tokens are not supported."
            )
        tokenizer._init_special_ids({c: i for c, (i, _) in saved.items()})
        return tokenizer

    # SentencePieceProcessor does not pickle; ship the serialized model so tokenizers cross process bounds
    # (e.g. grain / multiprocessing workers).
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["sp_model"] = self.sp_model.serialized_model_proto()
        return state

    def __setstate__(self, state: dict) -> None:
        proto = state.pop("sp_model")
        self.__dict__.update(state)
        self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.LoadFromSerializedProto(proto)

    def __repr__(self) -> str:
        return (
            f"AlbertTokenizer(vocab_file={self.vocab_file!r}, vocab_size={self.vocab_size}, "
            f"do_lower_case={self.do_lower_case}, remove_space={self.remove_space}, "
            f"keep_accents={self.keep_accents})"
        )


def _ids_as_list(ids: Any, name: str) -> Union[int, list]:
    """Python int / nested lists from ints, lists, tuples or arrays (numpy, jax, anything `np.asarray` takes)."""
    if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
        return int(ids)
    if isinstance(ids, (list, tuple)) and all(isinstance(i, (int, np.integer)) for i in ids):
        return [int(i) for i in ids]
    array = np.asarray(ids)
    if array.dtype.kind not in "iu" and not (array.size == 0 and array.ndim >= 1):
        raise ValueError(f"`{name}` must hold integer ids, got {ids!r}.")
    return array.astype(np.int64).tolist()
