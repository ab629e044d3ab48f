"""MEGA encoder parity with the HF PyTorch oracle (MegaModel / MegaForMaskedLM): outputs, hidden states, attention
weights, losses and parameter gradients in fp32, random non-default weights, padded batches (left and right).

Configs cross bidirectional EMA with truncation < L, chunking with simple and rotary biases (including a fully padded
chunk), softmax / laplace / relu2, scalenorm / layernorm / rmsnorm (HF's identity bug), pre / post norm, token
types, with and without the NFFN and the LM dense layer. Plus the save_pretrained round trip through HF.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodels
from tests.mega.pairs import BASE, OUT_TOL, check_parity, make_inputs
from tests.oracle import assert_close, require_torch

ENCODERS = {
    "bidir-softmax-rotary-scalenorm-pre-types": dict(
        attention_activation="softmax", relative_positional_bias="rotary", add_token_type_embeddings=True,
        type_vocab_size=3),
    "bidir-trunc4-laplace-simple-layernorm-post": dict(
        truncation=4, attention_activation="laplace", relative_positional_bias="simple",
        normalization_type="layernorm", normalize_before_mega=False, normalize_before_ffn=False),
    "bidir-chunk4-relu2-simple-rmsnorm-nonffn": dict(
        use_chunking=True, chunk_size=4, attention_activation="relu2", relative_positional_bias="simple",
        normalization_type="rmsnorm", use_normalized_ffn=False, add_lm_hidden_dense_layer=False),
    "bidir-chunk4-softmax-rotary-trunc6": dict(
        use_chunking=True, chunk_size=4, truncation=6, attention_activation="softmax",
        relative_positional_bias="rotary", normalize_before_mega=False),
}

@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoder_parity(tmp_path, name):
    head = "MegaModel" if "types" in name else "MegaForMaskedLM"
    check_parity(tmp_path, head, {**BASE, **ENCODERS[name]}, causal=False)


def test_save_pretrained_round_trip(tmp_path):
    """Ours -> save_pretrained -> HF from_pretrained gives equal logits; back through our doorway, equal params."""
    import transformers

    torch = require_torch()
    cfg = {**BASE, **ENCODERS["bidir-chunk4-softmax-rotary-trunc6"], "model_type": "mega",
           "architectures": ["MegaForMaskedLM"]}
    module = jaxmodels.from_config(cfg)
    params = jax.jit(lambda k: jaxmodels.init_params(module, k))(jax.random.key(7, impl="rbg"))
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.RandomState(8)
    params = jax.tree.unflatten(treedef, [x + 0.1 * jnp.asarray(rng.randn(*x.shape), jnp.float32) for x in leaves])
    jaxmodels.save_pretrained(module, params, str(tmp_path / "ours"))
    hf_model = transformers.MegaForMaskedLM.from_pretrained(tmp_path / "ours").eval()
    inputs = make_inputs(cfg, seed=5, causal=False)
    inputs.pop("labels")
    theirs = hf_model(**{k: torch.tensor(v) for k, v in inputs.items()})
    ours = jax.jit(lambda p, x: module.apply({"params": p}, **x))(params, {k: jnp.asarray(v) for k, v in inputs.items()})
    assert_close(ours.logits, theirs.logits, OUT_TOL, "logits")
    module2, params2 = jaxmodels.from_pretrained(str(tmp_path / "ours"))
    assert module2.config == module.config
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params2)
