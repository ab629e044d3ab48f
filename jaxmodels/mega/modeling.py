"""MEGA (Ma et al., 2022) in Flax Linen, numerically equal to HF ``transformers`` ``modeling_mega`` (deprecated).

Structure (param names follow the HF checkpoint so conversion is a rename; activations are batch-major):

    embedding_layer   word (+ token type) embeddings, no positions, no LayerNorm            [batch, length, D]
    layers            num_hidden_layers MegaBlocks, params stacked [layers, ...], lax.scan    [batch, length, D]
      mega_layer      (pre/post-norm) damped EMA -> single-head gated attention in chunks
      nffn            (pre/post-norm) fc1 -> act -> fc2 + residual   (if use_normalized_ffn)
    pooler            tanh(Dense(h[:, 0]))                                                    [batch, D]

Gated attention (D hidden, Z shared_representation_size, I intermediate_size)::

    x' = norm(x) if prenorm;  v = act(v_proj(x')) [.., I];  e = EMA(x', padding mask) [.., D]
    r, u, h_int = split(mx_proj(e), [D, Z + I, D]);  r = sigmoid(r);  qk, gate = split(silu(u), [Z, I])
    q = qk * qk_weight[0] + qk_bias[0];  k = qk * qk_weight[1] + qk_bias[1]
    A = softmax / laplace / relu2 weights inside chunks (layers.gated_attention) with a relative bias
    o = act(h_int + h_proj((A v) * gate));  out = x + r * (o - x);  out = norm(out) if post-norm

Chunking (Mega-chunk): with ``use_chunking`` the sequence splits into chunks of ``chunk_size`` and attention stays
inside a chunk (a sequence shorter than a chunk is one chunk); the EMA still runs over the whole sequence.

Differences from HF, all where HF is wrong or undefined: masks are finite (HF's -inf gives NaN for a causal query
whose visible keys are all padding); cached decoding equals the full pass for every attention function and with
chunking (HF's laplace/relu2 decoding normalises by the wrong count and its chunked decoding crashes); a decoder
honours ``truncation`` in its full pass (HF ignores it whenever ``use_cache`` is on, i.e. by default).

Sequence parallelism: given ``sequence_sharding`` (a ``layers.sequence_parallel.SequenceSharding``: mesh, its
length axis and the mesh axes of the batch; ``train/state.py`` sets it from the run's mesh and rules), a full
(uncached) pass whose length axis has size S > 1 runs every layer's EMA through ``sharded_damped_ema``: the length
is split into S contiguous shards under ``shard_map`` and only the EMA states cross shards (one all-gather;
ppermutes for ``truncation``). Everything else stays with the automatic partitioner, which propagates the inputs'
sharding. A length that S does not divide raises ``ValueError`` (pad the input). Always unsharded: init (its dummy
input has length 1) and cached decoding (``cache=``).

Decoding protocol (shared with ``jaxmodels.generation``): ``module.apply(v, B, T, method="init_cache")`` gives a
``MegaCache``; calling the module with ``cache=`` treats ``input_ids [B, t]`` as the next t tokens and returns the
updated cache in the output's ``cache`` field.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.input_checks import check_array, check_nonempty, check_range
from jaxmodels.mega.config import NORM_EPS, MegaConfig
from jaxmodels.outputs import (
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from layers import axes
from layers.activations import get_activation
from layers.dense import Dense
from layers.dropout import Dropout
from layers.ema import MultiDimensionDampedEma
from layers.embeddings import Embed
from layers.gated_attention import gated_attention_weights
from layers.heads import Pooler, flatten_choices, split_span_logits
from layers.losses import cross_entropy, sequence_classification_loss, span_loss
from layers.norms import LayerNorm
from layers.relative_bias import rotary_relative_bias, simple_relative_bias
from layers.scale_norm import RMSNorm, ScaleNorm
from layers.sequence_parallel import SequenceSharding
from layers.stacked import check_scan_unroll, init_stacked, resolve_residuals, scan_layers
from layers.vocab_loss import masked_lm_loss

Array = jax.Array


# ---------------------------------------------------------------------------------------------------------------
# Outputs and cache
# ---------------------------------------------------------------------------------------------------------------
@flax.struct.dataclass
class MegaCache:
    """Decoding state of all layers. S = ``chunk_size`` when chunking (only the current chunk is kept), else the
    ``max_length`` given to ``init_cache``.

    key ``[layers, batch, S, Z]``, value ``[layers, batch, S, I]``, ema_state ``[layers, batch, D, N]`` (fp32),
    mask ``[batch, S]`` (bool: slot holds a real, non-padding token), index ``[]`` int32 (tokens seen so far).
    Slot s holds position ``chunk_start + s`` (chunk_start = 0 without chunking).
    """

    key: Array
    value: Array
    ema_state: Array
    mask: Array
    index: Array


@flax.struct.dataclass
class MegaModelOutput:
    last_hidden_state: Array
    pooler_output: Array | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cache: MegaCache | None = None


@flax.struct.dataclass
class CausalLMOutput:
    logits: Array
    loss: Array | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cache: MegaCache | None = None


# ---------------------------------------------------------------------------------------------------------------
# Input validation (static shapes, concrete values): fails before tracing with the argument named.
# ---------------------------------------------------------------------------------------------------------------
def validate_inputs(config: MegaConfig, input_ids, attention_mask, token_type_ids, inputs_embeds, *, rank: int = 2,
                    cached: bool = False) -> None:
    """Raises ValueError naming the argument when inputs cannot be run by a model with ``config``."""
    check_array("input_ids", input_ids)
    check_array("attention_mask", attention_mask)
    check_array("token_type_ids", token_type_ids)
    check_array("inputs_embeds", inputs_embeds)
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if input_ids is not None:
        shape = tuple(input_ids.shape)
        if len(shape) != rank:
            raise ValueError(f"input_ids must have rank {rank}, got shape {shape}")
        if not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"input_ids must be integer, got {input_ids.dtype}")
    else:
        shape = tuple(inputs_embeds.shape[:-1])
        if len(shape) != rank or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(f"inputs_embeds must have shape [..., length, hidden_size={config.hidden_size}] of rank "
                             f"{rank + 1}, got {tuple(inputs_embeds.shape)}")
    for name, x in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if x is not None and tuple(x.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)} but input_ids has shape {shape}; they must match")
    check_nonempty("input_ids" if input_ids is not None else "inputs_embeds", shape)
    length = shape[-1]
    if token_type_ids is not None and not config.add_token_type_embeddings:
        raise ValueError("token_type_ids given but config.add_token_type_embeddings=False (no token type table)")
    if not cached:
        if config.use_chunking and length > config.chunk_size and length % config.chunk_size:
            raise ValueError(
                f"input length {length} is not a multiple of config.chunk_size={config.chunk_size} "
                "(use_chunking=True needs length <= chunk_size or a multiple of it); pad the input")
        block = min(length, config.chunk_size) if config.use_chunking else length
        if config.relative_positional_bias == "simple" and block > config.simple_bias_positions:
            raise ValueError(f"attention block length {block} exceeds the simple relative bias range "
                             f"{config.simple_bias_positions} (max_positions, or chunk_size when set)")

    check_range("input_ids", input_ids, config.vocab_size, f"ids must be in [0, vocab_size={config.vocab_size})")
    check_range("token_type_ids", token_type_ids, config.type_vocab_size,
                f"token types must be in [0, type_vocab_size={config.type_vocab_size})")


# ---------------------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------------------
# The chunked EMA's block: its per-channel [C, C] Toeplitz matrices cost D' * C^2 floats, 4x an activation row at
# C=128 with D'=256, so blocks of 64 (not the attention chunk) keep Mega-chunk's step lean: at 4K tokens (2 layers,
# d=128) 168 MiB of temp against 187 MiB with 128-blocks and 283 MiB with the FFT form (benchmarks/RESULTS.md).
EMA_CHUNK = 64
EMA_ALGORITHMS = ("auto", "fft", "scan", "chunked")


def resolve_ema_algorithm(name: str, config: MegaConfig) -> str:
    """``"auto"``: the chunked EMA for Mega-chunk (its memory is linear in length, like the chunked attention's),
    the FFT form otherwise (one transform, fastest for a full-length attention block)."""
    if name not in EMA_ALGORITHMS:
        raise ValueError(f"ema_algorithm={name!r}: expected one of {EMA_ALGORITHMS}")
    if name == "auto":
        return "chunked" if config.use_chunking else "fft"
    return name


class SequenceNorm(nn.Module):
    """HF ``MegaSequenceNorm``: a wrapper whose child ``norm`` is the configured norm (eps 1e-5). ``[.., D]``."""

    config: MegaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        if c.normalization_type == "scalenorm":
            return ScaleNorm(NORM_EPS, c.norm_affine, dtype=self.dtype, name="norm")(x)
        if c.normalization_type == "rmsnorm":
            return RMSNorm(NORM_EPS, c.norm_affine, c.hf_rmsnorm_identity_bug, dtype=self.dtype, name="norm")(x)
        return LayerNorm(NORM_EPS, c.norm_affine, c.norm_affine, dtype=self.dtype, name="norm")(x)


class RelativeBias(nn.Module):
    """Simple (``rel_pos_bias [2*max_positions-1]``) or rotary (``alpha``, ``b_param [1, Z]``) bias; called with
    positions ``q_pos [.., q]``, ``k_pos [.., k]`` (inside the chunk) -> ``[.., q, k]`` fp32."""

    config: MegaConfig

    @nn.compact
    def __call__(self, q_pos: Array, k_pos: Array) -> Array:
        c = self.config
        init = nn.initializers.normal(c.initializer_range)
        if c.relative_positional_bias == "simple":
            table = self.param("rel_pos_bias", nn.with_logical_partitioning(init, (None,)), (2 * c.max_positions - 1,))
            return simple_relative_bias(table, q_pos, k_pos, max_positions=c.simple_bias_positions)
        z = c.shared_representation_size
        alpha = self.param("alpha", nn.with_logical_partitioning(init, (None, axes.KV)), (1, z))
        beta = self.param("b_param", nn.with_logical_partitioning(init, (None, axes.KV)), (1, z))
        return rotary_relative_bias(alpha, beta, q_pos, k_pos)


class MegaGatedAttention(nn.Module):
    """HF ``MegaMovingAverageGatedAttention`` (``mega_layer``). ``[b, l, D] -> [b, l, D]``.

    Full pass (``ctx`` None): attention in blocks of ``min(chunk_size, l)`` (or l). Cached (``ctx`` from
    ``MegaModel._cache_context``): the new tokens attend to the cached slots and to each other, and the layer returns
    its updated ``(key, value, ema_state)``. ``sequence_sharding``: the full-pass EMA runs sequence-parallel.
    """

    config: MegaConfig
    dtype: Any = jnp.float32
    ema_algorithm: str = "auto"
    sequence_sharding: SequenceSharding | None = None

    @nn.compact
    def __call__(self, x: Array, mask: Array | None, ctx: dict | None = None, layer_cache=None,
                 deterministic: bool = True):
        c = self.config
        act = get_activation(c.activation, "activation")
        dense_init = nn.initializers.normal(c.initializer_range)
        norm = SequenceNorm(c, self.dtype, name="norm")
        feature_dims = (1,) if c.use_feature_dropout else ()

        residual = x
        if c.normalize_before_mega:
            x = norm(x)
        value = act(Dense(c.intermediate_size, (axes.EMBED, axes.MLP), dtype=self.dtype, kernel_init=dense_init,
                          name="v_proj")(x))
        ema = MultiDimensionDampedEma(
            c.hidden_size, c.ema_projection_size, c.bidirectional, c.truncation,
            algorithm=resolve_ema_algorithm(self.ema_algorithm, c), chunk_size=EMA_CHUNK, dtype=self.dtype,
            delta_alpha_range=c.ema_delta_alpha_range, beta_range=c.ema_beta_range,
            gamma_omega_range=c.ema_gamma_omega_range, sequence_sharding=self.sequence_sharding, name="ema_gate")
        if layer_cache is None:
            ema_out, new_state = ema(x, mask)
        else:
            ema_out, new_state = ema(x, mask, state=layer_cache[2], use_cache=True)
        ema_out = Dropout(c.dropout_prob, broadcast_dims=feature_dims)(ema_out, deterministic=deterministic)

        z, inter, d = c.shared_representation_size, c.intermediate_size, c.hidden_size
        base = Dense(z + inter + 2 * d, (axes.EMBED, axes.MLP), dtype=self.dtype, kernel_init=dense_init,
                     name="mx_proj")(ema_out)
        r, u, h_int = jnp.split(base, [d, d + z + inter], axis=-1)
        r = jax.nn.sigmoid(r)
        qk, gate = jnp.split(jax.nn.silu(u), [z], axis=-1)
        qk_weight = self.param("qk_weight", nn.with_logical_partitioning(dense_init, (None, axes.KV)), (2, z))
        qk_bias = self.param("qk_bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, axes.KV)),
                             (2, z))
        query = qk * qk_weight[0].astype(self.dtype) + qk_bias[0].astype(self.dtype)
        key = qk * qk_weight[1].astype(self.dtype) + qk_bias[1].astype(self.dtype)
        rel_bias = RelativeBias(c, name="rel_pos_bias")

        batch, length = x.shape[:2]
        new_cache = None
        if ctx is None:
            block = min(c.chunk_size, length) if c.use_chunking else length
            n = length // block
            pos = jnp.arange(block)
            q_b = query.reshape(batch, n, block, z)
            k_b = key.reshape(batch, n, block, z)
            v_b = value.reshape(batch, n, block, inter)
            key_mask = None if mask is None else mask.reshape(batch, n, 1, block)
            visible = (pos[None, :] <= pos[:, None]) if c.is_decoder else None
            weights = gated_attention_weights(q_b, k_b, rel_bias(pos, pos), activation=c.attention_activation,
                                              causal=c.is_decoder, key_mask=key_mask, visible=visible)
        else:
            # Cached: keys are [cached slots, new tokens]; ctx says which of them each new token may see.
            k_all = jnp.concatenate([layer_cache[0].astype(self.dtype), key], axis=1)
            v_all = jnp.concatenate([layer_cache[1].astype(self.dtype), value], axis=1)
            weights = gated_attention_weights(query, k_all, rel_bias(ctx["q_pos"], ctx["k_pos"]),
                                              activation=c.attention_activation, causal=True,
                                              key_mask=ctx["key_mask"][:, None, :], visible=ctx["visible"])
            new_cache = (jnp.take(k_all, ctx["gather"], axis=1), jnp.take(v_all, ctx["gather"], axis=1), new_state)
            q_b, v_b = query[:, None], v_all[:, None]
            weights = weights[:, None]
        attn_weights = weights
        weights = Dropout(c.attention_probs_dropout_prob)(weights, deterministic=deterministic)
        v_b = Dropout(c.hidden_dropout_prob, broadcast_dims=feature_dims if ctx is None else ())(
            v_b, deterministic=deterministic)
        attended = jnp.einsum("bnqk,bnkv->bnqv", weights.astype(self.dtype), v_b).reshape(batch, length, inter)
        out = act(h_int + Dense(d, (axes.MLP, axes.EMBED), dtype=self.dtype, kernel_init=dense_init,
                                name="h_proj")(attended * gate))
        out = Dropout(c.dropout_prob, broadcast_dims=feature_dims)(out, deterministic=deterministic)
        out = residual + r * (out - residual)
        if not c.normalize_before_mega:
            out = norm(out)
        return out, attn_weights, new_cache


class NormalizedFeedForward(nn.Module):
    """HF ``MegaNormalizedFeedForwardNetwork`` (``nffn``): ``x + fc2(act(fc1(norm(x))))`` (pre- or post-norm)."""

    config: MegaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        c = self.config
        dense_init = nn.initializers.normal(c.initializer_range)
        feature_dims = (1,) if c.use_feature_dropout else ()
        norm = SequenceNorm(c, self.dtype, name="norm")
        residual = x
        if c.normalize_before_ffn:
            x = norm(x)
        h = get_activation(c.activation, "activation")(
            Dense(c.nffn_hidden_size, (axes.EMBED, axes.MLP), dtype=self.dtype, kernel_init=dense_init, name="fc1")(x))
        h = Dropout(c.nffn_activation_dropout_prob, broadcast_dims=feature_dims)(h, deterministic=deterministic)
        out = Dense(c.hidden_size, (axes.MLP, axes.EMBED), dtype=self.dtype, kernel_init=dense_init, name="fc2")(h)
        out = Dropout(c.dropout_prob, broadcast_dims=feature_dims)(out, deterministic=deterministic) + residual
        if not c.normalize_before_ffn:
            out = norm(out)
        return out


class MegaBlock(nn.Module):
    """One MEGA layer: gated attention, then the normalized FFN. ``[b, l, D] -> [b, l, D]``."""

    config: MegaConfig
    dtype: Any = jnp.float32
    ema_algorithm: str = "auto"
    sequence_sharding: SequenceSharding | None = None

    @nn.compact
    def __call__(self, x, mask=None, ctx=None, layer_cache=None, deterministic: bool = True):
        y, weights, new_cache = MegaGatedAttention(self.config, self.dtype, self.ema_algorithm,
                                                   self.sequence_sharding, name="mega_layer")(
            x, mask, ctx, layer_cache, deterministic)
        if self.config.use_normalized_ffn:
            y = NormalizedFeedForward(self.config, self.dtype, name="nffn")(y, deterministic)
        y = nn.with_logical_constraint(y, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
        return y, weights, new_cache


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------
def init_cache(config: MegaConfig, batch_size: int, max_length: int, dtype: Any = jnp.float32) -> MegaCache:
    """An empty ``MegaCache`` for ``batch_size`` sequences of up to ``max_length`` tokens (causal decoders only)."""
    c = config
    if not c.is_decoder:
        raise ValueError("init_cache needs config.is_decoder=True (a causal EMA and causal attention)")
    if c.truncation is not None:
        raise ValueError(f"config.truncation={c.truncation}: a truncated EMA has no finite decoding state; "
                         "decode with truncation=None")
    if not isinstance(max_length, int) or max_length <= 0:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    slots = c.chunk_size if c.use_chunking else max_length
    n_layers, f32 = c.num_hidden_layers, jnp.float32
    return MegaCache(
        key=jnp.zeros((n_layers, batch_size, slots, c.shared_representation_size), dtype),
        value=jnp.zeros((n_layers, batch_size, slots, c.intermediate_size), dtype),
        ema_state=jnp.zeros((n_layers, batch_size, c.hidden_size, c.ema_projection_size), f32),
        mask=jnp.zeros((batch_size, slots), bool),
        index=jnp.zeros((), jnp.int32),
    )



class MegaEmbeddings(nn.Module):
    """word (+ token type) embeddings: ``[b, l]`` ids -> ``[b, l, D]`` (no positions, no norm, no dropout)."""

    config: MegaConfig
    dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.word_embeddings = Embed(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id, dtype=self.dtype,
                                     embedding_init=nn.initializers.normal(c.initializer_range))
        if c.add_token_type_embeddings:
            self.token_type_embeddings = Embed(c.type_vocab_size, c.hidden_size, dtype=self.dtype,
                                               embedding_init=nn.initializers.normal(c.initializer_range))

    def __call__(self, input_ids=None, token_type_ids=None, inputs_embeds=None):
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.dtype)
        if self.config.add_token_type_embeddings:
            if token_type_ids is None:
                token_type_ids = jnp.zeros(x.shape[:2], jnp.int32)
            x = x + self.token_type_embeddings(token_type_ids)
        return x


class MegaModel(nn.Module):
    """Bare MEGA: ``MegaModelOutput`` (last_hidden_state ``[b, l, D]``, pooler_output ``[b, D]`` if pooling).

    ``hidden_states`` (on request) has L + 1 entries (embeddings first); ``attentions`` L entries
    ``[b, chunks, block, block]`` (full pass only). ``ema_algorithm`` picks ``layers.ema``'s full-pass algorithm
    (``fft``, ``scan`` or ``chunked``, all equal; ``auto``: ``chunked`` for Mega-chunk, ``fft`` otherwise;
    ``chunked`` runs in blocks of ``EMA_CHUNK`` positions and lengths they do not divide take ``fft``).
    ``remat`` / ``scan_residuals`` / ``scan_unroll``: what the backward keeps of each layer and how many layers a
    scan step unrolls (``layers.stacked``; ``"dots"`` by default: matmul outputs are kept, the cheap elementwise
    work recomputed, which at 4K tokens is both 2x leaner and faster than keeping everything);
    ``sequence_sharding``: see the module docstring.

    Cached calls (``cache=``, decoders only): ``input_ids [b, t]`` are the t tokens after ``cache.index``;
    ``attention_mask [b, t]`` (1 = token) covers those new tokens only. The caller keeps ``index + t`` within the
    ``max_length`` given to ``init_cache`` when not chunking (a traced index cannot be checked here).
    """

    config: MegaConfig
    dtype: Any = jnp.float32
    add_pooling_layer: bool = True
    ema_algorithm: str = "auto"
    remat: bool = False
    scan_residuals: str = "dots"
    scan_unroll: int = 1
    sequence_sharding: SequenceSharding | None = None

    def setup(self):
        c = self.config
        self.embedding_layer = MegaEmbeddings(c, self.dtype)
        block = MegaBlock(c, self.dtype, self.ema_algorithm, parent=None)
        self.layers = self.param(
            "layers",
            lambda rng: init_stacked(block, rng, (c.num_hidden_layers,), (axes.LAYERS,),
                                     jnp.zeros((1, 1, c.hidden_size), self.dtype)),
        )
        if self.add_pooling_layer:
            self.pooler = Pooler(c.hidden_size, dtype=self.dtype)

    def word_embedding_table(self) -> Array:
        """``[vocab_size, hidden_size]``: the table the LM heads are tied to."""
        return self.embedding_layer.word_embeddings.embedding

    def init_cache(self, batch_size: int, max_length: int) -> MegaCache:
        """An empty decoding cache (see ``MegaCache``); needs a causal, untruncated decoder config."""
        return init_cache(self.config, batch_size, max_length, self.dtype)

    def _cache_context(self, cache: MegaCache, new_mask: Array, length: int) -> tuple[dict, Array]:
        """Positions and visibility for ``length`` new tokens after ``cache.index``, and the new cache mask."""
        c = self.config
        slots = cache.mask.shape[1]
        index = cache.index
        chunk = c.chunk_size if c.use_chunking else None
        start = (index // chunk) * chunk if chunk else jnp.zeros((), jnp.int32)
        q_pos = index + jnp.arange(length)
        k_pos = jnp.concatenate([start + jnp.arange(slots), q_pos])
        filled = jnp.concatenate([jnp.arange(slots) < index - start, jnp.ones((length,), bool)])
        visible = filled[None, :] & (k_pos[None, :] <= q_pos[:, None])
        if chunk:
            visible = visible & (k_pos[None, :] // chunk == q_pos[:, None] // chunk)
        key_mask = jnp.concatenate([cache.mask, new_mask], axis=1)
        # Slot s of the new cache holds position new_start + s: from the old slots or from the new tokens.
        end = index + length
        new_start = (end // chunk) * chunk if chunk else jnp.zeros((), jnp.int32)
        target = new_start + jnp.arange(slots)
        gather = jnp.clip(jnp.where(target < index, target - start, slots + target - index), 0, slots + length - 1)
        new_mask_slots = jnp.where(target < end, jnp.take(key_mask, gather, axis=1), False)
        rel = (lambda p: p % chunk) if chunk else (lambda p: p)
        ctx = {"q_pos": rel(q_pos), "k_pos": rel(k_pos), "visible": visible, "key_mask": key_mask, "gather": gather}
        return ctx, new_mask_slots

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, *,
                 cache: MegaCache | None = None, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False):
        c = self.config
        validate_inputs(c, input_ids, attention_mask, token_type_ids, inputs_embeds, cached=cache is not None)
        x = self.embedding_layer(input_ids, token_type_ids, inputs_embeds)
        batch, length = x.shape[:2]
        mask = None if attention_mask is None else attention_mask.astype(bool)
        ctx = new_mask = None
        if cache is not None:
            if not c.is_decoder:
                raise ValueError("cache given but config.is_decoder=False")
            if tuple(cache.mask.shape) != (batch, cache.mask.shape[1]):
                raise ValueError(f"cache is for batch {cache.mask.shape[0]}, inputs have batch {batch}")
            mask_new = jnp.ones((batch, length), bool) if mask is None else mask
            ctx, new_mask = self._cache_context(cache, mask_new, length)
            mask = mask_new

        use_dropout = not deterministic and any(
            p > 0 for p in (c.dropout_prob, c.hidden_dropout_prob, c.attention_probs_dropout_prob,
                            c.nffn_activation_dropout_prob))
        dropout_key = self.make_rng("dropout") if use_dropout else None
        residuals = resolve_residuals(self.remat, self.scan_residuals)
        check_scan_unroll(self.scan_unroll)
        # Init's dummy input (length 1) and cached decoding run the EMA unsharded; see the module docstring.
        sharding = None if cache is not None or self.is_initializing() else self.sequence_sharding
        if sharding is not None:
            sharding.layout(batch, length)  # a length the shards do not divide fails here, naming the rule
        block = MegaBlock(c, self.dtype, self.ema_algorithm, sharding, parent=None)

        def layer(params, h, *, key, cache, index):
            rngs = {} if key is None else {"dropout": key}
            h, weights, new_layer_cache = block.apply({"params": params}, h, mask, ctx, cache, deterministic,
                                                      rngs=rngs)
            return h, (h if output_hidden_states else None, weights if output_attentions else None), new_layer_cache

        layer_caches = None if cache is None else (cache.key, cache.value, cache.ema_state)
        stack = scan_layers(layer, self.layers, x, key=dropout_key, residuals=residuals, unroll=self.scan_unroll,
                            cache=layer_caches)
        h, new_caches = stack.carry, stack.cache
        new_cache = None
        if cache is not None:
            new_cache = MegaCache(key=new_caches[0], value=new_caches[1], ema_state=new_caches[2], mask=new_mask,
                                  index=cache.index + length)
        all_hidden = None if not output_hidden_states else (x,) + tuple(hidden for hidden, _ in stack.outputs)
        all_weights = None if not output_attentions else tuple(weights for _, weights in stack.outputs)
        pooled = self.pooler(h) if self.add_pooling_layer else None
        return MegaModelOutput(h, pooled, all_hidden, all_weights, new_cache)


# ---------------------------------------------------------------------------------------------------------------
# Heads. Each takes HF's arguments (labels etc.) plus ``deterministic``; a ``loss`` is returned when labels are given.
# ---------------------------------------------------------------------------------------------------------------
class _Bias(nn.Module):
    """A lone ``bias [features]`` param: the untied half of a tied LM head (``lm_head.bias``)."""

    features: int

    @nn.compact
    def __call__(self) -> Array:
        return self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes.VOCAB,)),
                          (self.features,))


class _MegaHead(nn.Module):
    """Fields every head passes to its ``MegaModel`` (see there)."""

    config: MegaConfig
    dtype: Any = jnp.float32
    ema_algorithm: str = "auto"
    remat: bool = False
    scan_residuals: str = "dots"
    scan_unroll: int = 1
    sequence_sharding: SequenceSharding | None = None

    def _backbone(self, add_pooling_layer: bool = False) -> MegaModel:
        return MegaModel(self.config, self.dtype, add_pooling_layer, self.ema_algorithm, self.remat,
                         self.scan_residuals, self.scan_unroll, self.sequence_sharding, name="mega")

    def _lm_head(self, mega: MegaModel, h: Array, head_name: str) -> tuple[Array, Array, Array]:
        """Optional ``dense`` + tanh, then the tied vocabulary projection plus ``<head_name>.bias``: returns
        ``(states, kernel [D, vocab], bias)``, the logits being ``states @ kernel + bias``."""
        c = self.config
        if c.add_lm_hidden_dense_layer:
            h = jnp.tanh(Dense(c.hidden_size, (axes.EMBED, axes.MLP), dtype=self.dtype,
                               kernel_init=nn.initializers.normal(c.initializer_range), name="dense")(h))
        return h, mega.word_embedding_table().T, _Bias(c.vocab_size, name=head_name)()

    def _lm_logits(self, mega: MegaModel, h: Array, head_name: str) -> Array:
        h, kernel, bias = self._lm_head(mega, h, head_name)
        return jnp.matmul(h, kernel.astype(self.dtype)) + bias.astype(self.dtype)

    def _dense(self, features: int, name: str) -> Dense:
        return Dense(features, (axes.EMBED, axes.MLP), dtype=self.dtype,
                     kernel_init=nn.initializers.normal(self.config.initializer_range), name=name)


class MegaForCausalLM(_MegaHead):
    """Next-token LM (tied head). ``logits [b, l, vocab]``; the loss shifts labels by one (-100 ignored).

    With ``cache=`` (from ``init_cache``) the inputs are the next tokens and the output carries the updated cache.
    """

    def init_cache(self, batch_size: int, max_length: int) -> MegaCache:
        """An empty decoding cache; see ``MegaCache`` and the module docstring."""
        return init_cache(self.config, batch_size, max_length, self.dtype)

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None, *,
                 cache: MegaCache | None = None, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False):
        mega = self._backbone()
        out = mega(input_ids, attention_mask, token_type_ids, inputs_embeds, cache=cache, deterministic=deterministic,
                   output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        logits = self._lm_logits(mega, out.last_hidden_state, "lm_head")
        loss = None
        if labels is not None:
            loss = cross_entropy(logits[:, :-1], labels[:, 1:])
        return CausalLMOutput(logits, loss, out.hidden_states, out.attentions, out.cache)


class MegaForMaskedLM(_MegaHead):
    """Masked LM (tied ``mlm_head``). ``logits [b, l, vocab]``; labels -100 are ignored."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None, *,
                 deterministic: bool = True, output_attentions: bool = False, output_hidden_states: bool = False):
        mega = self._backbone()
        out = mega(input_ids, attention_mask, token_type_ids, inputs_embeds, deterministic=deterministic,
                   output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        h, kernel, bias = self._lm_head(mega, out.last_hidden_state, "mlm_head")
        logits = jnp.matmul(h, kernel.astype(self.dtype)) + bias.astype(self.dtype)
        # The loss projects the labelled rows only (layers.vocab_loss): a loss-only step never forms the logits.
        loss = None if labels is None else masked_lm_loss(self, h, kernel, bias, labels)
        return MaskedLMOutput(logits, loss, out.hidden_states, out.attentions)


class MegaClassificationHead(nn.Module):
    """``out_proj(dropout(tanh(dense(dropout(h[:, 0])))))``: ``[b, l, D] -> [b, num_labels]``."""

    config: MegaConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array, deterministic: bool = True) -> Array:
        c = self.config
        rate = c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob
        init = nn.initializers.normal(c.initializer_range)
        x = Dropout(rate)(h[:, 0], deterministic=deterministic)
        x = jnp.tanh(Dense(c.hidden_size, (axes.EMBED, axes.MLP), dtype=self.dtype, kernel_init=init, name="dense")(x))
        x = Dropout(rate)(x, deterministic=deterministic)
        return Dense(c.num_labels, (axes.MLP, axes.VOCAB), dtype=self.dtype, kernel_init=init, name="out_proj")(x)


class MegaForSequenceClassification(_MegaHead):
    """``logits [b, num_labels]`` from the first token; regression / single- / multi-label loss as HF decides."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None, *,
                 deterministic: bool = True, output_attentions: bool = False, output_hidden_states: bool = False):
        c = self.config
        out = self._backbone()(input_ids, attention_mask, token_type_ids, inputs_embeds, deterministic=deterministic,
                               output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        logits = MegaClassificationHead(c, self.dtype, name="classifier")(out.last_hidden_state, deterministic)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(logits, labels, num_labels=c.num_labels, problem_type=c.problem_type)
        return SequenceClassifierOutput(logits, loss, out.hidden_states, out.attentions)


class MegaForMultipleChoice(_MegaHead):
    """Inputs ``[b, num_choices, l]``, each choice encoded separately; ``logits [b, num_choices]`` from the pooler."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None, *,
                 deterministic: bool = True, output_attentions: bool = False, output_hidden_states: bool = False):
        c = self.config
        validate_inputs(c, input_ids, attention_mask, token_type_ids, inputs_embeds, rank=3)
        num_choices = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        out = self._backbone(add_pooling_layer=True)(
            flatten_choices(input_ids), flatten_choices(attention_mask), flatten_choices(token_type_ids),
            flatten_choices(inputs_embeds), deterministic=deterministic, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states)
        pooled = Dropout(c.hidden_dropout_prob)(out.pooler_output, deterministic=deterministic)
        logits = Dense(1, (axes.EMBED, axes.VOCAB), dtype=self.dtype,
                       kernel_init=nn.initializers.normal(c.initializer_range), name="classifier")(pooled)
        logits = logits.reshape(-1, num_choices)
        loss = None if labels is None else cross_entropy(logits, labels)
        return MultipleChoiceModelOutput(logits, loss, out.hidden_states, out.attentions)


class MegaForTokenClassification(_MegaHead):
    """Per-token ``logits [b, l, num_labels]``; labels -100 are ignored."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None, *,
                 deterministic: bool = True, output_attentions: bool = False, output_hidden_states: bool = False):
        c = self.config
        out = self._backbone()(input_ids, attention_mask, token_type_ids, inputs_embeds, deterministic=deterministic,
                               output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        rate = c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob
        h = Dropout(rate)(out.last_hidden_state, deterministic=deterministic)
        logits = Dense(c.num_labels, (axes.EMBED, axes.VOCAB), dtype=self.dtype,
                       kernel_init=nn.initializers.normal(c.initializer_range), name="classifier")(h)
        loss = None if labels is None else cross_entropy(logits.reshape(-1, c.num_labels), labels.reshape(-1))
        return TokenClassifierOutput(logits, loss, out.hidden_states, out.attentions)


class MegaForQuestionAnswering(_MegaHead):
    """Span QA: ``start_logits``/``end_logits [b, l]`` from ``qa_outputs``; out-of-range positions are ignored."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None,
                 start_positions=None, end_positions=None, *, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False):
        c = self.config
        out = self._backbone()(input_ids, attention_mask, token_type_ids, inputs_embeds, deterministic=deterministic,
                               output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        logits = Dense(c.num_labels, (axes.EMBED, axes.VOCAB), dtype=self.dtype,
                       kernel_init=nn.initializers.normal(c.initializer_range), name="qa_outputs")(out.last_hidden_state)
        start, end = split_span_logits(logits)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = span_loss(start, end, start_positions, end_positions)
        return QuestionAnsweringModelOutput(start, end, loss, out.hidden_states, out.attentions)


ARCHITECTURES = {
    cls.__name__: cls
    for cls in (
        MegaModel, MegaForCausalLM, MegaForMaskedLM, MegaForSequenceClassification, MegaForMultipleChoice,
        MegaForTokenClassification, MegaForQuestionAnswering,
    )
}
