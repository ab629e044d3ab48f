"""Token, segment and learned position embeddings (BERT-style input layer), plus the tied output projection."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from layers import axes
from layers.checks import check_dtype, check_rank
from layers.dropout import Dropout
from layers.norms import LayerNorm

Array = jax.Array


def embed_lookup(table: Array, ids: Array, *, padding_idx: int | None = None) -> Array:
    """Rows of ``table [num, features]`` for ``ids [...]`` -> ``[..., features]``.

    With ``padding_idx`` the padding row gets no gradient, as torch's ``nn.Embedding(padding_idx=...)``: without
    this, fine-tuning from an HF checkpoint would move a row that PyTorch keeps frozen.
    """
    check_rank("table", table, 2, "[num, features]")
    check_dtype("ids", ids, int, "token ids must be integers")
    out = jnp.take(table, ids, axis=0)
    if padding_idx is not None:
        out = jnp.where((ids == padding_idx)[..., None], jax.lax.stop_gradient(out), out)
    return out


def embed_lookup_reference(table, ids):
    """Slow twin: one-hot matmul (tests only)."""
    return jnp.einsum("...v,vf->...f", jax.nn.one_hot(ids, table.shape[0], dtype=table.dtype), table, precision="highest")


class Embed(nn.Module):
    """``ids [...] -> [..., features]`` with param ``embedding [num_embeddings, features]`` (HF ``weight``)."""

    num_embeddings: int
    features: int
    padding_idx: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    axes: tuple[str, str] = (axes.VOCAB, axes.EMBED)
    embedding_init: Any = nn.initializers.normal(stddev=0.02)

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(self.embedding_init, self.axes),
            (self.num_embeddings, self.features),
            self.param_dtype,
        )

    def __call__(self, ids: Array) -> Array:
        return embed_lookup(self.embedding, ids, padding_idx=self.padding_idx).astype(self.dtype)

    def attend(self, x: Array) -> Array:
        """Tied output projection ``[..., features] -> [..., num_embeddings]`` (logits over the vocabulary)."""
        return jnp.matmul(x.astype(self.dtype), self.embedding.astype(self.dtype).T)


class TokenEmbeddings(nn.Module):
    """word + token type (+ learned absolute positions) -> LayerNorm -> dropout, all at width ``embedding_size``.

    Submodule names follow HF's BERT-style ``embeddings.*`` so checkpoints convert by renaming.
    ``[batch, length]`` ids (or ``[batch, length, embedding_size]`` inputs_embeds) -> ``[batch, length, embedding_size]``.
    """

    vocab_size: int
    embedding_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    dropout_rate: float = 0.0
    use_position_embeddings: bool = True  # False for relative position schemes (HF adds none then)
    pad_token_id: int | None = None
    dtype: Any = jnp.float32
    init_std: float = 0.02  # the tables' normal init (HF's initializer_range)

    def setup(self):
        init = nn.initializers.normal(self.init_std)
        self.word_embeddings = Embed(self.vocab_size, self.embedding_size, padding_idx=self.pad_token_id,
                                     dtype=self.dtype, embedding_init=init)
        self.position_embeddings = Embed(
            self.max_position_embeddings, self.embedding_size, dtype=self.dtype, axes=(axes.POSITIONS, axes.EMBED),
            embedding_init=init)
        self.token_type_embeddings = Embed(self.type_vocab_size, self.embedding_size, dtype=self.dtype,
                                           embedding_init=init)
        self.LayerNorm = LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype)
        self.dropout = Dropout(rate=self.dropout_rate)

    def __call__(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None, *, deterministic=True):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch, length = inputs_embeds.shape[:2]
        if token_type_ids is None:
            token_type_ids = jnp.zeros((batch, length), jnp.int32)
        x = inputs_embeds.astype(self.dtype) + self.token_type_embeddings(token_type_ids)
        # HF registers the position table even for relative schemes, so the param always exists (and converts).
        if position_ids is None:
            position_ids = jnp.arange(length, dtype=jnp.int32)[None, :]
        positions = self.position_embeddings(position_ids)
        if self.use_position_embeddings:
            x = x + positions
        x = self.LayerNorm(x)
        return self.dropout(x, deterministic=deterministic)
