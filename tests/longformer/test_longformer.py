"""Where HF's Longformer is wrong, ours is right: ``attention_window=2`` (w = 1) works (equal to the model run on the
dense-mask twin of the attention); per-layer windows pad to a length every window divides ([4, 6] at length 5,
where HF fails, equals HF on the same tokens padded by hand to 12); QA's automatic globals are per row whatever the
separator counts. And RoBERTa -> Longformer (``from_roberta``): on inputs within the window the converted model
computes what HF's RoBERTa does, and HF's Longformer loads what ``save_pretrained`` writes of it (the MLM bias
under both names) with equal outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodels
from jaxmodels.longformer import LongformerConfig, LongformerModel, from_roberta, modeling
from layers.banded import BandedAttentionOutput, banded_attention_reference
from tests.oracle import assert_close, randomize_, require_torch

FAST_COMPILE = {"xla_backend_optimization_level": 0}
TINY = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24,
            max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _random_params(module, seed=0):
    shapes = jax.eval_shape(lambda: jaxmodels.init_params(module, jax.random.PRNGKey(0)))
    rng = np.random.RandomState(seed)
    return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape), s.dtype), shapes)


def test_attention_window_2_equals_the_dense_twin(monkeypatch):
    """HF 4.46.3 crashes for attention_window=2 at any length; here w = 1 blocks of one token."""
    module = LongformerModel(LongformerConfig(**TINY, attention_window=2), max_global_tokens=2)
    params = _random_params(module)
    rng = np.random.RandomState(1)
    ids = jnp.asarray(rng.randint(3, 40, (2, 7)))
    mask = jnp.asarray([[1] * 7, [1] * 5 + [0] * 2])
    global_mask = jnp.zeros((2, 7), jnp.int32).at[0, 3].set(1).at[1, 0].set(1).at[1, 4].set(1)
    run = lambda: jax.jit(lambda p: module.apply({"params": p}, ids, mask, global_mask).last_hidden_state,  # noqa: E731
                          compiler_options=FAST_COMPILE)(params)
    ours = run()

    def twin(query, key, value, key_mode, *, one_sided_window, slots=None, global_query=None, global_key=None,
             global_value=None, **_):
        out, _, _ = banded_attention_reference(query, key, value, key_mode, one_sided_window=one_sided_window,
                                               slots=slots, global_query=global_query, global_key=global_key,
                                               global_value=global_value)
        return BandedAttentionOutput(out)

    monkeypatch.setattr(modeling, "banded_attention", twin)
    np.testing.assert_allclose(ours, run(), rtol=1e-5, atol=1e-5)


def test_per_layer_windows_pad_to_a_length_every_window_divides(tmp_path):
    torch = require_torch()
    import transformers

    config = dict(TINY, attention_window=[4, 6])
    hf = transformers.LongformerModel(transformers.LongformerConfig(**config)).eval()
    randomize_(hf, seed=2)
    rng = np.random.RandomState(3)
    ids = np.concatenate([[[0]], rng.randint(3, 40, (1, 3)), [[2]]], axis=1)  # 5 tokens: HF pads to 6, fails at 4
    with pytest.raises(AssertionError, match="multiple of 4"):
        hf(torch.tensor(ids))
    by_hand = np.concatenate([ids, np.ones((1, 7), int)], axis=1)  # 12 tokens, which both windows divide
    theirs = hf(torch.tensor(by_hand), attention_mask=torch.tensor((by_hand != 1).astype(int))).last_hidden_state
    hf.save_pretrained(tmp_path)
    module, weights = jaxmodels.from_pretrained(str(tmp_path))
    ours = jax.jit(lambda p, x: module.apply({"params": p}, x).last_hidden_state, compiler_options=FAST_COMPILE)(
        weights, jnp.asarray(ids))
    assert_close(ours, theirs[:, :5], 1e-5, "real tokens")


def test_question_globals_are_per_row_whatever_the_separator_count():
    """HF reshapes the batch's separators to three per row: with 4 and 2 separators row 1 gets row 0's third."""
    ids = jnp.asarray([[0, 5, 2, 2, 7, 2, 2, 1], [0, 5, 6, 2, 8, 9, 2, 1]])
    np.testing.assert_array_equal(modeling.question_global_mask(ids, 2),
                                  [[1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(modeling.choice_global_mask(ids, 2),
                                  [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1, 1]])
    with pytest.raises(ValueError, match=r"input_ids: every row needs a separator \(sep_token_id=2\).*got False at "
                                         r"index \[1\]"):
        modeling.question_global_mask(ids.at[1, jnp.asarray([3, 6])].set(4), 2)


def test_from_roberta_computes_what_roberta_does_and_hf_reloads_it(tmp_path):
    torch = require_torch()
    import transformers

    roberta = transformers.RobertaForMaskedLM(transformers.RobertaConfig(
        **{**TINY, "max_position_embeddings": 20}, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
        eos_token_id=2)).eval()
    randomize_(roberta, seed=4)
    roberta.save_pretrained(tmp_path / "roberta")
    module, params = from_roberta(str(tmp_path / "roberta"), max_position_embeddings=64, attention_window=24)
    assert type(module).__name__ == "LongformerForMaskedLM" and module.config.windows == (24, 24)
    table = np.asarray(params["longformer"]["embeddings"]["position_embeddings"]["embedding"])
    learned = roberta.roberta.embeddings.position_embeddings.weight.detach().numpy()
    np.testing.assert_array_equal(table[:20], learned)
    np.testing.assert_array_equal(table[20:38], learned[2:])  # the learned rows again, then cut at 64
    np.testing.assert_array_equal(table[56:], learned[2:10])
    layer = params["longformer"]["encoder"]["layer"]["attention"]["self"]
    np.testing.assert_array_equal(layer["key_global"]["kernel"], layer["key"]["kernel"])

    rng = np.random.RandomState(5)
    ids = rng.randint(3, 40, (2, 12))
    ids[:, 0], ids[0, -1], ids[1, 9], ids[1, 10:] = 0, 2, 2, 1  # row 1 padded; 12 tokens, all within w = 12
    mask = (ids != 1).astype(int)
    theirs = roberta(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.detach().numpy()
    ours = jax.jit(lambda p: module.apply({"params": p}, jnp.asarray(ids), jnp.asarray(mask)).logits,
                   compiler_options=FAST_COMPILE)(params)
    real = mask.astype(bool)  # RoBERTa's padded rows attend; a Longformer's padded rows are zero
    assert_close(np.asarray(ours)[real], theirs[real], 1e-5, "logits")

    jaxmodels.save_pretrained(module, params, str(tmp_path / "longformer"))
    reloaded = transformers.LongformerForMaskedLM.from_pretrained(tmp_path / "longformer").eval()
    again = reloaded(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.detach().numpy()
    assert_close(again[real], theirs[real], 1e-5, "HF Longformer from our checkpoint")
