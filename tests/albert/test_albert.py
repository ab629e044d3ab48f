"""ALBERT behaviour beyond parity: jit vs no-jit, logical axes, sharded init, compile-once depth, bad input."""

from __future__ import annotations

import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import jaxmodels
from tests.fast_compile import unoptimised
from train.partitioning import DEFAULT_RULES
from jaxmodels.albert import (
    AlbertConfig,
    AlbertForMaskedLM,
    AlbertForPreTraining,
    AlbertForSequenceClassification,
    AlbertModel,
)

TINY = dict(vocab_size=64, embedding_size=8, hidden_size=16, num_attention_heads=2, intermediate_size=24,
            max_position_embeddings=32, type_vocab_size=2, num_hidden_layers=3, num_hidden_groups=1)


def tiny(**kw) -> AlbertConfig:
    return AlbertConfig(**{**TINY, **kw})


def ids_and_mask(batch=2, length=10, seed=0):
    rng = np.random.RandomState(seed)
    ids = jnp.asarray(rng.randint(1, 64, (batch, length)), jnp.int32)
    mask = jnp.ones((batch, length), jnp.int32).at[1, 6:].set(0)
    return ids, mask


class JitVsNoJitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_masked_lm(self):
        module = AlbertForMaskedLM(tiny(num_hidden_layers=4, num_hidden_groups=2, position_embedding_type="relative_key"))
        params = jaxmodels.init_params(module, jax.random.PRNGKey(0))
        ids, mask = ids_and_mask()
        ref = module.apply({"params": params}, ids, mask).logits
        out = self.variant(lambda p, i, m: module.apply({"params": p}, i, m).logits)(params, ids, mask)
        chex.assert_trees_all_close(out, ref, rtol=1e-6, atol=1e-6)
        chex.assert_shape(out, (2, 10, 64))


def test_golden_logical_axes():
    """Every param carries logical names; the stacked layer params lead with ("layers", None) = [group, inner]."""
    module = AlbertForMaskedLM(tiny(num_hidden_groups=1, inner_group_num=2))
    boxed = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32)))["params"]
    specs = jax.tree.map(tuple, nn.get_partition_spec(boxed), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    L, E, H, M, V, T = "layers", "embed", "heads", "mlp", "vocab", "positions"
    golden = {
        "albert": {
            "embeddings": {
                "word_embeddings": {"embedding": (V, E)},
                "position_embeddings": {"embedding": (T, E)},
                "token_type_embeddings": {"embedding": (V, E)},
                "LayerNorm": {"scale": (E,), "bias": (E,)},
            },
            "encoder": {
                "embedding_hidden_mapping_in": {"kernel": (E, M), "bias": (M,)},
                "albert_layer_groups": {
                    "attention": {
                        "query": {"kernel": (L, None, E, H), "bias": (L, None, H)},
                        "key": {"kernel": (L, None, E, H), "bias": (L, None, H)},
                        "value": {"kernel": (L, None, E, H), "bias": (L, None, H)},
                        "dense": {"kernel": (L, None, H, E), "bias": (L, None, E)},
                        "LayerNorm": {"scale": (L, None, E), "bias": (L, None, E)},
                    },
                    "ffn": {"kernel": (L, None, E, M), "bias": (L, None, M)},
                    "ffn_output": {"kernel": (L, None, M, E), "bias": (L, None, E)},
                    "full_layer_layer_norm": {"scale": (L, None, E), "bias": (L, None, E)},
                },
            },
        },
        "predictions": {
            "dense": {"kernel": (E, M), "bias": (M,)},
            "LayerNorm": {"scale": (E,), "bias": (E,)},
            "bias": (V,),
        },
    }
    assert specs == golden


def test_sharded_init_matches_single_device():
    """Init with out_shardings on a data=2,fsdp=2,tensor=2 mesh of 8 CPU devices == plain init, and so do outputs."""
    assert jax.device_count() == 8, "tests/conftest.py should fake 8 CPU devices"
    module = AlbertForSequenceClassification(tiny(num_labels=4, num_hidden_groups=1, inner_group_num=2))
    ids, mask = ids_and_mask(batch=4)
    key = jax.random.PRNGKey(3)
    init = lambda k: module.init(k, jnp.zeros((1, 1), jnp.int32))["params"]
    single = jax.jit(lambda k: nn.unbox(init(k)))(key)
    ref = module.apply({"params": single}, ids, mask).logits

    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 1, 2), ("data", "fsdp", "sequence", "tensor"))
    specs = nn.get_partition_spec(jax.eval_shape(init, key))
    shardings = nn.logical_to_mesh_sharding(specs, mesh, DEFAULT_RULES)
    sharded = jax.jit(lambda k: nn.unbox(init(k)), out_shardings=shardings)(key)
    kernel = sharded["albert"]["encoder"]["albert_layer_groups"]["ffn"]["kernel"]
    assert len(kernel.sharding.device_set) == 8 and kernel.addressable_shards[0].data.shape == (1, 2, 8, 12)
    # Same values up to fp32 rounding (XLA may fuse the sampling differently per sharding).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8),
                 single, sharded)

    with mesh, nn.logical_axis_rules(DEFAULT_RULES):
        out = jax.jit(lambda p, i, m: module.apply({"params": p}, i, m).logits)(sharded, ids, mask)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-6)


def _count_dots(config: AlbertConfig) -> int:
    module = AlbertModel(config)
    ids, mask = ids_and_mask()
    params = jax.eval_shape(lambda: jaxmodels.init_params(module, jax.random.PRNGKey(0)))
    text = jax.jit(lambda p: module.apply({"params": p}, ids, mask).last_hidden_state).lower(params).as_text()
    return len(re.findall(r"dot_general", text))


def test_layer_traced_once_whatever_the_depth():
    """The program holds one copy of the layer whatever L and G are (scan over stacked group params)."""
    base = _count_dots(tiny(num_hidden_layers=2, num_hidden_groups=1))
    assert base > 0
    assert _count_dots(tiny(num_hidden_layers=24, num_hidden_groups=1)) == base
    assert _count_dots(tiny(num_hidden_layers=12, num_hidden_groups=4)) == base


def test_dropout_is_active_in_training_and_keyed():
    module = AlbertForMaskedLM(tiny(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3))
    params = jaxmodels.init_params(module, jax.random.PRNGKey(0))
    ids, mask = ids_and_mask()
    run = lambda seed: module.apply({"params": params}, ids, mask, deterministic=False,
                                    rngs={"dropout": jax.random.PRNGKey(seed)}).logits
    eval_logits = module.apply({"params": params}, ids, mask).logits
    assert not np.allclose(run(0), eval_logits)
    np.testing.assert_array_equal(run(0), run(0))
    assert not np.allclose(run(0), run(1))


# -- bad configs: ValueError naming the field --------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,field",
    [
        (dict(hidden_size=15, num_attention_heads=2), "hidden_size"),
        (dict(hidden_act="gelu_fancy"), "hidden_act"),
        (dict(position_embedding_type="rotary"), "position_embedding_type"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(num_hidden_layers=-1), "num_hidden_layers"),
        (dict(embedding_size=0), "embedding_size"),
        (dict(num_hidden_groups=4, num_hidden_layers=3), "num_hidden_groups"),
        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
        (dict(layer_norm_eps=0.0), "layer_norm_eps"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny(**overrides)


# -- bad inputs: ValueError naming the argument, before tracing ---------------------------------------------------
@pytest.fixture(scope="module")
def model_and_params():
    module = AlbertForMaskedLM(tiny())
    return module, jaxmodels.init_params(module, jax.random.PRNGKey(0))


def test_mask_shape_mismatch(model_and_params):
    module, params = model_and_params
    ids, _ = ids_and_mask()
    with pytest.raises(ValueError, match="attention_mask"):
        module.apply({"params": params}, ids, jnp.ones((2, 9), jnp.int32))
    # Also under jit: shapes are static, so the check fires while tracing, before XLA sees anything.
    with pytest.raises(ValueError, match="attention_mask"):
        jax.jit(lambda p, i, m: module.apply({"params": p}, i, m).logits)(params, ids, jnp.ones((2, 9), jnp.int32))


def test_token_type_shape_mismatch(model_and_params):
    module, params = model_and_params
    ids, mask = ids_and_mask()
    with pytest.raises(ValueError, match="token_type_ids"):
        module.apply({"params": params}, ids, mask, jnp.zeros((2, 11), jnp.int32))


def test_length_beyond_max_position_embeddings(model_and_params):
    module, params = model_and_params
    ids = jnp.ones((1, 33), jnp.int32)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        module.apply({"params": params}, ids)


def test_out_of_range_ids_when_concrete(model_and_params):
    module, params = model_and_params
    with pytest.raises(ValueError, match="input_ids.*vocab_size"):
        module.apply({"params": params}, jnp.array([[1, 2, 64]], jnp.int32))
    with pytest.raises(ValueError, match="input_ids"):
        module.apply({"params": params}, jnp.array([[1, -1, 3]], jnp.int32))
    with pytest.raises(ValueError, match="token_type_ids"):
        module.apply({"params": params}, jnp.array([[1, 2]], jnp.int32), token_type_ids=jnp.array([[0, 2]], jnp.int32))


def test_ids_and_embeds_exclusive(model_and_params):
    module, params = model_and_params
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        module.apply({"params": params})
    with pytest.raises(ValueError, match="input_ids must have rank 2"):
        module.apply({"params": params}, jnp.ones((4,), jnp.int32))


# -- doorway errors ----------------------------------------------------------------------------------------------
def test_from_pretrained_refuses_bad_directories(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        jaxmodels.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="config.json"):
        jaxmodels.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "albert", "architectures": ["AlbertModel"]}')
    (tmp_path / "model.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="refused"):
        jaxmodels.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="model_type='gpt9'"):
        jaxmodels.from_config({"model_type": "gpt9"})
    with pytest.raises(ValueError, match="AlbertForCausalLM"):
        jaxmodels.from_config({"model_type": "albert", "architectures": ["AlbertForCausalLM"]})


def test_pytorch_bin_is_read_with_weights_only(tmp_path):
    """A pytorch_model.bin checkpoint loads (through torch.load(weights_only=True)) to the same params."""
    from tests.oracle import require_torch

    require_torch()
    import transformers

    hf = transformers.AlbertModel(transformers.AlbertConfig(**TINY)).eval()
    hf.save_pretrained(tmp_path / "st")
    hf.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "pytorch_model.bin").exists()
    _, a = jaxmodels.from_pretrained(str(tmp_path / "st"))
    _, b = jaxmodels.from_pretrained(str(tmp_path / "bin"))
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_head_on_top_of_a_pretraining_checkpoint(tmp_path):
    """Loading a classifier from an MLM checkpoint keeps the backbone and initialises the new head (with a warning)."""
    from tests.oracle import require_torch

    require_torch()
    import transformers

    hf = transformers.AlbertForMaskedLM(transformers.AlbertConfig(**TINY)).eval()
    hf.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="newly initialised"):
        module, params = jaxmodels.from_pretrained(str(tmp_path), architecture="AlbertForSequenceClassification")
    _, mlm_params = jaxmodels.from_pretrained(str(tmp_path))
    np.testing.assert_array_equal(params["albert"]["embeddings"]["word_embeddings"]["embedding"],
                                  mlm_params["albert"]["embeddings"]["word_embeddings"]["embedding"])
    assert params["classifier"]["kernel"].shape == (16, 2)


def test_bf16_compute_from_pretrained(tmp_path):
    """dtype=bfloat16 computes in bf16 (fp32 params kept) and stays close to the fp32 model."""
    module = AlbertForMaskedLM(tiny())
    params = jaxmodels.init_params(module, jax.random.PRNGKey(0))
    jaxmodels.save_pretrained(module, params, str(tmp_path))
    bf16_module, bf16_params = jaxmodels.from_pretrained(str(tmp_path), dtype=jnp.bfloat16)
    assert bf16_module.dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(bf16_params))
    ids, mask = ids_and_mask()
    ref = module.apply({"params": params}, ids, mask).logits
    out = bf16_module.apply({"params": bf16_params}, ids, mask).logits
    assert out.dtype == jnp.bfloat16
    err = np.abs(np.asarray(out, np.float32) - np.asarray(ref)).max() / np.abs(np.asarray(ref)).max()
    assert err < 3e-2, err


def test_remat_and_scan_residuals_give_identical_gradients():
    """remat=True and every scan_residuals policy only change what is stored versus recomputed."""
    config = tiny(num_hidden_layers=4, num_hidden_groups=2)
    ids, mask = ids_and_mask()
    labels = jnp.where(mask == 1, ids, -100)

    with unoptimised():  # the knobs leave params alone
        params = jaxmodels.init_params(AlbertForMaskedLM(config), jax.random.PRNGKey(0))

    def grads(**kw):
        module = AlbertForMaskedLM(config, **kw)
        # Jitted: eager dispatch of a scanned backward costs more than compiling it. Each runs once on tiny shapes:
        # compiled without most of XLA's optimisation (what is stored or recomputed is decided by JAX, before XLA).
        with unoptimised():
            return jax.jit(jax.grad(lambda p: module.apply({"params": p}, ids, mask, labels=labels).loss))(params)

    want = grads(scan_residuals="all")
    for kw in ({"remat": True}, {"scan_residuals": "dots"}, {"scan_residuals": "inputs"}):
        chex.assert_trees_all_close(grads(**kw), want, rtol=1e-5, atol=1e-7)


def test_scan_residuals_dots_halves_training_temp_memory():
    """The default keeps matmul outputs only; plain autodiff stacks every elementwise intermediate per layer."""
    config = tiny(num_hidden_layers=6, intermediate_size=256)
    ids, mask = ids_and_mask()

    def temp(residuals):
        module = AlbertForMaskedLM(config, scan_residuals=residuals)
        params = jaxmodels.init_params(module, jax.random.PRNGKey(0))
        loss = lambda p: module.apply({"params": p}, ids, mask, labels=ids).loss
        return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes

    dots, everything = temp("dots"), temp("all")
    assert dots < 0.7 * everything, (dots, everything)


def test_unknown_scan_residuals_is_refused_by_name():
    module = AlbertModel(tiny(), scan_residuals="most")
    ids, mask = ids_and_mask()
    with pytest.raises(ValueError, match="scan_residuals"):
        module.init(jax.random.PRNGKey(0), ids, mask)


def test_unrolled_layers_equal_scanned():
    """scan_unroll trades compile time for cross-layer scheduling; the computation is the same."""
    config = tiny(num_hidden_layers=5, num_hidden_groups=2, inner_group_num=2)
    ids, mask = ids_and_mask()
    scanned = AlbertModel(config)
    params = jaxmodels.init_params(scanned, jax.random.PRNGKey(0))
    a = scanned.apply({"params": params}, ids, mask, output_hidden_states=True)
    b = AlbertModel(config, scan_unroll=5).apply({"params": params}, ids, mask, output_hidden_states=True)
    chex.assert_trees_all_close(a, b, rtol=1e-6, atol=1e-6)


# --- The masked-LM loss on the last layer's labelled rows only (mlm_loss_rows) ----------------------------------


def sparse_labels(ids, mask, per_example):
    """Labels on ``per_example[i]`` random unpadded positions of example i (never position 0), -100 elsewhere."""
    rng = np.random.RandomState(1)
    labels = np.full(ids.shape, -100, np.int32)
    for i, n in enumerate(per_example):
        valid = np.flatnonzero(np.asarray(mask[i]))[1:]
        where = rng.choice(valid, n, replace=False)
        labels[i, where] = np.asarray(ids)[i, where]
    return jnp.asarray(labels)


def randomised(params, seed=3):
    """Non-default weights: every leaf nudged, so biases and norms are not 0 / 1."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return tree.unflatten([p + 0.2 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])


@pytest.mark.parametrize("cls", [AlbertForMaskedLM, AlbertForPreTraining])
@pytest.mark.parametrize("layers,per_example", [(3, (3, 2)), (3, (7, 2)), (1, (2, 3))])
def test_loss_on_labelled_rows_equals_full_layer(cls, layers, per_example):
    """mlm_loss_rows=0.4 (4 of 10 rows) against the full last layer: same loss and gradients, on the few-rows branch
    (every example has <= 3 labels + position 0) and on the all-rows branch (7 labels), with one layer (nothing
    scanned before the last) and with relative_key_query positions; the returned logits are untouched."""
    config = tiny(num_hidden_layers=layers, position_embedding_type="relative_key_query")
    ids, mask = ids_and_mask()
    labels = sparse_labels(ids, mask, per_example)
    extra = {"sentence_order_label": jnp.asarray([0, 1])} if cls is AlbertForPreTraining else {}
    full, fast = cls(config, mlm_loss_rows=None), cls(config, mlm_loss_rows=0.4)
    params = randomised(jaxmodels.init_params(full, jax.random.PRNGKey(0)))
    embeddings = params["albert"]["embeddings"]["word_embeddings"]["embedding"]
    params["albert"]["embeddings"]["word_embeddings"]["embedding"] = embeddings + 2.0  # large-mean activations

    def run(module):
        def loss(p):
            out = module.apply({"params": p}, ids, mask, labels=labels, **extra)
            return out.loss, out.prediction_logits if cls is AlbertForPreTraining else out.logits
        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (loss_full, logits_full), grads_full = run(full)
    (loss_fast, logits_fast), grads_fast = run(fast)
    np.testing.assert_allclose(float(loss_fast), float(loss_full), rtol=1e-6)
    chex.assert_trees_all_close(logits_fast, logits_full, rtol=1e-6, atol=1e-6)
    fast_by_path = dict(jax.tree_util.tree_leaves_with_path(grads_fast))
    for path, g_full in jax.tree_util.tree_leaves_with_path(grads_full):
        g_fast = fast_by_path[path]
        scale = float(jnp.max(jnp.abs(g_full))) + 1e-6
        np.testing.assert_allclose(np.asarray(g_fast), np.asarray(g_full), atol=1e-5 * scale, rtol=0,
                                   err_msg=jax.tree_util.keystr(path))


def test_loss_on_labelled_rows_in_training_mode():
    """deterministic=False with zero hidden / attention dropout (ALBERT's defaults) keeps the fast path for the
    masked-LM head (classifier_dropout_prob does not reach it) and still gives the full layer's loss and grads."""
    config = tiny(num_hidden_layers=2, classifier_dropout_prob=0.1)
    ids, mask = ids_and_mask()
    labels = sparse_labels(ids, mask, (2, 3))
    full, fast = AlbertForMaskedLM(config, mlm_loss_rows=None), AlbertForMaskedLM(config, mlm_loss_rows=0.4)
    params = randomised(jaxmodels.init_params(full, jax.random.PRNGKey(0)))
    rngs = {"dropout": jax.random.PRNGKey(5)}
    assert fast._loss_row_capacity(labels, ids, None, False, False, False) == 4

    def run(module):
        return jax.jit(jax.value_and_grad(lambda p: module.apply({"params": p}, ids, mask, labels=labels,
                                                                 deterministic=False, rngs=rngs).loss))(params)

    (loss_full, grads_full), (loss_fast, grads_fast) = run(full), run(fast)
    np.testing.assert_allclose(float(loss_fast), float(loss_full), rtol=1e-6)
    chex.assert_trees_all_close(grads_fast, grads_full, rtol=1e-4, atol=1e-6)


def test_selected_rows_branch_and_order():
    """AlbertModel's selected rows: selected positions first in their original order, each row equal to the last
    layer's output there; rows past the capacity are zero padding on the few-rows branch and computed otherwise."""
    config = tiny(num_hidden_layers=2, position_embedding_type="relative_key")
    module = AlbertModel(config)
    ids, mask = ids_and_mask()
    params = randomised(jaxmodels.init_params(module, jax.random.PRNGKey(0)))
    apply = jax.jit(lambda sel, cap: module.apply({"params": params}, ids, mask, selected_rows=sel, row_capacity=cap),
                    static_argnums=1)
    for counts, few in (((2, 3), True), ((2, 6), False)):
        selected = np.zeros(ids.shape, bool)
        selected[0, [7, 1][:counts[0]]] = True
        selected[1, [9, 0, 4, 2, 3, 8][:counts[1]]] = True
        out, rows = apply(jnp.asarray(selected), 3)
        order, hidden, h = np.asarray(rows.order), np.asarray(rows.hidden), np.asarray(out.last_hidden_state)
        for i in range(2):
            n = counts[i]
            np.testing.assert_array_equal(order[i, :n], np.flatnonzero(selected[i]))
            np.testing.assert_allclose(hidden[i, :n], h[i, order[i, :n]], rtol=1e-5, atol=1e-5)
        if few:
            assert np.all(hidden[:, 3:] == 0)
        else:  # all rows computed, in sorted order
            np.testing.assert_allclose(hidden, np.take_along_axis(h, order[..., None], axis=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fraction", [0, 1.5, -0.1, True, "0.25"])
def test_bad_mlm_loss_rows_is_refused_by_name(fraction):
    module = AlbertForMaskedLM(tiny(), mlm_loss_rows=fraction)
    ids, mask = ids_and_mask()
    params = jaxmodels.init_params(AlbertForMaskedLM(tiny()), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="mlm_loss_rows"):
        module.apply({"params": params}, ids, mask, labels=ids)


@pytest.mark.parametrize("fraction", [None, 0.25])
def test_labels_shape_must_match_ids(fraction):
    module = AlbertForMaskedLM(tiny(), mlm_loss_rows=fraction)
    ids, mask = ids_and_mask()
    params = jaxmodels.init_params(module, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="labels has shape"):
        module.apply({"params": params}, ids, mask, labels=ids[:, :5])


def test_selected_rows_refuse_what_they_cannot_do():
    module = AlbertModel(tiny(inner_group_num=2))
    ids, mask = ids_and_mask()
    params = jaxmodels.init_params(module, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="inner_group_num"):
        module.apply({"params": params}, ids, mask, selected_rows=mask == 1, row_capacity=4)
    module = AlbertModel(tiny())
    params = jaxmodels.init_params(module, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="selected_rows has shape"):
        module.apply({"params": params}, ids, mask, selected_rows=mask[:, :4] == 1, row_capacity=4)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="row_capacity"):
            module.apply({"params": params}, ids, mask, selected_rows=mask == 1, row_capacity=bad)


def test_loss_only_step_does_not_run_the_full_last_layer_too():
    """The full last layer (kept for logits / last_hidden_state) must be dead code in a loss-only gradient step.
    XLA's cost analysis charges a cond its costlier branch (here all rows, the full layer's own cost), so the fast
    step may cost no more than the full one; a surviving duplicate would add a whole layer (~40% here). Layers are
    unrolled because the analysis counts a scan's body once."""
    config = tiny(num_hidden_layers=2, hidden_size=32, intermediate_size=128)
    ids, mask = ids_and_mask(length=16)
    labels = sparse_labels(ids, mask, (2, 2))

    def flops(fraction):
        module = AlbertForMaskedLM(config, mlm_loss_rows=fraction, scan_unroll=2)
        params = jaxmodels.init_params(module, jax.random.PRNGKey(0))
        step = jax.jit(jax.grad(lambda p: module.apply({"params": p}, ids, mask, labels=labels).loss))
        cost = step.lower(params).compile().cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["flops"]

    full, fast = flops(None), flops(0.25)
    assert fast <= full, (fast, full)
