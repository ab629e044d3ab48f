"""train.data.denoising: BART's noising statistics (hypothesis), invariants, examples; the objective; learning."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from train import objectives
from train.data import denoising
from train.data.tokenizer import BOS_ID, EOS_ID, PAD_ID

MASK = denoising.MASK_ID
FIRST = 7  # first ordinary id


def _sentences(rng, n, mean_length=8):
    """`(tokens [n], starts [n])`: ordinary tokens cut into sentences of random lengths."""
    tokens = rng.integers(FIRST, 500, n).astype(np.int32)
    starts = (rng.random(n) < 1 / mean_length).astype(np.int32)
    starts[:1] = 1
    return tokens, starts


def _splice(noised, lengths, original):
    """Rebuilds `original` from the noised text: each `[MASK]` stands for the next span, of its length (0: an
    insertion); every other token must be the next original token. Returns the rebuilt tokens and masked flags."""
    rebuilt, masked, spans, at = [], [], iter(lengths), 0
    for token in noised:
        if token == MASK:
            length = next(spans)
            rebuilt += list(original[at:at + length])
            masked += [True] * length
            at += length
        else:
            assert token == original[at]
            rebuilt.append(token)
            masked.append(False)
            at += 1
    assert next(spans, None) is None
    return np.asarray(rebuilt, original.dtype), np.asarray(masked, bool)


# --- statistics --------------------------------------------------------------------------------------------------

@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(256, 512), lam=st.sampled_from([3.0, 3.0, 2.0, 3.5]),
       mask_ratio=st.sampled_from([0.3, 0.3, 0.15]))
@example(seed=0, n=285, lam=3.0, mask_ratio=0.3)  # 0.3 * 285 = 85.5: a rate exactly half a token per row off
def test_infilling_statistics(seed, n, lam, mask_ratio):
    rng = np.random.default_rng(seed)
    rows, masked_total, lengths = 60, 0, []
    for _ in range(rows):
        tokens, _ = _sentences(rng, n)
        noised, span, masked = denoising.infill(tokens, rng, mask_ratio=mask_ratio, poisson_lambda=lam)
        # Exactly round(ratio * n) tokens masked, one [MASK] per span, the rest kept in order.
        assert masked.sum() == span.sum() == round(mask_ratio * n)
        assert (noised == MASK).sum() == len(span) and len(noised) == n - span.sum() + len(span)
        rebuilt, spliced_mask = _splice(noised, span, tokens)
        np.testing.assert_array_equal(rebuilt, tokens)
        np.testing.assert_array_equal(spliced_mask, masked)
        masked_total += masked.sum()
        lengths.append(span)
    lengths = np.concatenate(lengths)
    count = len(lengths)
    rate = masked_total / (rows * n)
    assert abs(rate - mask_ratio) <= 0.5 / n + 1e-12  # round() to whole tokens: at most half a token per row
    # Poisson(lam) span lengths: the mean within 5 standard errors, less a small bias (each row's last span is cut
    # to the budget, as fairseq cuts it: ~2% at these lengths).
    mean = lengths.mean()
    assert -0.05 * lam - 5 * np.sqrt(lam / count) < mean - lam < 5 * np.sqrt(lam / count), (mean, count)
    # Zero-length spans (insertions of a [MASK]) happen, at the Poisson rate exp(-lam).
    zeros, p0 = (lengths == 0).mean(), np.exp(-lam)
    assert (lengths == 0).sum() > 0
    assert abs(zeros - p0) < 5 * np.sqrt(p0 * (1 - p0) / count) + 0.005, (zeros, p0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 60), ratio=st.sampled_from([1.0, 0.5, 0.0]))
def test_sentence_permutation_is_a_permutation_of_sentences(seed, n, ratio):
    rng = np.random.default_rng(seed)
    tokens, starts = _sentences(rng, n, mean_length=4)
    tokens = np.arange(FIRST, FIRST + n, dtype=np.int32)  # distinct tokens: every sentence is recognisable
    segments = np.ones(n, np.int32)
    if n > 10:  # two document pieces, the first ending with its </s> (pinned in place)
        cut = int(rng.integers(3, n - 3))
        segments[cut:] = 2
        tokens[cut - 1] = EOS_ID
    out = denoising.permute_sentences(tokens, starts, segments, rng, ratio)
    pieces = denoising.sentence_pieces(starts, segments, tokens)
    sentences = {tuple(tokens[b:e]) for b, e, _, _ in pieces}
    assert len(out) == n and sorted(out) == sorted(tokens)
    # The output is the input's sentences, each once, each within its own block; pinned tokens stay put.
    at = 0
    for begin, end, block, pinned in pieces:
        if pinned:
            assert out[begin] == tokens[begin]
        first = np.flatnonzero(tokens == out[at])[0]
        piece = next(p for p in pieces if p[0] <= first < p[1])
        assert piece[0] == first and piece[2] == block
        assert tuple(out[at:at + piece[1] - piece[0]]) in sentences
        at += piece[1] - piece[0]
    if ratio == 0.0:
        np.testing.assert_array_equal(out, tokens)


def test_sentence_permutation_draws_every_order():
    tokens = np.arange(FIRST, FIRST + 6, dtype=np.int32)
    starts = np.asarray([1, 0, 1, 0, 1, 0], np.int32)
    rng = np.random.default_rng(0)
    orders = {tuple(denoising.permute_sentences(tokens, starts, np.ones(6, np.int32), rng)) for _ in range(200)}
    assert len(orders) == 6  # 3 sentences, 3! orders


# --- examples ----------------------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 30), length=st.integers(3, 34))
def test_example_labels_are_the_original_and_decoder_inputs_are_them_shifted(seed, n, length):
    rng = np.random.default_rng(seed)
    n = min(n, length - 2)
    tokens, starts = _sentences(rng, length - 2, mean_length=4)
    segments = (np.arange(length - 2) < n).astype(np.int32)
    row = {"inputs": np.where(segments > 0, tokens, 0), "inputs_segment_ids": segments,
           "sentence_starts": starts * segments}
    ex = denoising.denoising_example(row, rng, denoising.DenoisingOptions(), length)
    assert sorted(ex) == sorted(denoising.KEYS)
    assert all(v.shape == (length,) and v.dtype == np.int32 for v in ex.values())
    labels = ex["labels"]
    if n == 0:
        assert (labels == -100).all() and not ex["attention_mask"].any() and not ex["decoder_attention_mask"].any()
    else:
        np.testing.assert_array_equal(labels[:n + 2], [BOS_ID, *tokens[:n], EOS_ID])
        assert (labels[n + 2:] == -100).all()
        np.testing.assert_array_equal(ex["decoder_attention_mask"], labels != -100)
        size = int(ex["attention_mask"].sum())
        np.testing.assert_array_equal(ex["attention_mask"], np.arange(length) < size)
        src = ex["input_ids"][:size]
        assert src[0] == BOS_ID and src[-1] == EOS_ID and (ex["input_ids"][size:] == PAD_ID).all()
        assert set(src[1:-1].tolist()) - {MASK} <= set(tokens[:n].tolist())
    # decoder_input_ids = HF shift_tokens_right(labels, pad, decoder_start_token_id=</s>)
    np.testing.assert_array_equal(ex["decoder_input_ids"], [EOS_ID, *np.where(labels[:-1] == -100, PAD_ID,
                                                                                labels[:-1])])


def test_example_noise_depends_on_seed_shard_and_index_only():
    rng = np.random.default_rng(0)
    tokens, starts = _sentences(rng, 62)
    row = {"inputs": tokens, "inputs_segment_ids": np.ones(62, np.int32), "sentence_starts": starts}
    make = lambda *key: denoising.DenoisingTransform(denoising.DenoisingOptions(), length=64, seed=key[0],
                                                     shard_index=key[1])(key[2], row)["input_ids"]
    np.testing.assert_array_equal(make(1, 0, 5), make(1, 0, 5))
    for other in [(2, 0, 5), (1, 1, 5), (1, 0, 6)]:
        assert not np.array_equal(make(1, 0, 5), make(*other))


def test_options_are_checked():
    with pytest.raises(ValueError, match="mask_ratio=1.5"):
        denoising.DenoisingOptions(mask_ratio=1.5)
    with pytest.raises(ValueError, match="poisson_lambda=0"):
        denoising.DenoisingOptions(poisson_lambda=0)
    with pytest.raises(ValueError, match=r"config.objective.permute_sentence_ratio=-1"):
        objectives.get_objective({"name": "denoising", "permute_sentence_ratio": -1})
    with pytest.raises(ValueError, match=r"config.objective.span_length"):
        objectives.get_objective({"name": "denoising", "span_length": 3})


# --- the objective on a real BART -----------------------------------------------------------------------------------

VOCAB, LENGTH = 64, 24
TINY = dict(model_type="bart", architectures=["BartForConditionalGeneration"], vocab_size=VOCAB,
            max_position_embeddings=LENGTH, d_model=32, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
            dropout=0.0, pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
            decoder_start_token_id=EOS_ID, forced_eos_token_id=EOS_ID)


def _examples(seed, count, vocab=VOCAB, length=LENGTH, permute_sentence_ratio=1.0):
    """Denoising batches of `count` rows of sentences of random ordinary tokens: nothing in a row is predictable
    from the rest of it, so whatever a model rebuilds beyond chance it read from the noised text in the encoder."""
    rng = np.random.default_rng(seed)
    options = denoising.DenoisingOptions(permute_sentence_ratio=permute_sentence_ratio)
    out = []
    for i in range(count):
        tokens, starts = [], []
        while len(tokens) < length - 2:
            size = int(rng.integers(3, 7))
            tokens += list(rng.integers(FIRST, vocab, size))
            starts += [1] + [0] * (size - 1)
        row = {"inputs": np.asarray(tokens[:length - 2], np.int32),
               "inputs_segment_ids": np.ones(length - 2, np.int32),
               "sentence_starts": np.asarray(starts[:length - 2], np.int32)}
        out.append(denoising.denoising_example(row, denoising.example_rng(seed, 0, i), options, length))
    return {k: jnp.asarray(np.stack([e[k] for e in out])) for k in denoising.KEYS}


@pytest.fixture(scope="module")
def tiny_bart():
    import jaxmodels

    module = jaxmodels.from_config(TINY)
    return module, jax.jit(lambda key: jaxmodels.init_params(module, key))(jax.random.PRNGKey(0))


def test_objective_loss_is_the_token_cross_entropy_over_labels(tiny_bart):
    module, params = tiny_bart
    batch = _examples(0, 4)
    # A row grain pads a finite run with: zeros everywhere, labels included.
    batch = {k: v.at[3].set(0) for k, v in batch.items()}
    objective = objectives.get_objective({"name": "denoising"})
    assert objectives.data_options(objective) == {"denoising": denoising.DenoisingOptions()}
    assert objectives.batch_keys(objective) == denoising.KEYS
    loss, metrics = jax.jit(lambda p, b: objective(module, p, b, jax.random.key(0), deterministic=True))(
        params, batch)

    @jax.jit
    def full_logits_formula(params, batch):
        out = module.apply({"params": params}, **{k: batch[k] for k in denoising.KEYS if k != "labels"})
        labels = jnp.where(batch["decoder_attention_mask"] > 0, batch["labels"], -100)
        return objectives.masked_mean_cross_entropy(out.logits, labels)

    want, accuracy = full_logits_formula(params, batch)
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    assert float(metrics["accuracy"]) == pytest.approx(float(accuracy))
    assert float(loss) == pytest.approx(np.log(VOCAB), rel=0.1)  # untrained: about uniform


def test_objective_refuses_models_it_cannot_train(tiny_bart):
    import jaxmodels

    objective = objectives.get_objective({"name": "denoising"})
    batch = _examples(0, 2)
    other = jaxmodels.from_config({**TINY, "decoder_start_token_id": 2})
    with pytest.raises(ValueError, match=r"config.model.decoder_start_token_id=2"):
        objective(other, tiny_bart[1], batch, jax.random.key(0), deterministic=True)
    qa = jaxmodels.from_config({**TINY, "architectures": ["BartForQuestionAnswering"]})
    with pytest.raises(ValueError, match=r"ForConditionalGeneration.*BartForQuestionAnswering"):
        objective(qa, tiny_bart[1], batch, jax.random.key(0), deterministic=True)


def test_preset_config_checks_the_model_before_anything_runs():
    import os

    from train import experiment

    path = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "bart_denoise.py")
    experiment.validate(experiment.load_config(path))
    for field, value, message in [("decoder_start_token_id", 2, r"config.model.decoder_start_token_id=2"),
                                  ("pad_token_id", 1, r"config.model.pad_token_id=1"),
                                  ("architectures", ["BartForCausalLM"], r"ForConditionalGeneration.*BartForCausalLM")]:
        config = experiment.load_config(path)
        with config.ignore_type():
            config.model[field] = value
        with pytest.raises(ValueError, match=message):
            experiment.validate(config)


# --- learning ------------------------------------------------------------------------------------------------------

def test_tiny_bart_learns_to_denoise():
    """Trained a bounded number of steps on text infilling, a tiny BART rebuilds held-out noised text far better
    than untrained, and by reading its encoder: with the encoder's input blanked out (all [MASK]) it does no better
    than a model of the decoder's prefix alone. The text is random tokens, so that only the encoder can tell what
    was there; sentence permutation is off here because reordering random sentences is not learnable (the order
    was random): a tiny model would spend its steps on the sentence starts it can never get right."""
    import jaxmodels

    module = jaxmodels.from_config({**TINY, "d_model": 64, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128})
    params = jax.jit(lambda key: jaxmodels.init_params(module, key))(jax.random.PRNGKey(0))
    objective = objectives.get_objective({"name": "denoising", "permute_sentence_ratio": 0.0})
    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, batch, key):
        (loss, _), grads = jax.value_and_grad(
            lambda p: objective(module, p, batch, key, deterministic=False), has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def evaluate(params, batch):
        return objective(module, params, batch, jax.random.key(0), deterministic=True)[1]

    held_out = _examples(10_000, 64, permute_sentence_ratio=0.0)
    blanked = {**held_out, "input_ids": jnp.where(held_out["attention_mask"] > 0, MASK, PAD_ID)}
    before = evaluate(params, held_out)
    opt_state = tx.init(params)
    steps, rows = 300, 32
    train = _examples(1, steps * rows, permute_sentence_ratio=0.0)
    for i in range(steps):
        batch = jax.tree.map(lambda x: x[i * rows:(i + 1) * rows], train)
        params, opt_state, _ = step(params, opt_state, batch, jax.random.key(i))
    after, blind = evaluate(params, held_out), evaluate(params, blanked)
    print(f"held-out accuracy {float(before['accuracy']):.3f} -> {float(after['accuracy']):.3f} "
          f"(encoder blanked: {float(blind['accuracy']):.3f}); loss {float(before['loss']):.3f} -> "
          f"{float(after['loss']):.3f} (blanked: {float(blind['loss']):.3f})")
    assert float(before["accuracy"]) < 0.05
    assert float(after["accuracy"]) > 0.3
    assert float(after["accuracy"]) > float(blind["accuracy"]) + 0.2
    assert float(after["loss"]) < float(blind["loss"]) - 1.0


def test_trainer_checks_the_ids_of_both_sides():
    from train import loop

    batch = {k: np.asarray(v) for k, v in _examples(0, 2).items()}
    assert loop.check_batch(batch, VOCAB, "train") is batch
    bad = {**batch, "decoder_input_ids": batch["decoder_input_ids"] + VOCAB}
    with pytest.raises(ValueError, match=r"outside the model's vocabulary \[0, model.vocab_size=64\)"):
        loop.check_batch(bad, VOCAB, "train")
    with pytest.raises(ValueError, match=r"token id 99 at row 0, position 1"):  # packed rows: their `inputs`
        loop.check_batch({"inputs": np.asarray([[7, 99]]), "segment_ids": np.ones((1, 2))}, VOCAB, "train")
