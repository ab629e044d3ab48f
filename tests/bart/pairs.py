"""Shared pieces of the BART oracle tests: tiny configs, padded encoder rows ``<s> x .. </s> [pad]``, and an HF model
with random non-default weights beside ours loaded from its checkpoint through the doorway."""

from __future__ import annotations

import numpy as np

import jaxmodels
from tests.oracle import randomize_, require_torch

V = 64
PAD, BOS, EOS = 1, 0, 2
# Encoder 2 layers / 2 heads, decoder 1 layer / 4 heads: a swapped stack or head count cannot hide.
BASE = dict(
    vocab_size=V, d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=4,
    encoder_ffn_dim=24, decoder_ffn_dim=20, max_position_embeddings=24, pad_token_id=PAD, bos_token_id=BOS,
    eos_token_id=EOS, decoder_start_token_id=EOS, forced_eos_token_id=EOS, dropout=0.0, attention_dropout=0.0,
    activation_dropout=0.0, classifier_dropout=0.0,
)


def rows(rng, batch: int, length: int, pad_tail=(), extra_eos=()):
    """``(ids, mask)``: rows ``<s> x .. </s>`` then ``pad_tail[r]`` pads (id PAD, mask 0); ``extra_eos[r]`` lists
    further positions holding ``</s>``. Content ids are drawn from [4, V)."""
    ids = rng.randint(4, V, (batch, length))
    mask = np.ones((batch, length), np.int64)
    ids[:, 0] = BOS
    for r in range(batch):
        n = pad_tail[r] if r < len(pad_tail) else 0
        ids[r, length - n - 1] = EOS
        ids[r, length - n:] = PAD
        mask[r, length - n:] = 0
    for r, positions in enumerate(extra_eos):
        ids[r, list(positions)] = EOS
    return ids, mask


def build_pair(tmp_path, head: str, cfg: dict, seed: int = 1, logits_bias_seed: int | None = None, std: float = 0.2,
               eos_logit_bias: float | None = None):
    """HF ``head`` from ``cfg`` with N(0, std) weights (LayerNorm scales ~1) saved to ``tmp_path``, and ours loaded
    from there. ``logits_bias_seed`` fills HF's ``final_logits_bias`` buffer (zeros in a fresh model, and not a
    parameter, so ``randomize_`` leaves it) with N(0, 1) values; ``eos_logit_bias`` sets its eos entry (how
    likely a random model is to stop)."""
    torch = require_torch()
    import transformers

    torch.manual_seed(0)
    hf_model = getattr(transformers, head)(transformers.BartConfig(**cfg)).eval()
    randomize_(hf_model, seed=seed, std=std)
    if logits_bias_seed is not None:
        with torch.no_grad():
            generator = torch.Generator().manual_seed(logits_bias_seed)
            hf_model.final_logits_bias.copy_(torch.randn(hf_model.final_logits_bias.shape, generator=generator))
    if eos_logit_bias is not None:
        with torch.no_grad():
            hf_model.final_logits_bias[0, cfg["eos_token_id"]] = eos_logit_bias
    hf_model.save_pretrained(tmp_path)
    module, params = jaxmodels.from_pretrained(str(tmp_path))
    assert type(module).__name__ == head
    return hf_model, module, params


def random_params(module, seed: int = 0, std: float = 0.5) -> dict:
    """N(0, std) params of ``module``'s shapes, drawn in numpy (no init program to compile)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.RandomState(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.randn(*s.shape) * std, s.dtype), jaxmodels.abstract_params(module))
