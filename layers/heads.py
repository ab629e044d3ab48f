"""Task heads shared by encoder families: pooler, masked-LM head, span QA and choice reshaping.

Classification heads are a dropout and a ``Dense`` that each family names as its checkpoint does; only the
pieces with structure of their own live here.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from layers import axes
from layers.activations import get_activation
from layers.dense import Dense
from layers.norms import LayerNorm
from layers.vocab_loss import masked_lm_loss

Array = jax.Array


class Pooler(nn.Module):
    """tanh(Dense(hidden of the first token)): ``[batch, length, hidden] -> [batch, hidden]``."""

    hidden_size: int
    dtype: Any = jnp.float32
    init_std: float = 0.02  # the dense kernel's normal init (HF's initializer_range)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return jnp.tanh(Dense(self.hidden_size, (axes.EMBED, axes.MLP), dtype=self.dtype,
                              kernel_init=nn.initializers.normal(self.init_std), name="dense")(x[:, 0]))


class MaskedLMHead(nn.Module):
    """Dense(hidden -> embedding_size) -> activation -> LayerNorm -> vocabulary projection + ``bias``.

    The projection is tied to the word embeddings when ``decoder_embedding [vocab, embedding_size]`` is given
    (ALBERT, BERT), else it is an own ``decoder`` Dense (RemBERT). ``[..., hidden] -> [..., vocab_size]``.

    Returns ``(logits, loss)``. With ``labels [b, l]`` (-100 ignored) the loss is the mean token cross-entropy,
    computed by :func:`layers.vocab_loss.projected_cross_entropy` from the pre-projection states at the labelled
    positions only; it does not read ``logits``, so a training step that uses only the loss never forms them.
    """

    embedding_size: int
    vocab_size: int
    hidden_act: str
    layer_norm_eps: float
    dtype: Any = jnp.float32
    loss_chunk: int = 32  # positions per example per step of the loss loop (layers.vocab_loss)
    init_std: float = 0.02  # the dense kernels' normal init (HF's initializer_range)

    @nn.compact
    def __call__(self, x: Array, decoder_embedding: Array | None = None,
                 labels: Array | None = None) -> tuple[Array, Array | None]:
        init = nn.initializers.normal(self.init_std)
        h = Dense(self.embedding_size, (axes.EMBED, axes.MLP), dtype=self.dtype, kernel_init=init, name="dense")(x)
        h = get_activation(self.hidden_act)(h)
        h = LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name="LayerNorm")(h)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes.VOCAB,)), (self.vocab_size,))
        if decoder_embedding is None:
            decoder = Dense(self.vocab_size, (axes.EMBED, axes.VOCAB), use_bias=False, dtype=self.dtype,
                            kernel_init=init, name="decoder")
            logits = decoder(h)
            kernel = decoder.variables["params"]["kernel"]
            kernel = kernel.value if isinstance(kernel, nn.Partitioned) else kernel
        else:
            kernel = decoder_embedding.T  # [embedding_size, vocab]
            logits = jnp.matmul(h, kernel.astype(self.dtype))
        logits = logits + bias.astype(self.dtype)
        loss = None
        if labels is not None:
            loss = masked_lm_loss(self, h, kernel, bias, labels, chunk=self.loss_chunk)
        return logits, loss


def split_span_logits(logits: Array) -> tuple[Array, Array]:
    """``[batch, length, 2] -> (start [batch, length], end [batch, length])``."""
    return logits[..., 0], logits[..., 1]


def flatten_choices(x: Array | None) -> Array | None:
    """``[batch, num_choices, ...] -> [batch * num_choices, ...]`` (None passes through)."""
    return None if x is None else x.reshape((-1,) + x.shape[2:])


def pooler_reference(x, kernel, bias):
    """Slow twin of ``Pooler`` in float64 numpy (tests only)."""
    import numpy as np

    return np.tanh(np.asarray(x, np.float64)[:, 0] @ np.asarray(kernel, np.float64) + np.asarray(bias, np.float64))


def masked_lm_head_reference(x, params, activation, epsilon, decoder_embedding=None):
    """Slow twin of ``MaskedLMHead`` in float64 numpy, from its unboxed params (tests only)."""
    import numpy as np

    from layers.norms import layer_norm_reference

    f64 = lambda a: np.asarray(a, np.float64)
    h = f64(x) @ f64(params["dense"]["kernel"]) + f64(params["dense"]["bias"])
    h = f64(activation(h))
    h = layer_norm_reference(h, params["LayerNorm"]["scale"], params["LayerNorm"]["bias"], epsilon=epsilon)
    table = params["decoder"]["kernel"].T if decoder_embedding is None else decoder_embedding
    return h @ f64(table).T + f64(params["bias"])
