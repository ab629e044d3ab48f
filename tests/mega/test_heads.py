"""The MEGA task heads against the HF oracle: logits, losses, hidden states, attention weights and parameter
gradients (fp32, padded batches, random weights), each head on a different encoder config."""

from __future__ import annotations

import pytest

from tests.mega.pairs import BASE, check_parity

HEADS = {
    "MegaForSequenceClassification": dict(attention_activation="softmax", relative_positional_bias="simple",
                                          use_chunking=True, chunk_size=4, classifier_dropout=None),
    "MegaForMultipleChoice": dict(attention_activation="laplace", relative_positional_bias="rotary", truncation=5),
    "MegaForTokenClassification": dict(attention_activation="relu2", relative_positional_bias="rotary",
                                       normalization_type="layernorm", normalize_before_ffn=False,
                                       add_token_type_embeddings=True, type_vocab_size=2),
    "MegaForQuestionAnswering": dict(attention_activation="softmax", relative_positional_bias="rotary",
                                     use_chunking=True, chunk_size=6, normalize_before_mega=False, num_labels=2),
}


@pytest.mark.parametrize("head", list(HEADS))
def test_head_parity(tmp_path, head):
    check_parity(tmp_path, head, {**BASE, **HEADS[head]}, causal=False)
