"""BART behaviour beyond parity: the Flax-style ``encode`` / ``decode`` API, LayerDrop, sequence classification's
eos pooling under ``jit``, sharded init on the 8-device CPU mesh, and config / input errors naming the field."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import jaxmodels
from jaxmodels.bart import (
    BartConfig,
    BartForCausalLM,
    BartForConditionalGeneration,
    BartForSequenceClassification,
    BartModel,
)
from jaxmodels.bart.modeling import last_eos_positions
from jaxmodels.generation import generate
from tests.bart.pairs import BASE, EOS, random_params, rows
from train.partitioning import DEFAULT_RULES

CONFIG = BartConfig(**BASE)


@pytest.fixture(scope="module")
def model():
    module = BartForConditionalGeneration(CONFIG)
    ids, mask = rows(np.random.RandomState(0), 3, 9, pad_tail=(0, 3, 1))
    return module, random_params(module, std=0.2), ids, mask


def test_encode_decode_equal_the_full_call(model):
    """``decode`` takes ``encode``'s output object or its array, and together they equal ``__call__``."""
    module, params, ids, mask = model
    dec = np.random.RandomState(1).randint(3, BASE["vocab_size"], (3, 6))

    @jax.jit
    def run(p, ids, mask, dec):
        v = {"params": p}
        full = module.apply(v, ids, mask, decoder_input_ids=dec)
        encoded = module.apply(v, ids, mask, method="encode")
        by_object = module.apply(v, dec, encoded, mask, method="decode")
        by_array = module.apply(v, dec, encoded.last_hidden_state, mask, method="decode")
        return full, encoded, by_object, by_array

    full, encoded, by_object, by_array = run(params, ids, mask, dec)
    np.testing.assert_allclose(encoded.last_hidden_state, full.encoder_last_hidden_state, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(by_object.logits, full.logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(by_array.logits, by_object.logits)
    assert by_object.cache is None


def test_layerdrop_skips_layers_in_training_only():
    """encoder_layerdrop=1 skips every encoder layer in training (the output is the embeddings); eval runs them;
    decoder_layerdrop=0.5 draws a coin per layer from the dropout key."""
    module = BartModel(CONFIG.replace(encoder_layerdrop=1.0, decoder_layerdrop=0.5, decoder_layers=4))
    params = random_params(module, std=0.2)
    ids, mask = rows(np.random.RandomState(0), 2, 7)

    @jax.jit
    def run(p, key):
        train = module.apply({"params": p}, ids, mask, deterministic=False, output_hidden_states=True,
                             rngs={"dropout": key})
        evaluate = module.apply({"params": p}, ids, mask, output_hidden_states=True)
        return train, evaluate

    outputs = [run(params, jax.random.key(seed)) for seed in range(4)]
    train, evaluate = outputs[0]
    np.testing.assert_array_equal(train.encoder_last_hidden_state, train.encoder_hidden_states[0])
    assert np.abs(evaluate.encoder_last_hidden_state - evaluate.encoder_hidden_states[0]).max() > 1e-2
    # A skipped decoder layer passes its input through: keys differ in which layers ran.
    skipped = [tuple(bool(np.array_equal(a, b)) for a, b in zip(t.decoder_hidden_states, t.decoder_hidden_states[1:]))
               for t, _ in outputs]
    assert len(set(skipped)) > 1 and any(any(s) for s in skipped) and not all(all(s) for s in skipped)


def test_last_eos_pooling_under_jit():
    """Under jit the eos counts cannot be checked: each row still pools at its own last eos (HF Flax would sum every
    eos), and a row without eos at its last position."""
    ids = jnp.asarray([[0, 5, EOS, 6, EOS, 1], [0, 5, 6, 7, EOS, 1], [0, 5, 6, 7, 8, 9]])
    np.testing.assert_array_equal(jax.jit(lambda x: last_eos_positions(CONFIG, x))(ids), [4, 4, 5])


def test_sharded_init_matches_single_device():
    """Init with out_shardings on a data=2,fsdp=2,tensor=2 mesh of 8 CPU devices == plain init."""
    assert jax.device_count() == 8, "tests/conftest.py should fake 8 CPU devices"
    module = BartForConditionalGeneration(CONFIG)
    dummy = jaxmodels.family("bart").dummy_inputs(CONFIG, "BartForConditionalGeneration")
    init = lambda k: module.init(k, **dummy)["params"]
    key = jax.random.key(3, impl="rbg")  # compiles ~2x faster than threefry here; the same under any sharding
    single = jax.jit(lambda k: nn.unbox(init(k)))(key)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 1, 2), ("data", "fsdp", "sequence", "tensor"))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(jax.eval_shape(init, key)), mesh, DEFAULT_RULES)
    sharded = jax.jit(lambda k: nn.unbox(init(k)), out_shardings=shardings)(key)
    fc1 = sharded["model"]["encoder"]["layers"]["fc1"]["kernel"]  # [layers, embed, mlp]
    assert len(fc1.sharding.device_set) == 8 and fc1.addressable_shards[0].data.shape[1:] == (8, 12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8),
                 single, sharded)


@pytest.mark.parametrize("changes,match", [
    (dict(d_model=10, encoder_attention_heads=4), "d_model=10 must be divisible by encoder_attention_heads=4"),
    (dict(decoder_attention_heads=3), "d_model=16 must be divisible by decoder_attention_heads=3"),
    (dict(activation_function="swishy"), "activation_function='swishy'"),
    (dict(encoder_layerdrop=1.5), r"encoder_layerdrop=1.5: must be a layer-skipping probability in \[0, 1\]"),
    (dict(dropout=1.0), "dropout=1.0"),
    (dict(pad_token_id=64), r"pad_token_id=64: must be a token id in \[0, vocab_size=64\)"),
    (dict(decoder_start_token_id=-1), "decoder_start_token_id=-1"),
    (dict(early_stopping="sometimes"), "early_stopping='sometimes'"),
    (dict(num_beams=0), "num_beams=0"),
    (dict(decoder_layers=0), "decoder_layers=0"),
])
def test_config_errors_name_the_field(changes, match):
    with pytest.raises(ValueError, match=match):
        BartConfig(**{**BASE, **changes})


def test_config_from_hf_dict():
    legacy = BartConfig.from_hf_dict({**BASE, "force_bos_token_to_be_generated": True, "model_type": "bart"})
    assert legacy.forced_bos_token_id == BASE["bos_token_id"]
    assert BartConfig.from_hf_dict(CONFIG.to_hf_dict()) == CONFIG
    assert BartConfig(**{**BASE, "decoder_start_token_id": None}).decoder_start_token_id is None


def test_input_errors_name_the_argument(model):
    module, params, ids, mask = model
    v = {"params": params}
    too_long = np.full((1, BASE["max_position_embeddings"] + 1), 5)
    with pytest.raises(ValueError, match="input_ids has length 25, beyond max_position_embeddings=24"):
        module.apply(v, too_long)
    with pytest.raises(ValueError, match="decoder_input_ids has length 25, beyond max_position_embeddings=24"):
        module.apply(v, ids, decoder_input_ids=too_long.repeat(3, axis=0))
    with pytest.raises(ValueError, match=r"decoder_attention_mask has shape \(3, 4\) but decoder_input_ids has "
                                         r"shape \(3, 6\)"):
        module.apply(v, ids, decoder_input_ids=ids[:, :6], decoder_attention_mask=mask[:, :4])
    with pytest.raises(ValueError, match="decoder_input_ids has batch 2 but the encoder inputs have 3"):
        module.apply(v, ids, decoder_input_ids=ids[:2])
    with pytest.raises(ValueError, match="attention_mask has shape"):
        module.apply(v, ids, mask[:, :5])
    with pytest.raises(ValueError, match=r"input_ids: ids must be in \[0, vocab_size=64\); got 64"):
        module.apply(v, ids + 64)
    with pytest.raises(ValueError, match="decoder_position_ids has shape"):
        module.apply(v, ids, decoder_input_ids=ids, decoder_position_ids=np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="labels has shape"):
        module.apply(v, ids, decoder_input_ids=ids, labels=ids[:, :4])
    with pytest.raises(ValueError, match="decoder_start_token_id is None"):
        module.clone(config=CONFIG.replace(decoder_start_token_id=None)).apply(v, ids)
    with pytest.raises(ValueError, match="encoder_outputs: decode needs"):
        module.apply(v, ids, method="decode")
    with pytest.raises(ValueError, match="max_length=25: must be a positive int <= max_position_embeddings=24"):
        module.apply(v, 3, 25, method="init_cache")
    with pytest.raises(ValueError, match="batch_size=4 must be a multiple of the encoder_outputs batch 3"):
        module.apply(v, 4, 8, np.zeros((3, 9, 16), np.float32), method="init_cache")
    cache = module.apply(v, 3, 8, np.zeros((3, 9, 16), np.float32), method="init_cache")
    with pytest.raises(ValueError, match="encoder_outputs given with a cache"):
        module.apply(v, ids[:, :1], np.zeros((3, 9, 16), np.float32), cache=cache, method="decode")
    with pytest.raises(ValueError, match="cache has 3 rows but decoder_input_ids has 2"):
        module.apply(v, ids[:2, :1], cache=cache, method="decode")
    with pytest.raises(ValueError, match="num_beams=2 with do_sample=True"):
        generate(module, params, ids, num_beams=2, do_sample=True, rng=jax.random.key(0))
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        generate(module, params, ids, max_new_tokens=0)
    with pytest.raises(ValueError, match=r"forced_bos_token_id=99: must be a token id in \[0, vocab_size=64\)"):
        generate(module, params, ids, forced_bos_token_id=99)


def test_sequence_classification_and_causal_lm_errors():
    classifier = BartForSequenceClassification(CONFIG)
    v = {"params": random_params(classifier)}
    two_eos, _ = rows(np.random.RandomState(0), 2, 8, extra_eos=((3,),))
    with pytest.raises(ValueError, match=r"input_ids: all examples must have the same number of eos_token_id=2 "
                                         r"tokens \(HF's rule\); got counts \[2, 1\]"):
        classifier.apply(v, two_eos)
    with pytest.raises(ValueError, match=r"input_ids: rows \[0\] hold no eos_token_id=2"):
        classifier.apply(v, np.full((1, 5), 7))
    with pytest.raises(ValueError, match="decoder_input_ids has length 4 but input_ids has 8"):
        classifier.apply(v, two_eos[1:], decoder_input_ids=two_eos[1:, :4])
    with pytest.raises(ValueError, match="input_ids: sequence classification reads the eos positions"):
        classifier.apply(v, inputs_embeds=np.zeros((1, 4, 16), np.float32))
    lm = BartForCausalLM(CONFIG)
    with pytest.raises(ValueError, match=r"\['num_beams'\]: options of encoder-decoder generation; BartForCausalLM "
                                         "is a decoder-only model"):
        generate(lm, random_params(lm), two_eos, max_new_tokens=2, num_beams=2)
