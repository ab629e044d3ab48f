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
from configs.axis_rules import DEFAULT_RULES
from jaxmodels.albert import AlbertConfig, AlbertForMaskedLM, AlbertForSequenceClassification, AlbertModel

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
    L, E, H, M, V, T = "layers", "embed", "heads", "mlp", "vocab", "length"
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

    def grads(**kw):
        module = AlbertForMaskedLM(config, **kw)
        params = jaxmodels.init_params(module, jax.random.PRNGKey(0))
        return jax.grad(lambda p: module.apply({"params": p}, ids, mask, labels=labels).loss)(params)

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
