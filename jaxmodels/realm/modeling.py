"""REALM (Guu et al., 2020) in Flax Linen, numerically equal to HF ``transformers`` ``modeling_realm`` (deprecated).

Every model is a BERT (post-LN, learned positions, ``gelu_new``, a pooler in every instance) named ``realm``, plus:

    RealmEmbedder               projected_score = LayerNorm(Dense(H -> P)(pooler_output))             [b, P]
    RealmScorer                 relevance = query_score . candidate_score (one shared embedder)      [b, C]
    RealmKnowledgeAugEncoder    masked-LM logits of [b * C] (question, block) rows, and the loss
                                -sum_l mask * log sum_c softmax(relevance)_c p(label_l | row c) / sum mask
    RealmReader                 span logits (layers.span_reader) + the retriever logit of the row; the best span
                                and the marginal losses of the retriever and the reader over correct spans
    RealmForOpenQA              embed the questions -> top-k blocks of the index (layers.retrieval) -> reader rows
                                built on device from pre-tokenised blocks (reader_inputs) -> read -> best span

Checkpoint buffers and unused heads are carried so that checkpoints round-trip: the embedder's and the reader's
``cls.predictions`` masked-LM heads are never run by HF (their params are registered here by a call on zero rows,
which computes nothing), and ``block_emb`` (the index, ``[num_block_records, retriever_proj_size]``) is a buffer, not
a parameter: it lives in the ``"buffers"`` variable collection, so an optimizer over ``params`` never touches it.

Differences from HF (where HF is wrong or limited): ``RealmForOpenQA`` answers a batch of questions in one jitted
call (HF: batch 1, host-side tokenisation of every retrieved block) and works with ``reader_beam_size=1``; the
scorer's ``position_ids`` apply to the query only (HF passes them to the candidates too, which crashes unless both
have the same length); the reader takes any number of rows up to the retrieved blocks (HF: exactly
``reader_beam_size``); marginal losses are exactly 0, with zero gradients, when nothing is correct (no NaN).
"""

from __future__ import annotations

from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.input_checks import check_array, check_nonempty
from jaxmodels.outputs import BaseModelOutputWithPooling, MaskedLMOutput
from jaxmodels.realm import reader_inputs
from jaxmodels.realm.config import RealmConfig
from jaxmodels.realm.reader_inputs import BlockTokens
from layers import axes
from layers import stacked as layers_stack
from layers.activations import get_activation
from layers.attention import SelfAttention, padding_mask
from layers.checks import check_range
from layers.dense import Dense
from layers.dropout import Dropout
from layers.embeddings import TokenEmbeddings
from layers.heads import MaskedLMHead, Pooler
from layers.losses import IGNORE_INDEX
from layers.norms import LayerNorm
from layers.retrieval import DEFAULT_CHUNK, RowSharding, mips_topk, sharded_mips_topk, sharded_take
from layers.span_reader import SpanReader, correct_spans, marginal_log_loss, span_candidates
from layers.stacked import check_scan_residuals, init_stacked, resolve_residuals

Array = jax.Array


# ---------------------------------------------------------------------------------------------------------------
# Outputs (HF field names; fields a call did not compute are None)
# ---------------------------------------------------------------------------------------------------------------
@flax.struct.dataclass
class RealmEmbedderOutput:
    projected_score: Array
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None


@flax.struct.dataclass
class RealmScorerOutput:
    relevance_score: Array
    query_score: Array
    candidate_score: Array


@flax.struct.dataclass
class RealmReaderOutput:
    """``block_idx`` / ``candidate`` (0-d) and ``start_pos`` / ``end_pos`` (``[1]``) of the best span; the losses
    (scalars), ``retriever_correct [S]`` and ``reader_correct [R, num_spans]`` when gold answers were given. Under
    ``RealmForOpenQA`` every field has a leading batch axis."""

    block_idx: Array
    candidate: Array
    start_pos: Array
    end_pos: Array
    loss: Optional[Array] = None
    retriever_loss: Optional[Array] = None
    reader_loss: Optional[Array] = None
    retriever_correct: Optional[Array] = None
    reader_correct: Optional[Array] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None


@flax.struct.dataclass
class RealmForOpenQAOutput:
    """``reader_output`` (batched :class:`RealmReaderOutput`), ``predicted_answer_ids [B, max_span_width]`` (the best
    span's tokens, -1 after its end; HF returns the ragged span of its one question) and ``retrieved_block_ids
    [B, K]`` (the top-k rows of the index, best first)."""

    reader_output: RealmReaderOutput
    predicted_answer_ids: Array
    retrieved_block_ids: Optional[Array] = None


# ---------------------------------------------------------------------------------------------------------------
# Input validation (static shapes, and values when concrete), before anything is traced
# ---------------------------------------------------------------------------------------------------------------
def validate_inputs(config: RealmConfig, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                    *, rank: int = 2, prefix: str = "", embeds_rank: int | None = None) -> tuple[int, ...]:
    """Raises ValueError naming the argument (``prefix`` + its HF name); returns the ids' shape.

    ``rank``: of the ids (2 for ``[batch, length]``, 3 for ``[batch, candidates, length]``); ``embeds_rank``: of
    ``inputs_embeds`` without its feature axis (HF takes candidates' embeddings already flattened).
    """
    for name, x in (("input_ids", input_ids), ("attention_mask", attention_mask), ("token_type_ids", token_type_ids),
                    ("position_ids", position_ids), ("inputs_embeds", inputs_embeds)):
        check_array(prefix + name, x)
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(f"pass exactly one of {prefix}input_ids or {prefix}inputs_embeds")
    if input_ids is not None:
        shape = tuple(input_ids.shape)
        if len(shape) != rank:
            raise ValueError(f"{prefix}input_ids must have rank {rank}, got shape {shape}")
        if not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(f"{prefix}input_ids must be integer, got {input_ids.dtype}")
    else:
        shape = tuple(inputs_embeds.shape[:-1])
        if len(shape) != (embeds_rank or rank) or inputs_embeds.shape[-1] != config.hidden_size:
            raise ValueError(f"{prefix}inputs_embeds must be [..., length, hidden_size={config.hidden_size}] with "
                             f"{embeds_rank or rank} leading axes, got {tuple(inputs_embeds.shape)}")
    for name, x in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if x is not None and tuple(x.shape) != shape:
            raise ValueError(f"{prefix}{name} has shape {tuple(x.shape)} but {prefix}input_ids has shape {shape}")
    if position_ids is not None and tuple(position_ids.shape)[-1:] != shape[-1:]:
        raise ValueError(f"{prefix}position_ids has shape {tuple(position_ids.shape)}; its last axis must be the "
                         f"length {shape[-1]}")
    check_nonempty(prefix + ("input_ids" if input_ids is not None else "inputs_embeds"), shape)
    if shape[-1] > config.max_position_embeddings:
        raise ValueError(f"{prefix}input_ids: sequence length {shape[-1]} exceeds max_position_embeddings="
                         f"{config.max_position_embeddings}")
    check_range(prefix + "input_ids", input_ids, config.vocab_size, f"ids must be in [0, vocab_size={config.vocab_size})")
    check_range(prefix + "token_type_ids", token_type_ids, config.type_vocab_size,
                f"token types must be in [0, type_vocab_size={config.type_vocab_size})")
    check_range(prefix + "position_ids", position_ids, config.max_position_embeddings,
                f"positions must be in [0, max_position_embeddings={config.max_position_embeddings})")
    return shape


def _check_shape(name: str, x, shape: tuple, rule: str) -> None:
    check_array(name, x)
    if x is not None and tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {tuple(shape)} ({rule})")


# ---------------------------------------------------------------------------------------------------------------
# The BERT backbone
# ---------------------------------------------------------------------------------------------------------------
def _init(config: RealmConfig):
    """Every weight matrix and table is drawn from N(0, initializer_range^2), as HF's ``_init_weights``."""
    return nn.initializers.normal(config.initializer_range)


class _ResidualOutput(nn.Module):
    """``LayerNorm(residual + dropout(dense(x)))`` (HF's ``*.output``: ``dense``, ``LayerNorm``). ``[.., in] -> [.., H]``."""

    config: RealmConfig
    in_axis: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, residual: Array, deterministic: bool) -> Array:
        c = self.config
        y = Dense(c.hidden_size, (self.in_axis, axes.EMBED), dtype=self.dtype, kernel_init=_init(c), name="dense")(x)
        y = Dropout(c.hidden_dropout_prob)(y, deterministic=deterministic)
        return LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="LayerNorm")(residual + y)


class _Attention(nn.Module):
    """``attention.self`` (q/k/v and the masked softmax) and ``attention.output``. ``[b, l, H] -> [b, l, H]``."""

    config: RealmConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array], deterministic: bool):
        c = self.config
        context, weights = SelfAttention(
            c.num_attention_heads, c.head_dim, c.position_embedding_type, c.max_position_embeddings,
            c.attention_probs_dropout_prob, dtype=self.dtype, init_std=c.initializer_range,
            name="self")(x, mask, deterministic=deterministic)
        return _ResidualOutput(c, axes.HEADS, self.dtype, name="output")(context, x, deterministic), weights


class _Intermediate(nn.Module):
    """``act(dense(x))``: ``[b, l, H] -> [b, l, intermediate_size]``."""

    config: RealmConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        y = Dense(c.intermediate_size, (axes.EMBED, axes.MLP), dtype=self.dtype, kernel_init=_init(c), name="dense")(x)
        return get_activation(c.hidden_act)(y)


class RealmLayer(nn.Module):
    """One post-LN BERT layer: ``attention`` then ``output(intermediate(a), a)``. ``[b, l, H] -> [b, l, H]``."""

    config: RealmConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Optional[Array], deterministic: bool = True):
        a, weights = _Attention(self.config, self.dtype, name="attention")(x, mask, deterministic)
        h = _Intermediate(self.config, self.dtype, name="intermediate")(a)
        y = _ResidualOutput(self.config, axes.MLP, self.dtype, name="output")(h, a, deterministic)
        return nn.with_logical_constraint(y, (axes.ACT_BATCH, axes.ACT_LENGTH, axes.ACT_EMBED)), weights


class RealmEncoder(nn.Module):
    """``num_hidden_layers`` layers over stacked params ``layer [L, ...]`` (one ``scan_layers``). ``[b, l, H]``."""

    config: RealmConfig
    dtype: Any = jnp.float32
    remat: bool = False
    scan_unroll: int = 1
    scan_residuals: str = "dots"

    @nn.compact
    def __call__(self, h: Array, mask: Optional[Array], *, deterministic: bool = True,
                 output_hidden_states: bool = False, output_attentions: bool = False):
        """Returns ``(last_hidden_state, hidden_states or None, attentions or None)``; ``hidden_states`` has L + 1
        entries (the embeddings first), ``attentions`` L entries ``[b, heads, l, l]``."""
        c = self.config
        layer = RealmLayer(c, self.dtype, parent=None)
        params = self.param("layer", lambda rng: init_stacked(
            layer, rng, (c.num_hidden_layers,), (axes.LAYERS,), jnp.zeros((1, 1, c.hidden_size), self.dtype), None))
        dropping = not deterministic and (c.hidden_dropout_prob > 0 or c.attention_probs_dropout_prob > 0)
        key = self.make_rng("dropout") if dropping else None

        def body(p, h, *, key, cache=None, index=None):
            y, weights = layer.apply({"params": p}, h, mask, deterministic, rngs={} if key is None else {"dropout": key})
            return y, (y if output_hidden_states else None, weights if output_attentions else None), None

        stack = layers_stack.scan_layers(body, params, h, key=key, residuals=resolve_residuals(
            self.remat, self.scan_residuals), unroll=self.scan_unroll)
        hidden = (h,) + tuple(out[0] for out in stack.outputs) if output_hidden_states else None
        weights = tuple(out[1] for out in stack.outputs) if output_attentions else None
        return stack.carry, hidden, weights


class RealmBertModel(nn.Module):
    """HF ``RealmBertModel``: ``embeddings``, ``encoder``, ``pooler`` -> ``BaseModelOutputWithPooling``
    (``last_hidden_state [b, l, H]``, ``pooler_output [b, H]``)."""

    config: RealmConfig
    dtype: Any = jnp.float32
    remat: bool = False
    scan_unroll: int = 1
    scan_residuals: str = "dots"

    def setup(self):
        c = self.config
        self.embeddings = TokenEmbeddings(
            vocab_size=c.vocab_size, embedding_size=c.hidden_size, max_position_embeddings=c.max_position_embeddings,
            type_vocab_size=c.type_vocab_size, layer_norm_eps=c.layer_norm_eps, dropout_rate=c.hidden_dropout_prob,
            use_position_embeddings=c.position_embedding_type == "absolute", pad_token_id=c.pad_token_id,
            dtype=self.dtype, init_std=c.initializer_range)
        self.encoder = RealmEncoder(c, self.dtype, self.remat, self.scan_unroll, self.scan_residuals)
        self.pooler = Pooler(c.hidden_size, dtype=self.dtype, init_std=c.initializer_range)

    def word_embedding_table(self) -> Array:
        """``[vocab_size, hidden_size]``: the table the knowledge-augmented encoder's decoder is tied to."""
        return self.embeddings.word_embeddings.embedding

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, *, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False) -> BaseModelOutputWithPooling:
        check_scan_residuals(self.scan_residuals)
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds, deterministic=deterministic)
        mask = None if attention_mask is None else padding_mask(attention_mask)
        h, hidden, weights = self.encoder(x, mask, deterministic=deterministic,
                                          output_hidden_states=output_hidden_states,
                                          output_attentions=output_attentions)
        return BaseModelOutputWithPooling(h, self.pooler(h), hidden, weights)


class _MaskedLMHeads(nn.Module):
    """HF's ``cls``: a ``predictions`` masked-LM head (``transform.dense`` -> act -> ``transform.LayerNorm`` ->
    decoder + ``bias``) tied to ``decoder_embedding`` when given, else with its own ``decoder``."""

    config: RealmConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, decoder_embedding: Optional[Array] = None) -> Array:
        c = self.config
        head = MaskedLMHead(c.hidden_size, c.vocab_size, c.hidden_act, c.layer_norm_eps, self.dtype,
                            init_std=c.initializer_range, name="predictions")
        return head(x, decoder_embedding)[0]

    def register(self) -> None:
        """Creates the params of a head HF never runs (the embedder's, the reader's), computing nothing: a call on
        zero rows. They exist only so that checkpoints round-trip."""
        self(jnp.zeros((0, self.config.hidden_size), self.dtype))


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------
class _RealmModule(nn.Module):
    """Fields every REALM model has (the layer stack's knobs are the same on every family)."""

    config: RealmConfig
    dtype: Any = jnp.float32
    remat: bool = False  # recompute each layer in the backward pass
    scan_unroll: int = 1  # layers per scan iteration
    scan_residuals: str = "dots"  # what the backward keeps of each layer (layers.stacked.SCAN_RESIDUALS)

    def _backbone(self, name: str = "realm") -> RealmBertModel:
        return RealmBertModel(self.config, self.dtype, self.remat, self.scan_unroll, self.scan_residuals, name=name)

    def _child(self, cls, name: str):
        return cls(self.config, self.dtype, self.remat, self.scan_unroll, self.scan_residuals, name=name)


class _ScorerProjection(nn.Module):
    """HF's embedder ``cls``: ``LayerNorm(dense(pooled))`` (H -> P, no activation) and an unused masked-LM head."""

    config: RealmConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pooled: Array) -> Array:
        c = self.config
        # HF's RealmScorerProjection owns an MLM head that it never runs: `predictions` here, at zero cost.
        MaskedLMHead(c.hidden_size, c.vocab_size, c.hidden_act, c.layer_norm_eps, self.dtype,
                     init_std=c.initializer_range, name="predictions")(jnp.zeros((0, c.hidden_size), self.dtype))
        y = Dense(c.retriever_proj_size, (axes.EMBED, axes.MLP), dtype=self.dtype, kernel_init=_init(c),
                  name="dense")(pooled)
        return LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, axis_name=axes.MLP, name="LayerNorm")(y)


class RealmEmbedder(_RealmModule):
    """``projected_score [b, retriever_proj_size]`` of ``[b, l]`` inputs (questions or evidence blocks).

    ``prefix`` is put before the argument names of input errors (the scorer embeds its ``candidate_`` inputs here).
    """

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, *, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False, prefix: str = "") -> RealmEmbedderOutput:
        validate_inputs(self.config, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                        prefix=prefix)
        out = self._backbone()(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                               deterministic=deterministic, output_attentions=output_attentions,
                               output_hidden_states=output_hidden_states)
        projected = _ScorerProjection(self.config, self.dtype, name="cls")(out.pooler_output)
        return RealmEmbedderOutput(projected, out.hidden_states, out.attentions)


class RealmScorer(_RealmModule):
    """Relevance of ``num_candidates`` candidates to each query: ``relevance_score [b, C]``, with ``query_score
    [b, P]`` and ``candidate_score [b, C, P]``. One embedder embeds both (HF's ``query_embedder`` is it).

    Candidates come as ``candidate_input_ids [b, C, lc]`` (+ mask, token types) or ``candidate_inputs_embeds
    [b * C, lc, H]``; ``C`` must be ``config.num_candidates``.
    """

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 candidate_input_ids=None, candidate_attention_mask=None, candidate_token_type_ids=None,
                 candidate_inputs_embeds=None, inputs_embeds=None, *, deterministic: bool = True) -> RealmScorerOutput:
        c = self.config
        shape = validate_inputs(c, candidate_input_ids, candidate_attention_mask, candidate_token_type_ids, None,
                                candidate_inputs_embeds, rank=3, prefix="candidate_", embeds_rank=2)
        if candidate_input_ids is not None and shape[1] != c.num_candidates:
            raise ValueError(f"candidate_input_ids has {shape[1]} candidates per example (shape {shape}); "
                             f"config.num_candidates={c.num_candidates} (the scorer takes exactly that many)")
        if candidate_inputs_embeds is not None and shape[0] % c.num_candidates:
            raise ValueError(f"candidate_inputs_embeds has {shape[0]} rows, not a multiple of "
                             f"config.num_candidates={c.num_candidates}")
        # HF registers this one embedder twice, as `embedder` (candidates) and `query_embedder` (queries); it is
        # named after the second here so that checkpoint names tell it from RealmForOpenQA's `embedder`.
        embedder = self._child(RealmEmbedder, "query_embedder")
        query = embedder(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                         deterministic=deterministic).projected_score
        flat = lambda x: None if x is None else x.reshape((-1, x.shape[-1]))  # noqa: E731
        candidates = embedder(flat(candidate_input_ids), flat(candidate_attention_mask),
                              flat(candidate_token_type_ids), None, candidate_inputs_embeds,
                              deterministic=deterministic, prefix="candidate_").projected_score
        candidates = candidates.reshape(-1, c.num_candidates, c.retriever_proj_size)
        if candidates.shape[0] != query.shape[0]:
            raise ValueError(f"{candidates.shape[0]} examples of candidates for {query.shape[0]} queries")
        relevance = jnp.einsum("bd,bnd->bn", query, candidates)
        return RealmScorerOutput(relevance, query, candidates)


def marginal_mlm_loss(logits: Array, labels: Array, relevance_score: Array, mlm_mask: Optional[Array]) -> Array:
    """The knowledge-augmented encoder's loss: ``-sum(mask * marginal) / sum(mask)`` with
    ``marginal[b, l] = logsumexp_c(log_softmax(relevance)[b, c] + log p(labels[b, l] | row (b, c)))``.

    ``logits [b * C, l, V]``, ``labels [b, l]`` (-100: log-prob 0), ``relevance_score [b, C]``, ``mlm_mask [b, l]``
    (default all ones, so unlabelled positions count in the denominator, as HF); an all-zero mask gives 0.
    """
    b, length = labels.shape
    c = relevance_score.shape[1]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(b, c, length, -1)
    valid = labels != IGNORE_INDEX
    gold = jnp.take_along_axis(log_probs, jnp.where(valid, labels, 0)[:, None, :, None], axis=-1)[..., 0]
    gold = jnp.where(valid[:, None, :], gold, 0.0)  # [b, C, l]
    joint = jax.nn.log_softmax(relevance_score.astype(jnp.float32), axis=-1)[:, :, None] + gold
    marginal = jax.nn.logsumexp(joint, axis=1)  # [b, l]
    mask = jnp.ones((b, length), jnp.float32) if mlm_mask is None else mlm_mask.astype(jnp.float32)
    total = jnp.sum(mask)
    # HF: nansum(sum / total), so an all-zero mask gives 0 (0/0 dropped); guarded before dividing here.
    return -jnp.where(total > 0, jnp.sum(marginal * mask) / jnp.where(total > 0, total, 1.0), 0.0)


class RealmKnowledgeAugEncoder(_RealmModule):
    """Masked LM over ``[b, C, l]`` (question, candidate block) rows: ``logits [b * C, l, vocab]`` (not reshaped,
    as HF) from a head tied to the word embeddings; with ``labels [b, l]`` and ``relevance_score [b, C]`` the loss
    of :func:`marginal_mlm_loss`.

    ``mlm_prefix`` (not HF's; a static int): only the first ``mlm_prefix`` positions of each row are predicted, the
    masked sentence before its evidence block: ``logits [b * C, mlm_prefix, vocab]`` and ``labels`` / ``mlm_mask``
    ``[b, mlm_prefix]``. The loss is HF's whenever no label lies beyond the prefix (REALM pretraining), and the
    logits of the block positions (5.5x more at REALM's 64 + 288-token rows) are never formed."""

    @nn.compact
    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, relevance_score=None, labels=None, mlm_mask=None, *, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False,
                 mlm_prefix: Optional[int] = None) -> MaskedLMOutput:
        c = self.config
        shape = validate_inputs(c, input_ids, attention_mask, token_type_ids, None, inputs_embeds, rank=3,
                                embeds_rank=2)
        if input_ids is not None and shape[1] != c.num_candidates:
            raise ValueError(f"input_ids has {shape[1]} candidates per example (shape {shape}); "
                             f"config.num_candidates={c.num_candidates}")
        length = shape[-1]
        if mlm_prefix is not None:
            if isinstance(mlm_prefix, bool) or not isinstance(mlm_prefix, int) or not 1 <= mlm_prefix <= length:
                raise ValueError(f"mlm_prefix={mlm_prefix!r}: must be an int in [1, row length={length}]")
            length = mlm_prefix
        if labels is not None:
            if relevance_score is None:
                raise ValueError("relevance_score is required with labels (the loss marginalises over candidates)")
            check_array("labels", labels)
            batch = shape[0] if input_ids is not None else shape[0] // c.num_candidates
            _check_shape("relevance_score", relevance_score, (batch, c.num_candidates), "[batch, num_candidates]")
            what = "[batch, length]" if mlm_prefix is None else "[batch, mlm_prefix]"
            _check_shape("labels", labels, (batch, length), what)
            _check_shape("mlm_mask", mlm_mask, (batch, length), what + ", like labels")
            if not jnp.issubdtype(labels.dtype, jnp.integer):
                raise ValueError(f"labels: token ids must be integers, got dtype {labels.dtype}")
            check_range("labels", labels, c.vocab_size, f"token ids must be in [0, vocab_size={c.vocab_size}) or "
                        f"{IGNORE_INDEX} (ignored)", ignore=IGNORE_INDEX)
        flat = lambda x: None if x is None else x.reshape((-1, x.shape[-1]))  # noqa: E731
        realm = self._backbone()
        out = realm(flat(input_ids), flat(attention_mask), flat(token_type_ids), position_ids, inputs_embeds,
                    deterministic=deterministic, output_attentions=output_attentions,
                    output_hidden_states=output_hidden_states)
        hidden = out.last_hidden_state if mlm_prefix is None else out.last_hidden_state[:, :mlm_prefix]
        logits = _MaskedLMHeads(c, self.dtype, name="cls")(hidden, realm.word_embedding_table())
        loss = None if labels is None else marginal_mlm_loss(logits, labels, relevance_score, mlm_mask)
        return MaskedLMOutput(logits, loss, out.hidden_states, out.attentions)


def _best_span(logits: Array, starts: np.ndarray, ends: np.ndarray):
    """``logits [B, R, S]`` -> ``(block_idx [B], candidate [B], start_pos [B, 1], end_pos [B, 1])``: the row of the
    global maximum and its span (first on ties, as torch.argmax)."""
    block = jnp.argmax(jnp.max(logits, axis=2), axis=1)
    candidate = jnp.argmax(jnp.max(logits, axis=1), axis=1)
    return block, candidate, jnp.asarray(starts)[candidate][:, None], jnp.asarray(ends)[candidate][:, None]


class RealmReader(_RealmModule):
    """Extractive reader over the first retrieved blocks.

    HF's arguments: ``input_ids [R, L]`` rows ``[CLS] question [SEP] block [SEP]`` (``token_type_ids`` required),
    ``relevance_score [S]`` (the retriever logits of all ``S >= R`` retrieved blocks; the first R are added to the
    rows' span logits), ``block_mask [S, L]`` bool (block tokens), and for the losses ``start_positions`` /
    ``end_positions [S, A]`` (-1 = none) and ``has_answers [S]``. Spans are the width-major candidates of
    ``layers.span_reader`` up to ``max_span_width``; see :class:`RealmReaderOutput`.
    """

    def setup(self):
        c = self.config
        self.realm = self._backbone()
        self.cls = _MaskedLMHeads(c, self.dtype)
        self.qa_outputs = SpanReader(c.span_hidden_size, c.max_span_width, c.reader_layer_norm_eps, self.dtype,
                                     init_std=c.initializer_range)

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                 inputs_embeds=None, relevance_score=None, block_mask=None, start_positions=None,
                 end_positions=None, has_answers=None, *, deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False) -> RealmReaderOutput:
        c = self.config
        if token_type_ids is None:
            raise ValueError("token_type_ids is required: the reader tells the question from the block by it")
        rows, length = validate_inputs(c, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        if length < c.max_span_width:
            raise ValueError(f"input length {length} must be >= config.max_span_width={c.max_span_width}")
        if relevance_score is None or block_mask is None:
            raise ValueError("relevance_score [S] and block_mask [S, length] are required (S retrieved blocks)")
        check_array("relevance_score", relevance_score)
        if relevance_score.ndim != 1 or relevance_score.shape[0] < rows:
            raise ValueError(f"relevance_score has shape {tuple(relevance_score.shape)}; expected [S] with S >= "
                             f"{rows} (the rows of input_ids)")
        searched = relevance_score.shape[0]
        _check_shape("block_mask", block_mask, (searched, length), "[S, length], S = len(relevance_score)")
        labelled = start_positions is not None and end_positions is not None and has_answers is not None
        correct = None
        if labelled:
            check_array("start_positions", start_positions)
            if start_positions.ndim != 2 or start_positions.shape[0] != searched:
                raise ValueError(f"start_positions has shape {tuple(start_positions.shape)}; expected [S={searched}, "
                                 "max_answers] (-1 for none), as the retriever gives")
            _check_shape("end_positions", end_positions, start_positions.shape, "like start_positions")
            _check_shape("has_answers", has_answers, (searched,), "[S]")
            starts, ends = span_candidates(length, c.max_span_width)
            gold_start = jnp.clip(start_positions[:rows], -1, length)
            gold_end = jnp.clip(end_positions[:rows], -1, length)
            correct = correct_spans(starts, ends, gold_start, gold_end)[None]
        out = self.read(input_ids[None] if input_ids is not None else None,
                        None if attention_mask is None else attention_mask[None], token_type_ids[None],
                        relevance_score[None], block_mask[None], correct,
                        None if not labelled else has_answers[None], position_ids=position_ids,
                        inputs_embeds=None if inputs_embeds is None else inputs_embeds[None],
                        deterministic=deterministic, output_attentions=output_attentions,
                        output_hidden_states=output_hidden_states)
        return jax.tree.map(lambda x: x[0], out.replace(hidden_states=None, attentions=None)).replace(
            hidden_states=out.hidden_states, attentions=out.attentions)

    def read(self, input_ids, attention_mask, token_type_ids, relevance_score, block_mask, reader_correct=None,
             has_answers=None, *, position_ids=None, inputs_embeds=None, deterministic: bool = True,
             output_attentions: bool = False, output_hidden_states: bool = False) -> RealmReaderOutput:
        """The reader on a batch of questions: ``input_ids [B, R, L]``, ``relevance_score [B, S]``, ``block_mask
        [B, S or R, L]``, ``reader_correct [B, R, num_spans]`` bool and ``has_answers [B, S]`` (both or neither).
        Every output field gets the leading ``B``; ``hidden_states`` / ``attentions`` are of the ``B * R`` rows."""
        self.cls.register()
        source = input_ids if input_ids is not None else inputs_embeds
        b, r, length = source.shape[:3]
        flat = lambda x: None if x is None else x.reshape((b * r,) + x.shape[2:])  # noqa: E731
        out = self.realm(flat(input_ids), flat(attention_mask), flat(token_type_ids), position_ids,
                         flat(inputs_embeds), deterministic=deterministic, output_attentions=output_attentions,
                         output_hidden_states=output_hidden_states)
        hidden = out.last_hidden_state.reshape(b, r, length, -1)
        logits, _ = self.qa_outputs(hidden, block_mask[:, :r])
        relevance = relevance_score.astype(jnp.float32)
        logits = logits + relevance[:, :r, None]  # [B, R, num_spans]
        starts, ends = span_candidates(length, self.config.max_span_width)
        block, candidate, start_pos, end_pos = _best_span(logits, starts, ends)
        result = RealmReaderOutput(block, candidate, start_pos, end_pos, hidden_states=out.hidden_states,
                                   attentions=out.attentions)
        if reader_correct is None or has_answers is None:
            return result
        has_answers = has_answers.astype(bool)
        retriever_loss = marginal_log_loss(relevance, has_answers)  # [B]
        reader_loss = marginal_log_loss(logits.reshape(b, -1), reader_correct.reshape(b, -1))
        return result.replace(loss=retriever_loss + reader_loss, retriever_loss=retriever_loss,
                              reader_loss=reader_loss, retriever_correct=has_answers, reader_correct=reader_correct)


class RealmForOpenQA(_RealmModule):
    """End-to-end open-domain QA over an index of evidence blocks, for a batch of questions in one call.

    Variables: ``{"params": ..., "buffers": {"block_emb": [N, retriever_proj_size]}}``; ``N`` is
    ``num_block_records``, or, sharded, that padded to a multiple of the shard count (``layers.retrieval.pad_rows``).
    ``blocks`` (:class:`BlockTokens`, ``block_store.BlockStore.tokens()``) holds the same ``N`` rows as token ids.

    Call: questions ``input_ids [B, Lq]`` (``[CLS] q [SEP]``, padded; + mask, token types), ``answer_ids [B, A, La]``
    (token ids, each answer padded with -1; optional: without them no loss), ``beam_size`` (blocks retrieved per
    question; default HF's: ``searcher_beam_size`` when ``deterministic=False`` (training), else
    ``reader_beam_size``). The reader reads the first ``min(reader_beam_size, beam)`` blocks; the retriever loss
    covers all of them. ``rescore_blocks``: the retrieved blocks' logits from the current embedder on their tokens
    (``[CLS] block [SEP]``, as the index embeds them) instead of from ``block_emb`` (HF): the same values when the
    index is fresh, and differentiable with respect to the blocks too (training with a refreshed index).
    Returns :class:`RealmForOpenQAOutput`; every field has the leading ``B``.

    ``index_sharding`` (:class:`layers.retrieval.RowSharding`): ``block_emb`` and ``blocks`` are split by rows over
    that mesh axis and searched / gathered shard by shard. ``approximate_search`` uses ``lax.approx_max_k`` per
    chunk (TPU) at ``recall_target``; ``retrieval_chunk`` is the rows scored per step.
    """

    index_sharding: Optional[RowSharding] = None
    retrieval_chunk: int = DEFAULT_CHUNK
    approximate_search: bool = False
    recall_target: float = 0.95

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, answer_ids=None, *,
                 blocks: Optional[BlockTokens] = None, beam_size: Optional[int] = None,
                 rescore_blocks: bool = False, deterministic: bool = True) -> Optional[RealmForOpenQAOutput]:
        c = self.config
        embedder = self._child(RealmEmbedder, "embedder")
        reader = self._child(RealmReader, "reader")
        if not self.is_initializing() and not self.has_variable("buffers", "block_emb"):
            raise ValueError("block_emb: missing; apply with {'params': params, 'buffers': {'block_emb': "
                             "[num_block_records, retriever_proj_size]}} (jaxmodels.realm.load_block_emb)")
        table = self.variable("buffers", "block_emb", lambda: nn.Partitioned(
            jnp.zeros((c.num_block_records, c.retriever_proj_size), jnp.float32), (axes.CANDIDATES, axes.EMBED)))
        if self.is_initializing():
            # Params only: the embedder on the questions, the reader on one dummy row set.
            embedder(input_ids, attention_mask, token_type_ids)
            width = c.max_span_width
            reader.read(jnp.zeros((1, 1, width), jnp.int32), None, jnp.zeros((1, 1, width), jnp.int32),
                        jnp.zeros((1, 1)), jnp.zeros((1, 1, width), bool))
            return None
        block_emb = nn.unbox(table.value)
        k = self._check_call(input_ids, answer_ids, blocks, block_emb, beam_size, deterministic)
        read_rows = min(c.reader_beam_size, k)

        question = embedder(input_ids, attention_mask, token_type_ids, deterministic=deterministic).projected_score
        top = self._search(jax.lax.stop_gradient(question).astype(jnp.float32), block_emb, k)
        ids = top.ids  # [B, K]
        take = self._take
        # The retrieved blocks' tokens, gathered once (shard by shard when sharded) for the rescoring and the rows.
        block_tokens, block_counts = take(blocks.token_ids, ids), take(blocks.num_tokens, ids)
        if rescore_blocks:
            # REALM's "recompute p(z|x) of the top k with fresh parameters": the index only chooses the blocks, the
            # current embedder scores them, so the retriever loss trains the block side of the shared embedder as
            # well (what a refreshed index reads); from the index rows it would train the question side alone.
            b, k_ = ids.shape
            block_ids, block_mask = reader_inputs.block_rows(
                block_tokens, block_counts, cls_token_id=blocks.cls_token_id, sep_token_id=blocks.sep_token_id,
                pad_token_id=blocks.pad_token_id)
            retrieved = embedder(block_ids.reshape(b * k_, -1), block_mask.reshape(b * k_, -1),
                                 deterministic=deterministic).projected_score.reshape(b, k_, -1)
        else:
            # The retriever logits again, from the gathered rows: differentiable with respect to the question only.
            retrieved = take(block_emb, ids)  # [B, K, P]
        logits = jnp.einsum("bp,bkp->bk", question.astype(jnp.float32), retrieved.astype(jnp.float32))
        q_tokens, q_len = reader_inputs.question_tokens(input_ids, attention_mask, blocks.special_ids)
        rows = reader_inputs.build_rows(
            q_tokens, q_len, block_tokens, block_counts, seq_len=c.reader_seq_len,
            cls_token_id=blocks.cls_token_id, sep_token_id=blocks.sep_token_id, pad_token_id=blocks.pad_token_id)
        correct = has_answers = None
        if answer_ids is not None:
            matches, lengths = reader_inputs.answer_matches(rows, jnp.asarray(answer_ids))
            has_answers = jnp.any(matches, axis=(2, 3))  # [B, K]
            starts, ends = span_candidates(c.reader_seq_len, c.max_span_width)
            correct = reader_inputs.span_correct(matches[:, :read_rows], lengths, starts, ends)
        first = lambda x: x[:, :read_rows]  # noqa: E731
        out = reader.read(first(rows.input_ids), first(rows.attention_mask), first(rows.token_type_ids), logits,
                          first(rows.block_mask), correct, has_answers, deterministic=deterministic)
        # The best span's tokens, from the row it is in.
        best_row = jnp.take_along_axis(rows.input_ids, out.block_idx[:, None, None], axis=1)[:, 0]  # [B, M]
        offsets = jnp.arange(c.max_span_width)
        span = jnp.take_along_axis(best_row, jnp.clip(out.start_pos + offsets, 0, c.reader_seq_len - 1), axis=1)
        answer = jnp.where(out.start_pos + offsets <= out.end_pos, span, -1)
        return RealmForOpenQAOutput(out, answer, ids)

    def _check_call(self, input_ids, answer_ids, blocks, block_emb, beam_size, deterministic) -> int:
        """Validates a call; returns the number of blocks to retrieve."""
        c = self.config
        check_array("input_ids", input_ids)
        if input_ids is None or input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length] questions, got "
                             f"{None if input_ids is None else tuple(input_ids.shape)}")
        if not isinstance(blocks, BlockTokens):
            raise ValueError(f"blocks: the pre-tokenised evidence blocks (BlockTokens, from BlockStore.tokens()) are "
                             f"required, got {type(blocks).__name__}")
        shards = 1 if self.index_sharding is None else self.index_sharding.shards
        padded = -(-c.num_block_records // shards) * shards
        if block_emb.ndim != 2 or block_emb.shape[1] != c.retriever_proj_size or \
                block_emb.shape[0] not in (c.num_block_records, padded):
            rows = f"num_block_records={c.num_block_records}"
            if padded != c.num_block_records:
                rows += f" (or {padded}, padded for {shards} shards)"
            raise ValueError(f"block_emb has shape {tuple(block_emb.shape)}; expected [{rows}, "
                             f"retriever_proj_size={c.retriever_proj_size}]")
        if not jnp.issubdtype(block_emb.dtype, jnp.floating):
            raise ValueError(f"block_emb must be floating point (fp32 or bf16), got {block_emb.dtype}")
        rows = block_emb.shape[0]
        if blocks.token_ids.ndim != 2 or blocks.token_ids.shape[0] != rows:
            raise ValueError(f"blocks.token_ids has shape {tuple(blocks.token_ids.shape)}; expected [{rows} (the rows "
                             "of block_emb), block_len]")
        if not jnp.issubdtype(blocks.token_ids.dtype, jnp.integer):
            raise ValueError(f"blocks.token_ids must be integer token ids, got {blocks.token_ids.dtype}")
        if tuple(blocks.num_tokens.shape) != (rows,) or not jnp.issubdtype(blocks.num_tokens.dtype, jnp.integer):
            raise ValueError(f"blocks.num_tokens must be [{rows}] integers, got {tuple(blocks.num_tokens.shape)} "
                             f"{blocks.num_tokens.dtype}")
        if answer_ids is not None:
            check_array("answer_ids", answer_ids)
            if answer_ids.ndim != 3 or answer_ids.shape[0] != input_ids.shape[0]:
                raise ValueError(f"answer_ids has shape {tuple(answer_ids.shape)}; expected [batch={input_ids.shape[0]}"
                                 ", answers, answer_length] token ids, -1 padded")
        field = "beam_size" if beam_size is not None else (
            "searcher_beam_size" if not deterministic else "reader_beam_size")
        k = beam_size if beam_size is not None else getattr(c, field)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"beam_size={k!r}: must be a positive int")
        if k > c.num_block_records:
            raise ValueError(f"{field}={k} is larger than the index (num_block_records={c.num_block_records})")
        if c.reader_seq_len < c.max_span_width or c.reader_seq_len > c.max_position_embeddings:
            raise ValueError(f"config.reader_seq_len={c.reader_seq_len} must be in [max_span_width={c.max_span_width}, "
                             f"max_position_embeddings={c.max_position_embeddings}]")
        return k

    def _search(self, question: Array, block_emb: Array, k: int):
        c = self.config
        options = dict(chunk=self.retrieval_chunk, approx=self.approximate_search, recall_target=self.recall_target)
        if self.index_sharding is None:
            return mips_topk(question, block_emb, k, num_valid=c.num_block_records, **options)
        return sharded_mips_topk(question, block_emb, k, mesh=self.index_sharding.mesh, axis=self.index_sharding.axis,
                                 num_valid=c.num_block_records, **options)

    def _take(self, table: Array, ids: Array) -> Array:
        if self.index_sharding is None:
            return jnp.take(table, ids, axis=0)
        return sharded_take(table, ids, mesh=self.index_sharding.mesh, axis=self.index_sharding.axis)


class RealmForRetrievalPretraining(_RealmModule):
    """REALM's pretraining model (not an HF class): the retriever ``embedder`` (a :class:`RealmEmbedder` that embeds
    both the masked sentences and the evidence blocks) and the knowledge-augmented ``encoder`` (a
    :class:`RealmKnowledgeAugEncoder` over ``num_candidates`` = retrieved blocks + one null block).

    Its params are ``{"embedder": ..., "encoder": ...}``; the training objective applies each part with its own
    class (``train.objectives``), and each part's params load into that class (``embedder`` into
    :class:`RealmEmbedder` or ``RealmForOpenQA``'s ``embedder``, as REALM initialises open-QA fine-tuning).
    Calling it embeds ``input_ids`` and encodes them as every candidate row (what ``init`` needs); returns
    ``(projected_score [b, P], logits [b * C, l, vocab])``.
    """

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, *, deterministic: bool = True):
        c = self.config
        query = self._child(RealmEmbedder, "embedder")(input_ids, attention_mask, token_type_ids,
                                                       deterministic=deterministic).projected_score
        rows = jnp.repeat(input_ids[:, None], c.num_candidates, axis=1)
        expand = lambda x: None if x is None else jnp.repeat(x[:, None], c.num_candidates, axis=1)  # noqa: E731
        logits = self._child(RealmKnowledgeAugEncoder, "encoder")(
            rows, expand(attention_mask), expand(token_type_ids), deterministic=deterministic).logits
        return query, logits


ARCHITECTURES = {
    cls.__name__: cls
    for cls in (RealmEmbedder, RealmScorer, RealmKnowledgeAugEncoder, RealmReader, RealmForOpenQA,
                RealmForRetrievalPretraining)
}
