"""The shared tokenizer (`jaxmodels.tokenization`) against the slow `transformers` tokenizers.

Toy vocabularies are trained once per module (a byte-level BPE and a WordPiece with HF `tokenizers`, a unigram
SentencePiece model with `sentencepiece`) on a seeded random corpus of words, accents (composed and decomposed),
CJK, emoji, punctuation, odd whitespace and control characters. Fuzz corpora drawn the same way, with the family's
special tokens mixed in (glued, spaced, lowercased), are then tokenized by both sides: tokens, ids, token types,
attention masks, padding, truncation and decoding must be equal.

- BPE: ours against `BartTokenizer`, `LongformerTokenizer`, `RobertaTokenizer` (also with `add_prefix_space`) and
  `GPT2Tokenizer` (no template).
- WordPiece: ours against `BertTokenizer` (lowercase or not, accents, Chinese characters) and `RealmTokenizer`.
- SentencePiece: ours (BERT template, RemBERT's options) against `RemBertTokenizer` (slow).
- Files: HF-saved directories load here; ours load in transformers; `tokenizer_from_pretrained` picks the class.
"""

import itertools
import json
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import sentencepiece as spm
from tokenizers import Tokenizer as LibraryTokenizer
from tokenizers import models, normalizers, pre_tokenizers, trainers

import jaxmodels
from jaxmodels.albert import AlbertTokenizer
from jaxmodels.reformer import ReformerTokenizer
from jaxmodels.tokenization import (
    BART,
    BERT,
    BERT_SPECIAL_TOKENS,
    ROBERTA,
    ROBERTA_SPECIAL_TOKENS,
    LibraryVocab,
    SentencePieceVocab,
    SpecialToken,
    Template,
    Tokenizer,
    tokenizer_from_pretrained,
)

_WORDS = ["hello", "world", "Hello", "WORLD", "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "Café",
          "naïve", "résumé", "Ångström", "ÉCOLE", "Zoë", "cafe\u0301", "über", "ΣΑΣ", "ß", "İstanbul", "\ufb01ne",
          "中文", "漢字", "カタカナ", "🤗", "don't", "it's", "can't", "1,000", "3.14", "42", "x2", "e-mail", "(paren)",
          '"quoted"', "—", "...", "¿qué?", "unaffable", "running", "jumped", "antidisestablishmentarianism"]
_PUNCTUATION = [",", ".", "!", "?", ";", ":", "'", "-", "(", ")", "[", "]", "<", ">", "/", "#", "##"]
_SEPARATORS = [" ", " ", " ", "  ", "", "\t", "\n", "\u00a0", "\u3000", " \n "]
# NUL, zero-width space, replacement character, vertical tab, line separator, a lone combining accent, an emoji.
_ODD = ["\x00", "\u200b", "\ufffd", "\x0b", "\u2028", "\u0301", "\U0001F600"]


def _corpus(n, seed, specials=()):
    """`n` random texts; `specials` are mixed in as words (some glued to their neighbours)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        text = rng.choice(_SEPARATORS) if rng.random() < 0.3 else ""
        for _ in range(rng.randint(0, 14)):
            r = rng.random()
            if r < 0.6:
                part = rng.choice(_WORDS)
            elif r < 0.78:
                part = rng.choice(_PUNCTUATION)
            elif r < 0.9 and specials:
                part = rng.choice(specials)
            elif r < 0.95:
                part = rng.choice(_ODD)
            else:
                part = str(rng.randint(0, 10 ** rng.randint(1, 6)))
            text += part + rng.choice(_SEPARATORS)
        texts.append(text if rng.random() < 0.85 else text.strip())
    return texts


_TRAINING_TEXT = _corpus(3000, seed=1)


@pytest.fixture(scope="module")
def T():
    """transformers, the oracle (its slow tokenizers need no torch)."""
    import transformers
    transformers.logging.set_verbosity_error()
    return transformers


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory):
    """(vocab.json, merges.txt) of a 500-token byte-level BPE with RoBERTa's special tokens at ids 0-4."""
    directory = tmp_path_factory.mktemp("bpe")
    library = LibraryTokenizer(models.BPE())
    library.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    library.train_from_iterator(_TRAINING_TEXT, trainer)
    library.model.save(str(directory))
    return str(directory / "vocab.json"), str(directory / "merges.txt")


@pytest.fixture(scope="module")
def wordpiece_file(tmp_path_factory):
    """vocab.txt of a 400-token cased WordPiece (emoji never seen: they are unknown words)."""
    directory = tmp_path_factory.mktemp("wordpiece")
    library = LibraryTokenizer(models.WordPiece(unk_token="[UNK]"))
    library.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    library.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                                        show_progress=False)
    library.train_from_iterator([t.replace("🤗", "").replace("\U0001F600", "") for t in _TRAINING_TEXT], trainer)
    library.model.save(str(directory))
    return str(directory / "vocab.txt")


@pytest.fixture(scope="module")
def sentencepiece_file(tmp_path_factory):
    """A 300-piece unigram model with RemBERT's layout: [PAD]=0, [UNK]=1, then [CLS], [SEP], [MASK]."""
    prefix = str(tmp_path_factory.mktemp("sentencepiece") / "sentencepiece")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([t.replace("🤗", "") for t in _TRAINING_TEXT]), model_prefix=prefix, vocab_size=300,
        model_type="unigram", user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"], pad_id=0, unk_id=1, bos_id=-1,
        eos_id=-1, pad_piece="[PAD]", unk_piece="[UNK]", character_coverage=0.995, num_threads=1, minloglevel=2,
    )
    return prefix + ".model"


def rembert_tokenizer(directory):
    """What the RemBERT family will register: BERT's template over plain SentencePiece, which also decodes the
    special tokens (the slow RemBertTokenizer's `convert_tokens_to_string` is `decode_pieces` of everything)."""
    return Tokenizer.from_pretrained(directory, template=BERT, vocab_options={"special_decoding": "model"})


def realm_tokenizer(directory):
    """The REALM family's tokenizer (its record's factory): BERT's WordPiece without the NFC step (REALM's copy of
    the BasicTokenizer predates it)."""
    return jaxmodels.family("realm").tokenizer(directory)


_BPE_SPECIALS = ["<mask>", "<s>", "</s>", "<pad>", "<unk>", " <mask>", "<mask> ", "<MASK>", "<mask>x"]
_BERT_SPECIALS = ["[MASK]", "[CLS]", "[SEP]", "[PAD]", "[UNK]", " [MASK] ", "[mask]", "[MASK]x", "  [MASK]"]

# name -> (transformers class, its kwargs, how we load HF's saved directory, specials for the corpus)
CASES = {
    "bart": ("BartTokenizer", {}, lambda d: Tokenizer.from_pretrained(d, template=BART), _BPE_SPECIALS),
    "longformer": ("LongformerTokenizer", {}, Tokenizer.from_pretrained, _BPE_SPECIALS),
    "roberta": ("RobertaTokenizer", {}, Tokenizer.from_pretrained, _BPE_SPECIALS),
    "roberta_prefix_space": ("RobertaTokenizer", {"add_prefix_space": True}, Tokenizer.from_pretrained,
                             _BPE_SPECIALS),
    # No special token added around sequences; <|endoftext|> is new (after the vocabulary).
    "gpt2": ("GPT2Tokenizer", {}, Tokenizer.from_pretrained, _BPE_SPECIALS + ["<|endoftext|>", " <|endoftext|>"]),
    "bert_uncased": ("BertTokenizer", {}, Tokenizer.from_pretrained, _BERT_SPECIALS),
    "bert_cased": ("BertTokenizer", {"do_lower_case": False}, Tokenizer.from_pretrained, _BERT_SPECIALS),
    "bert_uncased_accents": ("BertTokenizer", {"strip_accents": False}, Tokenizer.from_pretrained, _BERT_SPECIALS),
    "bert_cased_strip": ("BertTokenizer", {"do_lower_case": False, "strip_accents": True}, Tokenizer.from_pretrained,
                         _BERT_SPECIALS),
    "bert_no_chinese": ("BertTokenizer", {"tokenize_chinese_chars": False}, Tokenizer.from_pretrained,
                        _BERT_SPECIALS),
    "realm": ("RealmTokenizer", {}, realm_tokenizer, _BERT_SPECIALS),
    "realm_cased": ("RealmTokenizer", {"do_lower_case": False}, realm_tokenizer, _BERT_SPECIALS),
    "rembert": ("RemBertTokenizer", {}, rembert_tokenizer, _BERT_SPECIALS),
    "rembert_lower": ("RemBertTokenizer", {"do_lower_case": True}, rembert_tokenizer, _BERT_SPECIALS),
    # A mask token outside the SentencePiece vocabulary: a new id after it.
    "rembert_new_mask": ("RemBertTokenizer", {"mask_token": "<mask>"}, rembert_tokenizer,
                         _BERT_SPECIALS + ["<mask>", " <mask>"]),
}


def _vocabulary_files(name, bpe_files, wordpiece_file, sentencepiece_file):
    """The files the transformers class of `CASES[name]` is built from."""
    class_name = CASES[name][0]
    if class_name in ("BartTokenizer", "LongformerTokenizer", "RobertaTokenizer", "GPT2Tokenizer"):
        return bpe_files
    return (wordpiece_file,) if class_name in ("BertTokenizer", "RealmTokenizer") else (sentencepiece_file,)


@pytest.fixture(scope="module")
def pairs(T, bpe_files, wordpiece_file, sentencepiece_file, tmp_path_factory):
    """case name -> (ours, transformers'): ours loaded from the directory transformers saved."""
    out = {}
    for name, (class_name, kwargs, load, _) in CASES.items():
        files = _vocabulary_files(name, bpe_files, wordpiece_file, sentencepiece_file)
        hf = getattr(T, class_name)(*files, **kwargs)
        directory = str(tmp_path_factory.mktemp(name))
        hf.save_pretrained(directory)
        out[name] = (load(directory), hf)
    return out


def _texts(name, n=150, seed=0):
    return _corpus(n, seed=seed + sum(map(ord, name)), specials=CASES[name][3])


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_transformers_on_random_text(pairs, name):
    ours, hf = pairs[name]
    texts = _texts(name)
    for text, text_pair in zip(texts, texts[1:] + texts[:1]):
        assert ours.tokenize(text) == hf.tokenize(text), text
        assert ours(text) == dict(hf(text)), text
        assert ours(text, text_pair) == dict(hf(text, text_pair)), (text, text_pair)
        ids = hf.encode(text, text_pair)
        assert ours.encode(text, text_pair) == ids
        for skip in (False, True):
            for clean_up in (None, False, True):
                assert ours.decode(ids, skip, clean_up) == hf.decode(
                    ids, skip_special_tokens=skip, clean_up_tokenization_spaces=clean_up
                ), (ids, skip, clean_up)


@pytest.mark.parametrize("name", sorted(CASES))
def test_vocabulary_and_special_tokens(pairs, name):
    ours, hf = pairs[name]
    assert ours.all_special_tokens == hf.all_special_tokens
    assert ours.all_special_ids == hf.all_special_ids
    assert (ours.vocab_size, len(ours)) == (hf.vocab_size, len(hf))
    assert ours.get_vocab() == hf.get_vocab()
    for role in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
        assert getattr(ours, f"{role}_token_id") == getattr(hf, f"{role}_token_id"), role
    a, b = [7, 8, 9], [10, 11]
    assert ours.build_inputs_with_special_tokens(a, b) == hf.build_inputs_with_special_tokens(a, b)
    assert ours.create_token_type_ids_from_sequences(a, b) == hf.create_token_type_ids_from_sequences(a, b)
    assert ours.get_special_tokens_mask(a, b) == hf.get_special_tokens_mask(a, b)
    assert ours.get_special_tokens_mask(a) == hf.get_special_tokens_mask(a)
    assert ours.num_special_tokens_to_add(pair=True) == hf.num_special_tokens_to_add(pair=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_random_ids_decode_like_transformers(pairs, name):
    """Any id sequence, special ids and byte fragments of characters included."""
    ours, hf = pairs[name]
    rng = random.Random(0)
    for _ in range(300):
        ids = [rng.randrange(len(hf)) for _ in range(rng.randint(0, 8))]
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), ids
        assert ours.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    batch = [[rng.randrange(len(hf)) for _ in range(5)] for _ in range(4)]
    assert ours.batch_decode(np.asarray(batch), skip_special_tokens=True) == hf.batch_decode(
        batch, skip_special_tokens=True
    )


_LONG = "the quick brown fox jumps over the lazy dog, naïve Café 1,000 times"
_BATCH = ["Hello WORLD", _LONG, "", "a <mask> and [MASK] x"]
_BATCH_PAIR = ["short", "x", "the second 42 part " * 3, "Zoë  über alles"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"padding": True},
        {"padding": "max_length", "max_length": 40},
        {"padding": "max_length", "max_length": 12, "truncation": True},
        {"padding": True, "pad_to_multiple_of": 8},
        {"max_length": 9},
        {"padding": True, "truncation": True, "max_length": 16, "pad_to_multiple_of": 4},
        {"truncation": "longest_first", "max_length": 10},
        {"add_special_tokens": False, "padding": True},
        {"return_token_type_ids": True, "padding": True},
        {"return_attention_mask": False, "return_token_type_ids": False, "padding": True},
    ],
)
@pytest.mark.parametrize("name", ["bart", "longformer", "roberta", "bert_uncased", "realm", "rembert"])
def test_batches_match_transformers(pairs, name, kwargs):
    ours, hf = pairs[name]
    for text_pair in (None, _BATCH_PAIR):
        expected = dict(hf(_BATCH, text_pair, **kwargs))
        assert ours(_BATCH, text_pair, **kwargs) == expected
        if all(len(row) == len(expected["input_ids"][0]) for row in expected["input_ids"]):
            arrays = ours(_BATCH, text_pair, return_tensors="np", **kwargs)  # int32 [batch, length] each
            assert {k: (v.dtype, v.tolist()) for k, v in arrays.items()} == {
                k: (np.int32, v) for k, v in expected.items()
            }


@pytest.mark.parametrize("name", ["roberta", "bert_cased", "rembert"])
def test_truncation_matches_transformers(pairs, name):
    ours, hf = pairs[name]
    texts = [(_LONG, "short reply"), ("short reply", _LONG), (_LONG, _LONG + " x")]
    for (a, b), strategy, max_length in itertools.product(
        texts, ["longest_first", "only_first", "only_second"], [5, 8, 13, 200]
    ):
        expected = dict(hf(a, b, truncation=strategy, max_length=max_length))
        if len(expected["input_ids"]) > max_length:
            # transformers gives up (it logs an error and returns the pair too long); we refuse.
            with pytest.raises(ValueError, match="truncation=|no room"):
                ours(a, b, truncation=strategy, max_length=max_length)
        else:
            assert ours(a, b, truncation=strategy, max_length=max_length) == expected, (strategy, max_length)


@pytest.mark.parametrize("name", ["longformer", "bert_uncased", "rembert_lower"])
def test_left_sides_and_model_max_length(T, bpe_files, wordpiece_file, sentencepiece_file, tmp_path, name):
    class_name, kwargs, load, _ = CASES[name]
    files = _vocabulary_files(name, bpe_files, wordpiece_file, sentencepiece_file)
    hf = getattr(T, class_name)(*files, padding_side="left", truncation_side="left", model_max_length=9, **kwargs)
    hf.save_pretrained(str(tmp_path))
    ours = load(str(tmp_path))
    assert (ours.padding_side, ours.truncation_side, ours.model_max_length) == ("left", "left", 9)
    for call in ({"padding": True, "truncation": True}, {"padding": "max_length"}):
        assert ours(_BATCH, _BATCH_PAIR, **call) == dict(hf(_BATCH, _BATCH_PAIR, **call))
        assert ours(_BATCH, **call) == dict(hf(_BATCH, **call))


def test_built_by_hand_equals_transformers(T, bpe_files, wordpiece_file, sentencepiece_file):
    """The constructors the families will call, without any tokenizer directory."""
    built = {
        "BartTokenizer": (Tokenizer(LibraryVocab.byte_level_bpe(*bpe_files), BART, **ROBERTA_SPECIAL_TOKENS), bpe_files),
        "RealmTokenizer": (Tokenizer(LibraryVocab.wordpiece(wordpiece_file, nfc=False), BERT, do_lower_case=True,
                                     **BERT_SPECIAL_TOKENS), (wordpiece_file,)),
        "RemBertTokenizer": (Tokenizer(SentencePieceVocab(sentencepiece_file, special_decoding="model"), BERT,
                                       **dict(BERT_SPECIAL_TOKENS, mask_token=SpecialToken("[MASK]", lstrip=True))),
                             (sentencepiece_file,)),
    }
    for class_name, (ours, files) in built.items():
        hf = getattr(T, class_name)(*files)
        texts = _corpus(60, seed=5, specials=_BPE_SPECIALS + _BERT_SPECIALS)
        for text, text_pair in zip(texts, texts[::-1]):
            assert ours(text, text_pair) == dict(hf(text, text_pair)), (class_name, text)
            ids = hf.encode(text, text_pair)
            assert ours.decode(ids) == hf.decode(ids), (class_name, ids)


@pytest.mark.parametrize("name", ["bart", "roberta_prefix_space", "bert_cased_strip", "realm", "rembert_new_mask"])
def test_save_pretrained_round_trips_and_loads_in_transformers(T, pairs, name, tmp_path):
    ours, hf = pairs[name]
    written = ours.save_pretrained(str(tmp_path))
    assert all(os.path.isfile(p) for p in written)
    again = CASES[name][2](str(tmp_path))
    theirs = getattr(T, CASES[name][0]).from_pretrained(str(tmp_path))
    assert theirs.all_special_ids == ours.all_special_ids
    for text in _texts(name, n=40, seed=7):
        expected = ours(text, _LONG)
        assert again(text, _LONG) == expected
        assert dict(theirs(text, _LONG)) == expected
        assert theirs.decode(expected["input_ids"]) == again.decode(expected["input_ids"])


def test_tokenizer_json_only_directory(T, bpe_files, tmp_path):
    """A fast tokenizer's directory without the slow files: `tokenizer.json` is read through the library."""
    T.RobertaTokenizerFast(*bpe_files).save_pretrained(str(tmp_path))
    assert Tokenizer.from_pretrained(str(tmp_path)).vocab.kind == "bpe"  # the slow files win while they are there
    for name in ("vocab.json", "merges.txt"):
        os.remove(tmp_path / name)
    ours = Tokenizer.from_pretrained(str(tmp_path))
    assert isinstance(ours.vocab, LibraryVocab) and ours.vocab.kind == "json" and ours.template is ROBERTA
    hf = T.RobertaTokenizer(*bpe_files)
    texts = _corpus(60, seed=8, specials=_BPE_SPECIALS)
    for text, text_pair in zip(texts, texts[::-1]):
        assert ours(text, text_pair) == dict(hf(text, text_pair))
        ids = hf.encode(text)
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
    ours.save_pretrained(str(tmp_path / "again"))
    assert "tokenizer.json" in os.listdir(tmp_path / "again")
    assert Tokenizer.from_pretrained(str(tmp_path / "again")).encode(texts[0]) == hf.encode(texts[0])


def test_older_directory_without_added_tokens_decoder(T, bpe_files, tmp_path):
    """Before `added_tokens_decoder`, special_tokens_map.json held the tokens and their stripping rules."""
    mask = T.AddedToken("<mask>", lstrip=False, rstrip=True)
    T.RobertaTokenizer(*bpe_files, mask_token=mask, pad_token="<unk>").save_pretrained(str(tmp_path))
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config = {k: v for k, v in config.items() if k != "added_tokens_decoder" and not k.endswith("_token")}
    config_path.write_text(json.dumps(config))
    ours, hf = Tokenizer.from_pretrained(str(tmp_path)), T.RobertaTokenizer.from_pretrained(str(tmp_path))
    assert ours.special_tokens["mask_token"] == SpecialToken("<mask>", rstrip=True)
    assert ours.pad_token_id == hf.pad_token_id == ours.unk_token_id
    for text in ["a <mask>   b", "a   <mask>b", "<mask> <mask>  x"] + _corpus(30, seed=9, specials=_BPE_SPECIALS):
        assert ours(text) == dict(hf(text)), text


def test_pickle_round_trip(pairs):
    for name in ("bart", "bert_uncased", "rembert"):
        ours = pairs[name][0]
        clone = pickle.loads(pickle.dumps(ours))
        texts = _texts(name, n=20)
        assert [clone.encode(t) for t in texts] == [ours.encode(t) for t in texts]


def test_tokenizer_from_pretrained_picks_the_class(T, bpe_files, wordpiece_file, sentencepiece_file, tmp_path):
    def saved(name, tokenizer, model_type=None):
        directory = tmp_path / name
        tokenizer.save_pretrained(str(directory))
        if model_type:
            (directory / "config.json").write_text(f'{{"model_type": "{model_type}"}}')
        return str(directory)

    albert = tokenizer_from_pretrained(saved("albert", T.AlbertTokenizer(sentencepiece_file)))
    assert type(albert) is AlbertTokenizer
    albert_by_config = saved("albert_config", AlbertTokenizer(sentencepiece_file), model_type="albert")
    os.remove(os.path.join(albert_by_config, "tokenizer_config.json"))
    assert type(tokenizer_from_pretrained(albert_by_config)) is AlbertTokenizer
    reformer = tokenizer_from_pretrained(saved("reformer", T.ReformerTokenizer(sentencepiece_file)))
    assert type(reformer) is ReformerTokenizer

    # BART's family tokenizer: the shared byte-level BPE with BART's template (RoBERTa's layout, bos/eos named).
    bart_dir = saved("bart", T.BartTokenizer(*bpe_files))
    bart = tokenizer_from_pretrained(bart_dir)
    assert type(bart) is Tokenizer and bart.template is BART
    # MEGA's checkpoints carry RoBERTa's tokenizer: a generic class, whatever config.json says.
    mega = tokenizer_from_pretrained(saved("mega", T.RobertaTokenizer(*bpe_files), model_type="mega"))
    assert type(mega) is Tokenizer and mega.template is ROBERTA
    # Without a tokenizer config, config.json's model_type leads to the MEGA family's tokenizer (RoBERTa's).
    mega_bare = saved("mega_bare", T.RobertaTokenizer(*bpe_files), model_type="mega")
    os.remove(os.path.join(mega_bare, "tokenizer_config.json"))
    mega_bare = tokenizer_from_pretrained(mega_bare)
    assert type(mega_bare) is Tokenizer and mega_bare.template is ROBERTA
    bert = tokenizer_from_pretrained(saved("bert", T.BertTokenizer(wordpiece_file)))
    assert type(bert) is Tokenizer and bert.template is BERT and bert.clean_up_tokenization_spaces
    realm = tokenizer_from_pretrained(saved("realm", T.RealmTokenizer(wordpiece_file)))
    assert realm.template is BERT and realm(["cafe\u0301"]) == dict(T.RealmTokenizer(wordpiece_file)(["cafe\u0301"]))
    text = "Hello <mask> naïve [MASK] world"
    for tokenizer, hf in ((bart, T.BartTokenizer(*bpe_files)), (mega, T.RobertaTokenizer(*bpe_files)),
                          (mega_bare, T.RobertaTokenizer(*bpe_files)),
                          (bert, T.BertTokenizer(wordpiece_file)), (realm, T.RealmTokenizer(wordpiece_file)), (albert, T.AlbertTokenizer(sentencepiece_file))):
        assert tokenizer(text, text) == dict(hf(text, text))

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty.*spiece.model.*vocab.json.*tokenizer.json"):
        tokenizer_from_pretrained(str(empty))
    with pytest.raises(ValueError, match="not a directory"):
        tokenizer_from_pretrained(str(tmp_path / "missing"))
    (empty / "config.json").write_text('{"model_type": "albert"}')
    with pytest.raises(ValueError, match="spiece.model"):
        tokenizer_from_pretrained(str(empty))


def test_errors(sentencepiece_file, bpe_files, tmp_path):
    vocab = SentencePieceVocab(sentencepiece_file)
    with pytest.raises(ValueError, match="needs `cls_token`"):
        Tokenizer(vocab, BERT, sep_token="[SEP]")
    with pytest.raises(ValueError, match="B"):
        Template("broken", single="cls A", pair="cls A sep", token_type_ids=False)
    with pytest.raises(ValueError, match="'tok' in `single`"):
        Template("broken", single="tok A", pair="A B", token_type_ids=False)
    with pytest.raises(ValueError, match="pad_token"):
        Tokenizer(LibraryVocab.byte_level_bpe(*bpe_files), ROBERTA, cls_token="<s>", sep_token="</s>")(
            ["a", "a b c"], padding=True
        )
    AlbertTokenizer(sentencepiece_file).save_pretrained(str(tmp_path))
    os.remove(tmp_path / "tokenizer_config.json")
    # A SentencePiece model says nothing of its family's layout.
    with pytest.raises(ValueError, match="template="):
        Tokenizer.from_pretrained(str(tmp_path))


def test_tokenizes_with_torch_and_transformers_unimportable(bpe_files, wordpiece_file):
    """Data pipelines and TPU hosts tokenize with `sentencepiece`, `tokenizers` and `numpy` alone."""
    script = (
        "import sys\n"
        "sys.modules.update(torch=None, transformers=None)  # `import torch` now raises ImportError\n"
        "from jaxmodels import tokenization as t\n"
        f"bpe = t.Tokenizer(t.LibraryVocab.byte_level_bpe(*{bpe_files!r}), t.ROBERTA, **t.ROBERTA_SPECIAL_TOKENS)\n"
        f"wordpiece = t.Tokenizer(t.LibraryVocab.wordpiece({wordpiece_file!r}), t.BERT, **t.BERT_SPECIAL_TOKENS)\n"
        "print(bpe('hello')['input_ids'][0], wordpiece('hello')['input_ids'][0])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.split()) == (0, ["0", "2"]), done.stderr
