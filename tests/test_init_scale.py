"""Fresh weights follow ``config.initializer_range`` in every family, as HF's ``_init_weights`` draws them.

HF's rule (ALBERT, RemBERT, Longformer, Reformer alike, ``transformers`` 4.46): every ``nn.Linear`` weight and
``nn.Embedding`` table is drawn from N(0, initializer_range^2), the padding row of an embedding with a
``padding_idx`` zeroed, every bias 0, every LayerNorm (1, 0). Reformer's one exception: its axial position
embeddings are drawn at ``axial_norm_std``, whatever ``initializer_range`` says.

Each family inits the heads that between them own every parameter-creating path (embeddings, the encoder and its
attention variants, pooler, LM head, classifier / QA heads) at ``initializer_range`` 0.02 and 0.1, with the same
key, and checks:

* every kernel and table at 0.1 is exactly 5x the one at 0.02 (flax draws both from the same keys; only the std
  changes), whatever its size: no layer keeps a fixed std of its own;
* every kernel and table with >= 256 entries has std within 15% of the expected one at both ranges (our padding
  rows are drawn, not zeroed: they are left out, since HF zeroes them);
* layer-norm scales are 1 and biases 0 (unchanged by the range);
* Reformer's axial position weights are drawn at ``axial_norm_std`` at both ranges.

The default (0.02) params are the same as before the families honoured the field: the parity and property tests
pin them.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest

import jaxmodels
from jaxmodels import hf_io
from tests.families import FAMILIES

# One jit for all of a family's inits, at XLA's lowest backend level: the init's forward pass is dead code, and
# compiling each head apart at the default level would cost ~3 s a head (this test stays under ~20 s).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

RANGES = (0.02, 0.1)

# Per family: (architecture, config overrides) cases that together create every parameter, and the HF
# ``padding_idx`` tables (path suffix -> padding row), whose row HF zeroes.
CASES = {
    "albert": dict(
        overrides=dict(hidden_size=32, intermediate_size=48, embedding_size=16, num_labels=3),
        heads=[("AlbertForPreTraining", {}),  # embeddings, shared layers, pooler, MLM head, SOP classifier
               ("AlbertForQuestionAnswering", {}),
               ("AlbertForSequenceClassification", {}),  # the classifier of the token / multiple-choice heads too
               ("AlbertForMaskedLM", dict(position_embedding_type="relative_key_query"))],  # distance table
        padding={("word_embeddings", "embedding"): "pad_token_id"}),
    "rembert": dict(
        overrides=dict(hidden_size=32, intermediate_size=48, input_embedding_size=16, output_embedding_size=24,
                       num_labels=3),
        heads=[("RemBertForCausalLM", dict(is_decoder=True, add_cross_attention=True)),  # + untied LM decoder
               ("RemBertForSequenceClassification", {}),  # pooler + classifier
               ("RemBertForQuestionAnswering", dict(num_labels=2))],
        padding={("word_embeddings", "embedding"): "pad_token_id"}),
    "longformer": dict(
        overrides=dict(hidden_size=32, intermediate_size=48, num_labels=3),
        heads=[("LongformerForMaskedLM", {}),  # embeddings, local + global projections, tied LM head
               ("LongformerForSequenceClassification", {}),  # RoBERTa's classification head
               ("LongformerForMultipleChoice", {})],  # pooler + the classifier the QA / token heads share
        padding={("word_embeddings", "embedding"): "pad_token_id",
                 ("position_embeddings", "embedding"): "pad_token_id"}),
    "reformer": dict(
        overrides=dict(hidden_size=32, attention_head_size=8, feed_forward_size=48, num_labels=3),
        heads=[("ReformerForMaskedLM", dict(attn_layers=["lsh", "local"], lsh_attn_chunk_length=4, num_buckets=2,
                                            num_hashes=2, hidden_size=64, axial_pos_embds=True,
                                            axial_pos_shape=[8, 8], axial_pos_embds_dim=[32, 32],
                                            max_position_embeddings=64, axial_norm_std=0.5)),
               ("ReformerForSequenceClassification", {}),  # learned position table, classification head
               ("ReformerForQuestionAnswering", dict(num_labels=2))],
        padding={}),
}

AXIAL = ("weights_0", "weights_1")  # Reformer's axial position weights: HF draws them at axial_norm_std


def _inits(family: str) -> list[tuple[str, dict, dict]]:
    """``[(architecture, config, {initializer_range: flat params})]``, every init in one jit."""
    case = CASES[family]
    modules, inputs, labels = [], [], []
    for architecture, overrides in case["heads"]:
        for r in RANGES:
            config = {**FAMILIES[family]["config"], **case["overrides"], **overrides, "architectures": [architecture],
                      "initializer_range": r}
            module = jaxmodels.from_config(config)
            modules.append(module)
            inputs.append(jaxmodels.registry.of_config(module.config).dummy_inputs(module.config, architecture))
            labels.append((architecture, module.config, r))
    every = jax.jit(lambda key: [m.init(key, **i)["params"] for m, i in zip(modules, inputs)],
                    compiler_options=FAST_COMPILE)(jax.random.PRNGKey(0))
    out = {}
    for (architecture, config, r), params in zip(labels, every):
        out.setdefault(architecture, (config, {}))[1][r] = hf_io.flatten(nn.unbox(params))
    return [(a, c, p) for a, (c, p) in out.items()]


def _drawn(path: tuple, leaf: np.ndarray, config, padding: dict) -> np.ndarray:
    """The entries HF draws (its zeroed padding row left out)."""
    for suffix, field in padding.items():
        if path[-len(suffix):] == suffix:
            row = getattr(config, field)
            return np.delete(leaf, row, axis=-2)
    return leaf


@pytest.mark.parametrize("family", sorted(CASES))
def test_initializer_range_scales_every_matrix_and_table(family):
    checked = 0
    for architecture, config, by_range in _inits(family):
        small, large = by_range[RANGES[0]], by_range[RANGES[1]]
        assert small.keys() == large.keys()
        for path, leaf in large.items():
            name, leaf, base = f"{architecture}: {'/'.join(path)}", np.asarray(leaf), np.asarray(small[path])
            if path[-1] in AXIAL and family == "reformer":
                np.testing.assert_array_equal(leaf, base, err_msg=name)  # axial_norm_std, not initializer_range
                assert np.std(leaf) == pytest.approx(config.axial_norm_std, rel=0.15), name
                checked += 1
            elif path[-1] in ("kernel", "embedding"):
                np.testing.assert_allclose(leaf, base * (RANGES[1] / RANGES[0]), rtol=1e-5, atol=1e-7, err_msg=name)
                for r, values in zip(RANGES, (base, leaf)):
                    values = _drawn(path, values, config, CASES[family]["padding"])
                    if values.size >= 256:  # fewer draws give no 15% estimate of the std (the 3-label heads)
                        assert np.std(values) == pytest.approx(r, rel=0.15), (name, r)
                        checked += 1
            elif path[-1] == "scale":
                np.testing.assert_array_equal(leaf, 1.0, err_msg=name)
                np.testing.assert_array_equal(base, 1.0, err_msg=name)
            elif path[-1] == "bias":
                np.testing.assert_array_equal(leaf, 0.0, err_msg=name)
                np.testing.assert_array_equal(base, 0.0, err_msg=name)
            else:
                raise AssertionError(f"{name}: a param this test does not know (say how HF initialises it)")
    assert checked >= 20, checked
