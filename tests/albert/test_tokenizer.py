"""AlbertTokenizer against the slow `transformers.AlbertTokenizer` on a SentencePiece model trained here."""

import os
import pickle
import random
import subprocess
import sys
import textwrap
import unicodedata

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxmodels.albert.tokenization import AlbertTokenizer, SpecialToken

_SYLLABLES = ["ka", "fe", "na", "ive", "re", "su", "me", "lo", "ber", "tal", "qu", "ick", "br", "own", "the",
              "and", "ing", "er", "st", "ch", "ö", "é", "ï", "ñ", "ç", "à"]
_WORDS = ["Café", "naïve", "résumé", "Hello", "WORLD", "Zoë", "Ångström", "façade", "über", "ALBERT"]


def _corpus(n, seed=0):
    """Sentences with mixed case, accents, numbers with commas, PTB quotes and irregular spacing."""
    rng = random.Random(seed)

    def word():
        if rng.random() < 0.2:
            return rng.choice(_WORDS)
        w = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3)))
        r = rng.random()
        return w.upper() if r < 0.1 else (w.capitalize() if r < 0.35 else w)

    def sentence():
        parts = []
        for _ in range(rng.randint(3, 12)):
            r = rng.random()
            if r < 0.6:
                parts.append(word())
            elif r < 0.7:
                parts.append(f"{rng.randint(1, 999)},{rng.randint(0, 999):03d}")
            elif r < 0.8:
                parts.append(f"{rng.randint(0, 9)},{rng.randint(0, 9)}")
            elif r < 0.86:
                parts.append(", ".join(str(rng.randint(0, 99)) for _ in range(3)) + ",")
            elif r < 0.92:
                parts.append(rng.choice(["``", '"']) + word() + rng.choice(["''", '"']))
            else:
                parts.append(rng.choice([",", ".", "!", "?", "'s", "n't"]))
        text = rng.choice([" ", "  ", " \t"]).join(parts)
        # Half the corpus looks like what ALBERT's preprocessing feeds SentencePiece (lowercase, no accents).
        if rng.random() < 0.5:
            text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()
        return text

    return [sentence() for _ in range(n)]


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("albert_spm") / "spiece")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(2000)),
        model_prefix=prefix,
        vocab_size=300,
        model_type="unigram",
        # ALBERT's layout: <pad>=0, <unk>=1, [CLS]=2, [SEP]=3, [MASK]=4.
        pad_id=0,
        unk_id=1,
        bos_id=-1,
        eos_id=-1,
        control_symbols=["[CLS]", "[SEP]"],
        user_defined_symbols=["[MASK]"],
        character_coverage=1.0,
        # Lets pieces such as "▁77," exist, which ALBERT's digit-comma post-processing exists for.
        split_by_number=False,
        num_threads=1,
        minloglevel=2,
    )
    return prefix + ".model"


VARIANTS = {
    "default": {},
    "keep_accents": {"keep_accents": True},
    "cased": {"do_lower_case": False},
    "keep_space": {"remove_space": False},
    "cased_accents": {"do_lower_case": False, "keep_accents": True},
}


@pytest.fixture(scope="module")
def pairs(vocab_file):
    """variant name -> (ours, transformers') tokenizers built with the same flags."""
    import transformers

    return {
        name: (AlbertTokenizer(vocab_file, **kw), transformers.AlbertTokenizer(vocab_file, **kw))
        for name, kw in VARIANTS.items()
    }


@pytest.fixture(scope="module")
def tok(pairs):
    return pairs["default"][0]


@pytest.fixture(scope="module")
def hf(pairs):
    return pairs["default"][1]


_FRAGMENTS = ["Café", "naïve", "NAÏVE", "résumé", "Zoë", "Ångström", "ΣΑΣ", "ß", "İ", "\ufb01", "\uff11\uff12",
              "1,000", "3,5", "77,", "28,5", "x45,9", "``", "''", '"', "[MASK]", "[CLS]", "[SEP]", "<pad>",
              "<unk>", "[mask]", " ", "  ", "\t", "\n", ",", ".", "!", "n't", "'s", "hello", "the", "ka", "fe",
              "qu", "ick", "0", "9", "é", "e\u0301", "À", "ÇA"]
_ALPHABET = "aAbeEéÉèïÏñÑçÇöÖüÅßkqrs0123456789,,.'`\"!?  \t\n[]"
TEXT = st.one_of(
    st.lists(st.sampled_from(_FRAGMENTS), max_size=12).map("".join),
    st.text(alphabet=_ALPHABET, max_size=30),
)

SAMPLES = [
    "",
    "   ",
    "Hello  WORLD ,  it's a ``Café'' naïve résumé!",
    "77, 1,000 and 3,5 x28,5 45,9",
    "The [MASK] sat on  [MASK]the mat [SEP]  and [CLS]x",
    "ΣΑΣ ß İ \ufb01 \uff11\uff12 e\u0301",
    "  leading and trailing\tspaces\n",
]


def test_special_token_layout_matches_albert(tok, hf, vocab_file):
    sp = spm.SentencePieceProcessor(model_file=vocab_file)
    assert [sp.id_to_piece(i) for i in range(5)] == ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (
        0, 1, 2, 3, 4
    )
    assert (tok.bos_token_id, tok.eos_token_id) == (hf.bos_token_id, hf.eos_token_id) == (2, 3)
    assert tok.all_special_tokens == hf.all_special_tokens
    assert tok.all_special_ids == hf.all_special_ids
    assert tok.vocab_size == hf.vocab_size == 300
    assert len(tok) == len(hf) == 300
    assert tok.get_vocab() == hf.get_vocab()


def test_digit_comma_pieces_are_split(tok, hf, vocab_file):
    sp = spm.SentencePieceProcessor(model_file=vocab_file)

    def digit_comma(piece):
        return len(piece) > 1 and piece[-1] == "," and piece[-2].isdigit()

    word_start, word_inner = [], []
    for a in range(100):
        for text in (f"{a}, x", f"ka{a},5"):
            pieces = sp.encode(tok.preprocess_text(text), out_type=str)
            for piece in filter(digit_comma, pieces):
                (word_start if piece.startswith("\u2581") else word_inner).append(text)
    # Both branches of the post-processing (piece starting a word or continuing one) must be exercised.
    assert word_start and word_inner
    for text in word_start[:10] + word_inner[:10]:
        ours = tok.tokenize(text)
        assert ours == hf.tokenize(text)
        assert ours != sp.encode(tok.preprocess_text(text), out_type=str)
        assert not any(digit_comma(p) for p in ours)
        assert "".join(ours).replace("\u2581", "") == tok.preprocess_text(text).replace(" ", "")


def test_preprocessing(pairs):
    tok, hf = pairs["default"]
    text = "  ``Café''   NAÏVE\tx "
    assert tok.preprocess_text(text) == hf.preprocess_text(text) == '"cafe" naive x'
    tok, hf = pairs["cased_accents"]
    assert tok.preprocess_text(text) == hf.preprocess_text(text) == '"Café" NAÏVE x'
    tok, hf = pairs["keep_space"]
    assert tok.preprocess_text(text) == hf.preprocess_text(text)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@settings(max_examples=40, deadline=None)
@given(text=TEXT, text_pair=TEXT)
def test_matches_transformers_on_random_text(pairs, variant, text, text_pair):
    tok, hf = pairs[variant]
    tokens = tok.tokenize(text)
    assert tokens == hf.tokenize(text)
    ids = tok.encode(text)
    assert ids == hf.encode(text)
    assert tok.convert_tokens_to_ids(tokens) == hf.convert_tokens_to_ids(tokens)
    assert tok.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    pair_ids = tok.encode(text, text_pair)
    assert pair_ids == hf.encode(text, text_pair)
    assert tok(text, text_pair) == dict(hf(text, text_pair))
    for skip in (False, True):
        assert tok.decode(pair_ids, skip_special_tokens=skip) == hf.decode(pair_ids, skip_special_tokens=skip)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_transformers_on_samples(pairs, variant):
    tok, hf = pairs[variant]
    for text in SAMPLES:
        assert tok.tokenize(text) == hf.tokenize(text)
        ids = hf.encode(text, SAMPLES[2])
        assert tok.encode(text, SAMPLES[2]) == ids
        assert tok.decode(ids) == hf.decode(ids)
        assert tok.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
        assert tok.decode(ids, clean_up_tokenization_spaces=True) == hf.decode(
            ids, clean_up_tokenization_spaces=True
        )


def test_special_inputs(tok, hf):
    a, b = [7, 8, 9], [10, 11]
    assert tok.build_inputs_with_special_tokens(a) == [2, 7, 8, 9, 3]
    assert tok.build_inputs_with_special_tokens(a, b) == [2, 7, 8, 9, 3, 10, 11, 3]
    assert tok.create_token_type_ids_from_sequences(a) == [0] * 5
    assert tok.create_token_type_ids_from_sequences(a, b) == [0, 0, 0, 0, 0, 1, 1, 1]
    assert tok.get_special_tokens_mask(a, b) == hf.get_special_tokens_mask(a, b)
    with_specials = tok.build_inputs_with_special_tokens(a, b)
    assert tok.get_special_tokens_mask(with_specials, already_has_special_tokens=True) == [1, 0, 0, 0, 1, 0, 0, 1]
    assert tok.num_special_tokens_to_add() == 2 and tok.num_special_tokens_to_add(pair=True) == 3
    # encode also accepts tokens and ids, like transformers.
    tokens = tok.tokenize("hello café")
    assert tok.encode(tokens) == hf.encode(tokens) == tok.encode("hello café")
    assert tok.encode([5, 6], [7], add_special_tokens=False) == [5, 6, 7]
    assert tok.convert_tokens_to_ids("[MASK]") == 4
    assert tok.convert_tokens_to_ids("not-a-piece") == hf.convert_tokens_to_ids("not-a-piece") == 1
    assert tok.convert_ids_to_tokens(2) == "[CLS]"
    assert tok.convert_ids_to_tokens([2, 7, 3], skip_special_tokens=True) == hf.convert_ids_to_tokens(
        [2, 7, 3], skip_special_tokens=True
    )


BATCH = ["Hello WORLD", "a ``much'' longer Café sentence with 1,000 and 3,5 in it", "", "naïve [MASK] x"]
BATCH_B = ["short", "x", "the second 77, part", "Zoë  über alles und 9,9"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"padding": True},
        {"padding": "longest"},
        {"padding": "max_length", "max_length": 40},
        {"padding": "max_length", "max_length": 12, "truncation": True},
        {"padding": True, "pad_to_multiple_of": 8},
        {"max_length": 9},
        {"add_special_tokens": False, "padding": True},
        {"return_attention_mask": False, "return_token_type_ids": False, "padding": True},
    ],
)
@pytest.mark.parametrize("with_pair", [False, True])
def test_batches_match_transformers(tok, hf, kwargs, with_pair):
    text_pair = BATCH_B if with_pair else None
    ours = tok(BATCH, text_pair, **kwargs)
    assert ours == dict(hf(BATCH, text_pair, **kwargs))
    if len({len(row) for row in ours["input_ids"]}) == 1:
        arrays = tok(BATCH, text_pair, return_tensors="np", **kwargs)
        assert set(arrays) == set(ours)
        for key, value in arrays.items():
            assert value.dtype == np.int32
            np.testing.assert_array_equal(value, np.array(ours[key]))
    if with_pair:
        # A list of (first, second) tuples means the same as text + text_pair lists.
        assert tok(list(zip(BATCH, BATCH_B)), **kwargs) == ours


def test_padding_values(tok):
    out = tok(["a", "a b c"], padding="max_length", max_length=8, return_tensors="np")
    n = len(tok.encode("a"))
    assert out["input_ids"].shape == (2, 8)
    assert (out["input_ids"][0, n:] == tok.pad_token_id).all() and tok.pad_token_id == 0
    np.testing.assert_array_equal(out["attention_mask"][0], [1] * n + [0] * (8 - n))
    assert (out["token_type_ids"][:, :] == 0).all()
    single = tok("a b", "c", return_tensors="np")
    assert single["input_ids"].shape == (1, len(tok.encode("a b", "c")))
    assert single["token_type_ids"][0].tolist() == tok.create_token_type_ids_from_sequences(
        tok.encode("a b", add_special_tokens=False), tok.encode("c", add_special_tokens=False)
    )


LONG_A = "the quick brown fox said 1,000 things to the naïve café owner"
LONG_B = "short reply"


@pytest.mark.parametrize("truncation", [True, "longest_first", "only_first", "only_second"])
@pytest.mark.parametrize("max_length", [3, 5, 8, 13, 20, 200])
@pytest.mark.parametrize("pair", [(LONG_A, LONG_B), (LONG_B, LONG_A), (LONG_A, LONG_A + " x")])
def test_truncation_matches_transformers(tok, hf, truncation, max_length, pair):
    expected = dict(hf(*pair, truncation=truncation, max_length=max_length))
    try:
        ours = tok(*pair, truncation=truncation, max_length=max_length)
    except ValueError:
        # We refuse exactly where transformers gives up (logs an error) and returns an over-long result.
        assert len(expected["input_ids"]) > max_length
    else:
        assert ours == expected
        assert len(ours["input_ids"]) <= max_length


@pytest.mark.parametrize("truncation", [True, "longest_first", "only_first"])
@pytest.mark.parametrize("max_length", [2, 3, 7, 200])
def test_single_sequence_truncation(tok, hf, truncation, max_length):
    expected = dict(hf(LONG_A, truncation=truncation, max_length=max_length))
    try:
        ours = tok(LONG_A, truncation=truncation, max_length=max_length)
    except ValueError:
        assert len(expected["input_ids"]) > max_length
    else:
        assert ours == expected
    assert tok.encode(LONG_A, truncation=True, max_length=7) == hf.encode(LONG_A, truncation=True, max_length=7)


def test_left_sides_and_model_max_length(vocab_file):
    import transformers

    kw = {"padding_side": "left", "truncation_side": "left", "model_max_length": 9}
    tok, hf = AlbertTokenizer(vocab_file, **kw), transformers.AlbertTokenizer(vocab_file, **kw)
    for kwargs in ({"padding": True, "truncation": True}, {"padding": "max_length"}):
        assert tok(BATCH, BATCH_B, **kwargs) == dict(hf(BATCH, BATCH_B, **kwargs))
        assert tok(BATCH, **kwargs) == dict(hf(BATCH, **kwargs))
    assert tok(BATCH, truncation="only_first") == dict(hf(BATCH, truncation="only_first"))


def test_decode_round_trip(tok, hf):
    for text in ["hello world", "the café is naïve", "1,000 and 3,5 or 77, 28,5", "Ka FE na"]:
        ids = tok.encode(text)
        assert tok.decode(ids, skip_special_tokens=True) == tok.preprocess_text(text)
        assert tok.decode(ids) == f"[CLS] {tok.preprocess_text(text)}[SEP]" == hf.decode(ids)
    ids = tok(BATCH, padding=True)["input_ids"]
    expected = hf.batch_decode(ids, skip_special_tokens=True)
    assert tok.batch_decode(ids, skip_special_tokens=True) == expected
    assert tok.batch_decode(np.asarray(ids), skip_special_tokens=True) == expected
    ragged = [tok.encode(t) for t in BATCH]
    assert tok.batch_decode(ragged) == hf.batch_decode(ragged)
    assert tok.decode(np.asarray(ragged[0])) == tok.decode(ragged[0])
    assert tok.decode(4) == hf.decode(4) == "[MASK]"
    assert tok.decode([]) == hf.decode([]) == ""


def test_save_pretrained_loads_in_transformers(tmp_path, vocab_file):
    import transformers

    for i, kw in enumerate([{}, {"keep_accents": True, "do_lower_case": False, "model_max_length": 20}]):
        tok = AlbertTokenizer(vocab_file, **kw)
        directory = tmp_path / f"ours{i}"
        tok.save_pretrained(str(directory))
        assert sorted(os.listdir(directory)) == ["spiece.model", "tokenizer_config.json"]
        hf = transformers.AlbertTokenizer.from_pretrained(str(directory))
        assert (hf.do_lower_case, hf.keep_accents, hf.remove_space) == (
            tok.do_lower_case, tok.keep_accents, tok.remove_space
        )
        assert hf.all_special_ids == tok.all_special_ids
        assert hf.model_max_length == kw.get("model_max_length", int(1e30))
        for text in SAMPLES:
            assert hf.tokenize(text) == tok.tokenize(text)
            assert hf.encode(text, LONG_B) == tok.encode(text, LONG_B)
        again = AlbertTokenizer.from_pretrained(str(directory))
        assert again.model_max_length == kw.get("model_max_length")
        assert [again.tokenize(t) for t in SAMPLES] == [tok.tokenize(t) for t in SAMPLES]


def test_from_pretrained_reads_transformers_directory(tmp_path, vocab_file):
    import transformers

    mask = transformers.AddedToken("[MASK]", lstrip=False, rstrip=True, normalized=False)
    hf = transformers.AlbertTokenizer(
        vocab_file, do_lower_case=False, keep_accents=True, mask_token=mask, model_max_length=11
    )
    hf.save_pretrained(str(tmp_path))
    tok = AlbertTokenizer.from_pretrained(str(tmp_path))
    assert (tok.do_lower_case, tok.keep_accents, tok.model_max_length) == (False, True, 11)
    assert tok.special_tokens["mask_token"] == SpecialToken("[MASK]", lstrip=False, rstrip=True)
    for text in SAMPLES + ["a [MASK]   b", "a   [MASK]b"]:
        assert tok.tokenize(text) == hf.tokenize(text)
    assert tok(BATCH, truncation=True, padding=True) == dict(hf(BATCH, truncation=True, padding=True))
    # Explicit arguments win over the saved config.
    assert AlbertTokenizer.from_pretrained(str(tmp_path), do_lower_case=True).do_lower_case


def test_special_tokens_outside_the_vocab_get_new_ids(vocab_file):
    import transformers

    tok = AlbertTokenizer(vocab_file, mask_token="<mask>", pad_token="<blank>")
    hf = transformers.AlbertTokenizer(vocab_file, mask_token="<mask>", pad_token="<blank>")
    assert (tok.pad_token_id, tok.mask_token_id) == (hf.pad_token_id, hf.mask_token_id) == (300, 301)
    assert len(tok) == len(hf) == 302 and tok.vocab_size == 300
    text = "hello <mask> world <blank>"
    assert tok.tokenize(text) == hf.tokenize(text)
    ids = tok.encode(text)
    assert ids == hf.encode(text)
    assert tok.decode(ids) == hf.decode(ids)
    assert tok(["a", "a b c"], padding=True) == dict(hf(["a", "a b c"], padding=True))


def test_pickle_round_trip(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert [clone.encode(t) for t in SAMPLES] == [tok.encode(t) for t in SAMPLES]


def test_import_needs_neither_torch_nor_transformers(vocab_file):
    code = textwrap.dedent(
        f"""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers"):
                    raise ImportError("blocked " + name)

        sys.meta_path.insert(0, Block())
        from jaxmodels.albert.tokenization import AlbertTokenizer
        print(AlbertTokenizer({vocab_file!r}).encode("hello"))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("[2,")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda t: t("a", padding="max_length"), "padding='max_length' needs `max_length`"),
        (lambda t: t("a", padding="sideways"), "`padding`"),
        (lambda t: t("a", padding=1), "`padding`"),
        (lambda t: t("a", truncation="only_third", max_length=4), "`truncation`"),
        (lambda t: t("a", truncation=True), "needs `max_length`"),
        (lambda t: t(["a", "a b c"], return_tensors="np"), "equal lengths"),
        (lambda t: t("a", return_tensors="pt"), "`return_tensors`"),
        (lambda t: t("a", max_length=0), "`max_length`"),
        (lambda t: t("a", padding=True, pad_to_multiple_of=0), "`pad_to_multiple_of`"),
        (lambda t: t("a", padding=True, truncation=True, max_length=10, pad_to_multiple_of=4), "multiple"),
        (lambda t: t(["a", "b"], ["c"]), "`text_pair`"),
        (lambda t: t(["a", "b"], "c"), "`text_pair`"),
        (lambda t: t("a", ["c"]), "`text_pair`"),
        (lambda t: t([]), "empty batch"),
        (lambda t: t([1, 2]), "item of `text`"),
        (lambda t: t(3), "`text`"),
        (lambda t: t("a", add_special_tokens=False, return_token_type_ids=True), "return_token_type_ids"),
        (lambda t: t(LONG_A, "b", truncation="only_first", max_length=4), "only_first"),
        (lambda t: t(LONG_A, truncation="only_second", max_length=4), "only_second"),
        (lambda t: t(LONG_A, LONG_B, truncation=True, max_length=2), "no room"),
        (lambda t: t.encode(3.5), "`text`"),
        (lambda t: t.tokenize(None), "`text`"),
        (lambda t: t.decode([2, 99999]), "`ids`"),
        (lambda t: t.decode([[2, 3]]), "batch_decode"),
        (lambda t: t.decode(["x"]), "`token_ids`"),
        (lambda t: t.batch_decode([2, 3]), "`sequences`"),
        (lambda t: AlbertTokenizer(t.vocab_file, padding_side="middle"), "`padding_side`"),
        (lambda t: AlbertTokenizer(t.vocab_file, truncation_side="up"), "`truncation_side`"),
        (lambda t: AlbertTokenizer(t.vocab_file, model_max_length=0), "`model_max_length`"),
        (lambda t: AlbertTokenizer(t.vocab_file, mask_token=""), "`mask_token`"),
        (lambda t: AlbertTokenizer("/no/such/spiece.model"), "`vocab_file`"),
    ],
)
def test_bad_arguments_raise(tok, call, match):
    with pytest.raises(ValueError, match=match):
        call(tok)


def test_from_pretrained_errors(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match="spiece.model"):
        AlbertTokenizer.from_pretrained(str(tmp_path))
    tok.save_pretrained(str(tmp_path))
    config_path = tmp_path / "tokenizer_config.json"
    config_path.write_text('{"tokenizer_class": "T5Tokenizer"}')
    with pytest.raises(ValueError, match="T5Tokenizer"):
        AlbertTokenizer.from_pretrained(str(tmp_path))
    config_path.write_text(
        '{"added_tokens_decoder": {"300": {"content": "<extra>", "lstrip": false, "rstrip": false,'
        ' "single_word": false, "normalized": false, "special": false}}}'
    )
    with pytest.raises(ValueError, match="<extra>"):
        AlbertTokenizer.from_pretrained(str(tmp_path))
