"""BART's tokenizer (the family record's: the shared byte-level BPE with the ``<s> A </s></s> B </s>`` template)
against HF's ``BartTokenizer`` and ``BartTokenizerFast`` on a fuzz corpus, with a toy vocabulary trained here."""

from __future__ import annotations

import pytest

import jaxmodels
from jaxmodels.tokenization import BART, Tokenizer
from tests.test_tokenization import _BPE_SPECIALS, _corpus, bpe_files  # noqa: F401 (bpe_files is a fixture)


@pytest.fixture(scope="module")
def tokenizers(bpe_files, tmp_path_factory):  # noqa: F811
    """(ours through the doorway, HF slow, HF fast), all from the directory HF's slow class saved."""
    import transformers
    directory = tmp_path_factory.mktemp("bart_tokenizer")
    transformers.BartTokenizer(*bpe_files).save_pretrained(str(directory))
    (directory / "config.json").write_text('{"model_type": "bart"}')
    ours = jaxmodels.tokenizer_from_pretrained(str(directory))
    return ours, transformers.BartTokenizer.from_pretrained(str(directory)), \
        transformers.BartTokenizerFast.from_pretrained(str(directory))


def test_family_tokenizer_is_the_shared_one_with_barts_template(tokenizers):
    ours = tokenizers[0]
    assert type(ours) is Tokenizer and ours.template is BART
    assert (ours.bos_token_id, ours.pad_token_id, ours.eos_token_id, ours.unk_token_id) == (0, 1, 2, 3)


def test_ids_equal_hf_on_a_fuzz_corpus(tokenizers):
    ours, slow, fast = tokenizers
    texts = _corpus(200, seed=19, specials=_BPE_SPECIALS)
    for text, pair in zip(texts, texts[1:] + texts[:1]):
        expected = slow(text, pair)["input_ids"]
        assert ours(text, pair)["input_ids"] == expected, (text, pair)
        if pair:  # the fast class alone drops an empty second text (no pair layout); ours follows the slow class
            assert fast(text, pair)["input_ids"] == expected, (text, pair)
        single = slow(text)["input_ids"]
        assert ours(text)["input_ids"] == single == fast(text)["input_ids"], text
        assert ours.decode(single) == slow.decode(single), text
    batch = ours(texts[:8], padding=True)
    assert batch == dict(slow(texts[:8], padding=True))
