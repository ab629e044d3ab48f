"""Parity of the remaining Reformer heads with HF (outputs in eval with auto-padding, gradients in train mode) and
the save_pretrained round trip; the helpers live in test_parity.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodels
from tests.oracle import assert_close, require_torch
from tests.reformer.test_parity import (
    OUT_TOL,
    check_head_parity,
    hf_config,
    make_inputs,
    rotations,
)

CASES = [
    ("local-lsh-lookahead", "ReformerForMaskedLM"),
    ("local-lsh-lookahead", "ReformerForSequenceClassification"),
    ("local-lsh-lookahead", "ReformerForQuestionAnswering"),
]


@pytest.mark.parametrize("cfg_name,head", CASES)
def test_head_parity(tmp_path, cfg_name, head):
    check_head_parity(tmp_path, cfg_name, head)


def test_save_pretrained_round_trip(tmp_path):
    """Ours -> save_pretrained -> HF from_pretrained gives equal logits; back through our doorway, equal params."""
    torch = require_torch()
    import transformers

    cfg = hf_config("local-lsh-lookahead", "ReformerForMaskedLM").to_dict()
    module = jaxmodels.from_config({**cfg, "architectures": ["ReformerForMaskedLM"]})
    params = jaxmodels.init_params(module, jax.random.key(7, impl="rbg"))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(8, impl="rbg"), len(leaves))
    params = jax.tree.unflatten(treedef, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    jaxmodels.save_pretrained(module, params, str(tmp_path / "ours"))
    hf_model = transformers.ReformerForMaskedLM.from_pretrained(tmp_path / "ours").eval()
    inputs = make_inputs("ReformerModel", 16, module.config.vocab_size, seed=5)
    with torch.no_grad():
        theirs = hf_model(**{k: torch.tensor(v) for k, v in inputs.items()})
    ours = jax.jit(lambda p, x: module.apply({"params": p}, **x, lsh_rotations=rotations(module.config, 16)))(
        params, {k: jnp.asarray(v) for k, v in inputs.items()})
    assert_close(ours.logits, theirs.logits, OUT_TOL, "logits")
    module2, params2 = jaxmodels.from_pretrained(str(tmp_path / "ours"))
    assert type(module2) is type(module) and module2.config == module.config
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params2)
