"""Longformer in Flax Linen, numerically equal to HF ``transformers`` ``modeling_longformer``.

Structure (param names follow the HF checkpoint, so conversion is a rename):

    embeddings   word + position + token type -> LayerNorm -> dropout                            [batch, L, H]
    encoder      num_hidden_layers post-LN layers: banded self-attention with global tokens
                 (``layers.banded``), then the feed-forward block; params stacked [layers, ...]   [batch, L, H]
    pooler       tanh(Dense(h[:, 0]))  (LongformerModel, LongformerForMultipleChoice)             [batch, H]

Masks, as HF: ``attention_mask`` (0 padding) and ``global_attention_mask`` (1 global) merge into one mask
``attention_mask * (global_attention_mask + 1)``: 0 padding (padding wins over a global flag), 1 local, 2 global;
without a global mask an ``attention_mask`` holding 2s marks global tokens itself (allenai's convention).
Positions count the non-padding ids (``pad_token_id + 1, ...``; padding ids sit at ``pad_token_id``).

Length: inputs are right-padded to a multiple of the least common multiple of the layers' windows (HF pads to the
largest window, and fails when another window does not divide it) and every output is sliced back, except
``global_attentions``, which HF returns at the padded length. Sequence-parallel modules pad further so that every
shard holds whole blocks of every layer's one-sided window; outputs of real tokens are the same either way.

Global tokens use ``G`` static slots (``layers.banded.GlobalTokens``). ``G`` is ``max_global_tokens`` when set;
else, when the masks are concrete (outside ``jit``), the batch's exact maximum (so ``attentions`` and
``global_attentions`` have HF's shapes); a head whose automatic global mask has a known bound (the classification
head's one ``<s>``) uses it under ``jit``. A batch with more global tokens than slots is a ``ValueError`` naming
``max_global_tokens`` (compiled in under ``layers.checks.checked``).

Per-layer windows: consecutive layers with the same window run as one ``scan_layers`` stack over their rows of the
stacked params (one stack for the released, uniform checkpoints).

Sequence parallelism: given ``sequence_sharding`` (``layers.sequence_parallel.SequenceSharding``), the banded
attention runs under ``shard_map`` along its mesh axis (``sharded_banded_attention``); the projections, the
feed-forward blocks and the norms are position-wise and follow the activations' sharding.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.input_checks import check_range, check_token_shapes, is_concrete
from jaxmodels.longformer.config import LongformerConfig
from layers import axes
from layers.activations import get_activation
from layers.banded import GLOBAL, LOCAL, PAD, banded_attention, global_tokens
from layers.checks import check_values
from layers.dense import Dense
from layers.dropout import Dropout
from layers.embeddings import Embed
from layers.heads import MaskedLMHead, Pooler, flatten_choices, split_span_logits
from layers.losses import cross_entropy, sequence_classification_loss, span_loss
from layers.norms import LayerNorm
from layers.sequence_parallel import (
    SequenceSharding,
    call_sharded,
    sharded_banded_attention,
    sharded_take_positions,
)
from layers.stacked import check_scan_residuals, check_scan_unroll, init_stacked, resolve_residuals, scan_layers

Array = jax.Array


# ---------------------------------------------------------------------------------------------------------------
# Outputs: HF's fields, with the global attentions.
# ---------------------------------------------------------------------------------------------------------------
@flax.struct.dataclass
class LongformerBaseModelOutputWithPooling:
    """``attentions[l] [batch, heads, length, G + attention_window[l] + 1]``: weights to the G global slots, then
    the band (offsets ``-w .. w``); ``global_attentions[l] [batch, heads, padded length, G]``: each slot's weights
    over the keys (None without global tokens)."""

    last_hidden_state: Array
    pooler_output: Optional[Array] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    global_attentions: Optional[tuple] = None


@flax.struct.dataclass
class LongformerMaskedLMOutput:
    logits: Array
    loss: Optional[Array] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    global_attentions: Optional[tuple] = None


LongformerSequenceClassifierOutput = LongformerMaskedLMOutput
LongformerTokenClassifierOutput = LongformerMaskedLMOutput
LongformerMultipleChoiceModelOutput = LongformerMaskedLMOutput


@flax.struct.dataclass
class LongformerQuestionAnsweringModelOutput:
    start_logits: Array
    end_logits: Array
    loss: Optional[Array] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    global_attentions: Optional[tuple] = None


# ---------------------------------------------------------------------------------------------------------------
# Inputs: checks (before tracing), the merged mask, positions, automatic global masks.
# ---------------------------------------------------------------------------------------------------------------
def validate_inputs(config: LongformerConfig, input_ids, attention_mask, global_attention_mask, token_type_ids,
                    position_ids, inputs_embeds, *, rank: int = 2) -> tuple[int, ...]:
    """The inputs' ``[batch, (choices,) length]`` shape; ValueError naming the argument when ``config`` cannot run
    them."""
    shape = check_token_shapes(input_ids, inputs_embeds, width=config.hidden_size, rank=rank,
                               attention_mask=attention_mask, global_attention_mask=global_attention_mask,
                               token_type_ids=token_type_ids, position_ids=position_ids)
    length = shape[-1]
    if length > config.max_length:
        raise ValueError(f"sequence length {length} exceeds max_position_embeddings={config.max_position_embeddings} "
                         f"- pad_token_id - 1 = {config.max_length} (positions start at pad_token_id + 1)")
    check_range("input_ids", input_ids, config.vocab_size, f"ids must be in [0, vocab_size={config.vocab_size})")
    check_range("token_type_ids", token_type_ids, config.type_vocab_size,
                f"token types must be in [0, type_vocab_size={config.type_vocab_size})")
    check_range("position_ids", position_ids, config.max_position_embeddings,
                f"positions must be in [0, max_position_embeddings={config.max_position_embeddings})")
    return shape


def merged_key_mode(shape: tuple[int, int], attention_mask, global_attention_mask) -> Array:
    """HF's merged mask ``attention_mask * (global_attention_mask + 1)`` as key modes ``[batch, length]`` int32:
    below 1 padding (0), 1 local (1), above 1 global (2), as HF's signs of ``(1 - mask) * finfo.min`` say."""
    mask = jnp.ones(shape, jnp.int32) if attention_mask is None else jnp.asarray(attention_mask)
    if global_attention_mask is not None:
        mask = mask * (jnp.asarray(global_attention_mask) + 1)
    return jnp.where(mask > 1, GLOBAL, jnp.where(mask == 1, LOCAL, PAD)).astype(jnp.int32)


def position_ids_from_input_ids(input_ids: Array, pad_token_id: int) -> Array:
    """``[batch, length]`` -> positions counting the non-padding ids from ``pad_token_id + 1``; padding ids get
    ``pad_token_id`` (left padding included)."""
    real = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(real, axis=1) * real + pad_token_id


def first_separator(input_ids: Array, sep_token_id: int) -> Array:
    """``[batch, length]`` -> ``[batch]``: each row's first ``sep_token_id``. Every row must hold one (checked on
    concrete ids, and under ``layers.checks.checked``)."""
    is_sep = input_ids == sep_token_id
    check_values("input_ids", jnp.any(is_sep, axis=1), lambda has: has,
                 f"every row needs a separator (sep_token_id={sep_token_id}) to place the automatic global "
                 "attention, as in <s> question </s></s> context </s>; pass global_attention_mask otherwise; "
                 "found none in the row")
    return jnp.argmax(is_sep, axis=1)


def question_global_mask(input_ids: Array, sep_token_id: int) -> Array:
    """QA's automatic global mask: every position before the row's first separator (``<s>`` and the question).

    Per row, whatever its number of separators: HF finds the first one by reshaping all separators of the batch
    to three per row, which misaligns rows with other counts (it only checks the batch total)."""
    end = first_separator(input_ids, sep_token_id)
    return (jnp.arange(input_ids.shape[1])[None, :] < end[:, None]).astype(jnp.int32)


def choice_global_mask(input_ids: Array, sep_token_id: int) -> Array:
    """Multiple choice's automatic global mask, per choice row: every position after the first ``</s></s>`` (the
    choice, its final ``</s>`` and any padding after it, which the attention mask then removes), as HF."""
    end = first_separator(input_ids, sep_token_id)
    return (jnp.arange(input_ids.shape[1])[None, :] > end[:, None] + 1).astype(jnp.int32)


def resolve_global_slots(key_mode: Array, max_global_tokens: Optional[int], bound: Optional[int]) -> int:
    """The static number of global slots for ``key_mode`` (see the module docstring); raises ValueError naming
    ``max_global_tokens`` when a row has more global tokens than that, or when it cannot be known."""
    if max_global_tokens is not None and (isinstance(max_global_tokens, bool) or
                                          not isinstance(max_global_tokens, int) or max_global_tokens < 0):
        raise ValueError(f"max_global_tokens={max_global_tokens!r}: expected None or a non-negative int (global "
                         "tokens per row)")
    if is_concrete(key_mode):
        most = int(np.max(np.sum(np.asarray(key_mode) == GLOBAL, axis=1)))
        if max_global_tokens is None:
            return most
        slots = max_global_tokens
    else:
        slots = max_global_tokens if max_global_tokens is not None else bound
        if slots is None:
            raise ValueError("max_global_tokens: the global attention mask is traced (under jit), so the number of "
                             "global tokens per row is unknown; set max_global_tokens on the module (a static "
                             "upper bound), or call with concrete masks")
    check_values("global_attention_mask", jnp.sum(key_mode == GLOBAL, axis=1), lambda n: n <= slots,
                 f"at most max_global_tokens={slots} global tokens per row (raise max_global_tokens); a row has")
    return slots


# ---------------------------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------------------------
def _init(config: LongformerConfig):
    """Every weight matrix and table is drawn from N(0, initializer_range^2), as HF's ``_init_weights``."""
    return nn.initializers.normal(config.initializer_range)


class LongformerEmbeddings(nn.Module):
    """word + position + token type -> LayerNorm -> dropout. ``[batch, length]`` -> ``[batch, length, H]``.

    Both the word and the position table have ``padding_idx=pad_token_id`` in HF: their padding rows get no
    gradient (``layers.embeddings.Embed``'s ``padding_idx``)."""

    config: LongformerConfig
    dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.word_embeddings = Embed(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id, dtype=self.dtype,
                                     embedding_init=_init(c))
        self.position_embeddings = Embed(c.max_position_embeddings, c.hidden_size, padding_idx=c.pad_token_id,
                                         dtype=self.dtype, axes=(axes.POSITIONS, axes.EMBED), embedding_init=_init(c))
        self.token_type_embeddings = Embed(c.type_vocab_size, c.hidden_size, dtype=self.dtype,
                                           embedding_init=_init(c))
        self.LayerNorm = LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype)
        self.dropout = Dropout(c.hidden_dropout_prob)

    def __call__(self, inputs_embeds: Array, position_ids: Array, token_type_ids: Array, deterministic: bool = True):
        x = inputs_embeds + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x), deterministic=deterministic)


def _heads(x: Array, num_heads: int) -> Array:
    return x.reshape(x.shape[:-1] + (num_heads, x.shape[-1] // num_heads))


class LongformerSelfAttention(nn.Module):
    """The six projections (``query``/``key``/``value`` and their ``*_global`` twins) and the banded attention.

    ``x [batch, L, H]``, ``key_mode [batch, L]``, ``slots`` (or None) -> ``(context [batch, L, H], probs,
    global_probs)`` (HF's layouts, or None unless ``output_attentions``)."""

    config: LongformerConfig
    one_sided_window: int
    dtype: Any = jnp.float32
    sequence_sharding: SequenceSharding | None = None

    @nn.compact
    def __call__(self, x: Array, key_mode: Array, slots, deterministic: bool = True, output_attentions: bool = False):
        c = self.config
        project = lambda name, rows: _heads(  # noqa: E731
            Dense(c.hidden_size, (axes.EMBED, axes.HEADS), dtype=self.dtype, kernel_init=_init(c), name=name)(rows),
            c.num_attention_heads)
        query, key, value = project("query", x), project("key", x), project("value", x)
        batch, length = x.shape[:2]
        sharding = self.sequence_sharding
        sharded = sharding is not None and sharding.shards > 1 and not self.is_initializing()
        glob = {}
        if slots is not None and slots.index.shape[1]:
            rows = (call_sharded(sharded_take_positions, sharding, batch, length, x, slots.index) if sharded
                    else jnp.take_along_axis(x, slots.index[:, :, None], axis=1))
            glob = dict(slots=slots, global_query=project("query_global", rows),
                        global_key=project("key_global", x), global_value=project("value_global", x))
        elif self.is_initializing():
            for name in ("query_global", "key_global", "value_global"):  # the params exist with or without globals
                project(name, x)
        dropout_rng = None
        if not deterministic and c.attention_probs_dropout_prob > 0:
            dropout_rng = self.make_rng("dropout")
        options = dict(one_sided_window=self.one_sided_window, dropout_rate=c.attention_probs_dropout_prob,
                       dropout_rng=dropout_rng, deterministic=deterministic, return_probs=output_attentions,
                       dtype=self.dtype, **glob)
        if sharded:
            out = call_sharded(sharded_banded_attention, sharding, batch, length, query, key, value, key_mode, **options)
        else:
            out = banded_attention(query, key, value, key_mode, **options)
        return out.out.reshape(batch, length, c.hidden_size), out.probs, out.global_probs


class _Output(nn.Module):
    """``LayerNorm(residual + dropout(dense(x)))``: HF's ``*SelfOutput`` / ``*Output``. ``[.., in] -> [.., H]``."""

    config: LongformerConfig
    in_axis: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, residual: Array, deterministic: bool = True) -> Array:
        c = self.config
        x = Dense(c.hidden_size, (self.in_axis, axes.EMBED), dtype=self.dtype, kernel_init=_init(c), name="dense")(x)
        x = Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)
        return LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="LayerNorm")(x + residual)


class _Intermediate(nn.Module):
    config: LongformerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        return get_activation(c.hidden_act)(
            Dense(c.intermediate_size, (axes.EMBED, axes.MLP), dtype=self.dtype, kernel_init=_init(c),
                  name="dense")(x))


class _LayerPart(nn.Module):
    """The fields of a layer and of its attention block: the config, the layer's one-sided window, the compute
    dtype, the sequence sharding."""

    config: LongformerConfig
    one_sided_window: int
    dtype: Any = jnp.float32
    sequence_sharding: SequenceSharding | None = None


class _Attention(_LayerPart):
    """HF's ``LongformerAttention``: ``self`` (the banded attention), then ``output``."""

    @nn.compact
    def __call__(self, x, key_mode, slots, deterministic: bool = True, output_attentions: bool = False):
        context, probs, global_probs = LongformerSelfAttention(
            self.config, self.one_sided_window, self.dtype, self.sequence_sharding, name="self")(
            x, key_mode, slots, deterministic, output_attentions)
        return _Output(self.config, axes.HEADS, self.dtype, name="output")(context, x, deterministic), probs, \
            global_probs


class LongformerLayer(_LayerPart):
    """One post-LN layer: attention block, then ``LayerNorm(a + output(act(intermediate(a))))``.
    ``[batch, L, H] -> ([batch, L, H], probs, global_probs)``."""

    @nn.compact
    def __call__(self, x, key_mode, slots, deterministic: bool = True, output_attentions: bool = False):
        a, probs, global_probs = _Attention(self.config, self.one_sided_window, self.dtype, self.sequence_sharding,
                                            name="attention")(x, key_mode, slots, deterministic, output_attentions)
        h = _Intermediate(self.config, self.dtype, name="intermediate")(a)
        y = _Output(self.config, axes.MLP, self.dtype, name="output")(h, a, deterministic)
        y = nn.with_logical_constraint(y, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
        return y, probs, global_probs


class LongformerEncoder(nn.Module):
    """The layers, params ``layer`` stacked ``[num_hidden_layers, ...]``. ``[batch, L, H] -> [batch, L, H]``."""

    config: LongformerConfig
    dtype: Any = jnp.float32
    remat: bool = False
    scan_residuals: str = "dots"
    scan_unroll: int = 1
    sequence_sharding: SequenceSharding | None = None

    @nn.compact
    def __call__(self, x, key_mode, slots, *, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False):
        """Returns ``(last state, per-layer states or None, per-layer (probs, global_probs) or None)``."""
        c = self.config
        windows = c.windows
        block = windows[0] // 2  # init's dummy input: one block of the first layer's window
        params = self.param("layer", lambda rng: init_stacked(
            LongformerLayer(c, block, self.dtype, parent=None), rng, (c.num_hidden_layers,), (axes.LAYERS,),
            jnp.zeros((1, block, c.hidden_size), self.dtype), jnp.ones((1, block), jnp.int32), None))
        use_dropout = not deterministic and (c.hidden_dropout_prob > 0 or c.attention_probs_dropout_prob > 0)
        key = self.make_rng("dropout") if use_dropout else None
        residuals = resolve_residuals(self.remat, self.scan_residuals)
        h, outputs, first = x, [], 0
        for window, run in itertools.groupby(windows):
            count = len(list(run))
            layer = LongformerLayer(c, window // 2, self.dtype, self.sequence_sharding, parent=None)

            def body(layer_params, h, *, key, cache, index, layer=layer):
                rngs = {} if key is None else {"dropout": key}
                h, probs, global_probs = layer.apply({"params": layer_params}, h, key_mode, slots, deterministic,
                                                     output_attentions, rngs=rngs)
                attentions = (probs, global_probs) if output_attentions else None
                return h, (h if output_hidden_states else None, attentions), None

            rows = params if count == c.num_hidden_layers else jax.tree.map(lambda p: p[first:first + count], params)
            stack = scan_layers(body, rows, h, key=key, residuals=residuals, unroll=self.scan_unroll,
                                first_layer=first)
            h, first = stack.carry, first + count
            outputs.extend(stack.outputs)
        hidden = tuple(state for state, _ in outputs) if output_hidden_states else None
        attentions = tuple(a for _, a in outputs) if output_attentions else None
        return h, hidden, attentions


class LongformerModel(nn.Module):
    """Bare Longformer: :class:`LongformerBaseModelOutputWithPooling` (``last_hidden_state [batch, L, H]``,
    ``pooler_output [batch, H]``; ``hidden_states``: embeddings then every layer, ``[batch, L, H]`` each).

    ``max_global_tokens``: static global slots per row (None: from the masks, see the module docstring).
    ``remat`` / ``scan_residuals`` / ``scan_unroll``: ``layers.stacked``'s knobs. ``sequence_sharding``: split the
    length over that mesh axis (module docstring).
    """

    config: LongformerConfig
    dtype: Any = jnp.float32
    add_pooling_layer: bool = True
    max_global_tokens: Optional[int] = None
    remat: bool = False
    scan_residuals: str = "dots"
    scan_unroll: int = 1
    sequence_sharding: SequenceSharding | None = None

    def setup(self):
        c = self.config
        self.embeddings = LongformerEmbeddings(c, self.dtype)
        self.encoder = LongformerEncoder(c, self.dtype, self.remat, self.scan_residuals, self.scan_unroll,
                                         self.sequence_sharding)
        if self.add_pooling_layer:
            self.pooler = Pooler(c.hidden_size, dtype=self.dtype, init_std=c.initializer_range)

    def word_embedding_table(self) -> Array:
        """``[vocab_size, hidden_size]``: the table the masked-LM decoder is tied to."""
        return self.embeddings.word_embeddings.embedding

    def _pad_multiple(self) -> int:
        c = self.config
        sharding = self.sequence_sharding
        if sharding is None or sharding.shards == 1 or self.is_initializing():
            return c.pad_multiple
        # Every shard holds whole blocks of every layer's one-sided window.
        return math.lcm(c.pad_multiple, sharding.shards * math.lcm(*(w // 2 for w in c.windows)))

    def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None, token_type_ids=None,
                 position_ids=None, inputs_embeds=None, *, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False,
                 global_bound: Optional[int] = None):
        """HF's arguments (all ``[batch, length]``, ``inputs_embeds [batch, length, H]``) plus ``global_bound``: a
        static bound on global tokens per row the caller knows (an automatic mask), used under ``jit`` when
        ``max_global_tokens`` is unset."""
        c = self.config
        check_scan_residuals(self.scan_residuals)
        check_scan_unroll(self.scan_unroll)
        shape = validate_inputs(c, input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids,
                                inputs_embeds)
        batch, length = shape
        key_mode = merged_key_mode(shape, attention_mask, global_attention_mask)
        # Without a global mask only an attention mask holding 2s makes globals: none under jit (a 2 there fails
        # the slot-count check under layers.checks.checked, naming max_global_tokens). The params do not depend on
        # the slots, so init has none.
        num_slots = 0 if self.is_initializing() else resolve_global_slots(
            key_mode, self.max_global_tokens, 0 if global_attention_mask is None else global_bound)
        pad = -length % self._pad_multiple()
        pad_row = lambda x, value: jnp.pad(x, ((0, 0), (0, pad)), constant_values=value)  # noqa: E731
        key_mode = pad_row(key_mode, PAD)
        token_type_ids = pad_row(jnp.zeros(shape, jnp.int32) if token_type_ids is None else token_type_ids, 0)
        if position_ids is not None:
            position_ids = pad_row(position_ids, c.pad_token_id)
        if input_ids is not None:
            input_ids = pad_row(input_ids, c.pad_token_id)
            inputs_embeds = self.embeddings.word_embeddings(input_ids)
            if position_ids is None:
                position_ids = position_ids_from_input_ids(input_ids, c.pad_token_id)
        else:
            # Rows past the input only need finite values: they are keys nobody attends to, sliced off at the end.
            filler = self.embeddings.word_embeddings(jnp.full((batch, pad), c.pad_token_id, jnp.int32))
            inputs_embeds = jnp.concatenate([inputs_embeds.astype(filler.dtype), filler], axis=1)
            if position_ids is None:  # HF: sequential from pad_token_id + 1 (it cannot tell padding apart)
                steps = jnp.arange(length + pad, dtype=jnp.int32)
                position_ids = jnp.where(steps < length, steps + c.pad_token_id + 1, c.pad_token_id)[None, :]
        x = self.embeddings(inputs_embeds, position_ids, token_type_ids, deterministic)
        slots = global_tokens(key_mode, num_slots) if num_slots else None
        h, hidden, attentions = self.encoder(x, key_mode, slots, deterministic=deterministic,
                                             output_attentions=output_attentions,
                                             output_hidden_states=output_hidden_states)
        cut = lambda t: t[:, :length]  # noqa: E731
        global_attentions = None
        if output_attentions:
            if num_slots:
                global_attentions = tuple(global_probs for _, global_probs in attentions)
            attentions = tuple(probs[:, :, :length] for probs, _ in attentions)
        if output_hidden_states:
            hidden = tuple(cut(state) for state in (x,) + hidden)
        h = cut(h)
        pooled = self.pooler(h) if self.add_pooling_layer else None
        return LongformerBaseModelOutputWithPooling(h, pooled, hidden, attentions, global_attentions)


# ---------------------------------------------------------------------------------------------------------------
# Heads. HF's arguments plus ``deterministic``; a ``loss`` is returned when labels are given.
# ---------------------------------------------------------------------------------------------------------------
class _LongformerHead(nn.Module):
    """Fields every head passes to its ``LongformerModel`` (see there)."""

    config: LongformerConfig
    dtype: Any = jnp.float32
    max_global_tokens: Optional[int] = None
    remat: bool = False
    scan_residuals: str = "dots"
    scan_unroll: int = 1
    sequence_sharding: SequenceSharding | None = None

    def _backbone(self, add_pooling_layer: bool = False) -> LongformerModel:
        return LongformerModel(self.config, self.dtype, add_pooling_layer, self.max_global_tokens, self.remat,
                               self.scan_residuals, self.scan_unroll, self.sequence_sharding, name="longformer")

    def _dense(self, features: int, name: str) -> Dense:
        return Dense(features, (axes.EMBED, axes.VOCAB), dtype=self.dtype, kernel_init=_init(self.config), name=name)


class LongformerForMaskedLM(_LongformerHead):
    """Masked LM head tied to the word embeddings: ``logits [batch, L, vocab]``; labels -100 are ignored (the loss
    projects the labelled rows only, ``layers.vocab_loss``)."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None, token_type_ids=None,
                 position_ids=None, inputs_embeds=None, labels=None, *, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False):
        c = self.config
        longformer = self._backbone()
        out = longformer(input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids,
                         inputs_embeds, deterministic=deterministic, output_attentions=output_attentions,
                         output_hidden_states=output_hidden_states)
        # HF's LM head applies the exact GELU whatever hidden_act says.
        head = MaskedLMHead(c.hidden_size, c.vocab_size, "gelu", c.layer_norm_eps, self.dtype,
                            init_std=c.initializer_range, name="lm_head")
        logits, loss = head(out.last_hidden_state, longformer.word_embedding_table(), labels)
        return LongformerMaskedLMOutput(logits, loss, out.hidden_states, out.attentions, out.global_attentions)


class LongformerClassificationHead(nn.Module):
    """RoBERTa's head on ``<s>``: dropout -> dense -> tanh -> dropout -> out_proj. ``[batch, L, H] -> [batch,
    num_labels]``."""

    config: LongformerConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array, deterministic: bool = True) -> Array:
        c = self.config
        x = Dropout(c.hidden_dropout_prob)(h[:, 0], deterministic=deterministic)
        x = jnp.tanh(Dense(c.hidden_size, (axes.EMBED, axes.MLP), dtype=self.dtype, kernel_init=_init(c),
                           name="dense")(x))
        x = Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)
        return Dense(c.num_labels, (axes.EMBED, axes.VOCAB), dtype=self.dtype, kernel_init=_init(c),
                     name="out_proj")(x)


class LongformerForSequenceClassification(_LongformerHead):
    """``logits [batch, num_labels]`` from ``<s>``'s state (dense -> tanh -> out_proj, no pooler). Without a
    global mask, ``<s>`` (position 0) of every row is global. Losses as ``layers.losses``' HF rule."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None, token_type_ids=None,
                 position_ids=None, inputs_embeds=None, labels=None, *, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False):
        c = self.config
        bound = None
        if global_attention_mask is None:
            shape = validate_inputs(c, input_ids, attention_mask, None, token_type_ids, position_ids, inputs_embeds)
            # HF needs input_ids for this (it crashes on inputs_embeds alone); the shape is enough.
            global_attention_mask = jnp.zeros(shape, jnp.int32).at[:, 0].set(1)
            bound = 1
        out = self._backbone()(input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids,
                               inputs_embeds, deterministic=deterministic, output_attentions=output_attentions,
                               output_hidden_states=output_hidden_states, global_bound=bound)
        logits = LongformerClassificationHead(c, self.dtype, name="classifier")(out.last_hidden_state, deterministic)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(logits, labels, num_labels=c.num_labels, problem_type=c.problem_type)
        return LongformerSequenceClassifierOutput(logits, loss, out.hidden_states, out.attentions,
                                                  out.global_attentions)


class LongformerForTokenClassification(_LongformerHead):
    """Per-token ``logits [batch, L, num_labels]``; labels -100 are ignored. No automatic global mask."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None, token_type_ids=None,
                 position_ids=None, inputs_embeds=None, labels=None, *, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False):
        c = self.config
        out = self._backbone()(input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids,
                               inputs_embeds, deterministic=deterministic, output_attentions=output_attentions,
                               output_hidden_states=output_hidden_states)
        x = Dropout(c.hidden_dropout_prob)(out.last_hidden_state, deterministic=deterministic)
        logits = self._dense(c.num_labels, "classifier")(x)
        loss = None if labels is None else cross_entropy(logits.reshape(-1, c.num_labels), labels.reshape(-1))
        return LongformerTokenClassifierOutput(logits, loss, out.hidden_states, out.attentions, out.global_attentions)


class LongformerForQuestionAnswering(_LongformerHead):
    """Span QA: ``start_logits`` / ``end_logits [batch, L]``. Without a global mask (and with ``input_ids``), the
    tokens before each row's first separator (``<s>`` and the question) are global (:func:`question_global_mask`)."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None, token_type_ids=None,
                 position_ids=None, inputs_embeds=None, start_positions=None, end_positions=None, *,
                 deterministic: bool = True, output_attentions: bool = False, output_hidden_states: bool = False):
        c = self.config
        bound = None
        if global_attention_mask is None and input_ids is not None:
            validate_inputs(c, input_ids, attention_mask, None, token_type_ids, position_ids, inputs_embeds)
            global_attention_mask = question_global_mask(input_ids, c.sep_token_id)
            bound = _automatic_bound(self, input_ids)
        out = self._backbone()(input_ids, attention_mask, global_attention_mask, token_type_ids, position_ids,
                               inputs_embeds, deterministic=deterministic, output_attentions=output_attentions,
                               output_hidden_states=output_hidden_states, global_bound=bound)
        start, end = split_span_logits(self._dense(c.num_labels, "qa_outputs")(out.last_hidden_state))
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = span_loss(start, end, start_positions, end_positions)
        return LongformerQuestionAnsweringModelOutput(start, end, loss, out.hidden_states, out.attentions,
                                                      out.global_attentions)


def _automatic_bound(head: nn.Module, input_ids: Array) -> Optional[int]:
    """The static global-slot bound of an automatic (question / choice) mask made from traced ids with no
    ``max_global_tokens``: every position (always enough, so a jitted training step works), at the cost of global
    rows as wide as full attention; a warning says to set the field."""
    if is_concrete(input_ids) or getattr(head, "max_global_tokens", None) is not None:
        return None
    warnings.warn(f"{type(head).__name__} under jit without max_global_tokens: its automatic global mask gets one "
                  f"slot per position ({input_ids.shape[1]}), as costly as full attention; set max_global_tokens "
                  "to a bound on the global tokens per row", stacklevel=3)
    return int(input_ids.shape[1])


class LongformerForMultipleChoice(_LongformerHead):
    """Inputs ``[batch, choices, L]``, each choice encoded separately; ``logits [batch, choices]`` from the pooler.
    Without a global mask (and with ``input_ids``), each choice's tokens after its first ``</s></s>`` are global
    (:func:`choice_global_mask`)."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None, token_type_ids=None,
                 position_ids=None, inputs_embeds=None, labels=None, *, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False):
        c = self.config
        shape = validate_inputs(c, input_ids, attention_mask, global_attention_mask, token_type_ids,
                                position_ids if position_ids is None or position_ids.ndim == 3 else None,
                                inputs_embeds, rank=3)
        num_choices = shape[1]
        flat_ids, flat_global = flatten_choices(input_ids), flatten_choices(global_attention_mask)
        bound = None
        if global_attention_mask is None and input_ids is not None:
            flat_global = choice_global_mask(flat_ids, c.sep_token_id)
            bound = _automatic_bound(self, flat_ids)
        out = self._backbone(add_pooling_layer=True)(
            flat_ids, flatten_choices(attention_mask), flat_global,
            flatten_choices(token_type_ids),
            flatten_choices(position_ids) if position_ids is not None and position_ids.ndim == 3 else position_ids,
            flatten_choices(inputs_embeds), deterministic=deterministic, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, global_bound=bound)
        pooled = Dropout(c.hidden_dropout_prob)(out.pooler_output, deterministic=deterministic)
        logits = self._dense(1, "classifier")(pooled).reshape(-1, num_choices)
        loss = None if labels is None else cross_entropy(logits, labels)
        return LongformerMultipleChoiceModelOutput(logits, loss, out.hidden_states, out.attentions,
                                                   out.global_attentions)


ARCHITECTURES = {
    cls.__name__: cls
    for cls in (
        LongformerModel, LongformerForMaskedLM, LongformerForSequenceClassification,
        LongformerForTokenClassification, LongformerForQuestionAnswering, LongformerForMultipleChoice,
    )
}
