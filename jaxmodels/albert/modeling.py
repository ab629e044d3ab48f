"""ALBERT in Flax Linen, numerically equal to HF ``transformers`` ``modeling_albert``.

Structure (param names follow the HF checkpoint so conversion is a rename):

    embeddings      word/position/token-type at width E -> LayerNorm -> dropout          [batch, length, E]
    encoder         embedding_hidden_mapping_in (E -> H), then L post-LN layers            [batch, length, H]
    pooler          tanh(Dense(h[:, 0]))                                                   [batch, H]

Layer sharing: ALBERT has ``num_hidden_groups`` groups of ``inner_group_num`` layers; layer l runs group
``int(l / (L / G))``. The G x I layer params are stacked into one tree ``[G, I, ...]`` and the L layers run as a
``lax.scan`` that indexes its group, so the layer is traced once whatever L, G and I are.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmodels.albert.config import AlbertConfig
from jaxmodels.input_checks import check_token_inputs
from jaxmodels.outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from layers import axes
from layers.activations import get_activation
from layers.attention import gather_rows, padding_mask, self_attention_block
from layers.checks import check_range
from layers.dense import Dense
from layers.dropout import Dropout
from layers.embeddings import TokenEmbeddings
from layers.heads import MaskedLMHead, Pooler, flatten_choices, split_span_logits
from layers.losses import IGNORE_INDEX, cross_entropy, sequence_classification_loss, span_loss
from layers.norms import LayerNorm
from layers import stacked as layers_stack
from layers.stacked import (
    check_scan_residuals,
    checkpoint_layer,
    index_stacked,
    init_stacked,
    resolve_residuals,
)

Array = jax.Array


# ---------------------------------------------------------------------------------------------------------------
# Input validation: runs in Python on static shapes (and on values when they are concrete), before any tracing,
# so a bad batch fails with the argument named instead of a deep XLA shape error.
# ---------------------------------------------------------------------------------------------------------------
def validate_inputs(config: AlbertConfig, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                    *, rank: int = 2) -> None:
    """Raises ValueError naming the argument when inputs cannot be run by a model with ``config``.

    ``rank`` is 2 for ``[batch, length]`` inputs and 3 for multiple choice ``[batch, choices, length]``.
    """
    check_token_inputs(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, rank=rank,
                       embedding_field="embedding_size", embedding_size=config.embedding_size,
                       vocab_size=config.vocab_size, type_vocab_size=config.type_vocab_size,
                       max_position_embeddings=config.max_position_embeddings)


def _init(config: AlbertConfig):
    """Every weight matrix and table is drawn from N(0, initializer_range^2), as HF's ``_init_weights``."""
    return nn.initializers.normal(config.initializer_range)


# ---------------------------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------------------------
class AlbertAttention(nn.Module):
    """Post-LN self-attention: ``LayerNorm(x + dropout(dense(attention(x))))``. ``[b, l, H] -> [b, l, H]``."""

    config: AlbertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array, deterministic: bool = True, query_positions: Optional[Array] = None):
        c = self.config
        dropout_rng = None
        if not deterministic and c.attention_probs_dropout_prob > 0:
            dropout_rng = self.make_rng("dropout")
        context, weights = self_attention_block(
            x, mask, num_heads=c.num_attention_heads, head_dim=c.head_dim,
            position_embedding_type=c.position_embedding_type, max_position_embeddings=c.max_position_embeddings,
            dropout_rate=c.attention_probs_dropout_prob, dropout_rng=dropout_rng, deterministic=deterministic,
            dtype=self.dtype, query_positions=query_positions, init_std=c.initializer_range,
        )
        out = Dense(c.hidden_size, (axes.HEADS, axes.EMBED), dtype=self.dtype, kernel_init=_init(c),
                    name="dense")(context)
        out = Dropout(c.hidden_dropout_prob)(out, deterministic=deterministic)
        residual = x if query_positions is None else gather_rows(x, query_positions)
        out = LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="LayerNorm")(residual + out)
        return out, weights


class AlbertLayer(nn.Module):
    """One ALBERT layer: attention block, then ``LayerNorm(a + ffn_output(act(ffn(a))))``. ``[b, l, H] -> [b, l, H]``.

    With ``query_positions [b, r]`` only those rows are computed (keys and values still see all ``l``):
    ``[b, l, H] -> [b, r, H]``, equal to the same rows of the full output.
    """

    config: AlbertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array], deterministic: bool = True,
                 query_positions: Optional[Array] = None):
        c = self.config
        a, weights = AlbertAttention(c, self.dtype, name="attention")(x, mask, deterministic, query_positions)
        h = Dense(c.intermediate_size, (axes.EMBED, axes.MLP), dtype=self.dtype, kernel_init=_init(c), name="ffn")(a)
        h = get_activation(c.hidden_act)(h)
        h = Dense(c.hidden_size, (axes.MLP, axes.EMBED), dtype=self.dtype, kernel_init=_init(c), name="ffn_output")(h)
        y = LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="full_layer_layer_norm")(h + a)
        y = nn.with_logical_constraint(y, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED))
        return y, weights


class AlbertTransformer(nn.Module):
    """``embedding_hidden_mapping_in`` then the L shared layers. ``[b, l, E] -> [b, l, H]``.

    Params ``albert_layer_groups`` are stacked ``[num_hidden_groups, inner_group_num, ...]``.
    """

    config: AlbertConfig
    dtype: Any = jnp.float32
    remat: bool = False  # recompute each layer in the backward pass: keep only each layer's input [b, l, H]
    # Layers unrolled per scan iteration: 1 traces the layer once (compile time flat in depth); num_hidden_layers
    # unrolls fully, letting XLA schedule across layers (compile time grows with depth).
    scan_unroll: int = 1
    # What the backward keeps of each layer when remat is off (layers.stacked.SCAN_RESIDUALS): "dots" keeps
    # matmul outputs and recomputes softmax / LayerNorm / GELU, which is both faster and 2x leaner than "all".
    scan_residuals: str = "dots"

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array], *, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False,
                 selected_rows: Optional[Array] = None, row_capacity: Optional[int] = None):
        """Returns ``(last_hidden_state, hidden_states or None, attentions or None, SelectedRows or None)``.

        ``selected_rows [b, l]`` (bool) asks for the last layer's output at those positions as a
        :class:`SelectedRows`, computed on ``row_capacity`` rows per example (an int; default all) when every
        example selects that few (else on all rows). The last layer then runs outside the scan, twice: in full for
        ``last_hidden_state`` and on the selected rows. A step that reads only what depends on the selected rows
        never runs the full copy (XLA removes it as dead code), which is the point. Needs
        ``inner_group_num == 1``, no active dropout and no returned hidden states or attentions.
        """
        c = self.config
        h = Dense(c.hidden_size, (axes.EMBED, axes.MLP), dtype=self.dtype, kernel_init=_init(c),
                  name="embedding_hidden_mapping_in")(x)
        layer = AlbertLayer(c, self.dtype, parent=None)
        groups = self.param(
            "albert_layer_groups",
            lambda rng: init_stacked(
                layer, rng, (c.num_hidden_groups, c.inner_group_num), (axes.LAYERS, None),
                jnp.zeros((1, 1, c.hidden_size), self.dtype), None,
            ),
        )
        use_dropout = not deterministic and (c.hidden_dropout_prob > 0 or c.attention_probs_dropout_prob > 0)
        dropout_key = self.make_rng("dropout") if use_dropout else None
        residuals = resolve_residuals(self.remat, self.scan_residuals)

        def run_layer(params, h, *, key, cache=None, index=None):
            rngs = {} if key is None else {"dropout": key}
            h, weights = layer.apply({"params": params}, h, mask, deterministic, rngs=rngs)
            return h, (weights if output_attentions else None), None

        def run_group(group_params, h, *, key, cache=None, index=None):
            """Layer ``index``: every inner layer of its group ``[inner_group_num, ...]``; inner layer i is keyed
            ``fold_in(key, i)``, so layers that share params still draw independent dropout masks."""
            if c.inner_group_num == 1:
                # The common case (every released ALBERT): no inner loop.
                h, weights, _ = run_layer(index_stacked(group_params, 0), h, key=layers_stack.layer_key(key, 0))
                weights = None if weights is None else weights[None]
            else:
                inner = layers_stack.scan_layers(run_layer, group_params, h, key=key)
                h = inner.carry
                weights = jnp.stack(inner.outputs) if output_attentions else None
            return h, (h if output_hidden_states else None, weights), None

        groups_of_layers = [c.group_of_layer(i) for i in range(c.num_hidden_layers)]
        if selected_rows is None:
            stack = layers_stack.scan_layers(run_group, groups, h, key=dropout_key, residuals=residuals,
                                             unroll=self.scan_unroll, param_index=groups_of_layers)
            h_out, per_layer, rows = stack.carry, stack.outputs, None
        else:
            if c.inner_group_num != 1 or use_dropout or output_hidden_states or output_attentions:
                raise ValueError("selected_rows needs inner_group_num == 1, no active dropout and no returned "
                                 "hidden states or attentions")
            if tuple(selected_rows.shape) != tuple(h.shape[:2]):
                raise ValueError(f"selected_rows has shape {tuple(selected_rows.shape)}; expected [batch, length] = "
                                 f"{tuple(h.shape[:2])}")
            row_capacity = h.shape[1] if row_capacity is None else row_capacity
            if isinstance(row_capacity, bool) or not isinstance(row_capacity, int) or row_capacity < 1:
                raise ValueError(f"row_capacity={row_capacity!r}; expected a positive int (rows per example)")
            last = c.num_hidden_layers - 1
            h_in = h
            if last:
                h_in = layers_stack.scan_layers(run_group, groups, h, residuals=residuals, unroll=self.scan_unroll,
                                                param_index=groups_of_layers[:last]).carry
            last_params = index_stacked(groups, (c.group_of_layer(last), 0))
            h_out = checkpoint_layer(lambda h: run_layer(last_params, h, key=None)[0], residuals)(h_in)
            rows = select_last_layer_rows(
                lambda h, positions: layer.apply({"params": last_params}, h, mask, deterministic, positions)[0],
                h_in, selected_rows, row_capacity, residuals)
            per_layer = None
        all_hidden = all_weights = None
        if output_hidden_states:
            all_hidden = (h,) + tuple(hidden for hidden, _ in per_layer)
        if output_attentions:
            all_weights = tuple(weights[i] for _, weights in per_layer for i in range(c.inner_group_num))
        return h_out, all_hidden, all_weights, rows


@flax.struct.dataclass
class SelectedRows:
    """The last layer's output at selected positions, per example, selected positions first.

    ``order [b, l]``: positions, the selected ones first in their original order (a stable sort), then the rest.
    ``hidden [b, l, H]``: ``hidden[:, j]`` is the last layer's output at position ``order[:, j]`` for every ``j``
    below that example's number of selected positions; rows after that are unspecified (zero or computed).
    """

    order: Array
    hidden: Array


def select_last_layer_rows(layer_rows, h: Array, selected: Array, capacity: int, residuals: str) -> SelectedRows:
    """Runs ``layer_rows(h, positions [b, r]) -> [b, r, H]`` on each example's selected positions.

    ``r`` is static, so the row count is a branch: ``capacity`` rows when no example selects more, else all ``l``
    rows (the full layer, in sorted order). A masked-LM batch labels ~15% of positions, so the first branch is
    the one that runs, and the last layer's queries, output projection and feed-forward shrink by ``l / capacity``.
    ``h [b, l, H]``, ``selected [b, l]`` bool -> :class:`SelectedRows`.
    """
    length = h.shape[1]
    order = jnp.argsort(~selected, axis=1, stable=True)
    most = jnp.max(jnp.sum(selected, axis=1))

    def rows(n):
        def run(h):
            y = layer_rows(h, order[:, :n])
            return jnp.pad(y, ((0, 0), (0, length - n), (0, 0)))

        return checkpoint_layer(run, residuals)

    if capacity >= length:
        return SelectedRows(order, rows(length)(h))
    return SelectedRows(order, jax.lax.cond(most <= capacity, rows(capacity), rows(length), h))


class AlbertModel(nn.Module):
    """Bare ALBERT: ``BaseModelOutputWithPooling`` (last_hidden_state ``[b, l, H]``, pooler_output ``[b, H]``).

    ``hidden_states`` (on request) has L + 1 entries, the first being the state after ``embedding_hidden_mapping_in``;
    ``attentions`` has L * inner_group_num entries ``[b, heads, l, l]``, as HF.
    """

    config: AlbertConfig
    dtype: Any = jnp.float32
    add_pooling_layer: bool = True
    remat: bool = False
    scan_unroll: int = 1
    scan_residuals: str = "dots"

    def setup(self):
        c = self.config
        self.embeddings = TokenEmbeddings(
            vocab_size=c.vocab_size, embedding_size=c.embedding_size, max_position_embeddings=c.max_position_embeddings,
            type_vocab_size=c.type_vocab_size, layer_norm_eps=c.layer_norm_eps, dropout_rate=c.hidden_dropout_prob,
            use_position_embeddings=c.position_embedding_type == "absolute", pad_token_id=c.pad_token_id,
            dtype=self.dtype, init_std=c.initializer_range,
        )
        self.encoder = AlbertTransformer(c, self.dtype, remat=self.remat, scan_unroll=self.scan_unroll,
                                          scan_residuals=self.scan_residuals)
        if self.add_pooling_layer:
            self.pooler = Pooler(c.hidden_size, dtype=self.dtype, init_std=c.initializer_range)

    def word_embedding_table(self) -> Array:
        """``[vocab_size, embedding_size]``: the table the masked-LM decoder is tied to."""
        return self.embeddings.word_embeddings.embedding

    def pool(self, h: Array) -> Array:
        """The pooler on ``h [b, l, H]`` (its row 0): ``[b, H]``."""
        return self.pooler(h)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, *, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False, selected_rows: Optional[Array] = None,
                 row_capacity: Optional[int] = None):
        """``BaseModelOutputWithPooling``; with ``selected_rows [b, l]`` (bool, for heads whose loss reads a few
        positions) the pair ``(output, SelectedRows)``, see :meth:`AlbertTransformer.__call__`."""
        check_scan_residuals(self.scan_residuals)
        validate_inputs(self.config, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, deterministic=deterministic)
        mask = None if attention_mask is None else padding_mask(attention_mask)
        h, all_hidden, all_weights, rows = self.encoder(
            x, mask, deterministic=deterministic, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions, selected_rows=selected_rows, row_capacity=row_capacity,
        )
        pooled = self.pooler(h) if self.add_pooling_layer else None
        out = BaseModelOutputWithPooling(
            last_hidden_state=h, pooler_output=pooled, hidden_states=all_hidden, attentions=all_weights
        )
        return out if selected_rows is None else (out, rows)


# ---------------------------------------------------------------------------------------------------------------
# Heads. Each takes HF's arguments (labels etc.) plus ``deterministic``; a ``loss`` is returned when labels are given.
# ---------------------------------------------------------------------------------------------------------------
@flax.struct.dataclass
class AlbertForPreTrainingOutput:
    prediction_logits: Array
    sop_logits: Array
    loss: Optional[Array] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None


class _AlbertHead(nn.Module):
    """Shared fields; subclasses build ``self.albert`` with or without the pooler, as HF does per head."""

    config: AlbertConfig
    dtype: Any = jnp.float32
    remat: bool = False
    scan_unroll: int = 1
    scan_residuals: str = "dots"
    # Masked-LM heads (AlbertForMaskedLM, AlbertForPreTraining) with labels: the loss reads the last layer at the
    # labelled positions (and position 0, for the pooler) only, so that layer's queries, output projection and
    # feed-forward run on ceil(mlm_loss_rows * length) rows per example whenever no example has more labels (else
    # on all rows). Outputs and gradients are unchanged; the returned logits still come from the full layer,
    # which a step that reads only the loss never runs. None always runs the full layer. Off with active dropout,
    # returned hidden states / attentions, or inner_group_num > 1.
    mlm_loss_rows: Optional[float] = 0.25

    def _loss_row_capacity(self, labels, input_ids, inputs_embeds, deterministic: bool,
                           output_attentions: bool, output_hidden_states: bool,
                           classifier_dropout: bool = False) -> Optional[int]:
        """Rows per example for the loss-only last layer (see ``mlm_loss_rows``), or None for the full layer.

        ``classifier_dropout``: the loss also reads a head with ``classifier_dropout_prob`` (the SOP head), which
        would draw a second dropout mask for the loss's copy, so active dropout there falls back too.
        """
        c, fraction = self.config, self.mlm_loss_rows
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                     or not 0 < fraction <= 1):
            raise ValueError(f"mlm_loss_rows={fraction!r}; expected a fraction in (0, 1] or None")
        source = input_ids if input_ids is not None else inputs_embeds
        if labels is None or source is None:
            return None
        shape = tuple(source.shape[:2])
        if tuple(labels.shape) != shape:
            raise ValueError(f"labels has shape {tuple(labels.shape)} but input_ids has shape {shape}; they must match")
        if fraction is None:
            return None
        rates = (c.hidden_dropout_prob, c.attention_probs_dropout_prob,
                 (c.classifier_dropout_prob or 0.0) if classifier_dropout else 0.0)
        if (not deterministic and any(r > 0 for r in rates)) or output_attentions or output_hidden_states \
                or c.inner_group_num != 1:
            return None
        capacity = math.ceil(fraction * shape[1])
        return capacity if capacity < shape[1] else None

    def _masked_lm(self, albert: AlbertModel, args, labels, capacity: Optional[int], kwargs):
        """Runs ``albert`` and the masked-LM head: ``(output, logits, loss or None, loss_states)``.

        ``loss_states [b, l, H]`` is what the loss read: ``last_hidden_state`` when ``capacity`` is None, else the
        last layer's :class:`SelectedRows` hidden states for the labelled positions and position 0 (which sorts
        first, so a pooler on it pools position 0); the labels are permuted as those rows are.
        """
        head = self._mlm_head()
        vocab = self.config.vocab_size
        # Checked here, in the caller's order: the selected-rows path permutes the labels before the loss sees them.
        check_range("labels", labels, vocab, f"token ids must be in [0, vocab_size={vocab}) or {IGNORE_INDEX} "
                    "(ignored)", ignore=IGNORE_INDEX)
        if capacity is None:
            out = albert(*args, **kwargs)
            logits, loss = head(out.last_hidden_state, albert.word_embedding_table(), labels)
            return out, logits, loss, out.last_hidden_state
        selected = (labels != IGNORE_INDEX) | (jnp.arange(labels.shape[1]) == 0)[None, :]
        out, rows = albert(*args, selected_rows=selected, row_capacity=capacity, **kwargs)
        logits, _ = head(out.last_hidden_state, albert.word_embedding_table())
        _, loss = head(rows.hidden, albert.word_embedding_table(), jnp.take_along_axis(labels, rows.order, axis=1))
        return out, logits, loss, rows.hidden

    def _backbone(self, add_pooling_layer: bool = True) -> AlbertModel:
        return AlbertModel(self.config, self.dtype, add_pooling_layer=add_pooling_layer, remat=self.remat,
                           scan_unroll=self.scan_unroll, scan_residuals=self.scan_residuals, name="albert")

    def _mlm_head(self) -> MaskedLMHead:
        c = self.config
        return MaskedLMHead(c.embedding_size, c.vocab_size, c.hidden_act, c.layer_norm_eps, self.dtype,
                            init_std=c.initializer_range, name="predictions")

    def _classifier(self, features: int, dropout: float, pooled: Array, deterministic: bool) -> Array:
        pooled = Dropout(dropout)(pooled, deterministic=deterministic)
        return Dense(features, (axes.EMBED, axes.VOCAB), dtype=self.dtype, kernel_init=_init(self.config),
                     name="classifier")(pooled)


class AlbertSOPHead(nn.Module):
    """Sentence-order head: dropout -> ``classifier`` on the pooled output. ``[b, H] -> [b, num_labels]``."""

    config: AlbertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pooled: Array, deterministic: bool = True) -> Array:
        pooled = Dropout(self.config.classifier_dropout_prob or 0.0)(pooled, deterministic=deterministic)
        return Dense(self.config.num_labels, (axes.EMBED, axes.VOCAB), dtype=self.dtype, kernel_init=_init(self.config),
                     name="classifier")(pooled)


class AlbertForPreTraining(_AlbertHead):
    """Masked LM + sentence-order prediction. Loss = MLM loss + SOP loss when both label sets are given."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, sentence_order_label=None, *, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False):
        albert = self._backbone()
        args = (input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        kwargs = dict(deterministic=deterministic, output_attentions=output_attentions,
                      output_hidden_states=output_hidden_states)
        with_loss = labels is not None and sentence_order_label is not None
        mlm_labels = labels if with_loss else None
        capacity = self._loss_row_capacity(mlm_labels, input_ids, inputs_embeds, **kwargs, classifier_dropout=True)
        out, logits, mlm_loss, loss_states = self._masked_lm(albert, args, mlm_labels, capacity, kwargs)
        sop = AlbertSOPHead(self.config, self.dtype, name="sop_classifier")
        sop_logits = sop(out.pooler_output, deterministic)
        # On the selected rows the loss pools their row 0 (position 0) itself, so the full last layer stays dead.
        loss_sop_logits = sop_logits if capacity is None else sop(albert.pool(loss_states), deterministic)
        loss = None
        if with_loss:
            sop_logits_flat, order = loss_sop_logits.reshape(-1, 2), sentence_order_label.reshape(-1)
            sop_loss = cross_entropy(sop_logits_flat, order)
            loss = mlm_loss + sop_loss
            # For a training job's metrics (read from "intermediates"; the MLM head sows its own).
            self.sow("intermediates", "sop_loss", sop_loss)
            self.sow("intermediates", "sop_accuracy", jnp.mean(jnp.argmax(sop_logits_flat, -1) == order))
        return AlbertForPreTrainingOutput(logits, sop_logits, loss, out.hidden_states, out.attentions)


class AlbertForMaskedLM(_AlbertHead):
    """Masked LM head tied to the word embeddings. ``logits [b, l, vocab]``; labels -100 are ignored."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, *, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False):
        albert = self._backbone(add_pooling_layer=False)
        args = (input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        kwargs = dict(deterministic=deterministic, output_attentions=output_attentions,
                      output_hidden_states=output_hidden_states)
        capacity = self._loss_row_capacity(labels, input_ids, inputs_embeds, **kwargs)
        out, logits, loss, _ = self._masked_lm(albert, args, labels, capacity, kwargs)
        return MaskedLMOutput(logits, loss, out.hidden_states, out.attentions)


class AlbertForSequenceClassification(_AlbertHead):
    """``logits [b, num_labels]`` from the pooled output; regression when ``num_labels == 1`` (MSE), single-label
    cross-entropy for integer labels, multi-label BCE for float labels (or as ``config.problem_type`` says)."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, *, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False):
        c = self.config
        out = self._backbone()(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               deterministic=deterministic, output_attentions=output_attentions,
                               output_hidden_states=output_hidden_states)
        logits = self._classifier(c.num_labels, c.classifier_dropout_prob or 0.0, out.pooler_output, deterministic)
        loss = None
        if labels is not None:
            loss = sequence_classification_loss(logits, labels, num_labels=c.num_labels, problem_type=c.problem_type)
        return SequenceClassifierOutput(logits, loss, out.hidden_states, out.attentions)


class AlbertForTokenClassification(_AlbertHead):
    """Per-token ``logits [b, l, num_labels]``; labels -100 are ignored."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, *, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False):
        c = self.config
        out = self._backbone(add_pooling_layer=False)(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, deterministic=deterministic,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        dropout = c.classifier_dropout_prob if c.classifier_dropout_prob is not None else c.hidden_dropout_prob
        logits = self._classifier(c.num_labels, dropout, out.last_hidden_state, deterministic)
        loss = None if labels is None else cross_entropy(logits.reshape(-1, c.num_labels), labels.reshape(-1))
        return TokenClassifierOutput(logits, loss, out.hidden_states, out.attentions)


class AlbertForQuestionAnswering(_AlbertHead):
    """Span QA: ``start_logits``/``end_logits [b, l]`` from ``qa_outputs``; positions outside the sequence are ignored."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, start_positions=None, end_positions=None, *, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False):
        c = self.config
        out = self._backbone(add_pooling_layer=False)(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, deterministic=deterministic,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        logits = Dense(c.num_labels, (axes.EMBED, axes.VOCAB), dtype=self.dtype, kernel_init=_init(c),
                       name="qa_outputs")(out.last_hidden_state)
        start, end = split_span_logits(logits)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = span_loss(start, end, start_positions, end_positions)
        return QuestionAnsweringModelOutput(start, end, loss, out.hidden_states, out.attentions)


class AlbertForMultipleChoice(_AlbertHead):
    """Inputs ``[b, num_choices, l]``; each choice is encoded separately; ``logits [b, num_choices]``."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, labels=None, *, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False):
        c = self.config
        validate_inputs(c, input_ids, attention_mask, token_type_ids,
                        None if position_ids is None or position_ids.ndim < 3 else position_ids, inputs_embeds, rank=3)
        num_choices = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        out = self._backbone()(
            flatten_choices(input_ids), flatten_choices(attention_mask), flatten_choices(token_type_ids),
            flatten_choices(position_ids) if position_ids is not None and position_ids.ndim == 3 else position_ids,
            flatten_choices(inputs_embeds), deterministic=deterministic, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states)
        logits = self._classifier(1, c.classifier_dropout_prob or 0.0, out.pooler_output, deterministic)
        logits = logits.reshape(-1, num_choices)
        loss = None if labels is None else cross_entropy(logits, labels)
        return MultipleChoiceModelOutput(logits, loss, out.hidden_states, out.attentions)


ARCHITECTURES = {
    cls.__name__: cls
    for cls in (
        AlbertModel, AlbertForPreTraining, AlbertForMaskedLM, AlbertForSequenceClassification,
        AlbertForTokenClassification, AlbertForQuestionAnswering, AlbertForMultipleChoice,
    )
}
