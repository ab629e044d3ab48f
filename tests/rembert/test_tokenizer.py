"""RemBERT's tokenizer (the family's ``FAMILY.tokenizer``, found by ``jaxmodels.tokenizer_from_pretrained``) against
HF's slow ``RemBertTokenizer`` on a fuzz corpus, with a toy SentencePiece model trained here: tokens, ids, pairs
with token types, padded batches, truncation and decoding."""

from __future__ import annotations

import random

import pytest
import sentencepiece as spm

import jaxmodels
from jaxmodels.tokenization import Tokenizer

_WORDS = ["the", "The", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "Café", "naïve", "ÉCOLE", "Zoë",
          "über", "straße", "中文", "カタカナ", "don't", "1,000", "3.14", "e-mail", "(x)", "—", "...", "¿qué?", "unaffable"]
_SPECIALS = ["[MASK]", " [MASK] ", "[MASK]x", "[CLS]", "[SEP]", "[PAD]", "[UNK]", "[mask]"]
_SEPARATORS = [" ", " ", "  ", "", "\t", "\n", "\u00a0"]


def _corpus(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        parts = [rng.choice(_SPECIALS) if rng.random() < 0.12 else rng.choice(_WORDS) for _ in range(rng.randint(0, 12))]
        text = "".join(p + rng.choice(_SEPARATORS) for p in parts)
        texts.append(text if rng.random() < 0.8 else text.strip())
    return texts


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(ours, HF's): HF's RemBertTokenizer over a 120-piece unigram model with RemBERT's layout ([PAD]=0, [UNK]=1,
    [CLS], [SEP], [MASK]), saved by HF, loaded by our doorway."""
    import transformers
    transformers.logging.set_verbosity_error()
    prefix = str(tmp_path_factory.mktemp("spm") / "sentencepiece")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(1500, seed=1)), model_prefix=prefix, vocab_size=120, model_type="unigram",
        user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"], pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
        pad_piece="[PAD]", unk_piece="[UNK]", character_coverage=0.995, num_threads=1, minloglevel=2)
    hf = transformers.RemBertTokenizer(prefix + ".model")
    directory = str(tmp_path_factory.mktemp("rembert_tokenizer"))
    hf.save_pretrained(directory)
    ours = jaxmodels.tokenizer_from_pretrained(directory)
    assert isinstance(ours, Tokenizer)
    return ours, hf


def test_matches_the_slow_hf_tokenizer_on_a_fuzz_corpus(pair):
    ours, hf = pair
    texts = _corpus(200, seed=2)
    for text, other in zip(texts, texts[1:] + texts[:1]):
        assert ours.tokenize(text) == hf.tokenize(text), text
        assert ours(text) == dict(hf(text)), text
        assert ours(text, other) == dict(hf(text, other)), (text, other)
        ids = hf.encode(text, other)
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), ids


def test_batches_truncation_and_ids(pair):
    ours, hf = pair
    batch, pairs = _corpus(5, seed=3), _corpus(5, seed=4)
    for kwargs in ({"padding": True}, {"padding": "max_length", "max_length": 24, "truncation": True},
                   {"truncation": "longest_first", "max_length": 16}):
        assert ours(batch, pairs, **kwargs) == dict(hf(batch, pairs, **kwargs)), kwargs
    arrays = ours(batch, padding=True, return_tensors="np")
    assert arrays["input_ids"].dtype.name == "int32"
    assert (ours.cls_token_id, ours.sep_token_id, ours.mask_token_id, ours.pad_token_id) == \
        (hf.cls_token_id, hf.sep_token_id, hf.mask_token_id, hf.pad_token_id)
