"""Helpers for parity tests against the HF PyTorch oracle (transformers==4.46.3, torch==2.13.0 CPU).

Parity tests build an HF model from a small random config, give it random NON-default weights (so a swapped or
transposed tensor cannot hide behind an identity init), save it with ``save_pretrained``, load it through our
doorway and compare outputs and parameter gradients in fp32.
"""

from __future__ import annotations

import numpy as np

torch = None


def require_torch():
    """Imports torch lazily so collecting the test-suite does not pay for it."""
    global torch
    if torch is None:
        import torch as _torch

        _torch.set_num_threads(1)  # tests run under xdist: one thread each keeps timings sane on 2 cores
        torch = _torch
        import transformers

        transformers.logging.set_verbosity_error()  # the SDPA fallback notice would flood the test log
    return torch


def randomize_(model, seed: int = 0, std: float = 0.2, embedding_mean: float = 0.0) -> None:
    """Overwrites every parameter with N(0, std) (LayerNorm scales around 1); adds ``embedding_mean`` to the word
    embeddings to produce large-mean activations, where a fast-variance LayerNorm loses precision."""
    t = require_torch()
    gen = t.Generator().manual_seed(seed)
    with t.no_grad():
        for name, p in model.named_parameters():
            noise = t.randn(p.shape, generator=gen) * std
            if "LayerNorm" in name or "layer_norm" in name or name.endswith("norm.weight"):
                p.copy_(noise + (1.0 if name.endswith("weight") else 0.0))
            else:
                p.copy_(noise)
            if embedding_mean and "word_embeddings" in name:
                p.add_(embedding_mean)


def rel_err(ours, theirs, floor: float = 1e-30) -> float:
    """max |ours - theirs| / max(max |theirs|, floor): the relative error of the whole tensor."""
    ours = np.asarray(ours, np.float64)
    theirs = np.asarray(theirs.detach().numpy() if hasattr(theirs, "detach") else theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    scale = max(np.abs(theirs).max(), floor)
    return float(np.abs(ours - theirs).max() / scale)


def assert_close(ours, theirs, tol: float, what: str = "", floor: float = 1e-30) -> float:
    err = rel_err(ours, theirs, floor)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.0e}"
    return err


def torch_grads(model) -> dict[str, np.ndarray]:
    """``{name: grad}`` for every parameter after a backward pass (tied params appear once, as in torch)."""
    return {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(ours_hf: dict[str, np.ndarray], theirs: dict[str, np.ndarray], tol: float) -> float:
    """Compares every torch gradient with ours (by HF name); a parameter torch trains that we lack is an error."""
    missing = sorted(set(theirs) - set(ours_hf))
    assert not missing, f"no gradient from us for {missing}"
    # Some gradients are exactly zero in exact arithmetic (a key bias, a QA or multiple-choice classifier bias:
    # softmax ignores a constant shift), and both frameworks then hold only rounding noise, so a relative error is
    # meaningless for them. Two regimes: a tensor whose oracle gradient is below 1e-4 of the model's largest is
    # checked absolutely (ours must be as small); every other tensor relatively, against its own scale.
    gmax = max(np.abs(g).max() for g in theirs.values())
    worst = 0.0
    for name, g in theirs.items():
        if np.abs(g).max() < 1e-4 * gmax:
            assert np.abs(ours_hf[name]).max() <= 1e-4 * gmax, f"grad {name}: should be ~0 like the oracle's"
            continue
        worst = max(worst, assert_close(ours_hf[name], g, tol, f"grad {name}"))
    return worst
