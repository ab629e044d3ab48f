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

Sequence parallelism: a full (uncached) pass traced while a mesh with a ``sequence`` axis of size S > 1 is in
scope (``with jax.set_mesh(mesh):``, or the legacy ``with mesh:`` that ``train.partitioning.activate`` uses) runs
every layer's EMA through ``layers.sequence_parallel.sharded_damped_ema``: the length is split into S contiguous
shards under ``shard_map`` and only the EMA states cross shards (one all-gather; ppermutes for ``truncation``).
Everything else stays with the automatic partitioner, which propagates the inputs' sharding (flax 0.12 applies
the logical constraints under ``jax.set_mesh`` only, not under the legacy context). The shard_map splits the batch
over the mesh axes the current ``batch`` logical rule names (those of size > 1). ``sharded_damped_ema`` takes a
single ``batch_axis``, so two or more adjacent ones, e.g. ``("data", "fsdp")``, are merged into one axis of a mesh
over the same devices in the same order (the same layout: no resharding). No rule, a batch they do not divide, or
non-adjacent axes: the batch is replicated inside the shard_map (correct, with redundant work). The mesh is read
from the context once per call in ``MegaModel`` (``sequence_parallel_layout``) and passed down explicitly as
``ema_mesh`` / ``ema_batch_axis`` of ``MegaBlock`` / ``MegaGatedAttention``. A length that S does not divide
raises ``ValueError`` (pad the input) rather than silently gathering the sequence. Always unsharded: init (its
dummy input has length 1), cached decoding (``cache=``), and calls already inside a ``shard_map``.

Decoding protocol (shared with ``jaxmodels.generation``): ``module.apply(v, B, T, method="init_cache")`` gives a
``MegaCache``; calling the module with ``cache=`` treats ``input_ids [B, t]`` as the next t tokens and returns the
updated cache in the output's ``cache`` field.
"""

from __future__ import annotations

import contextlib
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax._src import mesh as jax_mesh
from jax.sharding import Mesh

from jaxmodels.input_checks import check_range
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
from layers.ema import damped_ema, damped_ema_step
from layers.embeddings import Embed
from layers.gated_attention import gated_attention_weights
from layers.heads import Pooler, flatten_choices, split_span_logits
from layers.losses import cross_entropy, sequence_classification_loss, span_loss
from layers.norms import LayerNorm
from layers.relative_bias import rotary_relative_bias, simple_relative_bias
from layers.scale_norm import RMSNorm, ScaleNorm
from layers.sequence_parallel import sharded_damped_ema
from layers.stacked import init_stacked

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
    length = shape[-1]
    if length == 0:
        raise ValueError("input_ids must have length >= 1")
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
# Sequence parallelism: which mesh (if any) the full-pass EMA is sharded over.
# ---------------------------------------------------------------------------------------------------------------
SEQUENCE_AXIS = "sequence"  # the mesh axis that splits ``length`` (train.partitioning.MESH_AXES)


def context_mesh() -> Mesh | None:
    """The concrete ``Mesh`` in scope, also while tracing under ``jax.jit``; None if there is none.

    JAX 0.10 has no public getter for this inside a trace (``jax.sharding.get_mesh`` refuses under jit and
    ``get_abstract_mesh`` carries no devices, which ``shard_map`` needs from a ``Mesh``, and is empty under the
    legacy ``with mesh:``). So this reads the two private slots JAX's own ``experimental.mosaic.gpu`` reads, in the
    same order: ``jax.set_mesh`` first, then the legacy ``with mesh:`` resource env. Inside a ``shard_map`` (some
    axes already manual) there is nothing to shard again: None.
    """
    abstract = jax.sharding.get_abstract_mesh()
    if not abstract.empty and abstract.manual_axes:
        return None
    mesh = jax_mesh.get_concrete_mesh()
    if mesh is None or mesh.empty:
        mesh = jax_mesh.thread_resources.env.physical_mesh
    return None if mesh is None or mesh.empty else mesh


def _batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """Mesh axes (size > 1, not ``sequence``) the current ``batch`` logical rule splits the batch over."""
    spec = nn.logical_to_mesh_axes((axes.BATCH,))[0]
    names = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    return tuple(a for a in names if a in mesh.shape and a != SEQUENCE_AXIS and mesh.shape[a] > 1)


def sequence_parallel_layout(batch: int, length: int, mesh: Mesh | None = None) -> tuple[Mesh | None, str | None]:
    """``(mesh, batch_axis)`` for ``sharded_damped_ema`` on ``[batch, length, D]`` activations, ``(None, None)`` when
    the EMA runs unsharded (no mesh in scope, or its ``sequence`` axis has size 1).

    ``mesh`` defaults to ``context_mesh()``. Several adjacent batch axes are merged into one axis of a mesh with the
    same devices in the same order (so the same layout, no resharding). Raises ValueError when ``length`` is not a
    multiple of the ``sequence`` axis size.
    """
    mesh = context_mesh() if mesh is None else mesh
    if mesh is None or mesh.shape.get(SEQUENCE_AXIS, 1) <= 1:
        return None, None
    shards = mesh.shape[SEQUENCE_AXIS]
    if length % shards:
        raise ValueError(f"input length {length} is not a multiple of the {SEQUENCE_AXIS!r} mesh axis size {shards} "
                         "(MEGA's EMA is sequence-parallel over it); pad the input")
    names = tuple(mesh.axis_names)
    batch_axes = _batch_axes(mesh)
    if not batch_axes or batch % int(np.prod([mesh.shape[a] for a in batch_axes])):
        return mesh, None
    if len(batch_axes) == 1:
        return mesh, batch_axes[0]
    first = names.index(batch_axes[0])
    if names[first:first + len(batch_axes)] != batch_axes:
        return mesh, None
    # Adjacent axes, major to minor as in the spec: merging them keeps every device's batch slice.
    last = first + len(batch_axes)
    merged = "+".join(batch_axes)
    sizes = [mesh.shape[a] for a in names]
    shape = (*sizes[:first], int(np.prod(sizes[first:last])), *sizes[last:])
    return Mesh(mesh.devices.reshape(shape), (*names[:first], merged, *names[last:])), merged


def _abstract_mesh_of(mesh: Mesh):
    """Context in which ``shard_map`` accepts ``mesh``: under ``jax.set_mesh`` it must equal the context's abstract
    mesh, which a merged-batch mesh (same devices, fewer axes) does not; ``use_abstract_mesh`` swaps it for the call
    (same size, so allowed inside jit). Nothing to do under the legacy ``with mesh:`` (no abstract mesh)."""
    current = jax.sharding.get_abstract_mesh()
    if current.empty or current == mesh.abstract_mesh:
        return contextlib.nullcontext()
    return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


# ---------------------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------------------
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


def _ema_beta_init(std: float):
    """HF init of beta: N(0, std) plus +1, -1, +1, ... along ndim; shape ``[D', N, 1]``."""

    def init(key, shape, dtype=jnp.float32):
        signs = jnp.where(jnp.arange(shape[1]) % 2 == 0, 1.0, -1.0)[:, None]
        return (std * jax.random.normal(key, shape, jnp.float32) + signs).astype(dtype)

    return init


class DampedEmaParams(nn.Module):
    """The EMA params in HF's layout (``[D', N, 1]`` for delta, alpha, beta; ``[D', N]`` gamma; ``[D]`` omega), so the
    checkpoint converts by name alone; returns them in ``layers.ema``'s layout (``[D', N]``)."""

    config: MegaConfig

    @nn.compact
    def __call__(self) -> dict:
        c = self.config
        channels = 2 * c.hidden_size if c.bidirectional else c.hidden_size
        n = c.ema_projection_size
        normal = nn.initializers.normal
        part = nn.with_logical_partitioning
        names3 = (axes.EMBED, None, None)
        delta = self.param("damping_factor", part(normal(c.ema_delta_alpha_range), names3), (channels, n, 1))
        alpha = self.param("decay_factor", part(normal(c.ema_delta_alpha_range), names3), (channels, n, 1))
        beta = self.param("ema_expansion_matrix", part(_ema_beta_init(c.ema_beta_range), names3), (channels, n, 1))
        gamma = self.param("kernel_projection_matrix", part(normal(c.ema_gamma_omega_range), (axes.EMBED, None)),
                           (channels, n))
        omega = self.param("residual_weight", part(normal(c.ema_gamma_omega_range), (axes.EMBED,)), (c.hidden_size,))
        return {"damping_factor": delta[..., 0], "decay_factor": alpha[..., 0], "ema_expansion_matrix": beta[..., 0],
                "kernel_projection_matrix": gamma, "residual_weight": omega}


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
    its updated ``(key, value, ema_state)``. ``ema_mesh`` / ``ema_batch_axis`` (from ``sequence_parallel_layout``):
    the full-pass EMA runs sharded over ``ema_mesh``'s ``sequence`` axis; cached calls ignore them.
    """

    config: MegaConfig
    dtype: Any = jnp.float32
    ema_algorithm: str = "fft"
    ema_mesh: Mesh | None = None
    ema_batch_axis: str | None = None

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
        ema_params = DampedEmaParams(c, name="ema_gate")()
        new_state = None
        if layer_cache is None:
            ema_chunk = c.chunk_size if c.use_chunking else 64
            shards = 1 if self.ema_mesh is None else self.ema_mesh.shape[SEQUENCE_AXIS]
            # The algorithms are equal; `chunked` needs whole chunks (per shard), so other lengths (init's dummy
            # input, a sequence shorter than a chunk) take `fft`.
            local = x.shape[1] // shards
            algorithm = "fft" if self.ema_algorithm == "chunked" and local % ema_chunk else self.ema_algorithm
            options = {"bidirectional": c.bidirectional, "truncation": c.truncation, "algorithm": algorithm,
                       "chunk_size": ema_chunk, "dtype": self.dtype}
            if shards > 1:
                with _abstract_mesh_of(self.ema_mesh):
                    ema_out, _ = sharded_damped_ema(ema_params, x, mask, mesh=self.ema_mesh, axis=SEQUENCE_AXIS,
                                                    batch_axis=self.ema_batch_axis, **options)
            else:
                ema_out, _ = damped_ema(ema_params, x, mask, **options)
        elif x.shape[1] == 1:
            ema_out, new_state = damped_ema_step(ema_params, x[:, 0], layer_cache[2],
                                                 None if mask is None else mask[:, 0], dtype=self.dtype)
            ema_out = ema_out[:, None]
        else:
            ema_out, new_state = damped_ema(ema_params, x, mask, state=layer_cache[2], return_state=True,
                                            dtype=self.dtype)
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
    ema_algorithm: str = "fft"
    ema_mesh: Mesh | None = None
    ema_batch_axis: str | None = None

    @nn.compact
    def __call__(self, x, mask=None, ctx=None, layer_cache=None, deterministic: bool = True):
        y, weights, new_cache = MegaGatedAttention(self.config, self.dtype, self.ema_algorithm, self.ema_mesh,
                                                   self.ema_batch_axis, name="mega_layer")(
            x, mask, ctx, layer_cache, deterministic)
        if self.config.use_normalized_ffn:
            y = NormalizedFeedForward(self.config, self.dtype, name="nffn")(y, deterministic)
        y = nn.with_logical_constraint(y, (axes.BATCH, axes.LENGTH, axes.EMBED))
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
    (``fft``, ``scan`` or ``chunked``; all equal; ``chunked`` runs on lengths that are multiples of ``chunk_size``,
    or of 64 without chunking, and other lengths take ``fft``); ``remat`` recomputes each layer in the backward pass.

    Cached calls (``cache=``, decoders only): ``input_ids [b, t]`` are the t tokens after ``cache.index``;
    ``attention_mask [b, t]`` (1 = token) covers those new tokens only. The caller keeps ``index + t`` within the
    ``max_length`` given to ``init_cache`` when not chunking (a traced index cannot be checked here).
    """

    config: MegaConfig
    dtype: Any = jnp.float32
    add_pooling_layer: bool = True
    ema_algorithm: str = "fft"
    remat: bool = False

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
        # Init's dummy input (length 1) and cached decoding run the EMA unsharded; see the module docstring.
        ema_mesh, ema_batch_axis = (None, None) if cache is not None or self.is_initializing() else \
            sequence_parallel_layout(batch, length)
        block = MegaBlock(c, self.dtype, self.ema_algorithm, ema_mesh, ema_batch_axis, parent=None)

        def body(h, xs):
            params, layer_index, layer_cache = xs
            rngs = {} if dropout_key is None else {"dropout": jax.random.fold_in(dropout_key, layer_index)}
            h, weights, new_layer_cache = block.apply({"params": params}, h, mask, ctx, layer_cache, deterministic,
                                                      rngs=rngs)
            return h, (h if output_hidden_states else None, weights if output_attentions else None, new_layer_cache)

        if self.remat:
            body = jax.checkpoint(body, prevent_cse=False)
        layer_caches = None if cache is None else (cache.key, cache.value, cache.ema_state)
        h, (hiddens, weights, new_caches) = jax.lax.scan(
            body, x, (self.layers, jnp.arange(c.num_hidden_layers), layer_caches))
        new_cache = None
        if cache is not None:
            new_cache = MegaCache(key=new_caches[0], value=new_caches[1], ema_state=new_caches[2], mask=new_mask,
                                  index=cache.index + length)
        all_hidden = None if not output_hidden_states else (x,) + tuple(hiddens[i] for i in range(c.num_hidden_layers))
        all_weights = None if not output_attentions else tuple(weights[i] for i in range(c.num_hidden_layers))
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
    config: MegaConfig
    dtype: Any = jnp.float32
    ema_algorithm: str = "fft"
    remat: bool = False

    def _backbone(self, add_pooling_layer: bool = False) -> MegaModel:
        return MegaModel(self.config, self.dtype, add_pooling_layer, self.ema_algorithm, self.remat, name="mega")

    def _lm_logits(self, mega: MegaModel, h: Array, head_name: str) -> Array:
        """Optional ``dense`` + tanh, then the tied vocabulary projection plus ``<head_name>.bias``."""
        c = self.config
        if c.add_lm_hidden_dense_layer:
            h = jnp.tanh(Dense(c.hidden_size, (axes.EMBED, axes.MLP), dtype=self.dtype,
                               kernel_init=nn.initializers.normal(c.initializer_range), name="dense")(h))
        table = mega.word_embedding_table().astype(self.dtype)
        return jnp.matmul(h, table.T) + _Bias(c.vocab_size, name=head_name)().astype(self.dtype)

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
        logits = self._lm_logits(mega, out.last_hidden_state, "mlm_head")
        loss = None if labels is None else cross_entropy(logits, labels)
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
