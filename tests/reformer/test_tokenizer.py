"""Reformer tokenizers: SentencePiece ids / tokens / decoding equal to the slow transformers.ReformerTokenizer on a
model trained here; the enwik8 byte scheme round-trips text."""

from __future__ import annotations

import random

import numpy as np
import pytest
import sentencepiece as spm

from jaxmodels.reformer.tokenization import ByteTokenizer, ReformerTokenizer

_WORDS = ["the", "raskolnikov", "said", "and", "then", "café", "naïve", "walked", "street", "petersburg", "Sonia",
          "money", "old", "woman", "axe", "123", "it's", "quickly", "ÅNGSTRÖM"]


def _corpus(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12))) + rng.choice([".", "!", "?", ""])
            for _ in range(n)]


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm")
    corpus = d / "corpus.txt"
    corpus.write_text("\n".join(_corpus(400)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(d / "spiece"), vocab_size=60,
                                   model_type="unigram", character_coverage=1.0, unk_id=2, eos_id=1, bos_id=-1,
                                   pad_id=0, unk_piece="<unk>", eos_piece="</s>", pad_piece="<pad>",
                                   minloglevel=2)
    return str(d / "spiece.model")


def test_matches_transformers(spiece, tmp_path):
    from tests.oracle import require_torch

    require_torch()
    import transformers

    theirs = transformers.ReformerTokenizer(spiece, additional_special_tokens=["<sep>"])
    ours = ReformerTokenizer(spiece, additional_special_tokens=["<sep>"])
    texts = _corpus(50, seed=1) + ["Sonia said </s> and the axe", "unknown ☃ symbol", "  spaced   out  ",
                                    "first <sep> second"]
    for text in texts:
        assert ours.tokenize(text) == theirs.tokenize(text), text
        assert ours.encode(text) == theirs.encode(text), text
        ids = theirs.encode(text)
        assert ours.decode(ids) == theirs.decode(ids, clean_up_tokenization_spaces=False), text
        assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False), text
    assert ours.vocab_size == theirs.vocab_size and ours.eos_token_id == theirs.eos_token_id
    # Directories round-trip both ways.
    theirs.save_pretrained(tmp_path / "hf")
    loaded = ReformerTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert loaded.encode(texts[-1]) == theirs.encode(texts[-1])
    ours.save_pretrained(str(tmp_path / "ours"))
    back = transformers.ReformerTokenizer.from_pretrained(tmp_path / "ours")
    assert back.encode(texts[-1]) == ours.encode(texts[-1])


def test_batch_padding(spiece):
    tok = ReformerTokenizer(spiece, pad_token="<pad>")
    out = tok(["the old woman", "axe"], return_tensors="np")
    assert out["input_ids"].shape == out["attention_mask"].shape
    assert out["attention_mask"][1].sum() == len(tok.encode("axe"))
    assert (out["input_ids"][1][out["attention_mask"][1] == 0] == tok.pad_token_id).all()
    with pytest.raises(ValueError, match="pad_token"):
        ReformerTokenizer(spiece)(["a", "bb"], padding=True)


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    texts = ["In 1869, enwik8!", "naïve café", ""]
    ids, mask = tok.encode(texts)
    assert ids.dtype == np.int32 and ids.shape == (3, max(len(t.encode()) for t in texts))
    assert ids[0, 0] == ord("I") + 2 and (ids[mask == 0] == 0).all() and ids.max() < tok.vocab_size
    assert [b.decode() for b in tok.decode_bytes(ids)] == texts
    assert tok.decode(ids)[0] == texts[0]  # ASCII decodes character by character, as HF's model card does
    short, _ = tok.encode("abcdef", max_length=3)
    assert tok.decode(short) == ["abc"]
