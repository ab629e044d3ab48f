"""RemBERT (Chung et al., 2021) in Flax Linen, numerically equal to HF ``transformers`` ``modeling_rembert``.

Structure (param names follow the HF checkpoint so conversion is a rename; E_in ``input_embedding_size``, H
``hidden_size``, E_out ``output_embedding_size``):

    embeddings      word + token type + learned positions at width E_in -> LayerNorm -> dropout   [batch, length, E_in]
    encoder         embedding_hidden_mapping_in (E_in -> H), then L BERT post-LN layers          [batch, length, H]
                    (layers.post_ln_layer, params stacked [layers, ...], one lax.scan)
    pooler          tanh(Dense(h[:, 0]))                                                         [batch, H]
    predictions     Dense(H -> E_out) -> act -> LayerNorm -> Dense(E_out -> vocab) + own bias   [batch, length, vocab]
                    (HF ``cls.predictions``; never tied to the word table)

``hidden_states[0]`` is the state after ``embedding_hidden_mapping_in`` (width H), as HF returns it.

Decoders (``is_decoder``): causal self-attention, optionally a cross-attention block per layer
(``add_cross_attention``) over ``encoder_hidden_states [batch, source, H]``. Decoding protocol (shared with
``jaxmodels.generation``): ``module.apply(v, B, T, method="init_cache")`` gives an empty static
``layers.kv_cache.KVCache`` of T slots; a call with ``cache=`` treats ``input_ids [B, t]`` as the t tokens after
those in the cache (positions continue from ``cache.index``; ``attention_mask [B, t]`` covers the new tokens only)
and returns the updated cache in the output's ``cache`` field. With cross-attention, the first cached call that
is given ``encoder_hidden_states`` (and ``encoder_attention_mask``) stores the encoder's keys, values and mask in
the cache; later calls reuse them and do not read the encoder arguments again.

Differences from HF, where HF is wrong or silent: ``tie_word_embeddings=True`` is refused (HF ignores it), a
question-answering head needs ``num_labels == 2`` at construction (HF fails with an unpacking error), and
``encoder_hidden_states`` without cross-attention layers is refused (HF ignores them when ``is_decoder=False``).
"""

from __future__ import annotations

from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.input_checks import check_token_inputs
from jaxmodels.outputs import (
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from jaxmodels.rembert.config import RemBertConfig
from layers import axes
from layers.attention import padding_mask
from layers.dense import Dense
from layers.dropout import Dropout
from layers.embeddings import TokenEmbeddings
from layers.heads import MaskedLMHead, Pooler, flatten_choices, split_span_logits
from layers.kv_cache import KVCache, decoding_masks, init_kv_cache
from layers.losses import IGNORE_INDEX, cross_entropy, sequence_classification_loss, span_loss
from layers.post_ln_layer import PostLNLayer
from layers.stacked import check_scan_residuals, check_scan_unroll, init_stacked, resolve_residuals, scan_layers

Array = jax.Array


# ---------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------
@flax.struct.dataclass
class RemBertModelOutput:
    """HF ``BaseModelOutputWithPoolingAndCrossAttentions``; ``cache`` stands for ``past_key_values``."""

    last_hidden_state: Array
    pooler_output: Optional[Array] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    cross_attentions: Optional[tuple] = None
    cache: Optional[KVCache] = None


@flax.struct.dataclass
class RemBertCausalLMOutput:
    """HF ``CausalLMOutputWithCrossAttentions``; ``cache`` stands for ``past_key_values``."""

    logits: Array
    loss: Optional[Array] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    cross_attentions: Optional[tuple] = None
    cache: Optional[KVCache] = None


# ---------------------------------------------------------------------------------------------------------------
# Input validation: static shapes (and values when concrete), before anything is traced.
# ---------------------------------------------------------------------------------------------------------------
def validate_inputs(config: RemBertConfig, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                    encoder_hidden_states=None, encoder_attention_mask=None, *, rank: int = 2,
                    cache: Optional[KVCache] = None) -> None:
    """Raises ValueError naming the argument when inputs cannot be run by a model with ``config``.

    ``rank`` is 2 for ``[batch, length]`` inputs and 3 for multiple choice ``[batch, choices, length]``.
    """
    c = config
    shape = check_token_inputs(
        input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, rank=rank,
        embedding_field="input_embedding_size", embedding_size=c.input_embedding_size, vocab_size=c.vocab_size,
        type_vocab_size=c.type_vocab_size, max_position_embeddings=c.max_position_embeddings)
    if shape[-1] < 1:
        raise ValueError("input_ids must have length >= 1")
    if cache is not None:
        if not c.is_decoder:
            raise ValueError("cache given but config.is_decoder=False (only a causal decoder decodes)")
        if tuple(cache.mask.shape[:1]) != shape[:1] or shape[-1] > cache.mask.shape[1]:
            raise ValueError(f"cache holds {cache.mask.shape[1]} slots for batch {cache.mask.shape[0]}; input_ids "
                             f"has shape {shape}")
    if encoder_hidden_states is not None:
        if not c.add_cross_attention:
            raise ValueError("encoder_hidden_states given but config.add_cross_attention=False (no cross-attention "
                             "layers)")
        enc = tuple(encoder_hidden_states.shape)
        if len(enc) != 3 or enc[0] != shape[0] or enc[2] != c.hidden_size:
            raise ValueError(f"encoder_hidden_states must have shape [batch={shape[0]}, source_length, "
                             f"hidden_size={c.hidden_size}], got {enc}")
        if encoder_attention_mask is not None and tuple(encoder_attention_mask.shape) != enc[:2]:
            raise ValueError(f"encoder_attention_mask has shape {tuple(encoder_attention_mask.shape)}; expected "
                             f"[batch, source_length] = {enc[:2]}")
    elif encoder_attention_mask is not None:
        raise ValueError("encoder_attention_mask given without encoder_hidden_states")


def check_labels(name: str, labels, input_ids, inputs_embeds) -> None:
    """Per-token labels must be shaped like the ids."""
    source = input_ids if input_ids is not None else inputs_embeds
    if labels is None or source is None:  # a missing source is the backbone's error to name
        return
    shape = tuple(source.shape[:2])
    if tuple(labels.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(labels.shape)} but input_ids has shape {shape}; they must match")


def init_cache(config: RemBertConfig, batch_size: int, max_length: int, dtype: Any = jnp.float32) -> KVCache:
    """An empty decoding cache of ``max_length`` slots (causal decoders only)."""
    if not config.is_decoder:
        raise ValueError("init_cache needs config.is_decoder=True (causal self-attention)")
    if isinstance(max_length, int) and max_length > config.max_position_embeddings:
        raise ValueError(f"max_length={max_length} exceeds max_position_embeddings={config.max_position_embeddings}")
    return init_kv_cache(config.num_hidden_layers, batch_size, max_length, config.num_attention_heads,
                         config.head_dim, dtype)


def _init(config: RemBertConfig):
    """Every weight matrix and table is drawn from N(0, initializer_range^2), as HF's ``_init_weights``."""
    return nn.initializers.normal(config.initializer_range)


# ---------------------------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------------------------
class RemBertEncoder(nn.Module):
    """``embedding_hidden_mapping_in`` (E_in -> H) then the L layers, params ``layer`` stacked ``[L, ...]``.

    ``x [b, l, E_in]`` -> ``(h [b, l, H], hidden_states, attentions, cross_attentions, new layer caches)``; the
    tuples are None unless asked for, the caches None without ``cache``.
    """

    config: RemBertConfig
    dtype: Any = jnp.float32
    remat: bool = False  # recompute each layer in the backward pass: keep only each layer's input
    # What the backward keeps of each layer when remat is off (layers.stacked.SCAN_RESIDUALS).
    scan_residuals: str = "dots"
    scan_unroll: int = 1  # layers per scan iteration (1 traces the layer once)

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array], encoder_states: Optional[Array],
                 encoder_mask: Optional[Array], cache: Optional[tuple], cache_index: Optional[Array], *,
                 deterministic: bool, output_hidden_states: bool, output_attentions: bool):
        c = self.config
        h = Dense(c.hidden_size, (axes.EMBED, axes.MLP), dtype=self.dtype, kernel_init=_init(c),
                  name="embedding_hidden_mapping_in")(x)
        layer = PostLNLayer(c.num_attention_heads, c.intermediate_size, c.hidden_act, c.layer_norm_eps,
                            c.hidden_dropout_prob, c.attention_probs_dropout_prob, self.dtype,
                            init_std=c.initializer_range, parent=None)
        dummy = jnp.zeros((1, 1, c.hidden_size), self.dtype)
        # Cross-attention weights exist whenever the config has them (HF creates them), used or not.
        params = self.param("layer", lambda rng: init_stacked(
            layer, rng, (c.num_hidden_layers,), (axes.LAYERS,), dummy, None,
            encoder_states=dummy if c.add_cross_attention else None))
        use_dropout = not deterministic and (c.hidden_dropout_prob > 0 or c.attention_probs_dropout_prob > 0)
        dropout_key = self.make_rng("dropout") if use_dropout else None

        def body(p, h, *, key, cache, index):
            rngs = {} if key is None else {"dropout": key}
            y, weights, cross_weights, new_cache = layer.apply(
                {"params": p}, h, mask, encoder_states=encoder_states, encoder_mask=encoder_mask, cache=cache,
                cache_index=cache_index, deterministic=deterministic, rngs=rngs)
            per_layer = (y if output_hidden_states else None, weights if output_attentions else None,
                         cross_weights if output_attentions else None)
            return y, per_layer, new_cache

        stack = scan_layers(body, params, h, key=dropout_key, residuals=resolve_residuals(self.remat,
                            self.scan_residuals), unroll=self.scan_unroll, cache=cache)
        hidden = (h,) + tuple(out[0] for out in stack.outputs) if output_hidden_states else None
        weights = tuple(out[1] for out in stack.outputs) if output_attentions else None
        cross = None
        if output_attentions and stack.outputs and stack.outputs[0][2] is not None:
            cross = tuple(out[2] for out in stack.outputs)
        return stack.carry, hidden, weights, cross, stack.cache


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------
class RemBertModel(nn.Module):
    """Bare RemBERT: :class:`RemBertModelOutput` (``last_hidden_state [b, l, H]``, ``pooler_output [b, H]`` when
    pooling, ``hidden_states`` L + 1 entries, ``attentions`` / ``cross_attentions`` L entries ``[b, heads, l, kv]``).

    ``remat`` / ``scan_residuals`` / ``scan_unroll``: what the backward keeps of each layer and how many layers a
    scan step unrolls (``layers.stacked``). ``cache``: see the module docstring.
    """

    config: RemBertConfig
    dtype: Any = jnp.float32
    add_pooling_layer: bool = True
    remat: bool = False
    scan_residuals: str = "dots"
    scan_unroll: int = 1

    def init_cache(self, batch_size: int, max_length: int) -> KVCache:
        """An empty decoding cache of ``max_length`` slots (``is_decoder`` configs)."""
        return init_cache(self.config, batch_size, max_length, self.dtype)

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, *,
                 cache: Optional[KVCache] = None, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False) -> RemBertModelOutput:
        c = self.config
        check_scan_residuals(self.scan_residuals)
        check_scan_unroll(self.scan_unroll)
        validate_inputs(c, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        encoder_hidden_states, encoder_attention_mask, cache=cache)
        batch, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        if cache is not None and position_ids is None:
            position_ids = (cache.index + jnp.arange(length, dtype=jnp.int32))[None, :]
        x = TokenEmbeddings(c.vocab_size, c.input_embedding_size, c.max_position_embeddings, c.type_vocab_size,
                            c.layer_norm_eps, c.hidden_dropout_prob, pad_token_id=c.pad_token_id, dtype=self.dtype,
                            init_std=c.initializer_range, name="embeddings")(
            input_ids, token_type_ids, position_ids, inputs_embeds, deterministic=deterministic)

        cross_mask = None
        if encoder_hidden_states is not None:
            cross_mask = (jnp.ones(encoder_hidden_states.shape[:2], bool) if encoder_attention_mask is None
                          else encoder_attention_mask != 0)
        layer_caches = slots = None
        if cache is None:
            mask = None if attention_mask is None else padding_mask(attention_mask)
            if c.is_decoder:
                causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
                mask = causal if mask is None else mask & causal
        else:
            new_tokens = jnp.ones((batch, length), bool) if attention_mask is None else attention_mask != 0
            mask, slots = decoding_masks(cache.mask, cache.index, new_tokens)
            layer_caches = (cache.key, cache.value, cache.cross_key, cache.cross_value)
            if cache.cross_mask is not None:  # stored encoder keys and their mask win over the arguments
                cross_mask = cache.cross_mask
        h, hidden, weights, cross_weights, new_layer_caches = RemBertEncoder(
            c, self.dtype, self.remat, self.scan_residuals, self.scan_unroll, name="encoder")(
            x, mask, encoder_hidden_states, None if cross_mask is None else cross_mask[:, None, None, :],
            layer_caches, None if cache is None else cache.index, deterministic=deterministic,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions)
        new_cache = None
        if cache is not None:
            key, value, cross_key, cross_value = new_layer_caches
            new_cache = KVCache(key=key, value=value, mask=slots, index=cache.index + length, cross_key=cross_key,
                                cross_value=cross_value, cross_mask=cross_mask if cross_key is not None else None)
        pooled = (Pooler(c.hidden_size, dtype=self.dtype, init_std=c.initializer_range, name="pooler")(h)
                  if self.add_pooling_layer else None)
        return RemBertModelOutput(h, pooled, hidden, weights, cross_weights, new_cache)


# ---------------------------------------------------------------------------------------------------------------
# Heads. Each takes HF's arguments (labels etc.) plus ``deterministic``; a ``loss`` is returned when labels are given.
# ---------------------------------------------------------------------------------------------------------------
class _RemBertHead(nn.Module):
    """Fields every head passes to its ``RemBertModel`` (see there)."""

    config: RemBertConfig
    dtype: Any = jnp.float32
    remat: bool = False
    scan_residuals: str = "dots"
    scan_unroll: int = 1

    def _backbone(self, add_pooling_layer: bool) -> RemBertModel:
        return RemBertModel(self.config, self.dtype, add_pooling_layer, self.remat, self.scan_residuals,
                            self.scan_unroll, name="rembert")

    def _lm_head(self) -> MaskedLMHead:
        """HF ``cls.predictions``: H -> E_out -> act -> LayerNorm -> vocab with its own decoder bias."""
        c = self.config
        return MaskedLMHead(c.output_embedding_size, c.vocab_size, c.hidden_act, c.layer_norm_eps, self.dtype,
                            init_std=c.initializer_range, name="predictions")

    def _classifier(self, features: int, x: Array, deterministic: bool) -> Array:
        """dropout(classifier_dropout_prob) -> ``classifier`` Dense. ``[..., H] -> [..., features]``."""
        x = Dropout(self.config.classifier_dropout_prob)(x, deterministic=deterministic)
        return Dense(features, (axes.EMBED, axes.VOCAB), dtype=self.dtype, kernel_init=_init(self.config),
                     name="classifier")(x)


class RemBertForMaskedLM(_RemBertHead):
    """Masked LM (untied head). ``logits [b, l, vocab]``; labels -100 are ignored. The loss is computed from the
    labelled positions only (``layers.vocab_loss``), so a step that reads only ``loss`` never forms the logits."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, labels=None, *,
                 deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False) -> MaskedLMOutput:
        check_labels("labels", labels, input_ids, inputs_embeds)
        out = self._backbone(False)(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                    encoder_hidden_states, encoder_attention_mask, deterministic=deterministic,
                                    output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        logits, loss = self._lm_head()(out.last_hidden_state, None, labels)
        return MaskedLMOutput(logits, loss, out.hidden_states, out.attentions)


class RemBertForCausalLM(_RemBertHead):
    """Next-token LM (untied head). ``logits [b, l, vocab]``; the loss compares position t with ``labels[:, t + 1]``
    (-100 ignored). Causal only with ``config.is_decoder`` (as HF). With ``cache=`` (from ``init_cache``) the inputs
    are the next tokens and the output carries the updated cache (module docstring)."""

    def init_cache(self, batch_size: int, max_length: int) -> KVCache:
        """An empty decoding cache of ``max_length`` slots (``is_decoder`` configs)."""
        return init_cache(self.config, batch_size, max_length, self.dtype)

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, encoder_hidden_states=None, encoder_attention_mask=None, labels=None, *,
                 cache: Optional[KVCache] = None, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False) -> RemBertCausalLMOutput:
        check_labels("labels", labels, input_ids, inputs_embeds)
        out = self._backbone(False)(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                    encoder_hidden_states, encoder_attention_mask, cache=cache,
                                    deterministic=deterministic, output_attentions=output_attentions,
                                    output_hidden_states=output_hidden_states)
        shifted = None
        if labels is not None:
            # Position t predicts labels[t + 1]; the last position predicts nothing.
            shifted = jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORE_INDEX)], axis=1)
        logits, loss = self._lm_head()(out.last_hidden_state, None, shifted)
        return RemBertCausalLMOutput(logits, loss, out.hidden_states, out.attentions, out.cross_attentions, out.cache)


class RemBertForSequenceClassification(_RemBertHead):
    """``logits [b, num_labels]`` from the pooled output; regression when ``num_labels == 1`` (MSE), single-label
    cross-entropy for integer labels, multi-label BCE for float labels (or as ``config.problem_type`` says)."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, *, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False) -> SequenceClassifierOutput:
        c = self.config
        out = self._backbone(True)(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                   deterministic=deterministic, output_attentions=output_attentions,
                                   output_hidden_states=output_hidden_states)
        logits = self._classifier(c.num_labels, out.pooler_output, deterministic)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(logits, labels, num_labels=c.num_labels, problem_type=c.problem_type)
        return SequenceClassifierOutput(logits, loss, out.hidden_states, out.attentions)


class RemBertForMultipleChoice(_RemBertHead):
    """Inputs ``[b, num_choices, l]``; each choice is encoded separately; ``logits [b, num_choices]``."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, *, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False) -> MultipleChoiceModelOutput:
        flat_positions = position_ids is not None and position_ids.ndim == 3
        validate_inputs(self.config, input_ids, attention_mask, token_type_ids,
                        position_ids if flat_positions else None, inputs_embeds, rank=3)
        num_choices = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        out = self._backbone(True)(
            flatten_choices(input_ids), flatten_choices(attention_mask), flatten_choices(token_type_ids),
            flatten_choices(position_ids) if flat_positions else position_ids, flatten_choices(inputs_embeds),
            deterministic=deterministic, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states)
        logits = self._classifier(1, out.pooler_output, deterministic).reshape(-1, num_choices)
        loss = None if labels is None else cross_entropy(logits, labels)
        return MultipleChoiceModelOutput(logits, loss, out.hidden_states, out.attentions)


class RemBertForTokenClassification(_RemBertHead):
    """Per-token ``logits [b, l, num_labels]``; labels -100 are ignored."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, *, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False) -> TokenClassifierOutput:
        c = self.config
        check_labels("labels", labels, input_ids, inputs_embeds)
        out = self._backbone(False)(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                    deterministic=deterministic, output_attentions=output_attentions,
                                    output_hidden_states=output_hidden_states)
        logits = self._classifier(c.num_labels, out.last_hidden_state, deterministic)
        loss = None if labels is None else cross_entropy(logits.reshape(-1, c.num_labels), labels.reshape(-1))
        return TokenClassifierOutput(logits, loss, out.hidden_states, out.attentions)


class RemBertForQuestionAnswering(_RemBertHead):
    """Span QA: ``start_logits`` / ``end_logits [b, l]`` from ``qa_outputs`` (no dropout); positions outside the
    sequence are ignored by the loss. Needs ``config.num_labels == 2`` (the two logits per token)."""

    def __post_init__(self):
        if self.config.num_labels != 2:
            raise ValueError(f"RemBertConfig.num_labels={self.config.num_labels}: RemBertForQuestionAnswering needs "
                             "num_labels=2 (one start and one end logit per token)")
        super().__post_init__()

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, start_positions=None, end_positions=None, *, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False) -> QuestionAnsweringModelOutput:
        out = self._backbone(False)(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                    deterministic=deterministic, output_attentions=output_attentions,
                                    output_hidden_states=output_hidden_states)
        logits = Dense(2, (axes.EMBED, axes.VOCAB), dtype=self.dtype, kernel_init=_init(self.config),
                       name="qa_outputs")(out.last_hidden_state)
        start, end = split_span_logits(logits)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = span_loss(start, end, start_positions, end_positions)
        return QuestionAnsweringModelOutput(start, end, loss, out.hidden_states, out.attentions)


ARCHITECTURES = {
    cls.__name__: cls
    for cls in (
        RemBertModel, RemBertForMaskedLM, RemBertForCausalLM, RemBertForSequenceClassification,
        RemBertForMultipleChoice, RemBertForTokenClassification, RemBertForQuestionAnswering,
    )
}
