"""RemBERT parity with the HF PyTorch oracle: every head on three configs, outputs, hidden states, attentions, losses
and parameter gradients in fp32 (random non-default weights, padded batches, token types).

The configs put ``input_embedding_size`` below, at and above ``hidden_size`` with ``output_embedding_size``
different from both, and vary the activation, the LayerNorm epsilon, the depth and the token-type table; the first
has large-mean embeddings (a fast-variance LayerNorm fails there). The causal LM is a decoder in every config and
cross-attends to padded encoder states in the last. Also: the three sequence-classification problem types, explicit
positions and ``inputs_embeds``, the ``save_pretrained`` round trip through HF, and a released-style checkpoint
(no LM head) loaded into ``RemBertForMaskedLM``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodels
from tests.oracle import assert_close, randomize_, require_torch
from tests.rembert.pairs import BASE, HEADS, OUT_TOL, build_pair, check_parity, config_for, make_inputs

CONFIGS = {
    # Word embeddings of mean 6 (std 0.2): measured 3.7e-6 with the two-pass LayerNorm, 9.0e-5 with E[x^2] - E[x]^2.
    "E_in<H-gelu-mean6": (dict(input_embedding_size=10, hidden_act="gelu"), 6.0),
    "E_in=H-gelu_new-eps1e-5-types3-L1": (dict(input_embedding_size=24, hidden_act="gelu_new", layer_norm_eps=1e-5,
                                               type_vocab_size=3, num_hidden_layers=1), 0.0),
    "E_in>H-relu-L3-cross": (dict(input_embedding_size=32, hidden_act="relu", num_hidden_layers=3, cross=True), 0.0),
}


@pytest.mark.parametrize("cfg_name", list(CONFIGS))
@pytest.mark.parametrize("head", HEADS)
def test_head_parity(head, cfg_name):
    overrides, embedding_mean = CONFIGS[cfg_name]
    check_parity(head, config_for(head, {**BASE, **overrides}), embedding_mean)


@pytest.mark.parametrize("problem,num_labels", [("regression", 1), ("multi", 4), ("single", 5)])
def test_sequence_classification_problem_types(problem, num_labels):
    """num_labels == 1 is regression (MSE); float multi-hot labels are multi-label (BCE); ints are cross-entropy.
    (HF writes the problem type it inferred into its config, so each case has its own model.)"""
    torch = require_torch()
    cfg = {**BASE, "num_labels": num_labels, "num_hidden_layers": 1}
    hf_model, module, params = build_pair("RemBertForSequenceClassification", cfg)
    inputs = make_inputs("RemBertForSequenceClassification", cfg, seed=4, problem=problem)
    theirs = hf_model(**{k: torch.tensor(v) for k, v in inputs.items()})
    ours = module.apply({"params": params}, **{k: jnp.asarray(v) for k, v in inputs.items()})
    assert ours.logits.shape == (3, num_labels)
    assert_close(ours.logits, theirs.logits, OUT_TOL, "logits")
    assert_close(ours.loss, theirs.loss, OUT_TOL, "loss")


def test_position_ids_and_inputs_embeds():
    """Explicit position_ids follow HF (gathered per row); inputs_embeds [b, l, E_in] replace the word lookup."""
    torch = require_torch()
    cfg = {**BASE, "num_hidden_layers": 1}
    hf_model, module, params = build_pair("RemBertModel", cfg)
    rng = np.random.RandomState(5)
    ids, pos = rng.randint(1, BASE["vocab_size"], (3, 10)), rng.randint(0, 40, (3, 10))
    theirs = hf_model(input_ids=torch.tensor(ids), position_ids=torch.tensor(pos))
    ours = module.apply({"params": params}, input_ids=jnp.asarray(ids), position_ids=jnp.asarray(pos))
    assert_close(ours.last_hidden_state, theirs.last_hidden_state, OUT_TOL, "with position_ids")
    embeds = rng.randn(3, 10, BASE["input_embedding_size"]).astype(np.float32)
    theirs = hf_model(inputs_embeds=torch.tensor(embeds))
    ours = module.apply({"params": params}, inputs_embeds=jnp.asarray(embeds))
    assert_close(ours.last_hidden_state, theirs.last_hidden_state, OUT_TOL, "with inputs_embeds")


def test_save_pretrained_round_trip(tmp_path):
    """Ours -> save_pretrained -> HF from_pretrained: equal logits; back through our doorway: equal params."""
    require_torch()
    import transformers

    cfg = {**config_for("RemBertForCausalLM", {**BASE, "cross": True}), "model_type": "rembert",
           "architectures": ["RemBertForCausalLM"]}
    module = jaxmodels.from_config(cfg)
    # Random values everywhere (no init to compile), so a leaf written under the wrong name cannot match by accident.
    rng = np.random.RandomState(8)
    params = jax.tree.map(lambda s: jnp.asarray(0.2 * rng.randn(*s.shape) + 0.1, s.dtype),
                          jaxmodels.abstract_params(module))
    jaxmodels.save_pretrained(module, params, str(tmp_path))
    hf_model = transformers.RemBertForCausalLM.from_pretrained(tmp_path).eval()
    assert not hf_model.config.tie_word_embeddings and hf_model.config.add_cross_attention
    inputs = make_inputs("RemBertForCausalLM", cfg, seed=6)
    torch = require_torch()
    theirs = hf_model(**{k: torch.tensor(v) for k, v in inputs.items()})
    ours = jax.jit(lambda p, x: module.apply({"params": p}, **x))(params, {k: jnp.asarray(v) for k, v in inputs.items()})
    assert_close(ours.logits, theirs.logits, OUT_TOL, "logits")
    assert_close(ours.loss, theirs.loss, OUT_TOL, "loss")
    module2, params2 = jaxmodels.from_pretrained(str(tmp_path))
    assert type(module2) is type(module) and module2.config == module.config
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params2)


def test_released_checkpoint_without_lm_head_loads_into_masked_lm(tmp_path):
    """google/rembert ships the encoder only: RemBertForMaskedLM gets a fresh head, with HF's warning naming it (and
    the unused pooler), and the encoder's outputs are the checkpoint's."""
    torch = require_torch()
    import transformers

    hf_model = transformers.RemBertModel(transformers.RemBertConfig(**{**BASE, "num_hidden_layers": 1})).eval()
    randomize_(hf_model, seed=4)
    hf_model.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match=r"newly initialised.*cls\.predictions\.decoder\.weight") as record:
        module, params = jaxmodels.from_pretrained(str(tmp_path), architecture="RemBertForMaskedLM",
                                                   rng=jax.random.key(0, impl="rbg"))
    assert any("pooler" in str(w.message) and "not used" in str(w.message) for w in record)
    assert params["predictions"]["decoder"]["kernel"].shape == (BASE["output_embedding_size"], BASE["vocab_size"])
    ids = np.random.RandomState(0).randint(3, BASE["vocab_size"], (2, 6))
    hidden = module.apply({"params": params}, jnp.asarray(ids), output_hidden_states=True).hidden_states[-1]
    assert_close(hidden, hf_model(torch.tensor(ids)).last_hidden_state, OUT_TOL, "encoder output")
