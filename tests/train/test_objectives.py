"""train.objectives: MLM masking statistics (property test), sentence-order pairs, causal LM targets."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fast_compile import unoptimised
from train import objectives

BATCH, LENGTH, VOCAB = 32, 64, 200


@functools.partial(jax.jit, static_argnames=("max_predictions",))
def _mask(seed, ids, valid, max_predictions):
    candidates = objectives.maskable(ids, valid)
    return objectives.mask_tokens(jax.random.key(seed, impl="rbg"), ids, candidates, vocab_size=VOCAB,
                                  mask_prob=0.15, max_predictions=max_predictions)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), special_fraction=st.floats(0.0, 0.3),
       max_predictions=st.sampled_from([4, 10, LENGTH]))
def test_mlm_masking_statistics(seed, special_fraction, max_predictions):
    rng = np.random.default_rng(seed)
    ids = rng.integers(objectives.FIRST_ORDINARY_ID, VOCAB, (BATCH, LENGTH))
    specials = rng.random((BATCH, LENGTH)) < special_fraction
    ids = np.where(specials, rng.choice(objectives.SPECIAL_IDS, (BATCH, LENGTH)), ids)
    lengths = rng.integers(0, LENGTH + 1, BATCH)  # valid prefix per row; the rest is padding
    valid = np.arange(LENGTH)[None] < lengths[:, None]
    ids = np.where(valid, ids, 0).astype(np.int32)

    inputs, labels = map(np.asarray, _mask(seed % 2**31, jnp.asarray(ids), jnp.asarray(valid), max_predictions))
    picked = labels != objectives.IGNORE_INDEX
    candidates = valid & ~np.isin(ids, objectives.SPECIAL_IDS)

    # Never padding or special symbols; -100 everywhere else; labels are the original ids.
    assert not (picked & ~candidates).any()
    np.testing.assert_array_equal(labels[picked], ids[picked])
    np.testing.assert_array_equal(inputs[~picked], ids[~picked])
    # The budget: round(15% of candidates), at least 1, at most max_predictions, exactly.
    count = candidates.sum(1)
    budget = np.where(count > 0, np.maximum(np.round(count * 0.15), 1), 0)
    np.testing.assert_array_equal(picked.sum(1), np.minimum(budget, max_predictions))
    # Random replacements are ordinary tokens.
    assert (inputs[picked] != 0).all()
    assert not np.isin(inputs[picked & (inputs != objectives.MASK_ID)], objectives.SPECIAL_IDS).any()

    n = picked.sum()
    if n >= 300:  # 80/10/10 within ~5 standard deviations
        masked = (inputs[picked] == objectives.MASK_ID).mean()
        unchanged = (inputs[picked] == ids[picked]).mean()
        random = 1 - masked - unchanged
        tolerance = 5 * np.sqrt(0.16 / n)
        assert abs(masked - 0.8) < tolerance, masked
        assert abs(unchanged - 0.1) < tolerance, unchanged
        assert abs(random - 0.1) < tolerance, random


def _batch(length=16, batch=4):
    ids = np.arange(10, 10 + batch * length, dtype=np.int32).reshape(batch, length)
    return {"inputs": jnp.asarray(ids), "segment_ids": jnp.ones_like(ids), "positions": jnp.zeros_like(ids)}


def test_sentence_order_pairs():
    batch = _batch(length=17, batch=64)
    pairs = objectives.frame_sentence_order(batch, jax.random.key(0, impl="rbg"))
    ids, types, order = (np.asarray(pairs[k]) for k in ("input_ids", "token_type_ids", "sentence_order_label"))
    n = (17 - 3) // 2
    rows = np.asarray(batch["inputs"])
    first, second = rows[:, :n], rows[:, n:2 * n]
    assert 10 < order.sum() < 54  # about half swapped
    for i in range(64):
        a, b = (second[i], first[i]) if order[i] else (first[i], second[i])
        np.testing.assert_array_equal(ids[i], [objectives.CLS_ID, *a, objectives.SEP_ID, *b, objectives.SEP_ID])
    np.testing.assert_array_equal(types[0], [0] * (n + 2) + [1] * (n + 1))
    assert np.asarray(pairs["attention_mask"]).all()


def test_frame_single_and_padding():
    batch = _batch(length=8, batch=2)
    batch["segment_ids"] = batch["segment_ids"].at[1, 3:].set(0)
    framed = objectives.frame_single(batch)
    ids, mask = np.asarray(framed["input_ids"]), np.asarray(framed["attention_mask"])
    assert ids[0, 0] == objectives.CLS_ID and ids[0, -1] == objectives.SEP_ID
    np.testing.assert_array_equal(ids[0, 1:-1], np.asarray(batch["inputs"])[0, :6])
    np.testing.assert_array_equal(mask[1], [1, 1, 1, 1, 0, 0, 0, 1])


class _EchoLM:
    """Logits that put all mass on the input token: a causal LM scores ln(V) on its shifted targets."""

    class config:
        vocab_size = 50

    def apply(self, variables, input_ids, deterministic, rngs):
        return type("Out", (), {"logits": jax.nn.one_hot(input_ids, 50) * 100.0})


def test_causal_lm_targets_are_shifted():
    ids = jnp.asarray([[7, 8, 9, 10]], jnp.int32)
    batch = {"inputs": ids, "segment_ids": jnp.ones_like(ids), "positions": jnp.zeros_like(ids)}
    loss, metrics = objectives.get_objective({"name": "causal_lm"})(_EchoLM(), {}, batch, jax.random.key(0),
                                                                     deterministic=True)
    assert metrics["accuracy"] == 0  # predicting the current token is always wrong for the next one
    assert float(loss) == pytest.approx(100.0, rel=1e-4)


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match=r"config.objective.name='nope'"):
        objectives.get_objective({"name": "nope"})
    with pytest.raises(ValueError, match=r"config.objective.mask_probability"):
        objectives.get_objective({"name": "mlm", "mask_probability": 0.2})
    with pytest.raises(ValueError, match=r"config.objective.mask_prob"):
        objectives.get_objective({"name": "mlm", "mask_prob": 1.5})
    assert {"mlm", "mlm_sop", "causal_lm", "denoising"} <= set(objectives.OBJECTIVES)


def test_albert_pretraining_objective_runs_on_the_real_model():
    import jaxmodels
    from jaxmodels.registry import preset

    module = jaxmodels.from_config({**preset("albert-tiny"), "architectures": ["AlbertForPreTraining"]})
    batch = _batch(length=16, batch=2)
    objective = objectives.get_objective({"name": "mlm_sop", "max_predictions": 3})
    # One call each: jitted (not op by op) and compiled without most of XLA's optimisation.
    with unoptimised():
        params = jaxmodels.init_params(module, jax.random.PRNGKey(0))
        loss, metrics = jax.jit(lambda p: objective(module, p, batch, jax.random.key(0, impl="rbg"),
                                                    deterministic=True))(params)
    assert np.isfinite(float(loss))
    assert float(loss) == pytest.approx(float(metrics["mlm_loss"] + metrics["sop_loss"]), rel=1e-6)
    assert float(metrics["sop_loss"]) == pytest.approx(np.log(2), abs=0.2)  # untrained: a coin flip


# ------------------------------------------------------------------------------------------------------------
# The masked-LM objective runs the models' labelled-rows loss: same loss, accuracy and gradients as the
# full-logits formula, for every family with a masked-LM head, and a step that never forms the logits.
_MLM_MODELS = {
    "albert": {"model_type": "albert", "architectures": ["AlbertForMaskedLM"], "vocab_size": 300,
               "embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
               "intermediate_size": 48, "max_position_embeddings": 32, "hidden_dropout_prob": 0.0,
               "attention_probs_dropout_prob": 0.0},
    "reformer": {"model_type": "reformer", "architectures": ["ReformerForMaskedLM"], "vocab_size": 300,
                 "hidden_size": 16, "num_attention_heads": 2, "attention_head_size": 8, "feed_forward_size": 24,
                 "attn_layers": ["local", "local"], "local_attn_chunk_length": 8, "axial_pos_embds": False,
                 "max_position_embeddings": 32, "hidden_dropout_prob": 0.0,
                 "local_attention_probs_dropout_prob": 0.0},
    "mega": {"model_type": "mega", "architectures": ["MegaForMaskedLM"], "vocab_size": 300, "hidden_size": 16,
             "num_hidden_layers": 2, "intermediate_size": 24, "ema_projection_size": 4,
             "shared_representation_size": 8, "nffn_hidden_size": 20, "max_positions": 32, "dropout_prob": 0.0,
             "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "nffn_activation_dropout_prob": 0.0},
}


def _full_logits_twin(objective, module, params, batch, rng):
    """The objective's formula on the full [batch, length, vocab] logits (what it computed before)."""
    k_mask, k_model = jax.random.split(rng)
    inputs, labels = objective.corrupt(objectives.frame_single(batch), k_mask, module.config.vocab_size)
    out = objectives._apply(module, params, inputs, k_model, True)
    return objectives.masked_mean_cross_entropy(out.logits, labels)


@pytest.mark.parametrize("family", sorted(_MLM_MODELS))
def test_mlm_objective_equals_the_full_logits_formula(family):
    import jaxmodels

    module = jaxmodels.from_config(_MLM_MODELS[family])
    # Everything here runs once on tiny shapes: compiles without most of XLA's optimisation (the same arithmetic),
    # and one jitted perturbation rather than one eager compile of the normal draw per parameter shape.
    with unoptimised():
        params = jaxmodels.init_params(module, jax.random.PRNGKey(1))
        params = jax.jit(lambda params: jax.tree.map(
            lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape), params))(params)
    rows = np.random.RandomState(0).randint(objectives.FIRST_ORDINARY_ID, 300, (4, 32)).astype(np.int32)
    segments = np.ones_like(rows)
    segments[1, 20:] = 0  # padding in one row
    batch = {"inputs": jnp.asarray(rows * segments), "segment_ids": jnp.asarray(segments),
             "positions": jnp.zeros_like(jnp.asarray(rows))}
    objective = objectives.get_objective({"name": "mlm", "mask_prob": 0.3, "max_predictions": 10})
    rng = jax.random.key(3)

    # Jitted: op-by-op dispatch of a scanned model's backward pass costs more than compiling it.
    with unoptimised():
        (loss, metrics), grads = jax.jit(jax.value_and_grad(
            lambda p: objective(module, p, batch, rng, deterministic=True), has_aux=True))(params)
        (want, want_accuracy), want_grads = jax.jit(jax.value_and_grad(
            lambda p: _full_logits_twin(objective, module, p, batch, rng), has_aux=True))(params)
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
    assert float(metrics["mlm_accuracy"]) == pytest.approx(float(want_accuracy))
    # Relative to the largest gradient: some leaves (a key bias) are zero in exact arithmetic, rounding noise here.
    scale = max(float(np.abs(w).max()) for w in jax.tree.leaves(want_grads))
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6 * scale), grads, want_grads)


def test_mlm_objective_step_never_forms_the_logits_and_survives_an_empty_batch():
    import jaxmodels

    # The loss loop projects 32 positions per example at a time: rows twice that long show the difference.
    config = {**_MLM_MODELS["albert"], "vocab_size": 4000, "max_position_embeddings": 64}
    module = jaxmodels.from_config(config)
    params = jaxmodels.init_params(module, jax.random.PRNGKey(1))
    batch = _batch(length=64, batch=4)
    objective = objectives.get_objective({"name": "mlm", "mask_prob": 0.15, "max_predictions": 4})
    rng = jax.random.key(0)

    def step(loss_fn):
        # The batch is an argument, not a constant: the compiled step checked here also runs the empty batch.
        return jax.jit(jax.value_and_grad(loss_fn, has_aux=True)).lower(params, batch).compile()

    logits = "f32[4,64,4000]"  # [batch, length, vocab]: what the full formula materialises
    assert logits in step(lambda p, b: _full_logits_twin(objective, module, p, b, rng)).as_text()
    compiled = step(lambda p, b: objective(module, p, b, rng, deterministic=True))
    assert logits not in compiled.as_text()

    # All padding: no label anywhere. The loss is 0 and the gradients finite (torch semantics would give 0/0).
    # Same compiled step (op by op, the scanned backward pass took longer than this whole test).
    empty = {k: jnp.zeros_like(v) for k, v in batch.items()}
    (loss, metrics), grads = compiled(params, empty)
    assert float(loss) == 0.0 and float(metrics["mlm_accuracy"]) == 0.0
    assert all(np.isfinite(np.asarray(g)).all() and not np.any(np.asarray(g)) for g in jax.tree.leaves(grads))
