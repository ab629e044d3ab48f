"""Reformer parity with HF ``transformers`` 4.46.3: every head, outputs (eval, auto-padded, padded batches) and
parameter gradients (HF in train mode with every dropout 0, since HF computes no gradients in eval mode).

Rotations are drawn in torch exactly as HF draws them when ``hash_seed`` is set (``torch.manual_seed(hash_seed);
torch.randn(shape)``) and injected as ``lsh_rotations``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmodels
from tests.oracle import (
    assert_close,
    assert_grads_close,
    randomize_,
    require_torch,
    torch_grads,
)

OUT_TOL = 1e-5
GRAD_TOL = 1e-4
SEED = 7
B = 2

BASE = dict(
    vocab_size=40, hidden_size=16, num_attention_heads=2, attention_head_size=4, feed_forward_size=24,
    hidden_dropout_prob=0.0, local_attention_probs_dropout_prob=0.0, lsh_attention_probs_dropout_prob=0.0,
    classifier_dropout=0.0, hash_seed=SEED, max_position_embeddings=32, pad_token_id=0,
)
CONFIGS = {
    # Alternating local (chunk 4) / LSH (chunk 8) layers with look-ahead on both, two hash rounds, chunked FF and LM
    # head, axial positions (training length 4 * 8 = 32). Eval length 12 is auto-padded to 16 (chunk lcm 8).
    "local-lsh-lookahead": dict(
        attn_layers=["local", "lsh", "local", "lsh"], local_attn_chunk_length=4, lsh_attn_chunk_length=8,
        num_hashes=2, num_buckets=4, local_num_chunks_after=1, lsh_num_chunks_after=1, chunk_size_feed_forward=4,
        chunk_size_lm_head=4, axial_pos_shape=[4, 8], axial_pos_embds_dim=[6, 10], hidden_act="relu",
        eval_length=12, train_length=32),
    # Causal LSH-only stack, factorized buckets (2 x 4), three hash rounds, exact GELU; eval length 14 -> 16.
    "lsh-factorized-decoder": dict(
        attn_layers=["lsh", "lsh", "lsh"], lsh_attn_chunk_length=4, local_attn_chunk_length=4, num_hashes=3,
        num_buckets=[2, 4], is_decoder=True, axial_pos_shape=[4, 4], axial_pos_embds_dim=[8, 8], hidden_act="gelu",
        eval_length=14, train_length=16),
    # num_buckets=None (HF resolves (4, 4) at length 32), learned positions, local chunk 8 with two chunks of
    # look-back, LSH chunk 4; eval length 27 -> 32.
    "auto-buckets-learned-positions": dict(
        attn_layers=["lsh", "local"], lsh_attn_chunk_length=4, local_attn_chunk_length=8, local_num_chunks_before=2,
        num_hashes=1, num_buckets=None, axial_pos_embds=False, hidden_act="gelu_new",
        eval_length=27, train_length=32),
}
# The other heads run in test_parity_heads.py (each file stays short on two shared CPU cores).
CASES = [
    ("local-lsh-lookahead", "ReformerModel"),
    ("lsh-factorized-decoder", "ReformerModelWithLMHead"),
    ("auto-buckets-learned-positions", "ReformerForMaskedLM"),
]


def hf_config(cfg_name: str, head: str):
    import transformers

    cfg = {**BASE, **CONFIGS[cfg_name]}
    cfg.pop("eval_length"), cfg.pop("train_length")
    if head == "ReformerForSequenceClassification":
        cfg["num_labels"] = 3
    return transformers.ReformerConfig(**cfg)


def build_pair(tmp_path, cfg_name: str, head: str):
    """Random HF model saved to disk, and ours loaded from that directory through the doorway."""
    torch = require_torch()
    import transformers

    torch.manual_seed(0)
    hf_model = getattr(transformers, head)(hf_config(cfg_name, head))
    randomize_(hf_model, seed=1)
    hf_model.save_pretrained(tmp_path)
    module, params = jaxmodels.from_pretrained(str(tmp_path))
    return hf_model, module, params


def rotations(config, length: int):
    """HF's rotations for ``hash_seed``: reseed, then one ``randn`` of the rotation shape."""
    torch = require_torch()
    torch.manual_seed(config.hash_seed)
    return jnp.asarray(torch.randn(config.rotations_shape(length)).numpy())


def make_inputs(head: str, length: int, vocab: int, seed: int, num_labels: int = 3):
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, vocab, (B, length))
    mask = np.ones((B, length), np.int64)
    mask[1, length - 3:] = 0  # a padded row: its last tokens are no key for anyone
    inputs = dict(input_ids=ids, attention_mask=mask)
    if head in ("ReformerForMaskedLM", "ReformerModelWithLMHead"):
        labels = np.where(rng.rand(B, length) < 0.5, rng.randint(0, vocab, (B, length)), -100)
        labels[0, 1:3] = 5
        inputs["labels"] = labels
    elif head == "ReformerForSequenceClassification":
        inputs["labels"] = rng.randint(0, num_labels, (B,))
    elif head == "ReformerForQuestionAnswering":
        inputs["start_positions"] = np.array([1, 40])  # 40 is beyond the sequence: clamped and ignored
        inputs["end_positions"] = np.array([3, 2])
    return inputs


def objective(out, head: str, probe):
    if head == "ReformerModel":
        return (out.last_hidden_state * probe).sum()
    return out.loss


def check_head_parity(tmp_path, cfg_name, head):
    torch = require_torch()
    hf_model, module, params = build_pair(tmp_path, cfg_name, head)
    assert type(module).__name__ == head
    config = module.config
    eval_len, train_len = CONFIGS[cfg_name]["eval_length"], CONFIGS[cfg_name]["train_length"]
    padded = -(-eval_len // config.lcm_chunk_length) * config.lcm_chunk_length
    fields = {"ReformerModel": ["last_hidden_state"],
              "ReformerForQuestionAnswering": ["start_logits", "end_logits", "loss"]}.get(head, ["logits", "loss"])

    # -- outputs in eval mode, auto-padded; reversible path -----------------------------------------------------
    hf_model.eval()
    inputs = make_inputs(head, eval_len, config.vocab_size, seed=2)
    jin = {k: jnp.asarray(v) for k, v in inputs.items()}
    with torch.no_grad():
        theirs = hf_model(**{k: torch.tensor(v) for k, v in inputs.items()}, output_hidden_states=True,
                          output_attentions=True)
    rot = rotations(config, padded)
    ours = jax.jit(lambda p, x: module.apply({"params": p}, **x, lsh_rotations=rot))(params, jin)
    for f in fields:
        assert_close(getattr(ours, f), getattr(theirs, f), OUT_TOL, f)

    # -- per-layer outputs (plain scan path) ----------------------------------------------------------------------
    if head in ("ReformerModel", "ReformerModelWithLMHead"):
        ours = module.apply({"params": params}, **jin, lsh_rotations=rot, output_hidden_states=True,
                            output_attentions=True)
        for f in fields:
            assert_close(getattr(ours, f), getattr(theirs, f), OUT_TOL, f"{f} (plain path)")
        assert len(ours.hidden_states) == len(theirs.hidden_states) == config.num_hidden_layers + 1
        for i, (a, b) in enumerate(zip(ours.hidden_states, theirs.hidden_states)):
            assert_close(a, b, OUT_TOL, f"hidden_states[{i}]")
        assert len(ours.attentions) == len(theirs.attentions) == config.num_hidden_layers
        for i, (a, b) in enumerate(zip(ours.attentions, theirs.attentions)):
            assert_close(a, b, OUT_TOL, f"attentions[{i}]")

    # -- parameter gradients: HF in train mode (dropout 0), ours with deterministic=False (reversible stack) ------
    hf_model.train()
    inputs = make_inputs(head, train_len, config.vocab_size, seed=3)
    jin = {k: jnp.asarray(v) for k, v in inputs.items()}
    probe = np.random.RandomState(4).randn(B, train_len, 2 * config.hidden_size).astype(np.float32)
    hf_model.zero_grad()
    out = hf_model(**{k: torch.tensor(v) for k, v in inputs.items()})
    objective(out, head, torch.tensor(probe)).backward()
    rot = rotations(config, train_len)
    loss_fn = lambda p: objective(module.apply({"params": p}, **jin, lsh_rotations=rot, deterministic=False),
                                  head, jnp.asarray(probe))
    value, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    assert_close(value, objective(out, head, torch.tensor(probe)).detach(), OUT_TOL, "train-mode objective")
    assert_grads_close(jaxmodels.params_to_hf(module, grads), torch_grads(hf_model), GRAD_TOL)


@pytest.mark.parametrize("cfg_name,head", CASES)
def test_head_parity(tmp_path, cfg_name, head):
    check_head_parity(tmp_path, cfg_name, head)
