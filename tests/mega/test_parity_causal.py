"""MEGA decoder parity with the HF PyTorch oracle (MegaForCausalLM, causal EMA and causal attention): outputs,
hidden states, attention weights, the shifted LM loss and parameter gradients, right-padded batches (a causal
query whose visible keys are all padding is NaN in HF), truncation < L (HF is run with use_cache=False: its default
cached path ignores truncation), chunking with both biases and a fully padded chunk, all three attention functions.
"""

from __future__ import annotations

import pytest

from tests.mega.pairs import BASE, check_parity

DECODERS = {
    "causal-softmax-rotary": dict(attention_activation="softmax", relative_positional_bias="rotary"),
    "causal-trunc3-laplace-simple-layernorm-post": dict(
        truncation=3, attention_activation="laplace", relative_positional_bias="simple",
        normalization_type="layernorm", normalize_before_mega=False, normalize_before_ffn=False),
    "causal-chunk4-relu2-rotary": dict(
        use_chunking=True, chunk_size=4, attention_activation="relu2", relative_positional_bias="rotary"),
    "causal-chunk4-softmax-simple-types": dict(
        use_chunking=True, chunk_size=4, attention_activation="softmax", relative_positional_bias="simple",
        add_token_type_embeddings=True, type_vocab_size=2, add_lm_hidden_dense_layer=False),
}

@pytest.mark.parametrize("name", list(DECODERS))
def test_decoder_parity(tmp_path, name):
    cfg = {**BASE, **DECODERS[name], "is_decoder": True, "bidirectional": False}
    check_parity(tmp_path, "MegaForCausalLM", cfg, causal=True)


