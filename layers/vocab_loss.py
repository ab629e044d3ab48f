"""Cross-entropy of a vocabulary projection, computed at the labelled positions only.

A masked-LM loss is ``cross_entropy(h @ kernel + bias, labels)`` where only ~15% of ``labels`` are not
``ignore_index``. Materialising the logits costs ``[batch, length, vocab]`` floats (123 MB for ALBERT-base at
8 x 128, vocab 30000) and a projection for every position, then log-softmax passes over all of it, twice more
in the backward. This primitive gives the same loss and gradients while:

- **projecting only labelled rows.** Each example's positions are stably sorted so its labelled ones come first,
  and a loop runs over chunks of ``chunk`` positions until the example with the most labels is covered. The
  batch axis is kept (never flattened), so a data-parallel mesh still splits the work by example;
- **never holding more than one chunk of logits** (``[batch, chunk, vocab]``). The forward keeps only the
  per-row log-normaliser; the backward recomputes each chunk's logits and writes
  ``softmax - onehot`` straight into the three gradients (a hand-written VJP).

The model's ``logits`` output is computed separately by the head; in a training step that only reads ``loss``,
XLA drops it. ``projected_cross_entropy_reference`` is the slow twin: the plain formula, by autodiff.

With ``with_accuracy`` the same loop also counts the labelled rows whose arg-max logit is the label, so a training
job reports masked-LM accuracy without the full logits either. A head that computes its loss with
:func:`masked_lm_loss` sows the loss and that accuracy into its ``intermediates`` as ``mlm_loss`` /
``mlm_accuracy``, which ``train.objectives`` reports.

Shapes: ``h [b, l, e]``, ``kernel [e, vocab]``, ``bias [vocab]``, ``labels [b, l]`` int -> scalar.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from layers.checks import check_range
from layers.losses import IGNORE_INDEX, cross_entropy

Array = jax.Array


def projected_cross_entropy_reference(h: Array, kernel: Array, bias: Array, labels: Array, *,
                                      ignore_index: int = IGNORE_INDEX) -> Array:
    """Slow twin: full ``[b, l, vocab]`` logits in ``h``'s dtype, then :func:`layers.losses.cross_entropy`."""
    logits = jnp.matmul(h, kernel.astype(h.dtype)) + bias.astype(h.dtype)
    return cross_entropy(logits, labels, ignore_index=ignore_index)


def projected_cross_entropy(h: Array, kernel: Array, bias: Array, labels: Array, *,
                            ignore_index: int = IGNORE_INDEX, chunk: int = 32, with_accuracy: bool = False):
    """Mean cross-entropy of ``h @ kernel + bias`` over labels != ``ignore_index`` (torch semantics).

    ``chunk`` is how many positions per example one loop step projects. All labels ignored gives NaN (0/0), as
    torch does. The logits are formed in ``h.dtype`` and normalised in float32, as the unfused head + loss do.
    ``with_accuracy``: returns ``(loss, accuracy)``, accuracy the fraction of labelled rows whose arg-max logit
    (first on ties, as ``jnp.argmax``) is the label; it carries no gradient.
    """
    if h.ndim != 3 or labels.shape != h.shape[:2]:
        raise ValueError(f"h must be [batch, length, embed] and labels [batch, length]; got {h.shape} and {labels.shape}")
    if kernel.shape != (h.shape[-1], bias.shape[0]):
        raise ValueError(f"kernel must be [embed={h.shape[-1]}, vocab={bias.shape[0]}], got {kernel.shape}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    vocab = bias.shape[0]
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels: token ids must be integers, got dtype {labels.dtype}")
    check_range("labels", labels, vocab, f"token ids must be in [0, vocab_size={vocab}) or {ignore_index} (ignored)",
                ignore=ignore_index)
    loss, accuracy = _projected_ce(h, kernel, bias, labels, ignore_index, min(chunk, h.shape[1]))
    return (loss, accuracy) if with_accuracy else loss


def masked_lm_loss(module, h: Array, kernel: Array, bias: Array, labels: Array, *, chunk: int = 32) -> Array:
    """A masked-LM head's loss (:func:`projected_cross_entropy`); the loss and its accuracy are sown into
    ``module``'s ``intermediates`` as ``mlm_loss`` and ``mlm_accuracy`` (free unless the caller asks for that
    collection)."""
    loss, accuracy = projected_cross_entropy(h, kernel, bias, labels, chunk=chunk, with_accuracy=True)
    module.sow("intermediates", "mlm_loss", loss)
    module.sow("intermediates", "mlm_accuracy", accuracy)
    return loss


def _sorted_rows(h, labels, ignore_index, chunk):
    """Each example's labelled positions first (stable), padded to a multiple of ``chunk``."""
    length = h.shape[1]
    padded = -(-length // chunk) * chunk
    valid = labels != ignore_index
    order = jnp.argsort(~valid, axis=1, stable=True)  # [b, l]: labelled positions first, in order
    counts = jnp.sum(valid, axis=1)  # [b]
    hs = jnp.take_along_axis(h, order[..., None], axis=1)
    ls = jnp.take_along_axis(jnp.where(valid, labels, 0), order, axis=1)
    pad = padded - length
    hs = jnp.pad(hs, ((0, 0), (0, pad), (0, 0)))
    ls = jnp.pad(ls, ((0, 0), (0, pad)))
    row_valid = jnp.arange(padded)[None, :] < counts[:, None]  # [b, padded]
    steps = (jnp.max(counts) + chunk - 1) // chunk  # loop trips: enough for the most-labelled example
    return order, counts, hs, ls, row_valid, steps


def _chunk_logits(hs, kernel, bias, start, chunk):
    rows = jax.lax.dynamic_slice_in_dim(hs, start, chunk, axis=1)  # [b, chunk, e]
    logits = jnp.matmul(rows, kernel.astype(hs.dtype)) + bias.astype(hs.dtype)  # [b, chunk, vocab]
    return rows, logits.astype(jnp.float32)


def _forward(h, kernel, bias, labels, ignore_index, chunk):
    order, counts, hs, ls, row_valid, steps = _sorted_rows(h, labels, ignore_index, chunk)
    b, padded = ls.shape

    def body(i, carry):
        total, correct, lse_all = carry
        start = i * chunk
        _, x = _chunk_logits(hs, kernel, bias, start, chunk)
        lse = jax.nn.logsumexp(x, axis=-1)  # [b, chunk]
        lab = jax.lax.dynamic_slice_in_dim(ls, start, chunk, axis=1)
        picked = jnp.take_along_axis(x, lab[..., None], axis=-1)[..., 0]
        ok = jax.lax.dynamic_slice_in_dim(row_valid, start, chunk, axis=1)
        total = total + jnp.sum(jnp.where(ok, lse - picked, 0.0))
        correct = correct + jnp.sum(ok & (jnp.argmax(x, axis=-1) == lab))
        return total, correct, jax.lax.dynamic_update_slice_in_dim(lse_all, lse, start, axis=1)

    init = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), jnp.zeros((b, padded), jnp.float32))
    total, correct, lse_all = jax.lax.fori_loop(0, steps, body, init)
    count = jnp.sum(counts).astype(jnp.float32)
    return (total / count, correct / count), (order, count, hs, ls, row_valid, steps, lse_all)


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _projected_ce(h, kernel, bias, labels, ignore_index, chunk):
    return _forward(h, kernel, bias, labels, ignore_index, chunk)[0]


def _projected_ce_fwd(h, kernel, bias, labels, ignore_index, chunk):
    loss, (order, count, hs, ls, row_valid, steps, lse_all) = _forward(h, kernel, bias, labels, ignore_index, chunk)
    return loss, (h, kernel, bias, labels, order, count, hs, ls, row_valid, steps, lse_all)


def _projected_ce_bwd(ignore_index, chunk, res, cotangents):
    h, kernel, bias, labels, order, count, hs, ls, row_valid, steps, lse_all = res
    g, _ = cotangents  # the accuracy is a count: no gradient
    scale = g / count
    classes = jnp.arange(bias.shape[0], dtype=ls.dtype)

    def body(i, carry):
        dhs, dkernel, dbias = carry
        start = i * chunk
        rows, x = _chunk_logits(hs, kernel, bias, start, chunk)
        lse = jax.lax.dynamic_slice_in_dim(lse_all, start, chunk, axis=1)
        lab = jax.lax.dynamic_slice_in_dim(ls, start, chunk, axis=1)
        ok = jax.lax.dynamic_slice_in_dim(row_valid, start, chunk, axis=1)
        # d loss / d logits = scale * (softmax - onehot) on labelled rows, 0 elsewhere.
        d = jnp.where(ok[..., None], scale * (jnp.exp(x - lse[..., None]) - (lab[..., None] == classes)), 0.0)
        d = d.astype(hs.dtype)  # the unfused head's logit cotangent has the compute dtype
        drows = jnp.matmul(d, kernel.astype(hs.dtype).T)  # [b, chunk, e]
        dkernel = dkernel + jnp.einsum("bce,bcv->ev", rows, d, preferred_element_type=jnp.float32)
        dbias = dbias + jnp.sum(d, axis=(0, 1), dtype=jnp.float32)
        return jax.lax.dynamic_update_slice_in_dim(dhs, drows, start, axis=1), dkernel, dbias

    init = (jnp.zeros_like(hs), jnp.zeros(kernel.shape, jnp.float32), jnp.zeros(bias.shape, jnp.float32))
    dhs, dkernel, dbias = jax.lax.fori_loop(0, steps, body, init)
    # Undo the per-example sort: position order[b, j] received sorted row j.
    inverse = jnp.argsort(order, axis=1)
    dh = jnp.take_along_axis(dhs[:, : h.shape[1]], inverse[..., None], axis=1)
    dlabels = np.zeros(labels.shape, dtype=jax.dtypes.float0)  # integer input: float0 cotangent
    return dh.astype(h.dtype), dkernel.astype(kernel.dtype), dbias.astype(bias.dtype), dlabels


_projected_ce.defvjp(_projected_ce_fwd, _projected_ce_bwd)
