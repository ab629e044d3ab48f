"""Reformer in Flax Linen, numerically equal to HF ``transformers`` ``modeling_reformer``.

Structure (param names follow the HF checkpoint so conversion is a rename):

    embeddings      dropout(word) + axial (or learned) positions                              [batch, length, H]
    encoder         reversible stack, X1 = X2 = embeddings, per layer
                        Y1 = X1 + Attn(LN(X2))            Attn: local or LSH self-attention + output dense
                        Y2 = X2 + FF(LN(Y1))              FF: Dense -> dropout -> act -> Dense -> dropout (chunked)
                    then LN(concat[Y1, Y2]) -> dropout                                           [batch, length, 2H]
    heads           lm_head (Linear 2H -> V + bias, untied, chunked), classifier, qa_outputs

Depth: ``attn_layers`` is read as P layer kinds repeating with the smallest period P (``config.layer_period``);
the params of kind k are stacked ``[depth / P, ...]`` under ``encoder/layers_{k}`` and the stack is ONE
``jax.custom_vjp`` around a scan over the ``depth / P`` groups (``layers.reversible.reversible_stack``): the forward
keeps only the final two streams plus the LSH buckets of every LSH layer, the backward rebuilds each layer's inputs
and reuses the saved buckets. Activation memory is therefore constant in depth. When per-layer outputs are asked
for (``output_hidden_states`` / ``output_attentions``) a plain ``lax.scan`` (ordinary autodiff) runs instead.

LSH rotations ``[num_attention_heads, attention_head_size, num_hashes, rotation_size // 2]``: every head accepts
``lsh_rotations``, used by every LSH layer (as HF does when ``hash_seed`` is set, since it re-seeds before every
hash); else with ``config.hash_seed`` one tensor is drawn from ``jax.random.PRNGKey(hash_seed)`` for all layers;
else every LSH layer draws its own from the ``"lsh"`` PRNG stream (``rngs={"lsh": key}``).

Training vs eval is ``deterministic`` (False = HF ``model.train()``): in training the length must equal
``prod(axial_pos_shape)`` and be a multiple of the chunk lcm; in eval shorter lengths are padded to a multiple of
the lcm (``pad_token_id``, attention mask 0) and the outputs sliced back (per-layer ``hidden_states`` stay at the
padded length, as in HF). ``head_mask`` is not supported.

Decoding (``jaxmodels.generation`` protocol): ``init_cache(batch, max_length)`` gives a static cache and ``cache=``
calls run the next tokens. ``decoding="exact"`` (default) gives the full pass's logits over the sequence so far at
every step, whatever the chunk lengths (a step reruns the eval pass in a static buffer; see ``ReformerModel``);
``decoding="incremental"`` is HF's kind of cached decoding (``cached_attention``), an approximation of chunked LSH.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.input_checks import check_array, check_nonempty, check_range
from jaxmodels.outputs import (
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
)
from jaxmodels.reformer.config import ReformerConfig
from layers import axes
from layers.activations import get_activation
from layers.axial import AxialPositionEmbeddings
from layers.chunked import chunked_apply
from layers.dense import Dense, dense
from layers.dropout import Dropout
from layers.embeddings import Embed
from layers.heads import split_span_logits
from layers.local import MASK_VALUE as LOCAL_MASK_VALUE
from layers.local import LocalSelfAttention
from layers.losses import cross_entropy, sequence_classification_loss, span_loss
from layers.lsh import MASK_VALUE as LSH_MASK_VALUE
from layers.lsh import SELF_MASK_VALUE as LSH_SELF_MASK_VALUE
from layers.lsh import LSHSelfAttention, key_normalize, lsh_hash
from layers.norms import LayerNorm, layer_norm
from layers.reversible import reversible_stack
from layers.sequence_parallel import SequenceSharding
from layers.stacked import check_scan_unroll, init_stacked, resolve_residuals, scan_layers
from layers.vocab_loss import masked_lm_loss

Array = jax.Array


# ---------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------
@flax.struct.dataclass
class ReformerModelOutput:
    """``last_hidden_state [batch, length, 2H]``; ``hidden_states``: depth + 1 entries ``[batch, padded_length, H]``
    (the second stream before every layer, then the last); ``attentions``: one per layer (LSH ones in sorted
    order, as HF); ``cache``: the updated decoding cache when one was given."""

    last_hidden_state: Array
    past_buckets_states: Any | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cache: Any | None = None


@flax.struct.dataclass
class ReformerModelWithLMHeadOutput:
    logits: Array
    loss: Array | None = None
    past_buckets_states: Any | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cache: Any | None = None


# ---------------------------------------------------------------------------------------------------------------
# Input validation: Python on static shapes (and values when concrete), before any tracing.
# ---------------------------------------------------------------------------------------------------------------
def validate_inputs(config: ReformerConfig, input_ids, attention_mask, position_ids, inputs_embeds, *,
                    training: bool) -> tuple[int, int]:
    """Raises ValueError naming the argument or config field; returns ``(batch, length)``."""
    c = config
    check_array("input_ids", input_ids)
    check_array("attention_mask", attention_mask)
    check_array("position_ids", position_ids)
    check_array("inputs_embeds", inputs_embeds)
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if input_ids is not None:
        shape = tuple(input_ids.shape)
        if len(shape) != 2:
            raise ValueError(f"input_ids must have shape [batch, length], got {shape}")
        if not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"input_ids must be integer, got {input_ids.dtype}")
        check_range("input_ids", input_ids, c.vocab_size, f"ids must be in [0, vocab_size={c.vocab_size})")
    else:
        shape = tuple(inputs_embeds.shape[:-1])
        if len(shape) != 2 or inputs_embeds.shape[-1] != c.hidden_size:
            raise ValueError(f"inputs_embeds must have shape [batch, length, hidden_size={c.hidden_size}], got "
                             f"{tuple(inputs_embeds.shape)}")
    if attention_mask is not None and tuple(attention_mask.shape) != shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but input_ids has shape {shape}")
    if position_ids is not None and tuple(position_ids.shape) not in (shape, (1, shape[1])):
        raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}; expected {shape} or {(1, shape[1])}")
    check_nonempty("input_ids" if input_ids is not None else "inputs_embeds", shape)
    length = shape[1]
    if length > c.max_position_embeddings:
        raise ValueError(f"sequence length {length} exceeds max_position_embeddings={c.max_position_embeddings}")
    if training:
        if length > c.min_chunk_length and length % c.lcm_chunk_length:
            raise ValueError(
                f"input_ids: in training the sequence length {length} must be a multiple of the least common multiple "
                f"of the chunk lengths (local_attn_chunk_length / lsh_attn_chunk_length) = {c.lcm_chunk_length}; "
                f"pad it to {length + c.lcm_chunk_length - length % c.lcm_chunk_length}")
        if c.axial_pos_embds and length != int(np.prod(c.axial_pos_shape)):
            raise ValueError(
                f"input_ids: in training the sequence length {length} must equal prod(axial_pos_shape="
                f"{c.axial_pos_shape}) = {int(np.prod(c.axial_pos_shape))}")
    return shape


def check_rotations(config: ReformerConfig, lsh_rotations, length: int, num_hashes: int | None) -> None:
    expected = config.rotations_shape(length, num_hashes)
    if tuple(lsh_rotations.shape) != expected:
        raise ValueError(
            f"lsh_rotations has shape {tuple(lsh_rotations.shape)}; expected [num_attention_heads, "
            f"attention_head_size, num_hashes, rotation_size // 2] = {expected} at (padded) length {length}")


# ---------------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------------
def _normal(config: ReformerConfig):
    return nn.initializers.normal(stddev=config.initializer_range)


class _LearnedPositionEmbeddings(nn.Module):
    """HF ``PositionEmbeddings``: ``embedding [max_position_embeddings, H]`` + dropout."""

    config: ReformerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, position_ids: Array, deterministic: bool = True) -> Array:
        c = self.config
        x = Embed(c.max_position_embeddings, c.hidden_size, dtype=self.dtype, axes=(axes.POSITIONS, axes.EMBED),
                  embedding_init=_normal(c), name="embedding")(position_ids)
        return Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)


class ReformerEmbeddings(nn.Module):
    """``dropout(word_embeddings(ids)) + position_embeddings``: ``[batch, length] -> [batch, length, H]``."""

    config: ReformerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, position_ids, inputs_embeds, start_index=0, deterministic: bool = True):
        c = self.config
        word = Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, embedding_init=_normal(c), name="word_embeddings")
        x = word(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.dtype)
        batch, length = x.shape[:2]
        if position_ids is None:
            position_ids = jnp.arange(length, dtype=jnp.int32)[None] + start_index
        position_ids = jnp.broadcast_to(position_ids, (batch, length))
        x = Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)
        if c.axial_pos_embds:
            pos = AxialPositionEmbeddings(c.axial_pos_shape, c.axial_pos_embds_dim, c.hidden_size,
                                          dropout_rate=c.hidden_dropout_prob, axial_norm_std=c.axial_norm_std,
                                          dtype=self.dtype, name="position_embeddings")(position_ids, deterministic)
        else:
            pos = _LearnedPositionEmbeddings(c, self.dtype, name="position_embeddings")(position_ids, deterministic)
        return x + pos


class _Output(nn.Module):
    """``dropout(dense(x))``; HF ``ReformerSelfOutput`` (no bias) and ``ReformerFeedForwardOutput`` (bias)."""

    features: int
    in_axis: str
    use_bias: bool
    dropout_rate: float
    init: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        x = Dense(self.features, (self.in_axis, axes.EMBED), use_bias=self.use_bias, dtype=self.dtype,
                  kernel_init=self.init, name="dense")(x)
        return Dropout(self.dropout_rate)(x, deterministic=deterministic)


class ReformerAttention(nn.Module):
    """F of the reversible layer: ``output(self_attention(LN(x)))``. ``[b, l, H] -> ([b, l, H], buckets, probs)``.

    ``kind`` is ``"lsh"`` or ``"local"``. ``buckets`` (LSH, chunked lengths only) are ``[b, heads, hashes, l]``.
    With ``return_normed`` the layer-normed input (what a decoding cache stores) is returned as a fourth value.
    """

    config: ReformerConfig
    kind: str
    dtype: Any = jnp.float32
    sequence_sharding: SequenceSharding | None = None  # local layers split the length over its mesh axis

    @nn.compact
    def __call__(self, x, attention_mask=None, *, rotations=None, buckets=None, num_hashes=None,
                 deterministic: bool = True, return_probs: bool = False, live_length=None):
        c = self.config
        h = LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, remat=True, name="layer_norm")(x)
        if self.kind == "lsh":
            out, buckets, probs = LSHSelfAttention(
                num_heads=c.num_attention_heads, head_dim=c.attention_head_size, chunk_length=c.lsh_attn_chunk_length,
                num_buckets=c.resolved_num_buckets(x.shape[1]), num_hashes=num_hashes or c.num_hashes,
                num_chunks_before=c.lsh_num_chunks_before, num_chunks_after=c.lsh_num_chunks_after,
                causal=c.is_decoder, max_position_embeddings=c.max_position_embeddings,
                dropout_rate=c.lsh_attention_probs_dropout_prob, dtype=self.dtype, kernel_init=_normal(c),
                name="self_attention",
            )(h, attention_mask, rotations=rotations, buckets=buckets, num_hashes=num_hashes,
              deterministic=deterministic, return_probs=return_probs, live_length=live_length)
        else:
            out, probs = LocalSelfAttention(
                num_heads=c.num_attention_heads, head_dim=c.attention_head_size,
                chunk_length=c.local_attn_chunk_length, num_chunks_before=c.local_num_chunks_before,
                num_chunks_after=c.local_num_chunks_after, causal=c.is_decoder,
                dropout_rate=c.local_attention_probs_dropout_prob, dtype=self.dtype, kernel_init=_normal(c),
                sequence_sharding=self.sequence_sharding, name="self_attention",
            )(h, attention_mask, deterministic=deterministic, return_probs=return_probs)
            buckets = None
        out = _Output(c.hidden_size, axes.HEADS, False, c.hidden_dropout_prob, _normal(c), self.dtype,
                      name="output")(out, deterministic)
        return out, buckets, probs


class _FeedForwardDense(nn.Module):
    config: ReformerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        c = self.config
        x = Dense(c.feed_forward_size, (axes.EMBED, axes.MLP), dtype=self.dtype, kernel_init=_normal(c),
                  name="dense")(x)
        x = Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)
        return get_activation(c.hidden_act)(x)


class ReformerFeedForward(nn.Module):
    """G of the reversible layer (one chunk): ``output(dense(LN(y)))``. ``[b, l, H] -> [b, l, H]``."""

    config: ReformerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, y, deterministic: bool = True):
        c = self.config
        h = LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="layer_norm")(y)
        h = _FeedForwardDense(c, self.dtype, name="dense")(h, deterministic)
        return _Output(c.hidden_size, axes.MLP, True, c.hidden_dropout_prob, _normal(c), self.dtype,
                       name="output")(h, deterministic)


class ReformerLayer(nn.Module):
    """One layer's params (``attention``, ``feed_forward``); used to initialise the stacked layer params."""

    config: ReformerConfig
    kind: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        a, _, _ = ReformerAttention(self.config, self.kind, self.dtype, name="attention")(x)
        return ReformerFeedForward(self.config, self.dtype, name="feed_forward")(x + a)


def cached_attention(config: ReformerConfig, kind: str, params, x_new, states, buckets, mask, index, rotations,
                     dtype=jnp.float32):
    """One attention block (F) for ``x_new [b, t, H]``, the ``t`` tokens after the ``index`` cached ones.

    ``states [b, T, H]`` holds the layer-normed inputs of this layer (HF caches the same, not keys/values);
    ``buckets [b, heads, hashes, T]`` the LSH buckets (``None`` for local layers); ``mask [b, T]`` the cached
    attention mask *including* the new tokens. Returns ``(out [b, t, H], states, buckets)`` with the new rows written.

    Causal local attention and LSH attention over at most one LSH chunk are exactly what the full forward pass
    computes for these tokens. Beyond one LSH chunk a new token attends (causally, per hash round, rounds combined
    by logsumexp) to the cached tokens in its own bucket plus itself: like HF's cached decoding it does not redo
    the sort of the full pass, so it is the usual incremental approximation of chunked LSH attention.
    """
    c = config
    batch, t_new, _ = x_new.shape
    cache_len = states.shape[1]
    heads, d = c.num_attention_heads, c.attention_head_size
    ln = params["layer_norm"]
    h = layer_norm(x_new, ln["scale"], ln["bias"], epsilon=c.layer_norm_eps).astype(dtype)
    states = jax.lax.dynamic_update_slice(states, h.astype(states.dtype), (0, index, 0))
    sa = params["self_attention"]
    split = lambda y: y.reshape(y.shape[:2] + (heads, d)).swapaxes(1, 2)
    q_pos = index + jnp.arange(t_new)
    k_pos = jnp.arange(cache_len)
    valid = (k_pos[None, :] <= q_pos[:, None])[None, None] & mask.astype(bool)[:, None, None, :]  # [b, 1, t, T]
    if kind == "local":
        q = split(dense(h, sa["query"]["kernel"], dtype=dtype))
        k = split(dense(states, sa["key"]["kernel"], dtype=dtype)) / jnp.asarray(np.sqrt(d), dtype)
        v = split(dense(states, sa["value"]["kernel"], dtype=dtype))
        start = (q_pos // c.local_attn_chunk_length - c.local_num_chunks_before) * c.local_attn_chunk_length
        valid = valid & (k_pos[None, :] >= start[:, None])[None, None]
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
        scores = jnp.where(valid, scores, LOCAL_MASK_VALUE)
        probs = jnp.exp(scores - jax.nn.logsumexp(scores, axis=-1, keepdims=True))
        out = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(dtype), v)
    else:
        qk = dense(states, sa["query_key"]["kernel"], dtype=dtype)
        v = split(dense(states, sa["value"]["kernel"], dtype=dtype))
        q = jax.lax.dynamic_slice_in_dim(split(qk), index, t_new, axis=2)
        k = key_normalize(split(qk))
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)[:, :, None]  # round axis
        valid = valid[:, :, None]
        if buckets is not None and rotations is not None:
            num_buckets = c.resolved_num_buckets(cache_len)
            new = lsh_hash(jax.lax.dynamic_slice_in_dim(qk, index, t_new, axis=1).reshape(batch, t_new, heads, d),
                           rotations, num_buckets)
            buckets = jax.lax.dynamic_update_slice(buckets, new.astype(buckets.dtype), (0, 0, 0, index))
            same = new[..., :, None] == buckets[..., None, :]  # [b, heads, hashes, t, T]
            # Within one chunk the full pass attends to everything: only beyond it do buckets restrict keys.
            full = index + t_new <= c.lsh_attn_chunk_length
            valid = valid & (same | full)
        scores = jnp.where(valid, scores, LSH_MASK_VALUE)
        scores = jnp.where(q_pos[:, None] != k_pos[None, :], scores, LSH_SELF_MASK_VALUE)
        lse = jax.nn.logsumexp(scores, axis=-1, keepdims=True)  # [b, heads, rounds, t, 1]
        out = jnp.einsum("bhnqk,bhkd->bhnqd", jnp.exp(scores - lse).astype(dtype), v)
        weights = jnp.exp(lse - jax.nn.logsumexp(lse, axis=2, keepdims=True))
        out = jnp.sum(out * weights, axis=2)
    out = out.swapaxes(1, 2).reshape(batch, t_new, heads * d)
    out = dense(out, params["output"]["dense"]["kernel"], dtype=dtype)
    return out, states, buckets


class ReformerEncoder(nn.Module):
    """Reversible stack over ``attn_layers`` + final ``LN(concat[Y1, Y2])`` -> dropout.

    ``x [b, l, H] -> (h [b, l, 2H], hidden_states or None, attentions or None)``.
    """

    config: ReformerConfig
    dtype: Any = jnp.float32
    # The feed-forward runs in chunks of at least this many positions (a multiple of chunk_size_feed_forward;
    # layers.chunked.chunked_apply's min_chunk): HF's 64 is an eager-PyTorch size that costs XLA 20% at 4K.
    ff_min_chunk: int = 4096
    remat: bool = False
    scan_residuals: str = "all"
    scan_unroll: int = 1
    sequence_sharding: SequenceSharding | None = None

    @nn.compact
    def __call__(self, x, attention_mask=None, *, lsh_rotations=None, num_hashes=None, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False, cache=None,
                 live_length=None):
        """``live_length`` (traced): only that many leading positions exist (exact decoding in a static buffer,
        ``ReformerModel``'s cached calls); the layers then run as a plain scan (no gradients are needed)."""
        c = self.config
        period = c.layer_period
        rows = c.num_hidden_layers // period
        kinds = c.attn_layers[:period]
        batch, length, _ = x.shape
        if cache is not None:
            # Rotations (and num_buckets) belong to the whole cached sequence, not to this call's tokens.
            length = cache["mask"].shape[1]
        slots = [
            self.param(f"layers_{k}", lambda rng, kind=kinds[k]: init_stacked(
                ReformerLayer(c, kind, self.dtype), rng, (rows,), (axes.LAYERS,),
                jnp.zeros((1, 1, c.hidden_size), self.dtype)))
            for k in range(period)
        ]

        # -- LSH rotations (only needed when some LSH layer hashes, i.e. length > lsh chunk) ------------------
        rotations = [None] * period
        hashing = "lsh" in kinds and length > c.lsh_attn_chunk_length
        if hashing:
            shape = c.rotations_shape(length, num_hashes)
            if lsh_rotations is not None:
                shared = lsh_rotations
            elif c.hash_seed is not None:
                shared = jax.random.normal(jax.random.PRNGKey(c.hash_seed), shape, jnp.float32)
            else:
                shared = None
                if not self.has_rng("lsh"):
                    raise ValueError(
                        "lsh_rotations: LSH layers need random rotations: pass lsh_rotations, set config.hash_seed, "
                        "or give an 'lsh' PRNG key (rngs={'lsh': key})")
                lsh_key = self.make_rng("lsh")
            for k, kind in enumerate(kinds):
                if kind != "lsh":
                    continue
                if shared is not None:
                    rot = jnp.broadcast_to(shared.astype(jnp.float32), (rows,) + shape)
                else:
                    rot = jax.random.normal(jax.random.fold_in(lsh_key, k), (rows,) + shape, jnp.float32)
                rotations[k] = jax.lax.stop_gradient(rot)

        f_params = tuple({"params": slots[k]["attention"]} | ({} if rotations[k] is None else
                                                             {"rotations": rotations[k]}) for k in range(period))
        g_params = tuple(slots[k]["feed_forward"] for k in range(period))
        rates = (c.hidden_dropout_prob, c.local_attention_probs_dropout_prob, c.lsh_attention_probs_dropout_prob)
        key = self.make_rng("dropout") if not deterministic and any(r > 0 for r in rates) else None

        residuals = resolve_residuals(self.remat, self.scan_residuals)
        check_scan_unroll(self.scan_unroll)
        attn_modules = [ReformerAttention(c, kind, self.dtype, self.sequence_sharding) for kind in kinds]
        ff_module = ReformerFeedForward(c, self.dtype)
        positions = jnp.arange(length, dtype=jnp.int32)[None]

        def attend(k, p, h, f_key, mask, aux, return_probs=False):
            rngs = {} if f_key is None else {"dropout": f_key}
            return attn_modules[k].apply({"params": p["params"]}, h, mask, rotations=p.get("rotations"), buckets=aux,
                                         num_hashes=num_hashes, deterministic=deterministic,
                                         return_probs=return_probs, rngs=rngs, live_length=live_length)

        def make_f(k):
            def f(p, h, f_key, mask, aux):
                out, buckets, _ = attend(k, p, h, f_key, mask, aux)
                return out, buckets
            return f

        def feed_forward(p, y, g_key, mask=None):
            def one_chunk(inputs):
                y_chunk, pos = inputs
                # Fold the chunk's first position into the key: chunks draw different masks, recomputation the same.
                rngs = {} if g_key is None else {"dropout": jax.random.fold_in(g_key, pos[0, 0])}
                return ff_module.apply({"params": p}, y_chunk, deterministic, rngs=rngs)
            return chunked_apply(one_chunk, (y, positions), chunk_size=c.chunk_size_feed_forward, axis=1,
                                 min_chunk=self.ff_min_chunk)

        plain = output_hidden_states or output_attentions or live_length is not None
        new_cache = None
        if cache is not None:
            fill, t_new = cache["index"], x.shape[1]
            new_mask = jnp.ones((batch, t_new), jnp.int32) if attention_mask is None else attention_mask
            mask = jax.lax.dynamic_update_slice(cache["mask"], new_mask.astype(cache["mask"].dtype), (0, fill))

            def cached_layer(k):
                def layer(params, carry, *, key, cache, index):
                    fp, gp = params
                    y1, y2 = carry
                    out, states, buckets = cached_attention(c, kinds[k], fp["params"], y2, cache[0], cache[1], mask,
                                                            fill, fp.get("rotations"), self.dtype)
                    y1 = y1 + out.astype(y1.dtype)
                    y2 = y2 + ff_module.apply({"params": gp}, y1, True).astype(y2.dtype)
                    return (y1, y2), None, (states, buckets)
                return layer

            stack = scan_layers(tuple(cached_layer(k) for k in range(period)),
                                tuple(zip(f_params, g_params)), (x, x),
                                cache=tuple(zip(cache["states"], cache["buckets"])))
            y1, y2 = stack.carry
            states = tuple(layer_cache[0] for layer_cache in stack.cache)
            buckets = tuple(layer_cache[1] for layer_cache in stack.cache)
            new_cache = {"index": fill + t_new, "mask": mask, "states": states, "buckets": buckets}
            all_hidden = all_probs = None
        elif not plain:
            y1, y2, _ = reversible_stack(tuple(make_f(k) for k in range(period)), (feed_forward,) * period,
                                         f_params, g_params, x, x, key=key, context=attention_mask, has_aux=True)
            all_hidden = all_probs = None
        else:
            def plain_layer(k):
                def layer(params, carry, *, key, cache, index):
                    fp, gp = params
                    y1, y2 = carry
                    # The reversible stack's keys: F and G of layer l fold 0 and 1 into the layer's key.
                    f_key, g_key = (None, None) if key is None else (jax.random.fold_in(key, 0),
                                                                     jax.random.fold_in(key, 1))
                    out, _, probs = attend(k, fp, y2, f_key, attention_mask, None, return_probs=output_attentions)
                    new_y1 = y1 + out.astype(y1.dtype)
                    new_y2 = y2 + feed_forward(gp, new_y1, g_key).astype(y2.dtype)
                    # HF's hidden_states hold the second stream *before* each layer.
                    return (new_y1, new_y2), (y2, probs), None
                return layer

            stack = scan_layers(tuple(plain_layer(k) for k in range(period)), tuple(zip(f_params, g_params)),
                                (x, x), key=key, residuals=residuals, unroll=self.scan_unroll)
            y1, y2 = stack.carry
            all_hidden = tuple(state for state, _ in stack.outputs) + (y2,) if output_hidden_states else None
            all_probs = tuple(probs for _, probs in stack.outputs) if output_attentions else None

        h = jnp.concatenate([y1, y2], axis=-1)
        h = LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="layer_norm")(h)
        h = Dropout(c.hidden_dropout_prob)(h, deterministic=deterministic)
        if cache is not None:
            return h, all_hidden, all_probs, new_cache
        return h, all_hidden, all_probs


DECODING = ("exact", "incremental")


def _check_decoding(decoding: str) -> None:
    if decoding not in DECODING:
        raise ValueError(f"decoding={decoding!r}: expected one of {DECODING} (see ReformerModel)")


def init_reformer_cache(config: ReformerConfig, batch_size: int, max_length: int, dtype=jnp.float32,
                        decoding: str = "exact") -> dict:
    """Empty decoding cache for up to ``max_length`` tokens (static shapes; ``index`` counts the filled positions).

    ``decoding="exact"`` (see ``ReformerModel``): the tokens themselves, ``ids`` and ``mask [batch, T]`` with T
    ``max_length`` rounded up to a multiple of the chunk lengths' lcm (the buffer a full pass runs over).
    ``decoding="incremental"``: per layer kind, ``states [depth / P, batch, max_length, hidden]`` (the layer-normed
    attention inputs, what HF caches) and, for LSH kinds, ``buckets [depth / P, batch, heads, num_hashes,
    max_length]`` int32; ``mask [batch, max_length]``.
    """
    _check_decoding(decoding)
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length={max_length!r}: must be a positive int")
    index = jnp.zeros((), jnp.int32)
    if decoding == "exact":
        lcm = config.lcm_chunk_length
        slots = max_length if max_length <= config.min_chunk_length else -(-max_length // lcm) * lcm
        if slots > config.max_length:
            raise ValueError(f"max_length={max_length} (padded to {slots}, a multiple of the chunk lengths' lcm "
                             f"{lcm}) exceeds the {config.max_length} positions of the model")
        if "lsh" in config.attn_layers and slots > config.lsh_attn_chunk_length and config.num_buckets is None:
            raise ValueError("ReformerConfig.num_buckets=None: exact decoding beyond one LSH chunk needs a fixed "
                             "bucket count (HF's rule changes it with the length; HF freezes the first value it "
                             "computes); set num_buckets")
        return {"index": index, "mask": jnp.zeros((batch_size, slots), jnp.int32),
                "ids": jnp.zeros((batch_size, slots), jnp.int32)}
    period = config.layer_period
    rows = config.num_hidden_layers // period
    kinds = config.attn_layers[:period]
    states = tuple(jnp.zeros((rows, batch_size, max_length, config.hidden_size), dtype) for _ in kinds)
    buckets = tuple(
        jnp.zeros((rows, batch_size, config.num_attention_heads, config.num_hashes, max_length), jnp.int32)
        if kind == "lsh" else None for kind in kinds)
    return {"index": index, "mask": jnp.zeros((batch_size, max_length), jnp.int32),
            "states": states, "buckets": buckets}


def padded_length(config: ReformerConfig, length):
    """The length an eval pass over ``length`` tokens runs at (HF's auto-padding to a multiple of the chunk
    lengths' lcm, unless ``length`` fits the smallest chunk); ``length`` may be traced."""
    lcm, fits = config.lcm_chunk_length, length <= config.min_chunk_length
    return jnp.where(fits | (length % lcm == 0), length, (length // lcm + 1) * lcm)


class ReformerModel(nn.Module):
    """Bare Reformer: ``ReformerModelOutput`` with ``last_hidden_state [batch, length, 2 * hidden_size]``.

    ``remat`` / ``scan_residuals`` / ``scan_unroll`` (``layers.stacked``, the knobs every family has) apply where
    the layers run as a plain scan (when per-layer outputs are asked for); the training path is the reversible
    stack, which keeps no per-layer activations at all. ``sequence_sharding``: local-attention layers run
    sequence-parallel (``layers.local.LocalSelfAttention``); LSH layers sort over the whole length and are left to
    the automatic partitioner.

    Decoding (``jaxmodels.generation`` protocol: ``init_cache``, then calls with ``cache=``), by ``decoding``:

    - ``"exact"`` (default): every cached call runs the full eval pass over the tokens so far, in a static buffer
      (``layers.lsh`` ``live_length``), so its logits are those of the full forward pass over the same prefix,
      LSH layers included, for any chunk lengths, hash rounds, factorized buckets and padded prompts. Nothing
      cheaper is exact: chunked LSH attention is not causal in *which* keys a position sees. A later token with a
      smaller bucket shifts the chunk boundaries of earlier ones, so every position's hidden state can change as
      the sequence grows, and cached per-layer states go stale. A step costs a full pass over the buffer.
    - ``"incremental"``: HF-style cached decoding of the layer-normed attention inputs; the new token attends to
      the cached tokens that share its bucket (plus itself), causal local layers are exact. An approximation of
      the full pass beyond one LSH chunk (as HF's own cached decoding is), O(max_length) per step.

    Either way the prompt's logits, and so the first generated token, are those of the full pass.
    """

    config: ReformerConfig
    dtype: Any = jnp.float32
    remat: bool = False
    scan_residuals: str = "all"
    scan_unroll: int = 1
    sequence_sharding: SequenceSharding | None = None
    decoding: str = "exact"

    def setup(self):
        # Rematerialised: its backward would otherwise keep two fp32 [batch, length, H] buffers (the word dropout's
        # scaled mask and the axial positions' dropout product) alive through the whole encoder backward, 2 KiB per
        # token at d=256; recomputing a gather and a hashed mask costs nothing next to a layer.
        self.embeddings = nn.remat(ReformerEmbeddings, static_argnums=(5,))(self.config, self.dtype)
        self.encoder = ReformerEncoder(self.config, self.dtype, remat=self.remat, scan_residuals=self.scan_residuals,
                                       scan_unroll=self.scan_unroll, sequence_sharding=self.sequence_sharding)

    def init_cache(self, batch_size: int, max_length: int) -> dict:
        """Decoding cache (see ``jaxmodels.generation``); needs no params."""
        return init_reformer_cache(self.config, batch_size, max_length, self.dtype, self.decoding)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, num_hashes=None,
                 lsh_rotations=None, cache=None, *, deterministic: bool = True, output_hidden_states: bool = False,
                 output_attentions: bool = False):
        c = self.config
        if cache is not None:
            _check_decoding(self.decoding)
            if ("ids" in cache) != (self.decoding == "exact"):
                raise ValueError(f"cache: made for the other decoding mode than decoding={self.decoding!r}; "
                                 "make it with this module's init_cache")
            call = self._exact_call if self.decoding == "exact" else self._cached_call
            return call(input_ids, attention_mask, position_ids, inputs_embeds, lsh_rotations, cache)
        batch, length = validate_inputs(c, input_ids, attention_mask, position_ids, inputs_embeds,
                                        training=not deterministic)
        if num_hashes is not None and (not isinstance(num_hashes, int) or num_hashes < 1):
            raise ValueError(f"num_hashes={num_hashes!r}: must be a positive int")
        padded = length
        if deterministic and length > c.min_chunk_length and length % c.lcm_chunk_length:
            # HF pads in eval to a multiple of the chunk lcm with pad tokens that no real token attends to.
            padded = length + c.lcm_chunk_length - length % c.lcm_chunk_length
            pad = padded - length
            if attention_mask is None:
                attention_mask = jnp.ones((batch, length), jnp.int32)
            attention_mask = jnp.concatenate([attention_mask, jnp.zeros((batch, pad), attention_mask.dtype)], axis=1)
            if input_ids is not None:
                input_ids = jnp.concatenate([input_ids, jnp.full((batch, pad), c.pad_token_id, input_ids.dtype)], 1)
            else:
                filler = jnp.zeros((batch, pad, c.hidden_size), inputs_embeds.dtype)
                inputs_embeds = jnp.concatenate([inputs_embeds, filler], axis=1)
            if position_ids is not None:
                position_ids = jnp.broadcast_to(position_ids, (batch, length))
                extra = jnp.broadcast_to(jnp.arange(length, padded, dtype=position_ids.dtype), (batch, pad))
                position_ids = jnp.concatenate([position_ids, extra], axis=1)
            if padded > c.max_length:
                raise ValueError(f"sequence length {length} is padded to {padded} (a multiple of the chunk lcm "
                                 f"{c.lcm_chunk_length}), beyond the {c.max_length} positions of axial_pos_shape")
        if lsh_rotations is not None and "lsh" in c.attn_layers and padded > c.lsh_attn_chunk_length:
            check_rotations(c, lsh_rotations, padded, num_hashes)
        x = self.embeddings(input_ids, position_ids, inputs_embeds, 0, deterministic)  # positional: remat
        h, hidden, attentions = self.encoder(
            x, attention_mask, lsh_rotations=lsh_rotations, num_hashes=num_hashes, deterministic=deterministic,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        h = h[:, :length]
        return ReformerModelOutput(last_hidden_state=h, hidden_states=hidden, attentions=attentions)

    def _exact_call(self, input_ids, attention_mask, position_ids, inputs_embeds, lsh_rotations, cache):
        """``decoding="exact"``: writes the next tokens after the cached ones into the buffer and runs the full eval
        pass over the ``index + t`` tokens so far (as if padded to ``padded_length``); returns the new tokens'
        hidden states ``[batch, t, 2H]``."""
        c = self.config
        if input_ids is None or inputs_embeds is not None or position_ids is not None:
            raise ValueError("decoding='exact' runs on input_ids alone (positions are the buffer's slots); "
                             "inputs_embeds and position_ids are not supported with a cache")
        validate_inputs(c, input_ids, attention_mask, None, None, training=False)
        batch, slots = cache["ids"].shape
        if input_ids.shape[0] != batch:
            raise ValueError(f"input_ids has batch {input_ids.shape[0]}, the cache {batch}")
        t = input_ids.shape[1]
        index = cache["index"]
        new_mask = jnp.ones((batch, t), jnp.int32) if attention_mask is None else attention_mask.astype(jnp.int32)
        ids = jax.lax.dynamic_update_slice(cache["ids"], input_ids.astype(jnp.int32), (0, index))
        mask = jax.lax.dynamic_update_slice(cache["mask"], new_mask, (0, index))
        end = index + t
        if lsh_rotations is not None and "lsh" in c.attn_layers and slots > c.lsh_attn_chunk_length:
            check_rotations(c, lsh_rotations, slots, None)
        x = self.embeddings(ids, None, None, 0, True)
        live = mask * (jnp.arange(slots) < end)
        h, _, _ = self.encoder(x, live, lsh_rotations=lsh_rotations, deterministic=True,
                               live_length=padded_length(c, end))
        h = jax.lax.dynamic_slice_in_dim(h, index, t, axis=1)
        return ReformerModelOutput(last_hidden_state=h, cache={"index": end, "mask": mask, "ids": ids})

    def _cached_call(self, input_ids, attention_mask, position_ids, inputs_embeds, lsh_rotations, cache):
        """``decoding="incremental"``: the next tokens after the cached ones, against the cached layer inputs (eval
        only; no auto-padding: the cache has static shapes)."""
        c = self.config
        validate_inputs(c, input_ids, attention_mask, position_ids, inputs_embeds, training=False)
        max_length = cache["mask"].shape[1]
        if max_length > c.max_length:
            raise ValueError(f"cache max_length={max_length} exceeds the {c.max_length} positions of the model")
        if lsh_rotations is not None and "lsh" in c.attn_layers and max_length > c.lsh_attn_chunk_length:
            check_rotations(c, lsh_rotations, max_length, None)
        x = self.embeddings(input_ids, position_ids, inputs_embeds, cache["index"], True)
        h, _, _, new_cache = self.encoder(x, attention_mask, lsh_rotations=lsh_rotations, deterministic=True,
                                          cache=cache)
        return ReformerModelOutput(last_hidden_state=h, cache=new_cache)


class ReformerOnlyLMHead(nn.Module):
    """``decoder`` (Linear 2H -> V, no bias) + ``bias``, applied in chunks of ``chunk_size_lm_head`` positions."""

    config: ReformerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, chunked: bool = True, labels=None):
        """``logits [b, l, vocab]``; with masked-LM ``labels [b, l]`` also the loss, projected at the labelled rows
        only (``layers.vocab_loss``): ``(logits, loss)``."""
        c = self.config
        kernel = _DenseParams(c.vocab_size, 2 * c.hidden_size, (axes.EMBED, axes.VOCAB), _normal(c),
                              name="decoder")()
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes.VOCAB,)),
                          (c.vocab_size,))
        logits = chunked_apply(lambda t: dense(t, kernel, bias, dtype=self.dtype), h,
                               chunk_size=c.chunk_size_lm_head if chunked else 0, axis=1)
        if labels is None:
            return logits
        return logits, masked_lm_loss(self, h.astype(self.dtype), kernel, bias, labels)


class _DenseParams(nn.Module):
    """Only declares ``kernel [in, features]``: the math runs in a chunked scan, where bound modules can't be called."""

    features: int
    in_features: int
    axes: tuple
    init: Any

    @nn.compact
    def __call__(self):
        return self.param("kernel", nn.with_logical_partitioning(self.init, self.axes),
                          (self.in_features, self.features))


class _ReformerHead(nn.Module):
    """Fields every head passes to its ``ReformerModel`` (see there)."""

    config: ReformerConfig
    dtype: Any = jnp.float32
    remat: bool = False
    scan_residuals: str = "all"
    scan_unroll: int = 1
    sequence_sharding: SequenceSharding | None = None
    decoding: str = "exact"

    def init_cache(self, batch_size: int, max_length: int) -> dict:
        """Decoding cache (see ``jaxmodels.generation`` and ``ReformerModel``'s ``decoding``); needs no params."""
        return init_reformer_cache(self.config, batch_size, max_length, self.dtype, self.decoding)

    def _backbone(self, input_ids, attention_mask, position_ids, inputs_embeds, num_hashes, lsh_rotations,
                  deterministic, output_hidden_states, output_attentions, cache=None) -> ReformerModelOutput:
        return ReformerModel(self.config, self.dtype, self.remat, self.scan_residuals, self.scan_unroll,
                             self.sequence_sharding, self.decoding, name="reformer")(
            input_ids, attention_mask, position_ids, inputs_embeds, num_hashes, lsh_rotations, cache,
            deterministic=deterministic, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions)


class ReformerModelWithLMHead(_ReformerHead):
    """Causal LM (``is_decoder=True``): ``logits [batch, length, vocab]``; loss on labels shifted by one."""

    @nn.compact
    def __call__(self, input_ids=None, position_ids=None, attention_mask=None, inputs_embeds=None, num_hashes=None,
                 labels=None, lsh_rotations=None, cache=None, *, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False):
        """With ``cache`` (from ``init_cache``) the inputs are the next tokens after the cached ones and the output
        carries the updated ``cache``; see ``jaxmodels.generation``."""
        c = self.config
        if not c.is_decoder:
            raise ValueError("ReformerConfig.is_decoder=False: ReformerModelWithLMHead is causal and needs "
                             "is_decoder=True")
        for f in ("local_num_chunks_after", "lsh_num_chunks_after"):
            if getattr(c, f) and ("local" if f.startswith("local") else "lsh") in c.attn_layers:
                raise ValueError(f"ReformerConfig.{f}={getattr(c, f)}: a causal model cannot look ahead; set it to 0")
        out = self._backbone(input_ids, attention_mask, position_ids, inputs_embeds, num_hashes, lsh_rotations,
                             deterministic, output_hidden_states, output_attentions, cache)
        head = ReformerOnlyLMHead(c, self.dtype, name="lm_head")
        # A cached call sees arbitrary token counts: the chunked head needs a multiple of its chunk.
        logits = head(out.last_hidden_state) if cache is None else head(out.last_hidden_state, chunked=False)
        loss = None
        if labels is not None:
            loss = cross_entropy(logits[:, :-1], labels[:, 1:])
        return ReformerModelWithLMHeadOutput(logits=logits, loss=loss, hidden_states=out.hidden_states,
                                             attentions=out.attentions, cache=out.cache)


class ReformerForMaskedLM(_ReformerHead):
    """Bidirectional (``is_decoder=False``) masked LM: ``logits [batch, length, vocab]``; labels -100 ignored."""

    @nn.compact
    def __call__(self, input_ids=None, position_ids=None, attention_mask=None, inputs_embeds=None, num_hashes=None,
                 labels=None, lsh_rotations=None, *, deterministic: bool = True, output_hidden_states: bool = False,
                 output_attentions: bool = False):
        c = self.config
        if c.is_decoder:
            raise ValueError("ReformerConfig.is_decoder=True: ReformerForMaskedLM needs bidirectional attention "
                             "(is_decoder=False)")
        out = self._backbone(input_ids, attention_mask, position_ids, inputs_embeds, num_hashes, lsh_rotations,
                             deterministic, output_hidden_states, output_attentions)
        head = ReformerOnlyLMHead(c, self.dtype, name="lm_head")
        logits, loss = (head(out.last_hidden_state), None) if labels is None else \
            head(out.last_hidden_state, labels=labels)
        return MaskedLMOutput(logits=logits, loss=loss, hidden_states=out.hidden_states, attentions=out.attentions)


class ReformerClassificationHead(nn.Module):
    """First token -> dropout -> dense (2H -> H) -> tanh -> dropout -> out_proj: ``[b, l, 2H] -> [b, labels]``."""

    config: ReformerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, deterministic: bool = True):
        c = self.config
        rate = c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob
        x = Dropout(rate)(h[:, 0], deterministic=deterministic)
        x = jnp.tanh(Dense(c.hidden_size, (axes.EMBED, axes.MLP), dtype=self.dtype, kernel_init=_normal(c),
                           name="dense")(x))
        x = Dropout(rate)(x, deterministic=deterministic)
        return Dense(c.num_labels, (axes.MLP, axes.VOCAB), dtype=self.dtype, kernel_init=_normal(c),
                     name="out_proj")(x)


class ReformerForSequenceClassification(_ReformerHead):
    """``logits [batch, num_labels]`` from the first token; HF's regression / single / multi-label losses."""

    @nn.compact
    def __call__(self, input_ids=None, position_ids=None, attention_mask=None, inputs_embeds=None, num_hashes=None,
                 labels=None, lsh_rotations=None, *, deterministic: bool = True, output_hidden_states: bool = False,
                 output_attentions: bool = False):
        c = self.config
        out = self._backbone(input_ids, attention_mask, position_ids, inputs_embeds, num_hashes, lsh_rotations,
                             deterministic, output_hidden_states, output_attentions)
        logits = ReformerClassificationHead(c, self.dtype, name="classifier")(out.last_hidden_state, deterministic)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(logits, labels, num_labels=c.num_labels, problem_type=c.problem_type)
        return SequenceClassifierOutput(logits=logits, loss=loss, hidden_states=out.hidden_states,
                                        attentions=out.attentions)


class ReformerForQuestionAnswering(_ReformerHead):
    """Span QA: ``start_logits`` / ``end_logits [batch, length]`` from ``qa_outputs`` (2H -> num_labels=2)."""

    @nn.compact
    def __call__(self, input_ids=None, position_ids=None, attention_mask=None, inputs_embeds=None, num_hashes=None,
                 start_positions=None, end_positions=None, lsh_rotations=None, *, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False):
        c = self.config
        if c.num_labels != 2:
            raise ValueError(f"ReformerConfig.num_labels={c.num_labels}: question answering needs 2 (start, end)")
        out = self._backbone(input_ids, attention_mask, position_ids, inputs_embeds, num_hashes, lsh_rotations,
                             deterministic, output_hidden_states, output_attentions)
        logits = Dense(c.num_labels, (axes.EMBED, axes.VOCAB), dtype=self.dtype, kernel_init=_normal(c),
                       name="qa_outputs")(out.last_hidden_state)
        start, end = split_span_logits(logits)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = span_loss(start, end, start_positions, end_positions)
        return QuestionAnsweringModelOutput(start_logits=start, end_logits=end, loss=loss,
                                            hidden_states=out.hidden_states, attentions=out.attentions)


ARCHITECTURES = {
    cls.__name__: cls
    for cls in (ReformerModel, ReformerModelWithLMHead, ReformerForMaskedLM, ReformerForSequenceClassification,
                ReformerForQuestionAnswering)
}
