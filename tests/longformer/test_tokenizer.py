"""Longformer's tokenizer (the family's factory: the shared byte-level BPE with RoBERTa's template) against HF's
slow ``LongformerTokenizer`` on a fuzz corpus, from a toy vocabulary and merges trained here
(``tests/test_tokenization.py``'s), through the doorway's ``tokenizer_from_pretrained``. (HF's fast class is not the
reference: it differs from the slow one on some of these texts.)"""

from __future__ import annotations

import json
import os

import jaxmodels
from jaxmodels.tokenization import ROBERTA, ROBERTA_SPECIAL_TOKENS, LibraryVocab, Tokenizer
from tests.test_tokenization import _BPE_SPECIALS, T, _corpus, bpe_files  # noqa: F401  (fixtures)


def test_ids_equal_longformer_tokenizer_on_a_fuzz_corpus(T, bpe_files, tmp_path):  # noqa: F811
    slow = T.LongformerTokenizer(*bpe_files)
    slow.save_pretrained(tmp_path)
    with open(os.path.join(tmp_path, "config.json"), "w") as f:
        json.dump({"model_type": "longformer"}, f)
    ours = jaxmodels.tokenizer_from_pretrained(str(tmp_path))
    by_hand = Tokenizer(LibraryVocab.byte_level_bpe(*bpe_files), ROBERTA, **ROBERTA_SPECIAL_TOKENS)
    texts = _corpus(120, seed=18, specials=_BPE_SPECIALS)
    for text, pair in zip(texts, texts[1:] + texts[:1]):
        expected = dict(slow(text, pair))
        assert ours(text, pair) == expected == by_hand(text, pair), (text, pair)
        assert ours(text) == dict(slow(text)), text
        assert ours.decode(expected["input_ids"]) == slow.decode(expected["input_ids"]), text
