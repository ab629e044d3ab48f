"""REALM's tokenizer: BERT's uncased WordPiece (``[CLS] A [SEP] B [SEP]``) through the shared
``jaxmodels.tokenization.Tokenizer``, equal to HF's slow ``RealmTokenizer``.

REALM's copy of BERT's BasicTokenizer predates the NFC step of ``BertTokenizer`` ("e" + a combining accent stays
two characters), hence ``nfc=False``.

    tok = load_tokenizer("realm-dir")          # a directory HF's RealmTokenizer (or ours) saved
    batch = tok(["who is the cat"], padding=True, return_tensors="np")
"""

from __future__ import annotations

from jaxmodels.tokenization import BERT, Tokenizer


def load_tokenizer(directory: str, **overrides) -> Tokenizer:
    """The REALM tokenizer of ``directory`` (``vocab.txt`` + ``tokenizer_config.json``); the family's factory."""
    return Tokenizer.from_pretrained(directory, template=BERT, vocab_options={"nfc": False}, **overrides)
