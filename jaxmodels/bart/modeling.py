"""BART (Lewis et al., 2019) in Flax Linen, numerically equal to HF ``transformers`` ``modeling_bart`` (PyTorch), with
the call conventions of HF's ``FlaxBart*`` (``encode`` / ``decode`` / ``init_cache`` methods).

Structure (param names follow the HF checkpoint so conversion is a rename; activations are batch-major):

    shared               token embeddings [vocab, d], tied to both stacks and to the LM head
    encoder              tok * embed_scale + positions[p + 2] -> layernorm_embedding -> dropout      [b, s, d]
      layers             encoder_layers post-LN layers, params stacked [layers, ...], lax.scan
                         h = LN(h + SelfAttn(h));  h = LN(h + fc2(act(fc1(h))))
    decoder              the same embedding recipe (own position table)                               [b, t, d]
      layers             decoder_layers post-LN layers: causal self-attention, cross-attention over the encoder
                         output, feed-forward, each followed by residual + LayerNorm
    heads                lm logits = h @ shared^T + final_logits_bias; sequence classification on the decoder
                         state at each row's last eos; span QA on the decoder states

Learned positions are offset by 2 and are not padding-aware (HF's ``BartLearnedPositionalEmbedding``): position
``p`` reads row ``p + 2``, so left padding shifts a row's positions. With no decoder inputs, the decoder reads
``shift_tokens_right(input_ids)`` (or of ``labels`` in ``BartForConditionalGeneration``).

Incremental decoding: ``init_cache(rows, max_length, encoder_outputs, encoder_attention_mask)`` returns a
``BartCache`` holding a static self-attention key/value cache per layer (``layers.kv_cache``) and the cross-attention
keys/values of every layer, projected from the encoder output once. ``decode(ids, cache=cache)`` runs the next tokens
and returns the updated cache. ``rows`` may be a multiple ``K`` of the encoder batch (beam search): cross keys and
values stay ``[batch, source, ...]`` per example and the K rows of an example attend to them together (their queries
stacked along the query axis), instead of repeating the encoder output K times as HF does.
``reorder_cache(cache, rows)`` gathers the self-attention rows (after a beam-search step). Cached keys and values are
heads-major, the layout the attention matmuls read in place. With ``split_decoding=True`` (a module field, the
default) ``init_cache`` also splits the decoder's params and caches into one buffer per layer and cached calls run
the layers unrolled (``layers.stacked.PerLayer``): inside a scan XLA copies every layer's weights before reading them,
which doubles the memory traffic of a decoding step (``benchmarks/RESULTS.md``, BART generation: greedy ~2x and
4-beam search ~1.5x faster on CPU). The price: a decoder traced once per layer (longer compiles) and, for the
duration of a generation, one copy of the decoder's weights in the cache. ``split_decoding=False`` keeps the scan.
Without a cache (training, scoring) the field changes nothing.

Differences from HF, all where HF is wrong, mutating or data-dependent (see ``notes/families/bart.md``):
``BartForSequenceClassification`` picks the last eos per row with static indexing (HF Flax sums every eos under
``jit``); eos-count errors are ``ValueError`` naming ``input_ids`` (HF raises a bare ``IndexError`` without eos);
``BartForQuestionAnswering`` has two outputs without mutating the config's ``num_labels``; LayerDrop draws its coin
per layer from the dropout key inside the scan (HF Flax draws it at trace time and crashes when a layer is skipped);
cross-attention keys/values are computed once per generation (HF Flax recomputes them every step).
``final_logits_bias`` is a param read through ``stop_gradient`` (a non-trained buffer in HF PyTorch), as HF Flax.
``BartForCausalLM``'s loss does not shift the labels, as in HF 4.46.3: pass labels already shifted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.bart.config import LAYER_NORM_EPS, POSITION_OFFSET, BartConfig
from jaxmodels.input_checks import check_array, check_nonempty, check_range, is_concrete
from layers import axes, checks
from layers.activations import get_activation
from layers.attention import dot_product_attention, padding_mask
from layers.dense import Dense
from layers.dropout import Dropout
from layers.embeddings import Embed
from layers.heads import split_span_logits
from layers.kv_cache import kv_cache_mask, kv_cache_write
from layers.losses import sequence_classification_loss, span_loss
from layers.norms import LayerNorm
from layers.stacked import PerLayer, check_scan_unroll, init_stacked, resolve_residuals, scan_layers, split_layers
from layers.vocab_loss import projected_cross_entropy

Array = jax.Array


# ---------------------------------------------------------------------------------------------------------------
# Cache and outputs
# ---------------------------------------------------------------------------------------------------------------
@flax.struct.dataclass
class BartCache:
    """Decoding state of the decoder. R rows (the batch, or batch x beams), T = ``max_length`` slots, B examples of
    S encoder tokens (R a multiple of B); n heads of width dh.

    self_key, self_value ``[layers, R, n, T, dh]``; self_mask ``[R, T]`` (bool: slot holds a real decoder token);
    cross_key, cross_value ``[layers, B, n, S, dh]`` and encoder_mask ``[B, S]`` (None without an encoder output:
    a ``BartForCausalLM`` run without cross-attention); index ``[]`` int32 (tokens decoded so far). Keys and values
    are heads-major (``layers.kv_cache``): each step reads them in place, without a transposed copy.

    Split (``split_decoding=True`` on the module): the four key/value fields are ``layers.stacked.PerLayer`` tuples of
    per-layer arrays (``[R, n, T, dh]``, ``[B, n, S, dh]``) and ``layer_params`` holds the decoder layers' params split
    the same way, once, so that each decoding step reads every weight in place (see ``PerLayer``). Otherwise
    ``layer_params`` is None and the stacked params are read.
    """

    self_key: Array | PerLayer
    self_value: Array | PerLayer
    self_mask: Array
    cross_key: Array | PerLayer | None
    cross_value: Array | PerLayer | None
    encoder_mask: Array | None
    index: Array
    layer_params: PerLayer | None = None

    def reorder(self, rows: Array) -> "BartCache":
        """The cache of rows ``rows [R]`` (row r continues row ``rows[r]``): a beam-search step. Cross keys and values
        are per example, and a beam always continues a beam of its own example, so they stay."""
        axis = 0 if isinstance(self.self_key, PerLayer) else 1
        take = lambda tree: jax.tree.map(lambda x: jnp.take(x, rows, axis=axis), tree)
        return self.replace(self_key=take(self.self_key), self_value=take(self.self_value),
                            self_mask=jnp.take(self.self_mask, rows, axis=0))


@flax.struct.dataclass
class BartEncoderOutput:
    """``encode``: last_hidden_state ``[b, s, d]``; hidden_states (layers + 1 entries, embeddings first) and
    attentions (``[b, n, s, s]`` per layer) on request."""

    last_hidden_state: Array
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@flax.struct.dataclass
class BartDecoderOutput:
    """``BartModel.decode``: last_hidden_state ``[b, t, d]``; the updated cache when one was given; per-layer
    hidden states, self-attention ``[b, n, t, t or T]`` and cross-attention ``[b, n, t, s]`` weights on request."""

    last_hidden_state: Array
    cache: BartCache | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cross_attentions: tuple | None = None


@flax.struct.dataclass
class CausalLMOutputWithCrossAttentions:
    """``BartForCausalLM`` and ``BartForConditionalGeneration.decode``: logits ``[b, t, vocab]``."""

    logits: Array
    loss: Array | None = None
    cache: BartCache | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    cross_attentions: tuple | None = None


@flax.struct.dataclass(kw_only=True)
class _Seq2SeqFields:
    """The fields every seq2seq output repeats (keywords): per-layer decoder states and attention weights (on
    request), and the encoder's output (per-layer states and weights on request)."""

    decoder_hidden_states: tuple | None = None
    decoder_attentions: tuple | None = None
    cross_attentions: tuple | None = None
    encoder_last_hidden_state: Array | None = None
    encoder_hidden_states: tuple | None = None
    encoder_attentions: tuple | None = None


@flax.struct.dataclass
class Seq2SeqModelOutput(_Seq2SeqFields):
    last_hidden_state: Array


@flax.struct.dataclass
class Seq2SeqLMOutput(_Seq2SeqFields):
    logits: Array
    loss: Array | None = None


@flax.struct.dataclass
class Seq2SeqSequenceClassifierOutput(_Seq2SeqFields):
    logits: Array
    loss: Array | None = None


@flax.struct.dataclass
class Seq2SeqQuestionAnsweringModelOutput(_Seq2SeqFields):
    start_logits: Array
    end_logits: Array
    loss: Array | None = None


def _seq2seq_fields(out: Seq2SeqModelOutput) -> dict:
    return {f.name: getattr(out, f.name) for f in dataclasses.fields(_Seq2SeqFields)}


# ---------------------------------------------------------------------------------------------------------------
# Input validation (static shapes, concrete values): fails before tracing with the argument named.
# ---------------------------------------------------------------------------------------------------------------
def _sequence_shape(config: BartConfig, ids_name: str, ids, embeds_name: str, embeds) -> tuple[int, int]:
    check_array(ids_name, ids)
    check_array(embeds_name, embeds)
    if (ids is None) == (embeds is None):
        raise ValueError(f"pass exactly one of {ids_name} or {embeds_name}")
    if ids is not None:
        shape = tuple(ids.shape)
        if len(shape) != 2:
            raise ValueError(f"{ids_name} must have shape [batch, length], got {shape}")
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"{ids_name} must be integer, got {ids.dtype}")
    else:
        shape = tuple(embeds.shape[:-1])
        if embeds.ndim != 3 or embeds.shape[-1] != config.d_model:
            raise ValueError(f"{embeds_name} must have shape [batch, length, d_model={config.d_model}], got "
                             f"{tuple(embeds.shape)}")
    check_nonempty(ids_name if ids is not None else embeds_name, shape)
    if ids is not None:
        check_range(ids_name, ids, config.vocab_size, f"ids must be in [0, vocab_size={config.vocab_size})")
    return shape


def validate_sequence(config: BartConfig, prefix: str, ids, mask, position_ids, embeds, *,
                      cached: bool = False) -> tuple[int, int]:
    """Checks one side's inputs (``prefix`` "" for the encoder, "decoder_" for the decoder); returns (batch, length).

    Positions must stay inside the learned table: a full pass of L tokens reads rows up to L - 1 + 2, so
    ``L <= max_position_embeddings``. A cached call's positions depend on the cache's traced index; ``init_cache``
    bounds its ``max_length`` instead."""
    ids_name, embeds_name = f"{prefix}input_ids", f"{prefix}inputs_embeds"
    shape = _sequence_shape(config, ids_name, ids, embeds_name, embeds)
    mask_name = "decoder_attention_mask" if prefix else "attention_mask"
    positions_name = f"{prefix}position_ids"
    check_array(mask_name, mask)
    check_array(positions_name, position_ids)
    if mask is not None and tuple(mask.shape) != shape:
        raise ValueError(f"{mask_name} has shape {tuple(mask.shape)} but {ids_name} has shape {shape}; they must match")
    if position_ids is not None:
        if tuple(position_ids.shape) not in (shape, (1, shape[1])):
            raise ValueError(f"{positions_name} has shape {tuple(position_ids.shape)}; expected {shape} or "
                             f"{(1, shape[1])}")
        check_range(positions_name, position_ids, config.max_position_embeddings,
                    f"positions must be in [0, max_position_embeddings={config.max_position_embeddings})")
    elif not cached and shape[1] > config.max_position_embeddings:
        raise ValueError(f"{ids_name} has length {shape[1]}, beyond max_position_embeddings="
                         f"{config.max_position_embeddings} (the learned position table); truncate the input")
    return shape


def _encoder_states(name: str, encoder_outputs) -> Array | None:
    """An encoder output given as ``BartEncoderOutput`` (what ``encode`` returns) or as the array ``[b, s, d]``."""
    if encoder_outputs is None:
        return None
    states = getattr(encoder_outputs, "last_hidden_state", encoder_outputs)
    if not hasattr(states, "shape") or states.ndim != 3:
        raise ValueError(f"{name} must be encode()'s output or an array [batch, source_length, d_model]")
    return states


def validate_encoder_states(config: BartConfig, name: str, states, mask_name: str, mask) -> None:
    if states.shape[-1] != config.d_model:
        raise ValueError(f"{name} has width {states.shape[-1]}; expected d_model={config.d_model}")
    if mask is not None and tuple(mask.shape) != tuple(states.shape[:2]):
        raise ValueError(f"{mask_name} has shape {tuple(mask.shape)} but {name} has [batch, length] "
                         f"{tuple(states.shape[:2])}; they must match")


def shift_tokens_right(input_ids: Array, pad_token_id: int, decoder_start_token_id: int | None) -> Array:
    """``[b, l] -> [b, l]``: ``[start, x0, .., x_{l-2}]`` with -100 (ignored labels) replaced by ``pad_token_id``."""
    if decoder_start_token_id is None:
        raise ValueError("config.decoder_start_token_id is None: set it, or pass decoder_input_ids (the decoder "
                         "inputs are input_ids / labels shifted right behind the start token)")
    input_ids = jnp.asarray(input_ids)
    start = jnp.full((input_ids.shape[0], 1), decoder_start_token_id, input_ids.dtype)
    shifted = jnp.concatenate([start, input_ids[:, :-1]], axis=1)
    return jnp.where(shifted == -100, jnp.asarray(pad_token_id, input_ids.dtype), shifted)


def last_eos_positions(config: BartConfig, input_ids: Array) -> Array:
    """``[b]`` int: the position of the last ``eos_token_id`` of each row of ``input_ids [b, l]``.

    Concrete ids are checked as HF does (every row the same number of eos, at least one) with a ``ValueError``
    naming ``input_ids``. Under ``jit`` nothing can be checked: each row still gets its own last eos, and a row
    without eos gets its last position."""
    if is_concrete(input_ids):
        counts = (np.asarray(input_ids) == config.eos_token_id).sum(axis=1)
        if counts.size and counts.min() == 0:
            raise ValueError(f"input_ids: rows {np.flatnonzero(counts == 0).tolist()} hold no eos_token_id="
                             f"{config.eos_token_id}; sequence classification reads the decoder state at each row's "
                             "last eos")
        if len(set(counts.tolist())) > 1:
            raise ValueError(f"input_ids: all examples must have the same number of eos_token_id="
                             f"{config.eos_token_id} tokens (HF's rule); got counts {counts.tolist()}")
    eos = input_ids == config.eos_token_id
    return input_ids.shape[1] - 1 - jnp.argmax(jnp.flip(eos, axis=1), axis=1)


# ---------------------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------------------
class BartAttention(nn.Module):
    """HF ``BartAttention``: ``q_proj``/``k_proj``/``v_proj``/``out_proj`` (with biases) around scaled dot-product
    attention (scale ``head_dim ** -0.5``, softmax in fp32).

    ``key_value(x [b, s, d])`` gives keys and values ``[b, s, n, dh]``; ``__call__(x [R, t, d], key, value, mask)``
    attends and projects out: ``[R, t, d]`` and weights ``[R, n, t, s]``. Keys/values may have fewer rows than the
    queries (R = K * b, cross-attention in beam search): the K query rows of an example attend to its keys together.
    """

    num_heads: int
    embed_dim: int
    dropout_rate: float
    init_std: float
    dtype: Any = jnp.float32

    def setup(self):
        init = nn.initializers.normal(self.init_std)
        self.q_proj = Dense(self.embed_dim, (axes.EMBED, axes.HEADS), dtype=self.dtype, kernel_init=init)
        self.k_proj = Dense(self.embed_dim, (axes.EMBED, axes.HEADS), dtype=self.dtype, kernel_init=init)
        self.v_proj = Dense(self.embed_dim, (axes.EMBED, axes.HEADS), dtype=self.dtype, kernel_init=init)
        self.out_proj = Dense(self.embed_dim, (axes.HEADS, axes.EMBED), dtype=self.dtype, kernel_init=init)

    def _split_heads(self, x: Array) -> Array:
        return x.reshape(x.shape[:-1] + (self.num_heads, self.embed_dim // self.num_heads))

    def key_value(self, x: Array) -> tuple[Array, Array]:
        return self._split_heads(self.k_proj(x)), self._split_heads(self.v_proj(x))

    def __call__(self, x: Array, key: Array, value: Array, mask: Array | None, deterministic: bool = True):
        query = self._split_heads(self.q_proj(x))
        rows, length = query.shape[:2]
        groups = rows // key.shape[0]
        if groups * key.shape[0] != rows:
            raise ValueError(f"{rows} query rows cannot share keys of {key.shape[0]} rows")
        if groups > 1:
            query = query.reshape((key.shape[0], groups * length) + query.shape[2:])
        dropout_rng = None
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        context, weights = dot_product_attention(query, key, value, mask=mask, dropout_rate=self.dropout_rate,
                                                 dropout_rng=dropout_rng, deterministic=deterministic,
                                                 dtype=self.dtype)
        if groups > 1:
            b, n, _, s = weights.shape
            weights = weights.reshape(b, n, groups, length, s).transpose(0, 2, 1, 3, 4).reshape(rows, n, length, s)
        context = context.reshape(rows, length, self.embed_dim)
        return self.out_proj(context), weights


class _BartLayer(nn.Module):
    """What encoder and decoder layers share: the feed-forward block ``fc1 -> act -> fc2`` (+ residual, LayerNorm)."""

    config: BartConfig
    dtype: Any = jnp.float32

    def _setup_feed_forward(self, ffn_dim: int):
        c = self.config
        init = nn.initializers.normal(c.init_std)
        self.fc1 = Dense(ffn_dim, (axes.EMBED, axes.MLP), dtype=self.dtype, kernel_init=init)
        self.fc2 = Dense(c.d_model, (axes.MLP, axes.EMBED), dtype=self.dtype, kernel_init=init)
        self.final_layer_norm = LayerNorm(LAYER_NORM_EPS, dtype=self.dtype)
        self.dropout = Dropout(c.dropout)
        self.activation_dropout = Dropout(c.activation_dropout)

    def feed_forward(self, h: Array, deterministic: bool) -> Array:
        f = get_activation(self.config.activation_function, "activation_function")(self.fc1(h))
        f = self.fc2(self.activation_dropout(f, deterministic=deterministic))
        h = self.final_layer_norm(h + self.dropout(f, deterministic=deterministic))
        return nn.with_logical_constraint(h, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))


class BartEncoderLayer(_BartLayer):
    """Post-LN: ``h = LN(h + SelfAttn(h))``, ``h = LN(h + FFN(h))``. ``[b, s, d] -> ([b, s, d], weights)``."""

    def setup(self):
        c = self.config
        self.self_attn = BartAttention(c.encoder_attention_heads, c.d_model, c.attention_dropout, c.init_std, self.dtype)
        self.self_attn_layer_norm = LayerNorm(LAYER_NORM_EPS, dtype=self.dtype)
        self._setup_feed_forward(c.encoder_ffn_dim)

    def __call__(self, h: Array, mask: Array | None, deterministic: bool = True):
        key, value = self.self_attn.key_value(h)
        a, weights = self.self_attn(h, key, value, mask, deterministic)
        h = self.self_attn_layer_norm(h + self.dropout(a, deterministic=deterministic))
        return self.feed_forward(h, deterministic), weights


class BartDecoderLayer(_BartLayer):
    """Post-LN: causal self-attention, cross-attention over the encoder output, feed-forward. ``[R, t, d]``.

    Cross-attention runs when ``encoder_states [b, s, d]`` are given (keys/values projected here) or their keys and
    values ``cross_kv`` (from a cache, heads-major ``[b, n, s, dh]``); ``cross_key_value`` projects them
    (``[b, s, n, dh]``) once for a cache. With ``layer_cache`` (this layer's self-attention ``(key, value)`` slots,
    heads-major ``[R, n, T, dh]``) the new keys/values are written at ``cache_index`` and the updated pair is
    returned.
    """

    def setup(self):
        c = self.config
        self.self_attn = BartAttention(c.decoder_attention_heads, c.d_model, c.attention_dropout, c.init_std, self.dtype)
        self.self_attn_layer_norm = LayerNorm(LAYER_NORM_EPS, dtype=self.dtype)
        self.encoder_attn = BartAttention(c.decoder_attention_heads, c.d_model, c.attention_dropout, c.init_std,
                                          self.dtype)
        self.encoder_attn_layer_norm = LayerNorm(LAYER_NORM_EPS, dtype=self.dtype)
        self._setup_feed_forward(c.decoder_ffn_dim)

    def cross_key_value(self, encoder_states: Array) -> tuple[Array, Array]:
        return self.encoder_attn.key_value(encoder_states)

    def __call__(self, h: Array, self_mask: Array | None, *, encoder_states: Array | None = None,
                 cross_kv: tuple[Array, Array] | None = None, cross_mask: Array | None = None,
                 layer_cache: tuple[Array, Array] | None = None, cache_index: Array | None = None,
                 deterministic: bool = True):
        key, value = self.self_attn.key_value(h)
        new_cache = None
        if layer_cache is not None:  # heads-major slots [R, n, T, dh]
            new_cache = tuple(kv_cache_write(slots, jnp.swapaxes(x, 1, 2), cache_index, axis=2)
                              for slots, x in zip(layer_cache, (key, value)))
            key, value = (jnp.swapaxes(x, 1, 2) for x in new_cache)
        a, self_weights = self.self_attn(h, key, value, self_mask, deterministic)
        h = self.self_attn_layer_norm(h + self.dropout(a, deterministic=deterministic))
        cross_weights = None
        if encoder_states is not None:
            cross_kv = self.cross_key_value(encoder_states)
        elif cross_kv is not None:  # heads-major [b, n, s, dh], from a cache
            cross_kv = tuple(jnp.swapaxes(x, 1, 2) for x in cross_kv)
        if cross_kv is not None:
            a, cross_weights = self.encoder_attn(h, cross_kv[0], cross_kv[1], cross_mask, deterministic)
            h = self.encoder_attn_layer_norm(h + self.dropout(a, deterministic=deterministic))
        return self.feed_forward(h, deterministic), (self_weights, cross_weights), new_cache


# ---------------------------------------------------------------------------------------------------------------
# Encoder and decoder stacks
# ---------------------------------------------------------------------------------------------------------------
class _BartStack(nn.Module):
    """Embedding recipe and layer-stack plumbing shared by the encoder and the decoder.

    ``shared_embedding``: the token table of the parent model (``BartModel.shared``); None gives the stack its own
    ``embed_tokens`` (``BartForCausalLM``'s decoder, as HF's ``BartDecoderWrapper``). ``remat`` /
    ``scan_residuals`` / ``scan_unroll``: what the backward keeps of each layer and how many layers a scan step
    unrolls (``layers.stacked``). ``split_decoding``: see ``BartCache``.
    """

    config: BartConfig
    dtype: Any = jnp.float32
    shared_embedding: Embed | None = None
    remat: bool = False
    scan_residuals: str = "dots"
    scan_unroll: int = 1
    split_decoding: bool = True

    def _setup_stack(self, num_layers: int, *dummy_args, **dummy_kwargs):
        c = self.config
        if self.shared_embedding is None:
            self.embed_tokens = Embed(c.vocab_size, c.d_model, padding_idx=c.pad_token_id, dtype=self.dtype,
                                      embedding_init=nn.initializers.normal(c.init_std))
        self.embed_positions = Embed(c.max_position_embeddings + POSITION_OFFSET, c.d_model, dtype=self.dtype,
                                     axes=(axes.POSITIONS, axes.EMBED),
                                     embedding_init=nn.initializers.normal(c.init_std))
        self.layernorm_embedding = LayerNorm(LAYER_NORM_EPS, dtype=self.dtype)
        self.dropout = Dropout(c.dropout)
        dummy = jnp.zeros((1, 1, c.d_model), self.dtype)
        self.layers = self.param(
            "layers", lambda rng: init_stacked(self._layer(), rng, (num_layers,), (axes.LAYERS,), dummy,
                                               *dummy_args, **dummy_kwargs))

    def _layer(self) -> nn.Module:
        raise NotImplementedError

    def token_embedding(self) -> Embed:
        """The token table this stack reads (and a tied LM head projects onto): ``[vocab, d]``."""
        return self.shared_embedding if self.shared_embedding is not None else self.embed_tokens

    def embed(self, input_ids, inputs_embeds, positions, deterministic: bool) -> Array:
        """``tok * embed_scale + positions[p + 2] -> layernorm_embedding -> dropout``: ``[b, l, d]``."""
        if inputs_embeds is None:
            inputs_embeds = self.token_embedding()(input_ids) * jnp.asarray(self.config.embed_scale, self.dtype)
        h = inputs_embeds.astype(self.dtype) + self.embed_positions(positions + POSITION_OFFSET)
        return self.dropout(self.layernorm_embedding(h), deterministic=deterministic)

    def _run_stack(self, run, per_layer, x, *, layerdrop: float, deterministic: bool, cache=None):
        """``scan_layers`` over ``run(per_layer_inputs, h, *, key, cache, index) -> (h, outputs, cache)``, with
        LayerDrop in training: each layer is skipped with probability ``layerdrop`` by a coin drawn from its own
        key (every layer and step draws its own, and a skipped layer is not computed: ``lax.cond``). A skipped
        layer returns its input, zero per-layer outputs and its cache unchanged."""
        c = self.config
        rates = (c.dropout, c.attention_dropout, c.activation_dropout, layerdrop)
        key = self.make_rng("dropout") if not deterministic and any(r > 0 for r in rates) else None
        body = run
        if not deterministic and layerdrop > 0.0:
            def body(inputs, h, *, key, cache, index):
                coin, key = jax.random.split(key)

                def compute(h):
                    return run(inputs, h, key=key, cache=cache, index=index)

                def skip(h):
                    outputs = jax.eval_shape(compute, h)[1]
                    return h, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), outputs), cache

                return jax.lax.cond(jax.random.uniform(coin) < layerdrop, skip, compute, h)

        check_scan_unroll(self.scan_unroll)
        return scan_layers(body, per_layer, x, key=key, residuals=resolve_residuals(self.remat, self.scan_residuals),
                           unroll=self.scan_unroll, cache=cache)


class BartEncoder(_BartStack):
    """HF ``BartEncoder``: ``[b, s]`` ids (or ``[b, s, d]`` embeddings) -> ``BartEncoderOutput``."""

    def setup(self):
        self._setup_stack(self.config.encoder_layers, None)

    def _layer(self) -> nn.Module:
        return BartEncoderLayer(self.config, self.dtype, parent=None)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, *,
                 deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False) -> BartEncoderOutput:
        c = self.config
        _, length = validate_sequence(c, "", input_ids, attention_mask, position_ids, inputs_embeds)
        positions = jnp.arange(length, dtype=jnp.int32)[None] if position_ids is None else position_ids
        x = self.embed(input_ids, inputs_embeds, positions, deterministic)
        mask = None if attention_mask is None else padding_mask(attention_mask)
        layer = self._layer()

        def run(params, h, *, key, cache, index):
            rngs = {} if key is None else {"dropout": key}
            h, weights = layer.apply({"params": params}, h, mask, deterministic, rngs=rngs)
            return h, (h if output_hidden_states else None, weights if output_attentions else None), None

        stack = self._run_stack(run, self.layers, x, layerdrop=c.encoder_layerdrop, deterministic=deterministic)
        hidden = (x,) + tuple(o[0] for o in stack.outputs) if output_hidden_states else None
        weights = tuple(o[1] for o in stack.outputs) if output_attentions else None
        return BartEncoderOutput(stack.carry, hidden, weights)


class BartDecoder(_BartStack):
    """HF ``BartDecoder``: ``[R, t]`` ids (or embeddings) -> ``BartDecoderOutput``, attending to
    ``encoder_hidden_states [b, s, d]`` (R = b) or, with ``cache``, to the cross keys/values the cache holds.

    ``names`` is the prefix of the argument names errors mention (``"decoder_"`` under a seq2seq model, ``""`` under
    ``BartForCausalLM``). Cached calls: ``input_ids [R, t]`` are the t tokens after ``cache.index``;
    ``attention_mask [R, t]`` (1 = token) covers those new tokens only.
    """

    def setup(self):
        self._setup_stack(self.config.decoder_layers, None,
                          encoder_states=jnp.zeros((1, 1, self.config.d_model), self.dtype))

    def _layer(self) -> nn.Module:
        return BartDecoderLayer(self.config, self.dtype, parent=None)

    def init_cache(self, batch_size: int, max_length: int, encoder_hidden_states=None,
                   encoder_attention_mask=None, *, names: str = "encoder_outputs") -> BartCache:
        """An empty ``BartCache`` for ``batch_size`` rows of up to ``max_length`` tokens; with an encoder output
        ``[b, s, d]`` (``batch_size`` a multiple of b) its cross keys/values are projected here, once."""
        c = self.config
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size={batch_size!r}: must be a positive int")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or \
                not 0 < max_length <= c.max_position_embeddings:
            raise ValueError(f"max_length={max_length!r}: must be a positive int <= max_position_embeddings="
                             f"{c.max_position_embeddings} (decoded positions index the learned table)")
        slots = jnp.zeros((c.decoder_layers, batch_size, c.decoder_attention_heads, max_length, c.decoder_head_dim),
                          self.dtype)
        split = split_layers if self.split_decoding else (lambda x: x)
        states = _encoder_states(names, encoder_hidden_states)
        cross_key = cross_value = encoder_mask = None
        if states is not None:
            validate_encoder_states(c, names, states, "encoder_attention_mask", encoder_attention_mask)
            if batch_size % states.shape[0]:
                raise ValueError(f"batch_size={batch_size} must be a multiple of the {names} batch {states.shape[0]} "
                                 "(rows = examples x beams)")
            layer = self._layer()
            cross_key, cross_value = (jnp.swapaxes(x, 2, 3) for x in jax.vmap(
                lambda p: layer.apply({"params": p}, states.astype(self.dtype), method="cross_key_value"))(self.layers))
            encoder_mask = (jnp.ones(states.shape[:2], bool) if encoder_attention_mask is None
                            else jnp.asarray(encoder_attention_mask) != 0)
        elif encoder_attention_mask is not None:
            raise ValueError(f"encoder_attention_mask given without {names}")
        return BartCache(self_key=split(slots), self_value=split(slots),
                         self_mask=jnp.zeros((batch_size, max_length), bool),
                         cross_key=None if cross_key is None else split(cross_key),
                         cross_value=None if cross_value is None else split(cross_value), encoder_mask=encoder_mask,
                         index=jnp.zeros((), jnp.int32),
                         layer_params=split_layers(self.layers) if self.split_decoding else None)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                 encoder_hidden_states=None, encoder_attention_mask=None, *, cache: BartCache | None = None,
                 deterministic: bool = True, output_attentions: bool = False, output_hidden_states: bool = False,
                 names: str = "decoder_") -> BartDecoderOutput:
        c = self.config
        rows, length = validate_sequence(c, names, input_ids, attention_mask, position_ids, inputs_embeds,
                                         cached=cache is not None)
        enc_name = "encoder_outputs" if names else "encoder_hidden_states"
        states = _encoder_states(enc_name, encoder_hidden_states)
        if states is not None:
            validate_encoder_states(c, enc_name, states, "encoder_attention_mask", encoder_attention_mask)
        layer_caches = self_valid = None
        if cache is not None:
            if states is not None:
                raise ValueError(f"{enc_name} given with a cache: the cache already holds the cross-attention keys and "
                                 "values (init_cache projected them); pass one or the other")
            if cache.self_mask.shape[0] != rows:
                raise ValueError(f"cache has {cache.self_mask.shape[0]} rows but {names}input_ids has {rows}")
            cache_index = cache.index
            positions = (cache_index + jnp.arange(length, dtype=jnp.int32)[None] if position_ids is None
                         else position_ids)
            new_valid = jnp.ones((rows, length), bool) if attention_mask is None else attention_mask != 0
            self_valid = kv_cache_write(cache.self_mask, new_valid, cache_index)
            self_mask = kv_cache_mask(self_valid, cache_index, length)
            has_cross = cache.cross_key is not None
            cross_mask = cache.encoder_mask[:, None, None, :] if has_cross else None
            # The cross keys/values ride along with the layer params (read-only per-layer inputs): in the cache
            # argument the scan would copy them out again at every step.
            if cache.layer_params is not None:  # split: one buffer per layer (BartCache)
                cross = zip(cache.cross_key, cache.cross_value) if has_cross else [None] * len(cache.layer_params)
                per_layer = PerLayer(zip(cache.layer_params, cross))
                layer_caches = PerLayer(zip(cache.self_key, cache.self_value))
            else:
                per_layer = (self.layers, (cache.cross_key, cache.cross_value) if has_cross else None)
                layer_caches = (cache.self_key, cache.self_value)
        else:
            cache_index = None
            positions = jnp.arange(length, dtype=jnp.int32)[None] if position_ids is None else position_ids
            self_mask = jnp.tril(jnp.ones((length, length), bool))[None, None]
            if attention_mask is not None:
                self_mask = self_mask & padding_mask(attention_mask)
            has_cross = states is not None
            cross_mask = None if not has_cross or encoder_attention_mask is None else padding_mask(encoder_attention_mask)
            per_layer = (self.layers, None)
        x = self.embed(input_ids, inputs_embeds, positions, deterministic)
        layer = self._layer()

        def run(inputs, h, *, key, cache, index):
            params, cross_kv = inputs
            rngs = {} if key is None else {"dropout": key}
            h, (weights, cross_weights), new_cache = layer.apply(
                {"params": params}, h, self_mask, encoder_states=states, cross_kv=cross_kv, cross_mask=cross_mask,
                layer_cache=cache, cache_index=cache_index, deterministic=deterministic, rngs=rngs)
            outputs = (h if output_hidden_states else None, weights if output_attentions else None,
                       cross_weights if output_attentions and has_cross else None)
            return h, outputs, new_cache

        stack = self._run_stack(run, per_layer, x, layerdrop=c.decoder_layerdrop, deterministic=deterministic,
                                cache=layer_caches)
        new_cache = None
        if cache is not None:
            if cache.layer_params is not None:
                keys, values = (PerLayer(layer_cache[i] for layer_cache in stack.cache) for i in (0, 1))
            else:
                keys, values = stack.cache
            new_cache = cache.replace(self_key=keys, self_value=values, self_mask=self_valid,
                                      index=cache.index + length)
        hidden = (x,) + tuple(o[0] for o in stack.outputs) if output_hidden_states else None
        weights = tuple(o[1] for o in stack.outputs) if output_attentions else None
        cross = tuple(o[2] for o in stack.outputs) if output_attentions and has_cross else None
        return BartDecoderOutput(stack.carry, new_cache, hidden, weights, cross)


# ---------------------------------------------------------------------------------------------------------------
# Model and heads
# ---------------------------------------------------------------------------------------------------------------
class BartModel(nn.Module):
    """Bare BART: ``Seq2SeqModelOutput`` (last_hidden_state = the decoder's ``[b, t, d]``).

    Methods (as ``FlaxBartModel``): ``encode`` -> ``BartEncoderOutput``; ``decode(decoder_input_ids,
    encoder_outputs, ...)`` -> ``BartDecoderOutput`` (or with ``cache=`` from ``init_cache``: the next tokens);
    ``init_cache(rows, max_length, encoder_outputs, encoder_attention_mask)`` -> ``BartCache``.
    ``position_ids`` / ``decoder_position_ids`` (0-based; default ``arange``, or the cache index onwards) replace
    the default positions, as in HF Flax. ``split_decoding`` (default True): ``init_cache`` splits the decoder per
    layer, so cached decoding runs its layers unrolled, each reading its own buffers (``BartCache``; ~2x faster steps
    on CPU, the layer traced once per layer instead of once); False scans the stacked layers.
    """

    config: BartConfig
    dtype: Any = jnp.float32
    remat: bool = False
    scan_residuals: str = "dots"
    scan_unroll: int = 1
    split_decoding: bool = True

    def setup(self):
        c = self.config
        self.shared = Embed(c.vocab_size, c.d_model, padding_idx=c.pad_token_id, dtype=self.dtype,
                            embedding_init=nn.initializers.normal(c.init_std))
        knobs = dict(remat=self.remat, scan_residuals=self.scan_residuals, scan_unroll=self.scan_unroll,
                     split_decoding=self.split_decoding)
        self.encoder = BartEncoder(c, self.dtype, self.shared, **knobs)
        self.decoder = BartDecoder(c, self.dtype, self.shared, **knobs)

    def encode(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, *,
               deterministic: bool = True, output_attentions: bool = False,
               output_hidden_states: bool = False) -> BartEncoderOutput:
        return self.encoder(input_ids, attention_mask, position_ids, inputs_embeds, deterministic=deterministic,
                            output_attentions=output_attentions, output_hidden_states=output_hidden_states)

    def decode(self, decoder_input_ids=None, encoder_outputs=None, encoder_attention_mask=None,
               decoder_attention_mask=None, decoder_position_ids=None, decoder_inputs_embeds=None, *,
               cache: BartCache | None = None, deterministic: bool = True, output_attentions: bool = False,
               output_hidden_states: bool = False) -> BartDecoderOutput:
        if cache is None and encoder_outputs is None:
            raise ValueError("encoder_outputs: decode needs encode()'s output, or a cache from init_cache")
        return self.decoder(decoder_input_ids, decoder_attention_mask, decoder_position_ids, decoder_inputs_embeds,
                            encoder_outputs, encoder_attention_mask, cache=cache, deterministic=deterministic,
                            output_attentions=output_attentions, output_hidden_states=output_hidden_states)

    def init_cache(self, batch_size: int, max_length: int, encoder_outputs=None,
                   encoder_attention_mask=None) -> BartCache:
        return self.decoder.init_cache(batch_size, max_length, encoder_outputs, encoder_attention_mask)

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 position_ids=None, decoder_position_ids=None, inputs_embeds=None, decoder_inputs_embeds=None, *,
                 deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False) -> Seq2SeqModelOutput:
        c = self.config
        batch, _ = validate_sequence(c, "", input_ids, attention_mask, position_ids, inputs_embeds)
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            if input_ids is None:
                raise ValueError("decoder_input_ids: without them the decoder reads input_ids shifted right, and only "
                                 "inputs_embeds were given; pass decoder_input_ids or decoder_inputs_embeds")
            decoder_input_ids = shift_tokens_right(input_ids, c.pad_token_id, c.decoder_start_token_id)
        # Both sides checked before either runs (an eager call would otherwise encode before a decoder error).
        decoder_batch, _ = validate_sequence(c, "decoder_", decoder_input_ids, decoder_attention_mask,
                                             decoder_position_ids, decoder_inputs_embeds)
        if decoder_batch != batch:
            raise ValueError(f"decoder_{'input_ids' if decoder_input_ids is not None else 'inputs_embeds'} has batch "
                             f"{decoder_batch} but the encoder inputs have {batch}; they must match")
        flags = dict(deterministic=deterministic, output_attentions=output_attentions,
                     output_hidden_states=output_hidden_states)
        enc = self.encode(input_ids, attention_mask, position_ids, inputs_embeds, **flags)
        dec = self.decode(decoder_input_ids, enc.last_hidden_state, attention_mask, decoder_attention_mask,
                          decoder_position_ids, decoder_inputs_embeds, **flags)
        return Seq2SeqModelOutput(
            dec.last_hidden_state, decoder_hidden_states=dec.hidden_states, decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions, encoder_last_hidden_state=enc.last_hidden_state,
            encoder_hidden_states=enc.hidden_states, encoder_attentions=enc.attentions)


class _Kernel(nn.Module):
    """A lone ``kernel [d, vocab]``: an untied LM head (HF ``lm_head.weight``, a Linear without bias)."""

    shape: tuple[int, int]
    init_std: float

    @nn.compact
    def __call__(self) -> Array:
        return self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(self.init_std),
                                                                 (axes.EMBED, axes.VOCAB)), self.shape)


class _BartHead(nn.Module):
    """Fields every head passes to its backbone (see ``BartModel``)."""

    config: BartConfig
    dtype: Any = jnp.float32
    remat: bool = False
    scan_residuals: str = "dots"
    scan_unroll: int = 1
    split_decoding: bool = True

    def _knobs(self) -> dict:
        return dict(remat=self.remat, scan_residuals=self.scan_residuals, scan_unroll=self.scan_unroll,
                    split_decoding=self.split_decoding)

    def reorder_cache(self, cache: BartCache, rows: Array) -> BartCache:
        """The cache after a beam-search step: row r continues row ``rows[r]`` (``BartCache.reorder``)."""
        return cache.reorder(rows)


class _BartSeq2SeqHead(_BartHead):
    """A head on a whole ``BartModel`` (``model``); ``encode`` / ``decode`` / ``init_cache`` as ``BartModel``'s."""

    def _setup_model(self):
        self.model = BartModel(self.config, self.dtype, **self._knobs())

    def encode(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, *,
               deterministic: bool = True, output_attentions: bool = False,
               output_hidden_states: bool = False) -> BartEncoderOutput:
        return self.model.encode(input_ids, attention_mask, position_ids, inputs_embeds, deterministic=deterministic,
                                 output_attentions=output_attentions, output_hidden_states=output_hidden_states)

    def init_cache(self, batch_size: int, max_length: int, encoder_outputs=None,
                   encoder_attention_mask=None) -> BartCache:
        return self.model.init_cache(batch_size, max_length, encoder_outputs, encoder_attention_mask)

    def _model_call(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, position_ids,
                    decoder_position_ids, inputs_embeds, decoder_inputs_embeds, deterministic, output_attentions,
                    output_hidden_states) -> Seq2SeqModelOutput:
        return self.model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, position_ids,
                          decoder_position_ids, inputs_embeds, decoder_inputs_embeds, deterministic=deterministic,
                          output_attentions=output_attentions, output_hidden_states=output_hidden_states)


class BartForConditionalGeneration(_BartSeq2SeqHead):
    """Seq2seq LM: ``logits [b, t, vocab] = h @ shared^T + final_logits_bias`` (an own ``lm_head`` with
    ``tie_word_embeddings=False``). With ``labels [b, t]`` and no decoder inputs, the decoder reads the labels
    shifted right; the loss is the token cross-entropy of the logits against the labels themselves (-100 ignored),
    computed from the decoder states without forming the logits (``layers.vocab_loss``).

    ``decode`` returns ``CausalLMOutputWithCrossAttentions`` (logits, and the cache with ``cache=``), as
    ``FlaxBartForConditionalGeneration.decode``; it is what ``jaxmodels.generation.generate`` steps.
    """

    def setup(self):
        c = self.config
        self._setup_model()
        self.final_logits_bias = self.param(
            "final_logits_bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (None, axes.VOCAB)),
            (1, c.vocab_size))
        if not c.tie_word_embeddings:
            self.lm_head = _Kernel((c.d_model, c.vocab_size), c.init_std)

    def _projection(self) -> tuple[Array, Array]:
        """``(kernel [d, vocab], bias [vocab])`` of the LM head; the bias is HF's non-trained buffer."""
        kernel = self.model.shared.embedding.T if self.config.tie_word_embeddings else self.lm_head()
        return kernel, jax.lax.stop_gradient(self.final_logits_bias[0])

    def _logits(self, h: Array) -> Array:
        kernel, bias = self._projection()
        return jnp.matmul(h, kernel.astype(self.dtype)) + bias.astype(self.dtype)

    def decode(self, decoder_input_ids=None, encoder_outputs=None, encoder_attention_mask=None,
               decoder_attention_mask=None, decoder_position_ids=None, decoder_inputs_embeds=None, *,
               cache: BartCache | None = None, deterministic: bool = True, output_attentions: bool = False,
               output_hidden_states: bool = False) -> CausalLMOutputWithCrossAttentions:
        out = self.model.decode(decoder_input_ids, encoder_outputs, encoder_attention_mask, decoder_attention_mask,
                                decoder_position_ids, decoder_inputs_embeds, cache=cache, deterministic=deterministic,
                                output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        return CausalLMOutputWithCrossAttentions(self._logits(out.last_hidden_state), None, out.cache,
                                                 out.hidden_states, out.attentions, out.cross_attentions)

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 labels=None, position_ids=None, decoder_position_ids=None, inputs_embeds=None,
                 decoder_inputs_embeds=None, *, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False) -> Seq2SeqLMOutput:
        c = self.config
        check_array("labels", labels)
        if labels is not None:
            if labels.ndim != 2 or not jnp.issubdtype(labels.dtype, jnp.integer):
                raise ValueError(f"labels must be integer [batch, length], got {labels.dtype} {tuple(labels.shape)}")
            # Before the shift: an out-of-range label would otherwise be reported as a decoder input id.
            checks.check_range("labels", labels, c.vocab_size,
                               f"token ids must be in [0, vocab_size={c.vocab_size}) or -100 (ignored)", ignore=-100)
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = shift_tokens_right(labels, c.pad_token_id, c.decoder_start_token_id)
        out = self._model_call(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, position_ids,
                               decoder_position_ids, inputs_embeds, decoder_inputs_embeds, deterministic,
                               output_attentions, output_hidden_states)
        h = out.last_hidden_state
        loss = None
        if labels is not None:
            if tuple(labels.shape) != tuple(h.shape[:2]):
                raise ValueError(f"labels has shape {tuple(labels.shape)}; the decoder ran on {tuple(h.shape[:2])}")
            kernel, bias = self._projection()
            loss = projected_cross_entropy(h, kernel, bias, labels)
        return Seq2SeqLMOutput(self._logits(h), loss, **_seq2seq_fields(out))


class BartClassificationHead(nn.Module):
    """``out_proj(dropout(tanh(dense(dropout(x)))))``: ``[b, d] -> [b, num_labels]``."""

    config: BartConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        c = self.config
        init = nn.initializers.normal(c.init_std)
        rate = c.classifier_dropout or 0.0
        x = Dropout(rate)(x, deterministic=deterministic)
        x = jnp.tanh(Dense(c.d_model, (axes.EMBED, axes.MLP), dtype=self.dtype, kernel_init=init, name="dense")(x))
        x = Dropout(rate)(x, deterministic=deterministic)
        return Dense(c.num_labels, (axes.MLP, axes.VOCAB), dtype=self.dtype, kernel_init=init, name="out_proj")(x)


class BartForSequenceClassification(_BartSeq2SeqHead):
    """``logits [b, num_labels]`` from the decoder state at the last ``eos_token_id`` of each row of ``input_ids``
    (positions read from the encoder ids, as HF; the default decoder input is those ids shifted right, so the
    decoder state at the eos position has read everything before it). Needs ``input_ids`` (eos positions) and
    decoder inputs as long as them. Concrete ids must hold the same number of eos in every row (HF's rule; a
    ``ValueError`` otherwise); see ``last_eos_positions`` for what happens under ``jit``. Loss by ``problem_type``
    as HF."""

    def setup(self):
        self._setup_model()
        self.classification_head = BartClassificationHead(self.config, self.dtype)

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 labels=None, position_ids=None, decoder_position_ids=None, inputs_embeds=None,
                 decoder_inputs_embeds=None, *, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False) -> Seq2SeqSequenceClassifierOutput:
        c = self.config
        if input_ids is None:
            raise ValueError("input_ids: sequence classification reads the eos positions from input_ids; "
                             "inputs_embeds alone are not supported (as in HF)")
        validate_sequence(c, "", input_ids, attention_mask, position_ids, inputs_embeds)
        check_array("labels", labels)
        for name, x in (("decoder_input_ids", decoder_input_ids), ("decoder_inputs_embeds", decoder_inputs_embeds)):
            check_array(name, x)
            if x is not None and x.shape[1] != input_ids.shape[1]:
                raise ValueError(f"{name} has length {x.shape[1]} but input_ids has {input_ids.shape[1]}: the eos "
                                 "positions of input_ids index the decoder states, so the lengths must match")
        eos_positions = last_eos_positions(c, input_ids)
        out = self._model_call(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, position_ids,
                               decoder_position_ids, inputs_embeds, decoder_inputs_embeds, deterministic,
                               output_attentions, output_hidden_states)
        h = out.last_hidden_state
        sentence = jnp.take_along_axis(h, eos_positions[:, None, None], axis=1)[:, 0]
        logits = self.classification_head(sentence, deterministic)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(logits, labels, num_labels=c.num_labels, problem_type=c.problem_type)
        return Seq2SeqSequenceClassifierOutput(logits, loss, **_seq2seq_fields(out))


class BartForQuestionAnswering(_BartSeq2SeqHead):
    """Span QA on the decoder states: ``start_logits`` / ``end_logits [b, t]`` from ``qa_outputs`` (d -> 2; HF sets
    ``config.num_labels = 2`` on the caller's config, here the config is left alone). Positions outside the
    sequence are clamped and ignored in the loss, as HF."""

    def setup(self):
        self._setup_model()
        self.qa_outputs = Dense(2, (axes.EMBED, axes.VOCAB), dtype=self.dtype,
                                kernel_init=nn.initializers.normal(self.config.init_std))

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 start_positions=None, end_positions=None, position_ids=None, decoder_position_ids=None,
                 inputs_embeds=None, decoder_inputs_embeds=None, *, deterministic: bool = True,
                 output_attentions: bool = False,
                 output_hidden_states: bool = False) -> Seq2SeqQuestionAnsweringModelOutput:
        check_array("start_positions", start_positions)
        check_array("end_positions", end_positions)
        out = self._model_call(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, position_ids,
                               decoder_position_ids, inputs_embeds, decoder_inputs_embeds, deterministic,
                               output_attentions, output_hidden_states)
        start, end = split_span_logits(self.qa_outputs(out.last_hidden_state))
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = span_loss(start, end, start_positions, end_positions)
        return Seq2SeqQuestionAnsweringModelOutput(start, end, loss, **_seq2seq_fields(out))


class _BartDecoderWrapper(nn.Module):
    """HF ``BartDecoderWrapper``: holds the decoder (``model.decoder.*``) of ``BartForCausalLM``."""

    config: BartConfig
    dtype: Any = jnp.float32
    remat: bool = False
    scan_residuals: str = "dots"
    scan_unroll: int = 1
    split_decoding: bool = True

    def setup(self):
        self.decoder = BartDecoder(self.config, self.dtype, None, self.remat, self.scan_residuals, self.scan_unroll,
                                   self.split_decoding)


class BartForCausalLM(_BartHead):
    """The BART decoder alone as a language model (HF ``BartForCausalLM``): ``logits [b, t, vocab]`` from a head
    tied to its own ``embed_tokens`` (no ``final_logits_bias``). The checkpoint holds the decoder's cross-attention
    weights; cross-attention runs only when ``encoder_hidden_states [b, s, d]`` are given.

    **The loss does not shift the labels** (HF 4.46.3): ``labels[:, i]`` is the target of ``logits[:, i]``, so pass
    the labels already shifted left (the next token at each position, -100 where there is none).

    Decoding protocol (``jaxmodels.generation``): ``init_cache(rows, max_length)`` (with ``encoder_hidden_states``
    also the cross keys/values, once); calls with ``cache=`` run the next tokens and return the updated cache.
    """

    def setup(self):
        c = self.config
        self.model = _BartDecoderWrapper(c, self.dtype, **self._knobs())
        if not c.tie_word_embeddings:
            self.lm_head = _Kernel((c.d_model, c.vocab_size), c.init_std)

    def init_cache(self, batch_size: int, max_length: int, encoder_hidden_states=None,
                   encoder_attention_mask=None) -> BartCache:
        return self.model.decoder.init_cache(batch_size, max_length, encoder_hidden_states, encoder_attention_mask,
                                             names="encoder_hidden_states")

    def __call__(self, input_ids=None, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                 inputs_embeds=None, labels=None, position_ids=None, *, cache: BartCache | None = None,
                 deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False) -> CausalLMOutputWithCrossAttentions:
        c = self.config
        check_array("labels", labels)
        decoder = self.model.decoder
        out = decoder(input_ids, attention_mask, position_ids, inputs_embeds, encoder_hidden_states,
                      encoder_attention_mask, cache=cache, deterministic=deterministic,
                      output_attentions=output_attentions, output_hidden_states=output_hidden_states, names="")
        h = out.last_hidden_state
        kernel = decoder.token_embedding().embedding.T if c.tie_word_embeddings else self.lm_head()
        loss = None
        if labels is not None:
            if tuple(labels.shape) != tuple(h.shape[:2]):
                raise ValueError(f"labels has shape {tuple(labels.shape)}; the inputs have {tuple(h.shape[:2])}")
            loss = projected_cross_entropy(h, kernel, jnp.zeros((c.vocab_size,), h.dtype), labels)
        return CausalLMOutputWithCrossAttentions(jnp.matmul(h, kernel.astype(self.dtype)), loss, out.cache,
                                                 out.hidden_states, out.attentions, out.cross_attentions)


ARCHITECTURES = {
    cls.__name__: cls
    for cls in (BartModel, BartForConditionalGeneration, BartForSequenceClassification, BartForQuestionAnswering,
                BartForCausalLM)
}
