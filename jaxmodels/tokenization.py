"""One tokenizer for every family: the slow `transformers` tokenizer layer, written once, over two libraries.

What it is
    `Tokenizer` turns text into model inputs, and ids back into text, exactly as the slow (pure Python)
    `transformers` tokenizers of our families do, with only `sentencepiece`, `tokenizers` and `numpy` imported (no
    torch, no transformers), so data pipelines and TPU hosts can tokenize. It is made of two parts:

    - a *vocabulary*, the library that cuts plain text (text holding no special token) into tokens and joins tokens
      back into text: `SentencePieceVocab` over `sentencepiece` (ALBERT, Reformer, RemBERT) or `LibraryVocab` over a
      Hugging Face `tokenizers.Tokenizer` (byte-level BPE for BART, Longformer and MEGA's RoBERTa tokenizer;
      WordPiece for REALM and BERT; or whatever a `tokenizer.json` holds);
    - the layer around it, which every family shares: special tokens found in the raw text (with their `lstrip` /
      `rstrip` / `single_word` rules), the family's special-token `Template` (`BERT`, `ROBERTA`, `BART`, `NONE`),
      truncation, padding, batching, numpy output, decoding, and the files of a Hugging Face tokenizer directory.

    A family adds only what is its own: a template, its default special tokens and, for SentencePiece, a small text
    hook (ALBERT's normalisation, in `jaxmodels/albert/tokenization.py`).

How to use
    tok = tokenizer_from_pretrained("some/hf_dir")   # the family's tokenizer, chosen from config.json
    batch = tok(["a sentence", "another one"], padding=True, return_tensors="np")
    batch["input_ids"]        # int32 [batch, length]; batch["attention_mask"] (1 on tokens, 0 on padding) and, for
                              # templates with token types (BERT), batch["token_type_ids"], both [batch, length]
    tok("a sentence", "its pair")                     # one example: python lists, [length] each
    tok.decode(batch["input_ids"][0], skip_special_tokens=True)    # -> str
    tok.save_pretrained("out")                        # files the slow `transformers` class loads

    By hand, from a vocabulary:
    tok = Tokenizer(LibraryVocab.byte_level_bpe("vocab.json", "merges.txt"), ROBERTA, **ROBERTA_SPECIAL_TOKENS)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import sentencepiece as spm
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

SPIECE_UNDERLINE = "\u2581"
CONFIG_FILE_NAME = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE_NAME = "special_tokens_map.json"
TOKENIZER_JSON_FILE_NAME = "tokenizer.json"
# The names HF gives a SentencePiece model (ALBERT/Reformer/T5, RemBERT, XLM-R/BART-multilingual).
SENTENCEPIECE_FILE_NAMES = ("spiece.model", "sentencepiece.model", "sentencepiece.bpe.model")
BPE_FILE_NAMES = ("vocab.json", "merges.txt")
WORDPIECE_FILE_NAME = "vocab.txt"

# transformers writes this sentinel for "no model maximum length"; anything above LARGE_INTEGER means unset.
_VERY_LARGE_INTEGER = int(1e30)
_LARGE_INTEGER = int(1e20)

# Order matters: it is transformers' order of special tokens, and so the order in which tokens missing from the
# vocabulary receive new ids after it.
SPECIAL_TOKEN_ATTRIBUTES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)

_PADDING_STRATEGIES = ("do_not_pad", "longest", "max_length")
_TRUNCATION_STRATEGIES = ("do_not_truncate", "longest_first", "only_first", "only_second")

TextOrPair = Union[str, Sequence[str]]


# ------------------------------------------------------------------------------------------------------------------
# Special tokens and templates


@dataclasses.dataclass(frozen=True)
class SpecialToken:
    """A special token and how it swallows the whitespace around it in raw text.

    Mirrors the fields of `tokenizers.AddedToken` that matter to the slow tokenizer: `lstrip` / `rstrip` remove the
    whitespace on that side of the token before the neighbouring text is tokenized (ALBERT's and RoBERTa's mask token
    use `lstrip=True`, so "a <mask>" tokenizes like "a" followed by the mask), and `single_word` only treats the
    token as special when it is not glued to other non-space text.
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


def special_token(value: Any, name: str, lstrip: bool = False) -> SpecialToken:
    """A `SpecialToken` from a string (stripping as `lstrip` says), a `SpecialToken`, or a saved-config dict."""
    if isinstance(value, SpecialToken):
        return value
    if isinstance(value, str):
        if not value:
            raise ValueError(f"`{name}` must be a non-empty string, got {value!r}.")
        return SpecialToken(value, lstrip=lstrip)
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


@dataclasses.dataclass(frozen=True)
class Template:
    """Where a family puts its special tokens around one sequence or a pair, and the token type of each part.

    `single` and `pair` are written like `tokenizers.processors.TemplateProcessing`: `A` and `B` stand for the two
    sequences, other words name special tokens by role (`cls` is the tokenizer's `cls_token`, likewise `sep`, `bos`,
    `eos`), and `:1` gives a part token type 1 (default 0). `token_type_ids` says whether the family's models take
    token types, i.e. whether `Tokenizer.__call__` returns them unless told otherwise (transformers'
    `model_input_names`).
    """

    name: str
    single: str
    pair: str
    token_type_ids: bool

    def __post_init__(self):
        for field, words in (("single", ("A",)), ("pair", ("A", "B"))):
            items = [item for item, _ in self.parts(field == "pair")]
            if sorted(i for i in items if i in ("A", "B")) != list(words):
                raise ValueError(f"Template {self.name!r}: `{field}` must hold {' and '.join(words)} once each.")
            for item in items:
                if item not in ("A", "B") and f"{item}_token" not in SPECIAL_TOKEN_ATTRIBUTES:
                    raise ValueError(f"Template {self.name!r}: {item!r} in `{field}` is not a special-token role.")

    def parts(self, pair: bool) -> list[tuple[str, int]]:
        """[(item, token type)] in order; an item is "A", "B" or a special-token role ("cls", "sep", ...)."""
        out = []
        for word in (self.pair if pair else self.single).split():
            item, _, type_id = word.partition(":")
            out.append((item, int(type_id or 0)))
        return out


# `[CLS] A [SEP]` / `[CLS] A [SEP] B [SEP]`, types 0 then 1 (ALBERT, RemBERT, REALM, BERT).
BERT = Template("bert", single="cls A sep", pair="cls A sep B:1 sep:1", token_type_ids=True)
# `<s> A </s>` / `<s> A </s></s> B </s>`, types all 0 (Longformer, MEGA's RoBERTa tokenizer).
ROBERTA = Template("roberta", single="cls A sep", pair="cls A sep sep B sep", token_type_ids=False)
# BART writes the same layout with bos/eos (equal to cls/sep unless a checkpoint sets them apart). Named after the
# layout: shared code names no family (tests/test_architecture.py).
BART = Template("bos_eos", single="bos A eos", pair="bos A eos eos B eos", token_type_ids=False)
# Nothing added (Reformer, GPT-2); a pair is just A B, B with token type 1, as transformers' default.
NONE = Template("none", single="A", pair="A B:1", token_type_ids=False)

BERT_SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
ROBERTA_SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    # Behaves like a word: eats the space before it.
    "mask_token": SpecialToken("<mask>", lstrip=True),
}
GPT2_SPECIAL_TOKENS = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}


# ------------------------------------------------------------------------------------------------------------------
# Vocabularies: the libraries. Both answer the same few questions for `Tokenizer`:
#   size                          tokens in the library's vocabulary (special tokens appended after it not counted)
#   unknown_id                    id of a token the vocabulary lacks (None: the tokenizer's `unk_token`)
#   lookup(token), to_token(id)   token <-> id within the vocabulary (None when absent)
#   prepare(text)                 whole-text step before special tokens are cut out (RoBERTa's prefix space)
#   tokenize(segments)            plain texts (no special token inside) -> their tokens, one list each
#   detokenize(tokens, specials)  tokens -> text, as the family's slow `convert_tokens_to_string`
#   config(), save(directory)     the `tokenizer_config.json` entries and the files of the vocabulary


class SentencePieceVocab:
    """A `sentencepiece` model as the vocabulary of a `Tokenizer`.

    Args:
        model_file: path of the SentencePiece model.
        file_name: the name `save` writes it under; None keeps the model file's name when it is one transformers
            reads (`spiece.model`, `sentencepiece.model`, `sentencepiece.bpe.model`), else `spiece.model`.
        pieces: the family's text hook, `(processor, text) -> pieces` for text holding no special token; None is plain
            `processor.encode(text, out_type=str)` (Reformer, RemBERT). It must pickle (a module-level function or a
            frozen dataclass instance); if it has a `config()` method, its entries go into `tokenizer_config.json`.
        special_decoding: how `detokenize` writes special tokens that stand among pieces: "verbatim" (copied,
            Reformer), "spaced" (copied, after a space when text precedes them, ALBERT) or "model" (decoded by
            SentencePiece like any other piece, RemBERT).
        sp_model_kwargs: keyword arguments of `sentencepiece.SentencePieceProcessor` (e.g. subword sampling).
    """

    def __init__(
        self,
        model_file: str,
        *,
        file_name: Optional[str] = None,
        pieces: Optional[Callable[[spm.SentencePieceProcessor, str], list[str]]] = None,
        special_decoding: str = "verbatim",
        sp_model_kwargs: Optional[Mapping[str, Any]] = None,
    ):
        if special_decoding not in ("verbatim", "spaced", "model"):
            raise ValueError(f"`special_decoding` must be 'verbatim', 'spaced' or 'model', got {special_decoding!r}.")
        self.model_file = os.fspath(model_file)
        if file_name is None:
            file_name = os.path.basename(self.model_file)
            file_name = file_name if file_name in SENTENCEPIECE_FILE_NAMES else SENTENCEPIECE_FILE_NAMES[0]
        self.file_name = file_name
        self.pieces = pieces
        self.special_decoding = special_decoding
        self.sp_model_kwargs = dict(sp_model_kwargs or {})
        self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.Load(self.model_file)
        # PieceToId answers unk for pieces it does not know, which is also what the slow tokenizers return.
        self.unknown_id = self.sp_model.unk_id()

    @property
    def size(self) -> int:
        return self.sp_model.GetPieceSize()

    def lookup(self, token: str) -> Optional[int]:
        index = self.sp_model.PieceToId(token)  # unk's id for a string that is no piece
        return index if index != self.unknown_id or self.sp_model.IdToPiece(index) == token else None

    def to_token(self, index: int) -> str:
        return self.sp_model.IdToPiece(index)

    def prepare(self, text: str) -> str:
        return text

    def tokenize(self, segments: Sequence[str]) -> list[list[str]]:
        if self.pieces is not None:
            return [self.pieces(self.sp_model, s) for s in segments]
        return self.sp_model.encode(list(segments), out_type=str)

    def detokenize(self, tokens: Sequence[str], specials: Mapping[str, Any]) -> str:
        if self.special_decoding == "model":
            return self.sp_model.decode_pieces(list(tokens))
        # Special tokens are not pieces SentencePiece should decode (it would drop control symbols): copy them.
        out, run, previous_special = "", [], False
        for token in tokens:
            if token in specials:
                if self.special_decoding == "spaced" and not previous_special:
                    out += " "
                out += self.sp_model.decode(run) + token
                run, previous_special = [], True
            else:
                run.append(token)
                previous_special = False
        return (out + self.sp_model.decode(run)).strip()

    def config(self) -> dict:
        extra = self.pieces.config() if hasattr(self.pieces, "config") else {}
        return {**extra, "sp_model_kwargs": self.sp_model_kwargs}

    def save(self, directory: str) -> list[str]:
        path = os.path.join(directory, self.file_name)
        if os.path.isfile(self.model_file):
            if os.path.abspath(self.model_file) != os.path.abspath(path):
                shutil.copyfile(self.model_file, path)
        else:  # e.g. unpickled on another host: the model travelled as bytes
            with open(path, "wb") as f:
                f.write(self.sp_model.serialized_model_proto())
        return [path]

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


class LibraryVocab:
    """A Hugging Face `tokenizers.Tokenizer` as the vocabulary of a `Tokenizer`.

    Only the library's normalizer, pre-tokenizer, model and decoder are used: special tokens, templates,
    truncation and padding are the shared layer's (the library's versions differ from the slow tokenizers'). Build
    one with `byte_level_bpe`, `wordpiece` or `from_file`; those record the options `tokenizer_config.json` stores.

    Args:
        tokenizer: the library tokenizer.
        kind: "bpe" or "wordpiece" (`save` writes the slow files `vocab.json` + `merges.txt` or `vocab.txt`), or
            "json" (`save` writes `tokenizer.json`).
        add_prefix_space: RoBERTa's option: a space is put before the whole text (not before each piece between
            special tokens, as the library's own option would) so its first word tokenizes like the others.
        config: entries for `tokenizer_config.json` (the options the vocabulary was built with).
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        kind: str = "json",
        add_prefix_space: bool = False,
        config: Optional[Mapping[str, Any]] = None,
    ):
        if kind not in ("bpe", "wordpiece", "json"):
            raise ValueError(f"`kind` must be 'bpe', 'wordpiece' or 'json', got {kind!r}.")
        self.tokenizer = tokenizer
        # Our layer truncates and pads; the library must hand back every token.
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.kind = kind
        self.add_prefix_space = bool(add_prefix_space)
        self._config = dict(config or {})
        # Unknown tokens map to the tokenizer's unk_token (the slow BPE/WordPiece tokenizers' rule).
        self.unknown_id = None

    @classmethod
    def byte_level_bpe(cls, vocab_file: str, merges_file: str, *, add_prefix_space: bool = False) -> "LibraryVocab":
        """GPT-2 / RoBERTa byte-level BPE from `vocab.json` + `merges.txt` (BART, Longformer, MEGA)."""
        library = tokenizers.Tokenizer(models.BPE.from_file(vocab_file, merges_file))
        # The library's own prefix space would go before every piece between special tokens; the slow tokenizers
        # put one before the whole text, which `prepare` does.
        library.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        library.decoder = decoders.ByteLevel()
        config = {"add_prefix_space": bool(add_prefix_space), "errors": "replace"}
        return cls(library, kind="bpe", add_prefix_space=add_prefix_space, config=config)

    @classmethod
    def wordpiece(
        cls,
        vocab_file: str,
        *,
        do_lower_case: bool = True,
        strip_accents: Optional[bool] = None,
        tokenize_chinese_chars: bool = True,
        nfc: bool = True,
        unk_token: str = "[UNK]",
    ) -> "LibraryVocab":
        """BERT's WordPiece from `vocab.txt`, with the slow BasicTokenizer's normalisation.

        `strip_accents=None` strips them when lowercasing, as BERT does. `nfc` composes characters before splitting
        (BertTokenizer does; REALM's copy of the BasicTokenizer does not: it matters for "e" + combining accent in
        cased text).
        """
        library = tokenizers.Tokenizer(models.WordPiece.from_file(vocab_file, unk_token=unk_token))
        strip = do_lower_case if strip_accents is None else bool(strip_accents)
        # The slow order: drop control characters and space out CJK, NFC, then lowercase and strip accents.
        steps = [normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
                                            strip_accents=False, lowercase=False)]
        if nfc:
            steps.append(normalizers.NFC())
        if do_lower_case:
            steps.append(normalizers.Lowercase())
        if strip:
            # BertNormalizer's accent stripping is the slow one: NFD, then drop nonspacing marks (category Mn).
            steps.append(normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False,
                                                    strip_accents=True, lowercase=False))
        library.normalizer = normalizers.Sequence(steps)
        library.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        # No cleanup here: the shared `decode` applies transformers' clean-up rules when asked.
        library.decoder = decoders.WordPiece(prefix="##", cleanup=False)
        config = {"do_lower_case": bool(do_lower_case), "strip_accents": strip_accents,
                  "tokenize_chinese_chars": bool(tokenize_chinese_chars)}
        return cls(library, kind="wordpiece", config=config)

    @classmethod
    def from_file(cls, path: str) -> "LibraryVocab":
        """A `tokenizer.json` (a fast tokenizer's file): the library runs it as written."""
        return cls(tokenizers.Tokenizer.from_file(os.fspath(path)), kind="json")

    @property
    def size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=False)

    def lookup(self, token: str) -> Optional[int]:
        return self.tokenizer.token_to_id(token)

    def to_token(self, index: int) -> Optional[str]:
        return self.tokenizer.id_to_token(index)

    def prepare(self, text: str) -> str:
        if self.add_prefix_space and text and not text[0].isspace():
            return " " + text
        return text

    def tokenize(self, segments: Sequence[str]) -> list[list[str]]:
        if not segments:
            return []
        return [e.tokens for e in self.tokenizer.encode_batch(list(segments), add_special_tokens=False)]

    def detokenize(self, tokens: Sequence[str], specials: Mapping[str, Any]) -> str:
        text = self.tokenizer.decoder.decode(list(tokens)) if self.tokenizer.decoder else " ".join(tokens)
        # The slow WordPiece join strips the ends; byte-level text keeps its spaces.
        return text.strip() if self.kind == "wordpiece" else text

    def config(self) -> dict:
        return dict(self._config)

    def save(self, directory: str) -> list[str]:
        if self.kind == "json":
            path = os.path.join(directory, TOKENIZER_JSON_FILE_NAME)
            self.tokenizer.save(path)
            return [path]
        return list(self.tokenizer.model.save(directory))


Vocabulary = Union[SentencePieceVocab, LibraryVocab]


# ------------------------------------------------------------------------------------------------------------------
# The tokenizer


def _lowercase_outside(text: str, keep: "re.Pattern[str]") -> str:
    """Lowercases `text` one character at a time, leaving the matches of `keep` (special tokens) untouched.

    Character-wise lowering matters: `str.lower` on a whole string applies context rules (Greek final sigma) that
    transformers' per-character lowering does not, and ids must match it exactly.
    """
    parts = keep.split(text)
    # With one capturing group, odd positions of the split are the kept matches.
    return "".join(part if i % 2 else "".join(map(str.lower, part)) for i, part in enumerate(parts))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class Tokenizer:
    """Text <-> model inputs over a `SentencePieceVocab` or `LibraryVocab`, equal to the slow transformers class.

    Args:
        vocab: the library that cuts plain text into tokens and joins them back.
        template: where special tokens go (`BERT`, `ROBERTA`, `BART`, `NONE`).
        bos_token, eos_token, unk_token, sep_token, pad_token, cls_token, mask_token: the special tokens (strings,
            `SpecialToken`s or saved-config dicts; None for none). Tokens missing from the vocabulary get ids after
            it, in this order.
        additional_special_tokens: more special tokens (Reformer's); kept whole in text, skipped by
            `skip_special_tokens`.
        do_lower_case: lowercase the text outside special tokens before the vocabulary sees it (transformers does
            this for every tokenizer with the flag; the vocabulary may lowercase again).
        model_max_length: default length for `truncation` and `padding="max_length"` when `max_length` is not
            given; None means no default.
        clean_up_tokenization_spaces: default of `decode`'s flag of the same name (removes the space before
            punctuation such as " ." and " n't").
        padding_side, truncation_side: "right" or "left".
        tokenizer_class: the transformers class name `save_pretrained` writes (None: not written).
    """

    def __init__(
        self,
        vocab: Vocabulary,
        template: Template = NONE,
        *,
        bos_token: Any = None,
        eos_token: Any = None,
        unk_token: Any = None,
        sep_token: Any = None,
        pad_token: Any = None,
        cls_token: Any = None,
        mask_token: Any = None,
        additional_special_tokens: Sequence[Any] = (),
        do_lower_case: bool = False,
        model_max_length: Optional[int] = None,
        clean_up_tokenization_spaces: bool = False,
        padding_side: str = "right",
        truncation_side: str = "right",
        tokenizer_class: Optional[str] = None,
    ):
        if padding_side not in ("right", "left"):
            raise ValueError(f"`padding_side` must be 'right' or 'left', got {padding_side!r}.")
        if truncation_side not in ("right", "left"):
            raise ValueError(f"`truncation_side` must be 'right' or 'left', got {truncation_side!r}.")
        if model_max_length is not None and (not _is_int(model_max_length) or model_max_length < 1):
            raise ValueError(f"`model_max_length` must be a positive int or None, got {model_max_length!r}.")
        if not isinstance(template, Template):
            raise ValueError(f"`template` must be a Template (BERT, ROBERTA, BART, NONE), got {template!r}.")
        self.vocab = vocab
        self.template = template
        self.do_lower_case = bool(do_lower_case)
        self.model_max_length = None if model_max_length is None else int(model_max_length)
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.tokenizer_class = tokenizer_class

        given = dict(bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, sep_token=sep_token,
                     pad_token=pad_token, cls_token=cls_token, mask_token=mask_token)
        self._special: dict[str, SpecialToken] = {
            name: special_token(value, name) for name, value in given.items() if value is not None
        }
        self._additional = [special_token(t, "additional_special_tokens") for t in additional_special_tokens]
        for item, _ in template.parts(pair=False) + template.parts(pair=True):
            if item not in ("A", "B") and f"{item}_token" not in self._special:
                raise ValueError(f"Template {template.name!r} needs `{item}_token`, which is None.")
        self._assign_ids({})

    # --------------------------------------------------------------------------------------------------------------
    # Special tokens and vocabulary

    def _assign_ids(self, saved_ids: Mapping[str, int]) -> None:
        """Gives every special token an id: its saved id, its vocabulary id, or a new one after the vocabulary.

        `saved_ids` maps token content to the id a saved config recorded for it.
        """
        # One entry per distinct content; the same content under two attributes (bos/cls) is one token, and the
        # first attribute's stripping flags win, as in transformers.
        self._special_by_content: dict[str, SpecialToken] = {}
        for token in [*self._special.values(), *self._additional]:
            self._special_by_content.setdefault(token.content, token)
        self._special_to_id: dict[str, int] = {}
        next_id = max([self.vocab.size] + [int(i) + 1 for i in saved_ids.values()])
        for content in self._special_by_content:
            if content in saved_ids:
                self._special_to_id[content] = int(saved_ids[content])
            elif self.vocab.lookup(content) is not None:
                self._special_to_id[content] = self.vocab.lookup(content)
            else:
                self._special_to_id[content] = next_id
                next_id += 1
        self._id_to_special = {i: c for c, i in self._special_to_id.items()}
        self._total_size = max([self.vocab.size] + [i + 1 for i in self._special_to_id.values()])
        # Longest first so that, of two special tokens starting at the same place, the longer one wins.
        alternatives = sorted(self._special_by_content, key=len, reverse=True)
        self._special_pattern = re.compile("|".join(re.escape(c) for c in alternatives)) if alternatives else None
        # Lowercasing skips special tokens trying them in declaration order (transformers' regex), which differs
        # from the split above only when one special token is a prefix of another.
        self._keep_case_pattern = re.compile("(" + "|".join(re.escape(c) for c in self._special_by_content) + ")"
                                             if self._special_by_content else "(?!)")
        # Additional special tokens outside the vocabulary are written apart, between spaces, when decoding
        # (transformers' "legacy added tokens").
        additional = {t.content for t in self._additional}
        self._written_apart = {c for c in additional if self._special_to_id[c] >= self.vocab.size}

    @property
    def vocab_size(self) -> int:
        """Size of the library's vocabulary (special tokens appended after it not counted)."""
        return self.vocab.size

    def __len__(self) -> int:
        """Size of the full vocabulary, including special tokens appended after the library's."""
        return self._total_size

    def get_vocab(self) -> dict[str, int]:
        """Token -> id for the whole vocabulary."""
        vocab = {self.vocab.to_token(i): i for i in range(self.vocab.size)}
        vocab.update(self._special_to_id)
        return vocab

    @property
    def special_tokens(self) -> dict[str, SpecialToken]:
        """Attribute name (`cls_token`, ...) -> `SpecialToken`, for the attributes that are set."""
        return dict(self._special)

    @property
    def additional_special_tokens(self) -> list[str]:
        return [t.content for t in self._additional]

    @property
    def all_special_tokens(self) -> list[str]:
        """The distinct special token strings, in transformers' order."""
        return list(self._special_by_content)

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of `all_special_tokens`, in the same order."""
        return [self._special_to_id[c] for c in self._special_by_content]

    def _token(self, name: str) -> Optional[str]:
        token = self._special.get(name)
        return None if token is None else token.content

    def _token_id(self, name: str) -> Optional[int]:
        token = self._special.get(name)
        return None if token is None else self._special_to_id[token.content]

    bos_token = property(lambda self: self._token("bos_token"), doc="Beginning-of-sequence token.")
    eos_token = property(lambda self: self._token("eos_token"), doc="End-of-sequence token.")
    unk_token = property(lambda self: self._token("unk_token"), doc="Unknown token.")
    sep_token = property(lambda self: self._token("sep_token"), doc="Separator token.")
    pad_token = property(lambda self: self._token("pad_token"), doc="Padding token.")
    cls_token = property(lambda self: self._token("cls_token"), doc="Classifier token.")
    mask_token = property(lambda self: self._token("mask_token"), doc="Mask token.")

    bos_token_id = property(lambda self: self._token_id("bos_token"), doc="Id of `bos_token` (None if unset).")
    eos_token_id = property(lambda self: self._token_id("eos_token"), doc="Id of `eos_token` (None if unset).")
    unk_token_id = property(lambda self: self._token_id("unk_token"), doc="Id of `unk_token` (None if unset).")
    sep_token_id = property(lambda self: self._token_id("sep_token"), doc="Id of `sep_token` (None if unset).")
    pad_token_id = property(lambda self: self._token_id("pad_token"), doc="Id of `pad_token` (None if unset).")
    cls_token_id = property(lambda self: self._token_id("cls_token"), doc="Id of `cls_token` (None if unset).")
    mask_token_id = property(lambda self: self._token_id("mask_token"), doc="Id of `mask_token` (None if unset).")

    @property
    def pad_token_type_id(self) -> int:
        """token_type_ids value written at padded positions."""
        return 0

    # --------------------------------------------------------------------------------------------------------------
    # Text -> tokens

    def _split_on_special(self, text: str) -> list[str]:
        """Cuts `text` into plain and special-token segments, applying the tokens' stripping rules."""
        if self._special_pattern is None:
            return [text] if text else []
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

    def _tokenize_many(self, texts: Sequence[str]) -> list[list[str]]:
        """`tokenize` over several texts, with one call into the library for all their plain segments."""
        split = []
        for text in texts:
            if not isinstance(text, str):
                raise ValueError(f"`text` must be a str, got {type(text).__name__}.")
            text = self.vocab.prepare(text)
            if self.do_lower_case:
                text = _lowercase_outside(text, self._keep_case_pattern)
            split.append([s for s in self._split_on_special(text) if s])
        plain = [s for segments in split for s in segments if s not in self._special_by_content]
        pieces = iter(self.vocab.tokenize(plain))
        out = []
        for segments in split:
            tokens: list[str] = []
            for segment in segments:
                if segment in self._special_by_content:
                    tokens.append(segment)
                else:
                    tokens.extend(next(pieces))
            out.append(tokens)
        return out

    def tokenize(self, text: str) -> list[str]:
        """Splits `text` into the library's tokens; special tokens written in the text stay whole."""
        return self._tokenize_many([text])[0]

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]) -> Union[int, list[int]]:
        """Token (or tokens) -> id (or ids); tokens outside the vocabulary map to the unknown token's id."""
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def _token_to_id(self, token: str) -> int:
        special = self._special_to_id.get(token)
        if special is not None:
            return special
        index = self.vocab.lookup(token)
        if index is None:
            index = self.vocab.unknown_id if self.vocab.unknown_id is not None else self.unk_token_id
        if index is None:
            raise ValueError(f"token {token!r} is not in the vocabulary and this tokenizer has no `unk_token`.")
        return index

    def convert_ids_to_tokens(
        self, ids: Union[int, Sequence[int]], skip_special_tokens: bool = False
    ) -> Union[str, list[str]]:
        """Id (or ids) -> token (or tokens); `skip_special_tokens` drops special ids from a sequence."""
        if _is_int(ids):
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
        token = self.vocab.to_token(index) if 0 <= index < self.vocab.size else None
        if token is None:
            raise ValueError(f"`ids` holds {index}, outside the vocabulary [0, {len(self)}).")
        return token

    # --------------------------------------------------------------------------------------------------------------
    # Tokens -> text

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Joins tokens into text, as the family's slow tokenizer does."""
        return self.vocab.detokenize(tokens, self._special_by_content)

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

        `clean_up_tokenization_spaces=None` uses the tokenizer's default (its config's value).
        """
        ids = _ids_as_list(token_ids, "token_ids")
        if isinstance(ids, int):
            ids = [ids]
        elif ids and isinstance(ids[0], list):
            raise ValueError("`token_ids` must be one sequence of ids; use batch_decode for a batch.")
        tokens = self.convert_ids_to_tokens(ids, skip_special_tokens=skip_special_tokens)
        if skip_special_tokens:  # also a vocabulary piece that reads like a special token, as transformers
            tokens = [t for t in tokens if t not in self._special_by_content]
        # Additional special tokens beyond the vocabulary are not the library's to decode: they stand apart.
        parts, run = [], []
        for token in tokens:
            if token in self._written_apart:
                if run:
                    text = self.convert_tokens_to_string(run)
                    if text:
                        parts.append(text)
                parts.append(token)
                run = []
            else:
                run.append(token)
        if run:
            parts.append(self.convert_tokens_to_string(run))
        text = " ".join(parts)
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

    # --------------------------------------------------------------------------------------------------------------
    # Model inputs

    def _apply_template(
        self, ids: Sequence[int], pair_ids: Optional[Sequence[int]]
    ) -> tuple[list[int], list[int], list[int]]:
        """(input ids, token type ids, special-token mask) of `ids` (and `pair_ids`) laid out by the template."""
        input_ids, type_ids, special = [], [], []
        for item, type_id in self.template.parts(pair_ids is not None):
            if item in ("A", "B"):
                part = list(ids if item == "A" else pair_ids)
                special += [0] * len(part)
            else:
                part = [self._token_id(f"{item}_token")]
                special.append(1)
            input_ids += part
            type_ids += [type_id] * len(part)
        return input_ids, type_ids, special

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: Optional[list[int]] = None
    ) -> list[int]:
        """The template around one sequence or a pair, e.g. `[CLS] A [SEP] B [SEP]`."""
        return self._apply_template(token_ids_0, token_ids_1)[0]

    def create_token_type_ids_from_sequences(
        self, token_ids_0: list[int], token_ids_1: Optional[list[int]] = None
    ) -> list[int]:
        """Token type of each position of `build_inputs_with_special_tokens`."""
        return self._apply_template(token_ids_0, token_ids_1)[1]

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
        return self._apply_template(token_ids_0, token_ids_1)[2]

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """How many special tokens the template adds to one sequence (or a pair)."""
        return sum(item not in ("A", "B") for item, _ in self.template.parts(pair))

    def _texts_to_ids(self, texts: Sequence[Any], name: str) -> list[list[int]]:
        """Strings, lists of tokens or lists of ids -> ids (strings tokenized together)."""
        strings = [t for t in texts if isinstance(t, str)]
        tokenized = iter(self._tokenize_many(strings))
        out = []
        for text in texts:
            if isinstance(text, str):
                out.append(self.convert_tokens_to_ids(next(tokenized)))
            elif isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
                out.append(self.convert_tokens_to_ids(list(text)))
            elif isinstance(text, (list, tuple)) and all(_is_int(t) for t in text):
                out.append([int(t) for t in text])
            else:
                raise ValueError(f"`{name}` must be a str, a list of tokens or a list of ids, got {text!r}.")
        return out

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
            input_ids, token_type_ids, _ = self._apply_template(ids, pair_ids)
        else:
            # Without special tokens there is no segment boundary to mark, so all zeros (as transformers).
            input_ids = list(ids) + (list(pair_ids) if pair else [])
            token_type_ids = [0] * len(input_ids)
        return {"input_ids": input_ids, "token_type_ids": token_type_ids}

    def _pad(self, example: dict[str, list[int]], length: int) -> dict[str, list[int]]:
        """Pads one example to `length` on `padding_side`; adds `attention_mask`. Longer ones stay as they are."""
        n = len(example["input_ids"])
        missing = max(length - n, 0)
        if missing and self.pad_token_id is None:
            raise ValueError("padding needs a `pad_token`, and this tokenizer has none; pass pad_token=... .")
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

        if max_length is not None and (not _is_int(max_length) or max_length < 1):
            raise ValueError(f"`max_length` must be a positive int or None, got {max_length!r}.")
        if pad_to_multiple_of is not None and (not _is_int(pad_to_multiple_of) or pad_to_multiple_of < 1):
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
        """One sequence (or pair) -> ids laid out by the template, truncated like `__call__`.

        `text` / `text_pair` may be strings, lists of tokens or lists of ids.
        """
        _, truncation, max_length = self._resolve_strategies(False, truncation, max_length, None)
        ids = self._texts_to_ids([text], "text")[0]
        pair_ids = None if text_pair is None else self._texts_to_ids([text_pair], "text_pair")[0]
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
            return_token_type_ids: include `token_type_ids`; None means "if the template's models take them".
                Padding positions get 0.
            add_special_tokens: lay the sequences out with the template's special tokens.
            pad_to_multiple_of: round the padded length up to a multiple of this.

        Returns:
            dict with `input_ids`, and `token_type_ids` / `attention_mask` unless turned off; `[length]` lists for a
            single string, `[batch][length]` lists for a batch, or `[batch, length]` int32 arrays with "np".
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
        firsts = self._texts_to_ids([first for first, _ in pairs], "text")
        seconds = iter(self._texts_to_ids([second for _, second in pairs if second is not None], "text_pair"))
        examples = [
            self._prepare(ids, None if second is None else next(seconds), add_special_tokens, truncation, max_length)
            for ids, (_, second) in zip(firsts, pairs)
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
        if return_token_type_ids or (return_token_type_ids is None and self.template.token_type_ids):
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

    # --------------------------------------------------------------------------------------------------------------
    # Files

    def save_pretrained(self, directory: str) -> tuple[str, ...]:
        """Writes the vocabulary's files and a `tokenizer_config.json`; returns the paths written.

        The slow transformers class loads the directory (the config's `added_tokens_decoder` holds the special tokens
        with their ids and stripping rules, so no `special_tokens_map.json` is needed).
        """
        os.makedirs(directory, exist_ok=True)
        written = self.vocab.save(directory)
        config = {
            **({"tokenizer_class": self.tokenizer_class} if self.tokenizer_class else {}),
            **self.vocab.config(),
            "do_lower_case": self.do_lower_case,
            **{name: token.content for name, token in self._special.items()},
            "additional_special_tokens": [t.content for t in self._additional],
            "added_tokens_decoder": {
                str(self._special_to_id[c]): t.to_json() for c, t in self._special_by_content.items()
            },
            "model_max_length": _VERY_LARGE_INTEGER if self.model_max_length is None else self.model_max_length,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
        }
        path = os.path.join(directory, CONFIG_FILE_NAME)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True, ensure_ascii=False)
            f.write("\n")
        return (*written, path)

    # A family subclass whose constructor takes its vocabulary file first (ALBERT, Reformer) sets these: the file
    # name, the transformers class names it accepts, and the config keys that are constructor arguments.
    vocab_file_name: Optional[str] = None
    tokenizer_classes: tuple[str, ...] = ()
    config_flags: tuple[str, ...] = ()

    @classmethod
    def from_pretrained(
        cls,
        directory: str,
        *,
        template: Optional[Template] = None,
        vocab_options: Optional[Mapping[str, Any]] = None,
        **overrides: Any,
    ) -> "Tokenizer":
        """Loads a tokenizer directory written by `save_pretrained`, here or in transformers.

        Reads the vocabulary (a SentencePiece model, `vocab.json` + `merges.txt`, `vocab.txt`, or, when none of those
        is there, `tokenizer.json`) and, when present, `tokenizer_config.json` (+ `special_tokens_map.json` in older
        directories): special tokens with their stripping rules and ids, flags, default length and sides.

        Args:
            template: the layout of special tokens. None takes the one of the generic transformers class the config
                names (`BertTokenizer`, `RobertaTokenizer`, `GPT2Tokenizer`), else BERT's for WordPiece and
                RoBERTa's for BPE; a SentencePiece directory needs one (or its family's class).
            vocab_options: extra arguments of the vocabulary's builder, e.g. `{"nfc": False}` for REALM's WordPiece
                or `{"special_decoding": "model"}` for RemBERT's SentencePiece.
            overrides: constructor arguments that win over the directory's config.

        A family subclass (`AlbertTokenizer`) has its own template and vocabulary: it builds `cls(vocab file, **the
        config's flags and special tokens, **overrides)`.
        """
        saved = _SavedConfig(directory)
        if cls.vocab_file_name is not None:
            if template is not None or vocab_options is not None:
                raise ValueError(f"{cls.__name__} has its own template and vocabulary; pass neither.")
            return cls._from_vocab_file(directory, saved, overrides)
        vocab, kind = _open_vocabulary(directory, saved, dict(vocab_options or {}))
        defaults = _GENERIC_CLASSES.get(saved.tokenizer_class) or _GENERIC_CLASSES.get(_CLASS_OF_KIND.get(kind))
        template = template or (defaults and defaults.template)
        if template is None:
            raise ValueError(
                f"{directory!r} holds a {kind} vocabulary for {saved.tokenizer_class or 'no named class'}: pass "
                "`template=` (and the family's `vocab_options`), or load it through the family's tokenizer."
            )
        class_defaults = {} if defaults is None else {
            **defaults.special_tokens,
            "do_lower_case": defaults.do_lower_case,
            "clean_up_tokenization_spaces": defaults.clean_up_tokenization_spaces,
        }
        # Byte-level BPE classes have no lowercasing; the WordPiece and SentencePiece ones lowercase (when asked)
        # outside special tokens before the vocabulary sees the text.
        flags = () if kind == "bpe" else ("do_lower_case",)
        kwargs = {"tokenizer_class": saved.tokenizer_class, **saved.constructor_kwargs(flags, class_defaults)}
        return saved.adopt_ids(cls(vocab, template, **{**kwargs, **overrides}))

    @classmethod
    def _from_vocab_file(cls, directory: str, saved: "_SavedConfig", overrides: Mapping[str, Any]) -> "Tokenizer":
        """`from_pretrained` of a family subclass: `cls(vocab file, **config flags and special tokens)`."""
        if saved.tokenizer_class is not None and saved.tokenizer_class not in cls.tokenizer_classes:
            raise ValueError(f"{saved.path} is for {saved.tokenizer_class!r}, not a {cls.__name__}.")
        path = os.path.join(directory, cls.vocab_file_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No {cls.vocab_file_name} in `directory` {directory!r}.")
        kwargs = saved.constructor_kwargs(cls.config_flags, {})
        return saved.adopt_ids(cls(path, **{**kwargs, **overrides}))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab={type(self.vocab).__name__}, vocab_size={self.vocab_size}, "
            f"template={self.template.name!r}, special_tokens={self.all_special_tokens})"
        )


def _ids_as_list(ids: Any, name: str) -> Union[int, list]:
    """Python int / nested lists from ints, lists, tuples or arrays (numpy, jax, anything `np.asarray` takes)."""
    if _is_int(ids):
        return int(ids)
    if isinstance(ids, (list, tuple)) and all(isinstance(i, (int, np.integer)) for i in ids):
        return [int(i) for i in ids]
    array = np.asarray(ids)
    if array.dtype.kind not in "iu" and not (array.size == 0 and array.ndim >= 1):
        raise ValueError(f"`{name}` must hold integer ids, got {ids!r}.")
    return array.astype(np.int64).tolist()


# ------------------------------------------------------------------------------------------------------------------
# Tokenizer directories


@dataclasses.dataclass(frozen=True)
class _ClassDefaults:
    """What a generic transformers class assumes when its config leaves a value out."""

    template: Template
    special_tokens: Mapping[str, Any]
    do_lower_case: bool = False
    clean_up_tokenization_spaces: bool = False


# Tokenizer classes no family owns: the shared tokenizer reproduces them with a template. Family classes are
# found through the registry (`tokenizer_from_pretrained`).
_GENERIC_CLASSES = {
    "BertTokenizer": _ClassDefaults(BERT, BERT_SPECIAL_TOKENS, do_lower_case=True, clean_up_tokenization_spaces=True),
    "RobertaTokenizer": _ClassDefaults(ROBERTA, ROBERTA_SPECIAL_TOKENS),
    "GPT2Tokenizer": _ClassDefaults(NONE, GPT2_SPECIAL_TOKENS),
}
_GENERIC_CLASSES.update({f"{name}Fast": value for name, value in _GENERIC_CLASSES.items()})
# A directory whose class is not generic (a family's, or none) gets the defaults of its vocabulary's kind.
_CLASS_OF_KIND = {"bpe": "RobertaTokenizer", "wordpiece": "BertTokenizer"}


class _SavedConfig:
    """`tokenizer_config.json` and `special_tokens_map.json` of a directory, read as transformers reads them."""

    def __init__(self, directory: str):
        if not os.path.isdir(directory):
            raise ValueError(f"`directory` {directory!r} is not a directory.")
        self.directory = directory
        self.path = os.path.join(directory, CONFIG_FILE_NAME)
        self.config = _read_json(self.path) or {}
        self.tokenizer_class = self.config.get("tokenizer_class")
        # Content -> (id, entry) of every token the config gave an id.
        self.added = {v["content"]: (int(k), v) for k, v in self.config.get("added_tokens_decoder", {}).items()}
        self.values = {k: self.config[k] for k in (*SPECIAL_TOKEN_ATTRIBUTES, "additional_special_tokens")
                       if self.config.get(k) is not None}
        if "added_tokens_decoder" not in self.config:
            # Older directories: special_tokens_map.json holds the tokens (and wins over the config), and
            # added_tokens.json the tokens added beyond them.
            special_map = _read_json(os.path.join(directory, SPECIAL_TOKENS_MAP_FILE_NAME)) or {}
            self.values.update({k: v for k, v in special_map.items() if v is not None})
            extra = _read_json(os.path.join(directory, "added_tokens.json")) or {}
            self.added.update({content: (int(i), {"content": content}) for content, i in extra.items()})

    def constructor_kwargs(self, flags: Sequence[str], class_defaults: Mapping[str, Any]) -> dict[str, Any]:
        """Constructor arguments: the class defaults, overridden by the config's special tokens and `flags`."""
        kwargs: dict[str, Any] = dict(class_defaults)
        for name in (*flags, "clean_up_tokenization_spaces", "padding_side", "truncation_side"):
            if name in self.config:
                kwargs[name] = self.config[name]
        max_len = self.config.get("model_max_length")
        if _is_int(max_len) and max_len <= _LARGE_INTEGER:
            kwargs["model_max_length"] = int(max_len)
        for name, value in self.values.items():
            if name == "additional_special_tokens":
                kwargs[name] = [self._with_saved_flags(v, name, None) for v in value]
            else:
                kwargs[name] = self._with_saved_flags(value, name, class_defaults.get(name))
        return kwargs

    def _with_saved_flags(self, value: Any, name: str, default: Any) -> SpecialToken:
        """The config's token with the stripping flags transformers would use for it."""
        token = special_token(value, name)
        if token.content in self.added:
            # The added_tokens_decoder entry carries the flags transformers actually used.
            return special_token(self.added[token.content][1], name)
        if isinstance(value, str) and isinstance(default, SpecialToken):
            # A plain string takes the class's flags for that role (e.g. a mask token that eats the space before it).
            return dataclasses.replace(default, content=value)
        return token

    def adopt_ids(self, tokenizer: Tokenizer) -> Tokenizer:
        """Gives `tokenizer`'s special tokens the ids the config recorded; refuses tokens added beyond them."""
        extra = sorted(c for c in self.added if c not in tokenizer.all_special_tokens)
        if extra:
            raise ValueError(
                f"{self.path} adds tokens {extra} beyond the special ones; added tokens are not supported."
            )
        tokenizer._assign_ids({c: i for c, (i, _) in self.added.items()})
        return tokenizer


def _read_json(path: str) -> Optional[Any]:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _open_vocabulary(directory: str, saved: _SavedConfig, options: dict) -> tuple[Vocabulary, str]:
    """The vocabulary of a directory and its kind; the slow files win over `tokenizer.json`."""
    config = saved.config
    for name in SENTENCEPIECE_FILE_NAMES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            options.setdefault("sp_model_kwargs", config.get("sp_model_kwargs"))
            return SentencePieceVocab(path, **options), "sentencepiece"
    vocab_json, merges = (os.path.join(directory, n) for n in BPE_FILE_NAMES)
    if os.path.isfile(vocab_json) and os.path.isfile(merges):
        if config.get("errors", "replace") != "replace" or config.get("add_bos_token"):
            raise ValueError(f"{saved.path}: errors other than 'replace' and GPT-2's add_bos_token are not supported.")
        options.setdefault("add_prefix_space", bool(config.get("add_prefix_space", False)))
        return LibraryVocab.byte_level_bpe(vocab_json, merges, **options), "bpe"
    vocab_txt = os.path.join(directory, WORDPIECE_FILE_NAME)
    if os.path.isfile(vocab_txt):
        if config.get("do_basic_tokenize", True) is not True or config.get("never_split"):
            raise ValueError(f"{saved.path}: do_basic_tokenize=False / never_split are not supported.")
        unk = config.get("unk_token", saved.values.get("unk_token", "[UNK]"))
        options.setdefault("do_lower_case", bool(config.get("do_lower_case", True)))
        options.setdefault("strip_accents", config.get("strip_accents"))
        options.setdefault("tokenize_chinese_chars", bool(config.get("tokenize_chinese_chars", True)))
        options.setdefault("unk_token", special_token(unk, "unk_token").content)
        return LibraryVocab.wordpiece(vocab_txt, **options), "wordpiece"
    tokenizer_json = os.path.join(directory, TOKENIZER_JSON_FILE_NAME)
    if os.path.isfile(tokenizer_json):
        vocab = LibraryVocab.from_file(tokenizer_json)
        model_kind = type(vocab.tokenizer.model).__name__  # BPE, WordPiece, Unigram, WordLevel
        return vocab, {"BPE": "bpe", "WordPiece": "wordpiece"}.get(model_kind, model_kind.lower())
    raise ValueError(
        f"No tokenizer files in {directory!r}: looked for {' / '.join(SENTENCEPIECE_FILE_NAMES)}, "
        f"{' + '.join(BPE_FILE_NAMES)}, {WORDPIECE_FILE_NAME} and {TOKENIZER_JSON_FILE_NAME}."
    )


def _model_type_of_class(tokenizer_class: str) -> str:
    """`AlbertTokenizerFast` -> "albert": transformers names tokenizer classes after the model type."""
    name = tokenizer_class[: -len("Fast")] if tokenizer_class.endswith("Fast") else tokenizer_class
    return name[: -len("Tokenizer")].lower() if name.endswith("Tokenizer") else name.lower()


def tokenizer_from_pretrained(name_or_path: str, *, revision: str | None = None, cache_dir: str | None = None,
                              local_files_only: bool | None = None, token: str | bool | None = None):
    """The tokenizer of an HF directory or Hub model id: the family's (through the registry) or the generic one.

    A Hub id (``"albert/albert-base-v2"``) is resolved through ``huggingface_hub``'s cache (``revision``,
    ``cache_dir``, ``local_files_only`` / ``HF_HUB_OFFLINE``, ``token``), fetching the tokenizer's files and
    ``config.json`` only; an existing local directory wins.

    The family is `config.json`'s `model_type`, else the one `tokenizer_config.json`'s `tokenizer_class` is named
    after (`AlbertTokenizer` -> "albert"). A directory whose class is a generic one (`BertTokenizer`,
    `RobertaTokenizer`, `GPT2Tokenizer`), or whose family registers no tokenizer, gets `Tokenizer.from_pretrained`:
    the template of that class, or the one of its vocabulary files. Raises ValueError naming the directory and the
    files looked for when none is there.
    """
    from jaxmodels import hub  # imports of jaxmodels' modules are deferred: the package imports this one

    directory = hub.resolve(name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                            token=token, files=hub.TOKENIZER_FILES + ("config.json",))
    with hub.naming(name_or_path, directory):
        return _tokenizer_of_directory(directory)


def _tokenizer_of_directory(directory: str):
    from jaxmodels import registry  # the registry imports family packages lazily

    model_config = _read_json(os.path.join(directory, "config.json")) or {}
    tokenizer_class = (_read_json(os.path.join(directory, CONFIG_FILE_NAME)) or {}).get("tokenizer_class")
    if tokenizer_class not in _GENERIC_CLASSES:
        model_type = model_config.get("model_type") or (tokenizer_class and _model_type_of_class(tokenizer_class))
        if model_type in registry.model_types():
            factory = registry.get(model_type).tokenizer
            if factory is not None:
                try:
                    return factory(directory)
                except FileNotFoundError as error:  # one kind of error for "nothing usable here"
                    raise ValueError(str(error)) from error
    return Tokenizer.from_pretrained(directory)
