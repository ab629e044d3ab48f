"""Training objectives: a batch of token rows -> model inputs -> loss, inside the jitted step.

An objective is a frozen dataclass registered by name; its fields are the options a config gives next to the
name (`config.objective = dict(name="mlm", mask_prob=0.15)`). Calling it returns `(loss, metrics)`:

    objective = get_objective({"name": "mlm_sop", "max_predictions": 20})
    loss, metrics = objective(module, params, batch, rng, deterministic=False)

`batch` is what `train.data.make_dataset` yields: {"inputs", "segment_ids", "positions"}, each
`[batch, length]` int32, with `segment_ids == 0` on padding. All randomness (which tokens to mask, which pairs
to swap) comes from `rng`, which the step derives from the seed and the step number, so a resumed run draws
exactly the masks of an uninterrupted one. A later family adds its own with `@register("name")`
(denoising, span QA, classification, retrieval) without touching the step.

An objective whose batches the pipeline must build differently says so with `data_options()`: keyword arguments
for `train.data.make_dataset` (`denoising` noises on the host, per example, and yields encoder/decoder batches);
`batch_keys` names the arrays its batches hold.

Fine-tuning objectives train task heads on `train.data.task_batches` batches (model inputs by their HF names plus
the labels): `sequence_classification`, `token_classification`, `question_answering`, `multiple_choice`,
`seq2seq` (source -> target, an encoder-decoder's `*ForConditionalGeneration`), each
for the heads of that HF class-name suffix (`HEAD_KINDS`), and `finetune`, which follows whatever head the model
has. They run the head with its labels, so the loss is the model's own (HF's), and add `predict` for evaluation.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from train.data import denoising as denoising_lib
from train.data import tokenizer as special

Array = jax.Array
IGNORE_INDEX = -100
CLS_ID, SEP_ID, MASK_ID = 4, 5, 6  # the control symbols every tokenizer in train.data defines
# Never chosen for masking: padding, document boundaries and the framing tokens the objective adds itself.
SPECIAL_IDS = (special.PAD_ID, special.BOS_ID, special.EOS_ID, CLS_ID, SEP_ID, MASK_ID)
FIRST_ORDINARY_ID = 7  # random replacements are drawn from [7, vocab_size): never a special symbol

OBJECTIVES: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator adding an objective to the registry under `name`."""
    def add(cls: type) -> type:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is registered twice")
        OBJECTIVES[name] = cls
        cls.name = name
        return cls
    return add


def get_objective(spec: Mapping[str, Any]):
    """An objective from `{"name": ..., **options}`; unknown names or options fail naming `config.objective.<key>`."""
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in OBJECTIVES:
        raise ValueError(f"config.objective.name={name!r}: expected one of {sorted(OBJECTIVES)}")
    cls = OBJECTIVES[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in spec:
        if key not in fields:
            raise ValueError(f"config.objective.{key}: not an option of objective {name!r} (options: {sorted(fields)})")
    return cls(**spec)


# --------------------------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------------------------
def masked_mean_cross_entropy(logits: Array, labels: Array) -> tuple[Array, Array]:
    """`(mean loss, accuracy)` over labels != -100, in float32. No labels at all gives 0, not 0/0 = NaN, so
    an unlucky all-padding batch cannot trip the run's NaN guard."""
    logits = logits.astype(jnp.float32)
    valid = labels != IGNORE_INDEX
    safe = jnp.where(valid, labels, 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    count = jnp.maximum(jnp.sum(valid), 1)
    correct = (jnp.argmax(logits, -1) == safe) & valid
    return jnp.sum(jnp.where(valid, nll, 0.0)) / count, jnp.sum(correct) / count


def mask_tokens(rng: Array, ids: Array, candidates: Array, *, vocab_size: int, mask_prob: float = 0.15,
                max_predictions: int | None = None, mask_id: int = MASK_ID,
                random_low: int = FIRST_ORDINARY_ID) -> tuple[Array, Array]:
    """BERT masking: picks a budget of positions per row, then 80% `[MASK]`, 10% a random token, 10% unchanged.

    Args:
      ids: `[batch, length]` token ids.
      candidates: `[batch, length]` bool, positions that may be picked (never padding or special tokens).
      mask_prob: the budget is `round(mask_prob * candidates per row)`, at least 1 when a row has candidates,
        at most `max_predictions`; exactly that many positions are picked, uniformly without replacement.
    Returns:
      `(inputs, labels)`: the corrupted ids, and the original ids at picked positions with -100 elsewhere.
    """
    k_pick, k_kind, k_token = jax.random.split(rng, 3)
    count = jnp.sum(candidates, axis=-1)
    budget = jnp.where(count > 0, jnp.maximum(jnp.round(count * mask_prob), 1), 0).astype(jnp.int32)
    if max_predictions is not None:
        budget = jnp.minimum(budget, max_predictions)
    # Ranking random scores picks exactly `budget` candidates per row with static shapes.
    scores = jnp.where(candidates, jax.random.uniform(k_pick, ids.shape), 2.0)
    rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    picked = candidates & (rank < budget[:, None])
    kind = jax.random.uniform(k_kind, ids.shape)
    random_ids = jax.random.randint(k_token, ids.shape, random_low, vocab_size, dtype=ids.dtype)
    inputs = jnp.where(picked & (kind < 0.8), mask_id, ids)
    inputs = jnp.where(picked & (kind >= 0.8) & (kind < 0.9), random_ids, inputs)
    labels = jnp.where(picked, ids, IGNORE_INDEX)
    return inputs, labels


def maskable(ids: Array, valid: Array) -> Array:
    """Positions that masking may pick: valid and not a special symbol."""
    return valid & ~jnp.isin(ids, jnp.asarray(SPECIAL_IDS, ids.dtype))


def frame_single(batch: Mapping[str, Array]) -> dict[str, Array]:
    """`[CLS] row[:length-2] [SEP]`, keeping the length: ALBERT's single-segment input."""
    ids, seg = batch["inputs"], batch["segment_ids"]
    b = ids.shape[0]
    col = lambda v: jnp.full((b, 1), v, ids.dtype)
    input_ids = jnp.concatenate([col(CLS_ID), ids[:, :-2], col(SEP_ID)], axis=1)
    valid = jnp.concatenate([col(1), (seg[:, :-2] > 0).astype(ids.dtype), col(1)], axis=1)
    # No token types: one segment is type 0, every model's default, and some models have no token-type table.
    return {"input_ids": input_ids, "attention_mask": valid}


def frame_sentence_order(batch: Mapping[str, Array], rng: Array) -> dict[str, Array]:
    """ALBERT sentence-order pairs from packed rows: `[CLS] A [SEP] B [SEP]` with the two consecutive halves of
    the row, swapped in half of the rows (`sentence_order_label` 1 = swapped, as HF).

    Halves of equal length keep shapes static; packing means a half may cross a document boundary, which
    only makes the task a little noisier than ALBERT's sentence-aligned segments.
    """
    ids, seg = batch["inputs"], batch["segment_ids"]
    b, length = ids.shape
    n = (length - 3) // 2
    first, second = ids[:, :n], ids[:, n:2 * n]
    first_ok, second_ok = seg[:, :n] > 0, seg[:, n:2 * n] > 0
    swap = jax.random.bernoulli(rng, 0.5, (b,))
    s = swap[:, None]
    a, b_ = jnp.where(s, second, first), jnp.where(s, first, second)
    a_ok, b_ok = jnp.where(s, second_ok, first_ok), jnp.where(s, first_ok, second_ok)
    col = lambda v: jnp.full((b, 1), v, ids.dtype)
    pad = length - (2 * n + 3)
    input_ids = jnp.concatenate([col(CLS_ID), a, col(SEP_ID), b_, col(SEP_ID), jnp.zeros((b, pad), ids.dtype)], 1)
    one = jnp.ones((b, 1), bool)
    valid = jnp.concatenate([one, a_ok, one, b_ok, one, jnp.zeros((b, pad), bool)], 1)
    token_type = jnp.concatenate([jnp.zeros((b, n + 2), ids.dtype), jnp.ones((b, n + 1), ids.dtype),
                                  jnp.zeros((b, pad), ids.dtype)], 1)
    return {"input_ids": jnp.where(valid, input_ids, special.PAD_ID), "attention_mask": valid.astype(ids.dtype),
            "token_type_ids": token_type, "sentence_order_label": swap.astype(jnp.int32)}


def _apply(module, params, inputs: Mapping[str, Array], rng: Array, deterministic: bool, *, metrics: bool = False):
    """``module.apply`` with the run's PRNG streams; with ``metrics`` also the scalars the heads sowed into
    ``intermediates`` (``mlm_loss``, ``mlm_accuracy``, ``sop_accuracy``, ...) as a flat ``{name: value}``."""
    # Dropout, plus the streams the family draws from in a forward pass (Reformer's "lsh" hashing rotations, drawn
    # afresh each step as HF draws them on every forward).
    from jaxmodels import registry

    model_type = getattr(type(getattr(module, "config", None)), "model_type", None)
    extra = registry.get(model_type).rng_streams if model_type in registry.model_types() else ()
    streams = ("dropout",) + extra
    rngs = {name: jax.random.fold_in(rng, i) for i, name in enumerate(streams)}
    if not metrics:
        return module.apply({"params": params}, **inputs, deterministic=deterministic, rngs=rngs)
    out, state = module.apply({"params": params}, **inputs, deterministic=deterministic, rngs=rngs,
                              mutable=["intermediates"])
    sown = {}
    for path, value in jax.tree_util.tree_flatten_with_path(state.get("intermediates", {}))[0]:
        name = next(k.key for k in reversed(path) if isinstance(k, jax.tree_util.DictKey))
        sown[name] = value  # sow keeps a tuple per call; a head sows each name once
    return out, sown


def masked_lm_forward(module, params, inputs: Mapping[str, Array], labels: Array, rng: Array,
                      deterministic: bool, **extra_inputs) -> tuple[Any, Array, dict]:
    """Runs a masked-LM head *with* its labels, so the model computes the loss its own way: the heads project only
    the labelled rows (``layers.vocab_loss``) and sow ``mlm_accuracy`` from the same rows, and a step that reads
    only the loss never forms the ``[batch, length, vocab]`` logits.

    Returns ``(output, loss, metrics)``. A batch without a single label (all padding) has loss 0, not torch's
    0/0: one label is put in for the computation and its loss multiplied by zero, so gradients stay finite.
    Heads that sow no accuracy get it from their logits.
    """
    labelled = labels != IGNORE_INDEX
    any_label = jnp.any(labelled)
    first = jnp.where(any_label, labels[0, 0], inputs["input_ids"][0, 0])
    out, sown = _apply(module, params, {**inputs, **extra_inputs, "labels": labels.at[0, 0].set(first)}, rng,
                       deterministic, metrics=True)
    loss = jnp.where(any_label, out.loss, 0.0)
    if "mlm_accuracy" not in sown:
        logits = getattr(out, "prediction_logits", None)
        logits = out.logits if logits is None else logits
        sown["mlm_accuracy"] = masked_mean_cross_entropy(logits, labels)[1]
    metrics = {k: jnp.where(any_label, v, 0.0) if k.startswith("mlm_") else v for k, v in sown.items()}
    return out, loss, metrics


# --------------------------------------------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------------------------------------------
@register("mlm")
@dataclasses.dataclass(frozen=True)
class MaskedLM:
    """Masked LM on `[CLS] row [SEP]`; for `*ForMaskedLM` (or any module returning `logits [b, l, vocab]`)."""

    mask_prob: float = 0.15
    max_predictions: int = 20

    def __post_init__(self):
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"config.objective.mask_prob={self.mask_prob!r}: must be in (0, 1)")
        if not isinstance(self.max_predictions, int) or self.max_predictions < 1:
            raise ValueError(f"config.objective.max_predictions={self.max_predictions!r}: expected an int >= 1")

    def corrupt(self, inputs: dict, rng: Array, vocab_size: int) -> tuple[dict, Array]:
        ids = inputs["input_ids"]
        ids, labels = mask_tokens(rng, ids, maskable(ids, inputs["attention_mask"] > 0), vocab_size=vocab_size,
                                  mask_prob=self.mask_prob, max_predictions=self.max_predictions)
        return {**inputs, "input_ids": ids}, labels

    def __call__(self, module, params, batch, rng, *, deterministic: bool):
        k_mask, k_model = jax.random.split(rng)
        inputs, labels = self.corrupt(frame_single(batch), k_mask, module.config.vocab_size)
        _, loss, metrics = masked_lm_forward(module, params, inputs, labels, k_model, deterministic)
        return loss, {"loss": loss, "mlm_accuracy": metrics["mlm_accuracy"]}


@register("mlm_sop")
@dataclasses.dataclass(frozen=True)
class MaskedLMSentenceOrder(MaskedLM):
    """ALBERT pretraining: masked LM + sentence-order prediction; for `AlbertForPreTraining` (`sop_logits`)."""

    def __call__(self, module, params, batch, rng, *, deterministic: bool):
        k_pair, k_mask, k_model = jax.random.split(rng, 3)
        inputs = frame_sentence_order(batch, k_pair)
        order = inputs.pop("sentence_order_label")
        inputs, labels = self.corrupt(inputs, k_mask, module.config.vocab_size)
        out, loss, metrics = masked_lm_forward(module, params, inputs, labels, k_model, deterministic,
                                               sentence_order_label=order)
        if getattr(out, "sop_logits", None) is None or "sop_loss" not in metrics:
            raise ValueError(f"config.objective.name='mlm_sop' needs a model with a sentence-order head "
                             f"(AlbertForPreTraining); {type(module).__name__} has none")
        return loss, {"loss": loss, **{k: metrics[k] for k in ("mlm_loss", "mlm_accuracy", "sop_loss",
                                                                 "sop_accuracy")}}


@register("causal_lm")
@dataclasses.dataclass(frozen=True)
class CausalLM:
    """Next-token prediction on the packed stream; for decoders (`*WithLMHead`, `*ForCausalLM`).

    Position t predicts token t+1; targets on padding are ignored. Documents in a row are not isolated: the
    model sees the end of one and learns that `</s>` starts another, as GPT-style packing does.
    """

    def __call__(self, module, params, batch, rng, *, deterministic: bool):
        ids, seg = batch["inputs"], batch["segment_ids"]
        out = _apply(module, params, {"input_ids": ids}, rng, deterministic)
        labels = jnp.where(seg[:, 1:] > 0, ids[:, 1:], IGNORE_INDEX)
        loss, accuracy = masked_mean_cross_entropy(out.logits[:, :-1], labels)
        return loss, {"loss": loss, "accuracy": accuracy}


# --------------------------------------------------------------------------------------------------------------
# Retrieval-augmented objectives (REALM): the index of block embeddings lives in the train state, not the params
# --------------------------------------------------------------------------------------------------------------
def exclude_and_keep(ids: Array, scores: Array, excluded: Array, k: int) -> tuple[Array, Array]:
    """The first ``k`` of the ranked ``ids [b, k + 1]`` that are not ``excluded [b]`` (order kept)."""
    keep = ids != excluded[:, None]
    order = jnp.argsort(~keep, axis=1, stable=True)[:, :k]
    return jnp.take_along_axis(ids, order, 1), jnp.take_along_axis(scores, order, 1)


def pick_salient_span(rng: Array, spans: Array) -> Array:
    """One salient span per row, uniformly among the row's spans (``spans [b, l]`` numbered from 1, 0 = none):
    the ``[b, l]`` bool mask of its tokens (all False in a row without spans)."""
    count = jnp.max(spans, axis=1)
    chosen = 1 + jnp.floor(jax.random.uniform(rng, count.shape) * count).astype(spans.dtype)
    return (spans == chosen[:, None]) & (count[:, None] > 0)


@dataclasses.dataclass(frozen=True)
class _RetrievalObjective:  # noqa: B903
    """What a retrieval objective shares: the index refresh options and the retriever's params.

    ``refresh_every``: steps between index refreshes (re-embedding every block with the current retriever; 0 =
    never: a frozen index, as ORQA fine-tunes). ``retriever``: the params key of the block/query embedder
    (``embedder``, a ``RealmEmbedder``); ``embed_chunk``: blocks embedded per device per scan step.
    """

    refresh_every: int = 0
    retriever: str = "embedder"
    embed_chunk: int = 64
    index_axis: str = "data"
    # Set by the trainer (not a config option): the mesh whose `index_axis` splits the index and the block store
    # by rows; retrieval then searches and gathers shard by shard (layers.retrieval).
    index_mesh: Any = dataclasses.field(default=None, compare=False)

    uses_index = True

    def __post_init__(self):
        for name in ("refresh_every", "embed_chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "refresh_every" else 1):
                raise ValueError(f"config.objective.{name}={value!r}: expected an int >= "
                                 f"{0 if name == 'refresh_every' else 1}")

    def embedder(self, module):
        """The retriever's module class, built from ``module.config`` (the family's ``RealmEmbedder``)."""
        from jaxmodels import registry

        family = registry.of_config(module.config)
        return family.architectures["RealmEmbedder"](config=module.config, dtype=module.dtype)

    def embed(self, module, params, input_ids, attention_mask, rng, deterministic):
        out = self.embedder(module).apply({"params": params[self.retriever]}, input_ids, attention_mask,
                                          deterministic=deterministic, rngs={"dropout": rng})
        return out.projected_score.astype(jnp.float32)

    def embed_blocks(self, module, params, blocks) -> Array:
        """Every block's embedding ``[N, P]`` fp32 (the index), in scan steps of ``embed_chunk`` rows."""
        n = blocks.token_ids.shape[0]
        c = min(self.embed_chunk, n)

        def one(chunk_ids):
            rows, mask = blocks.rows(chunk_ids)
            return self.embed(module, params, rows, mask, jax.random.PRNGKey(0), True)

        full = n // c * c
        parts = [jax.lax.map(one, jnp.arange(full).reshape(-1, c)).reshape(full, -1)]
        if n > full:
            parts.append(one(jnp.arange(full, n)))
        return jnp.concatenate(parts) if len(parts) > 1 else parts[0]

    def search(self, query: Array, index: Array, k: int, num_valid: int):
        from layers import retrieval

        if self.index_mesh is None:
            return retrieval.mips_topk(query, index, k, num_valid=num_valid)
        return retrieval.sharded_mips_topk(query, index, k, mesh=self.index_mesh, axis=self.index_axis,
                                           num_valid=num_valid)

    def take(self):
        from layers import retrieval

        if self.index_mesh is None:
            return None
        return lambda table, ids: retrieval.sharded_take(table, ids, mesh=self.index_mesh, axis=self.index_axis)


@register("realm_pretrain")
@dataclasses.dataclass(frozen=True)
class RetrievalMaskedLM(_RetrievalObjective):
    """REALM pretraining; for a module with a retriever ``embedder`` and a knowledge-augmented ``encoder``
    (``RealmForRetrievalPretraining``).

    Per sentence (``batch``: ``inputs [b, l]`` = ``[CLS] s [SEP]``, ``salient_spans [b, l]``, ``source_block [b]``):
    1. salient-span masking: one span of capitalised words / numbers (a tagger-free stand-in for REALM's named
       entities and dates, see ``train.data.retrieval_corpus``) becomes ``[MASK]``;
    2. the masked sentence is embedded and the top ``k = num_candidates - 1`` blocks are retrieved from the
       index in the state (``extras["index"]``, exact MIPS, no gradient), the sentence's own block excluded;
    3. those blocks are embedded afresh by the current retriever (gradient into it, as REALM recomputes
       ``p(z|x)`` of the top-k), relevance = query . block, and a null block (empty evidence, ``[CLS] [SEP]``,
       scored the same way) is added, so the encoder can do without retrieval;
    4. the encoder reads ``[CLS] masked sentence [SEP] block [SEP]`` for each candidate; the loss is the negative
       marginal log-likelihood of the masked tokens, ``-log sum_z p(z|x) p(y|x, z)`` (``marginal_mlm_loss``),
       so gradients reach both the encoder and the query/block embedder;
    5. with ``ict_weight`` > 0, plus that weight times ORQA's inverse cloze task (the masked sentence must score its
       own block above the batch's other blocks, in-batch negatives as ORQA, and every row's retrieved blocks, hard
       negatives already embedded for step 3): REALM warm-starts its retriever with ICT, since the marginal
       likelihood alone gives the retriever no signal while its top-k is random.
    """

    mask_token_id: int = 4
    ict_weight: float = 0.0

    @staticmethod
    def batch_shapes(batch_size: int, seq_len: int) -> dict:
        return {"inputs": (batch_size, seq_len), "salient_spans": (batch_size, seq_len), "source_block": (batch_size,)}

    def __call__(self, module, params, batch, rng, *, deterministic: bool, index=None, blocks=None):
        if index is None or blocks is None:
            raise ValueError("config.objective.name='realm_pretrain' needs the index and the block store "
                             "(train.loop passes them)")
        from jaxmodels import registry

        family = registry.of_config(module.config)
        c = module.config
        k = c.num_candidates - 1
        k_mask, k_query, k_block, k_enc = jax.random.split(rng, 4)
        ids = batch["inputs"].astype(jnp.int32)
        pad, cls_id, sep_id = blocks.pad_token_id, blocks.cls_token_id, blocks.sep_token_id
        valid = ids != pad
        masked = pick_salient_span(k_mask, batch["salient_spans"]) & valid
        query_ids = jnp.where(masked, self.mask_token_id, ids)
        labels = jnp.where(masked, ids, IGNORE_INDEX)
        query = self.embed(module, params, query_ids, valid.astype(jnp.int32), k_query, deterministic)  # [b, P]
        top = self.search(jax.lax.stop_gradient(query), index, k + 1, c.num_block_records)
        retrieved, _ = exclude_and_keep(top.ids, top.scores, batch["source_block"].astype(top.ids.dtype), k)
        b = ids.shape[0]
        rows, row_mask = blocks.rows(retrieved, self.take())  # [b, k, Lb + 2]
        # The retrieved blocks and the null block ([CLS] [SEP], empty evidence) embedded by the current retriever.
        width = rows.shape[-1]
        null_row = jnp.full((1, width), pad, jnp.int32).at[0, 0].set(cls_id).at[0, 1].set(sep_id)
        null_mask = (jnp.arange(width) < 2).astype(jnp.int32)[None]
        extra_rows, extra_mask = [null_row], [null_mask]
        if self.ict_weight:  # the sentences' own blocks, for the inverse cloze task below
            own, own_mask = blocks.rows(batch["source_block"], self.take())
            extra_rows, extra_mask = [own, null_row], [own_mask, null_mask]
        fresh = self.embed(module, params, jnp.concatenate([rows.reshape(b * k, -1), *extra_rows]),
                           jnp.concatenate([row_mask.reshape(b * k, -1), *extra_mask]), k_block, deterministic)
        scores = jnp.einsum("bp,bkp->bk", query, fresh[:b * k].reshape(b, k, -1))
        relevance = jnp.concatenate([scores, query @ fresh[-1][:, None]], axis=1)  # the null block last
        # [CLS] masked sentence [SEP] (padded, pads unattended) then block [SEP]; the null block is just [SEP].
        block_part = jnp.concatenate([rows[..., 1:], jnp.full((b, 1, rows.shape[-1] - 1), pad, jnp.int32)], 1)
        block_part = block_part.at[:, k, 0].set(sep_id)
        block_mask = jnp.concatenate([row_mask[..., 1:], jnp.zeros((b, 1, rows.shape[-1] - 1), jnp.int32)], 1)
        block_mask = block_mask.at[:, k, 0].set(1)
        length = ids.shape[1]
        enc_ids = jnp.concatenate([jnp.repeat(query_ids[:, None], k + 1, 1), block_part], -1)
        enc_mask = jnp.concatenate([jnp.repeat(valid[:, None].astype(jnp.int32), k + 1, 1), block_mask], -1)
        enc_types = jnp.concatenate([jnp.zeros((b, k + 1, length), jnp.int32), block_mask], -1)
        encoder = family.architectures["RealmKnowledgeAugEncoder"](config=c, dtype=module.dtype)
        # Only the sentence part is predicted (mlm_prefix): the block positions' logits, 5.5x as many at REALM's
        # sizes and most of a base model's step memory (train/AOT.md), are never formed.
        out = encoder.apply({"params": params["encoder"]}, enc_ids, enc_mask, enc_types, relevance_score=relevance,
                            labels=labels, mlm_mask=labels != IGNORE_INDEX, deterministic=deterministic,
                            mlm_prefix=length, rngs={"dropout": k_enc})
        any_label = jnp.any(masked)
        loss = jnp.where(any_label, out.loss, 0.0)
        # The marginal prediction's accuracy on the masked tokens, and how much the null block is relied on.
        log_prior = jax.nn.log_softmax(relevance, axis=-1)
        logp = jax.nn.log_softmax(out.logits.astype(jnp.float32), -1).reshape(b, k + 1, length, -1)
        marginal = jax.nn.logsumexp(logp + log_prior[:, :, None, None], axis=1)
        correct = (jnp.argmax(marginal, -1) == ids) & masked
        count = jnp.maximum(jnp.sum(masked), 1)
        metrics = {}
        if self.ict_weight:
            # ORQA's inverse cloze task, REALM's retriever warm start: each masked sentence must find its own block
            # among the batch's blocks (in-batch negatives; a block shared by two rows is correct for both) and
            # every row's retrieved blocks (hard negatives, already embedded above; never a row's own block).
            source = batch["source_block"]
            candidates = jnp.concatenate([fresh[b * k:b * k + b], fresh[:b * k]])  # [b + b * k, P]
            ict_logits = query @ candidates.T  # [b, b + b * k]
            same = jnp.concatenate([source[:, None] == source[None, :],
                                    source[:, None] == retrieved.reshape(1, -1).astype(source.dtype)], axis=1)
            from layers.span_reader import marginal_log_loss

            ict = jnp.mean(marginal_log_loss(ict_logits, same))
            loss = loss + self.ict_weight * ict
            metrics = {"ict_loss": ict, "ict_accuracy": jnp.mean(same[jnp.arange(b), jnp.argmax(ict_logits, 1)])}
        return loss, {"loss": loss, **metrics, "mlm_accuracy": jnp.sum(correct) / count,
                      "null_block_probability": jnp.mean(jnp.exp(log_prior[:, k])),
                      "retrieval_entropy": -jnp.mean(jnp.sum(jnp.exp(log_prior) * log_prior, -1))}


@register("realm_openqa")
@dataclasses.dataclass(frozen=True)
class RetrievalOpenQA(_RetrievalObjective):
    """Open-domain QA fine-tuning from ``(question, answers)``; for ``RealmForOpenQA`` (retriever ``embedder`` +
    ``reader``). The model retrieves ``beam_size`` blocks of the index (``extras["index"]``), the reader reads the
    first ``reader_beam_size``; the loss is the model's: the reader's marginal span loss plus the retriever's
    marginal loss over the retrieved blocks that hold an answer (both 0 when none does), or, with
    ``retriever_loss="index"``, over every block of the index (see the field).

    ``batch``: ``inputs [b, l]`` questions (``[CLS] q [SEP]``, padded), ``answers [b, A, La]`` (-1 padded),
    ``answer_block [b]`` (the block holding the answer, for recall). Metrics: the loss terms, ``recall@1/5`` and
    ``recall@beam`` (the answer block among the top retrieved) and ``exact_match`` (the predicted span's tokens are
    an answer's).
    """

    beam_size: int = 8
    answer_len: int = 4  # tokens of an answer in a batch (train.data.retrieval_corpus); shapes only
    # The retrieved blocks scored by the current embedder, not the index rows: the retriever loss then trains the
    # block side of the shared embedder too, which the next refresh reads (REALM's fresh p(z|x) of the top k).
    rescore_blocks: bool = True
    # "beam": the model's retriever loss, REALM's, over the retrieved blocks (a question whose answer block is not
    # among them has none). "index": the exact marginal over every block of the index, -log sum_{z holds an answer}
    # p(z|x) with p(z|x) a softmax over all N blocks (question side only: the index rows are constants); it needs
    # [batch, N] scores and an answer search through every block, so it is for stores small enough to scan.
    retriever_loss: str = "beam"

    def __post_init__(self):
        super().__post_init__()
        if self.retriever_loss not in ("beam", "index"):
            raise ValueError(f"config.objective.retriever_loss={self.retriever_loss!r}: expected 'beam' or 'index'")

    def batch_shapes(self, batch_size: int, seq_len: int) -> dict:
        return {"inputs": (batch_size, seq_len), "answers": (batch_size, 1, self.answer_len),
                "answer_block": (batch_size,)}

    def __call__(self, module, params, batch, rng, *, deterministic: bool, index=None, blocks=None):
        if index is None or blocks is None:
            raise ValueError("config.objective.name='realm_openqa' needs the index and the block store "
                             "(train.loop passes them)")
        ids = batch["inputs"].astype(jnp.int32)
        mask = (ids != blocks.pad_token_id).astype(jnp.int32)
        answers = batch["answers"].astype(jnp.int32)
        if getattr(module, "index_sharding", None) is None:  # unsharded: the index without its padding rows
            n = module.config.num_block_records
            blocks = blocks.replace(token_ids=blocks.token_ids[:n], num_tokens=blocks.num_tokens[:n])
            index = index[:n]
        out = module.apply({"params": params, "buffers": {"block_emb": index}}, ids, mask, None, answers,
                           blocks=blocks, beam_size=self.beam_size, rescore_blocks=self.rescore_blocks,
                           deterministic=deterministic, rngs={"dropout": rng})
        reader = out.reader_output
        loss = jnp.mean(reader.loss)
        retriever_loss = jnp.mean(reader.retriever_loss)
        if self.retriever_loss == "index":
            from layers.span_reader import marginal_log_loss

            question = self.embed(module, params, ids, mask, rng, deterministic)  # [b, P]
            n = module.config.num_block_records
            scores = question @ index.astype(jnp.float32).T  # [b, rows]; padding rows (sharded) never hold an answer
            scores = jnp.where(jnp.arange(scores.shape[1]) < n, scores, jnp.finfo(jnp.float32).min)
            retriever_loss = jnp.mean(marginal_log_loss(scores, blocks.holding(answers)))
            loss = jnp.mean(reader.reader_loss) + retriever_loss
        retrieved = out.retrieved_block_ids
        hit = retrieved == batch["answer_block"][:, None].astype(retrieved.dtype)
        width = out.predicted_answer_ids.shape[-1]
        gold = answers[..., :width]
        gold = jnp.concatenate([gold, jnp.full(gold.shape[:-1] + (width - gold.shape[-1],), -1, gold.dtype)], -1)
        exact = jnp.any(jnp.all(out.predicted_answer_ids[:, None, :] == gold, -1), -1)
        recall = lambda n: jnp.mean(jnp.any(hit[:, :n], -1).astype(jnp.float32))  # noqa: E731
        return loss, {"loss": loss, "retriever_loss": retriever_loss,
                      "reader_loss": jnp.mean(reader.reader_loss), "recall@1": recall(1), "recall@5": recall(5),
                      "recall@beam": recall(self.beam_size), "exact_match": jnp.mean(exact.astype(jnp.float32))}


@register("denoising")
@dataclasses.dataclass(frozen=True)
class Denoising:
    """BART pretraining: reconstruct the original text from its sentence-permuted, span-infilled version; for
    encoder-decoder LM heads (`*ForConditionalGeneration`).

    The noising runs in the data pipeline (`train.data.denoising`: Poisson(`poisson_lambda`) spans, one mask per
    span, zero-length spans insert one, `mask_ratio` of the tokens masked, `permute_sentence_ratio` of each
    document's sentences shuffled); the step reads `input_ids`, `attention_mask`, `decoder_input_ids` (the labels
    shifted right after `decoder_start_token_id`, which must be the model's), `decoder_attention_mask` and
    `labels`, and the model computes its token cross-entropy over every label (`accuracy`: arg-max hits).
    """

    mask_ratio: float = 0.3
    poisson_lambda: float = 3.0
    permute_sentence_ratio: float = 1.0
    decoder_start_token_id: int = special.EOS_ID

    batch_keys = denoising_lib.KEYS

    def __post_init__(self):
        try:
            self.options()
        except ValueError as error:
            raise ValueError(f"config.objective.{error}") from None

    def options(self) -> denoising_lib.DenoisingOptions:
        return denoising_lib.DenoisingOptions(self.mask_ratio, self.poisson_lambda, self.permute_sentence_ratio,
                                              self.decoder_start_token_id)

    def data_options(self) -> dict:
        return {"denoising": self.options()}

    def check_model(self, architecture: str, config) -> None:
        """The model must be an encoder-decoder LM whose special ids are the data's: `train.experiment` checks the
        config before anything runs, the step again when it is traced (a module built some other way)."""
        if not architecture.endswith("ForConditionalGeneration"):
            raise ValueError(f"config.objective.name='denoising' needs an encoder-decoder LM head "
                             f"(*ForConditionalGeneration); config.model.architectures names {architecture}")
        expected = {"pad_token_id": special.PAD_ID, "decoder_start_token_id": self.decoder_start_token_id}
        for field, want in expected.items():
            if getattr(config, field, want) != want:
                alternative = " (or set config.objective.decoder_start_token_id)" if field.startswith("decoder") else ""
                raise ValueError(f"config.model.{field}={getattr(config, field)!r}: the denoising batches use "
                                 f"{want} (train.data's <pad>=0, <s>=2, </s>=3; BART starts decoding with </s>); "
                                 f"set it to {want}{alternative}")

    def __call__(self, module, params, batch, rng, *, deterministic: bool):
        self.check_model(type(module).__name__, module.config)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")}
        # Rows grain pads a finite run's last batch with are zeros: their decoder mask, not their labels, says so.
        labels = jnp.where(batch["decoder_attention_mask"] > 0, batch["labels"], IGNORE_INDEX)
        _, loss, metrics = masked_lm_forward(module, params, inputs, labels, rng, deterministic)
        return loss, {"loss": loss, "accuracy": metrics["mlm_accuracy"]}


def data_options(objective) -> dict:
    """The `train.data.make_dataset` keyword arguments `objective` needs (none for most objectives)."""
    method = getattr(objective, "data_options", None)
    return method() if method is not None else {}


def batch_keys(objective) -> tuple[str, ...]:
    """The arrays of the batches `objective` reads, each `[batch, length]` int32."""
    return tuple(getattr(objective, "batch_keys", ("inputs", "segment_ids", "positions")))


# --------------------------------------------------------------------------------------------------------------
# Fine-tuning objectives: one per kind of task head, picked from the head's HF class name
# --------------------------------------------------------------------------------------------------------------
# HF's naming convention for task heads (`AlbertForSequenceClassification`, ...): the class-name suffix says what
# the head computes and what labels it takes, so the trainer needs no family's name to pick an objective.
HEAD_KINDS = {
    "ForSequenceClassification": "sequence_classification",
    "ForTokenClassification": "token_classification",
    "ForQuestionAnswering": "question_answering",
    "ForMultipleChoice": "multiple_choice",
    "ForConditionalGeneration": "seq2seq",
}
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
LABEL_KEYS = {
    "sequence_classification": ("labels",),
    "token_classification": ("labels",),
    "question_answering": ("start_positions", "end_positions"),
    "multiple_choice": ("labels",),
    "seq2seq": ("labels",),
}


def head_kind(architecture: str) -> str | None:
    """The task kind of an HF class name (`"AlbertForTokenClassification"` -> `"token_classification"`), or None
    for a class that is no task head (a bare model, a language-model head)."""
    for suffix, kind in HEAD_KINDS.items():
        if architecture.endswith(suffix):
            return kind
    return None


@dataclasses.dataclass(frozen=True)
class _TaskHead:
    """Runs a task head with its labels, so the model computes HF's loss its own way (as `masked_lm_forward` does
    for masked LM): regression / single-label / multi-label by `problem_type`, tokens labelled -100 ignored, span
    positions outside the row ignored.

    `batch` (what `train.data.task_batches` yields): `input_ids`, `attention_mask` and, for models that take them,
    `token_type_ids`, each `[batch, length]` (`[batch, choices, length]` for multiple choice), plus the labels of
    the kind (`LABEL_KEYS`): `labels` `[batch]` int (class or right choice), `[batch]` float (regression),
    `[batch, num_labels]` float (multi-label), `[batch, length]` int (tokens); `start_positions` / `end_positions`
    `[batch]` int.
    """

    kind = ""  # set by each subclass: the HEAD_KINDS value it trains

    def check_head(self, module) -> None:
        task_kind(self, type(module).__name__)

    def model_inputs(self, batch: Mapping[str, Array]) -> dict[str, Array]:
        return {k: batch[k] for k in MODEL_INPUTS if k in batch}

    def __call__(self, module, params, batch, rng, *, deterministic: bool):
        self.check_head(module)
        labels = {k: batch[k] for k in LABEL_KEYS[self.kind]}
        out = _apply(module, params, {**self.model_inputs(batch), **labels}, rng, deterministic)
        return out.loss, {"loss": out.loss, **self.train_metrics(module, out, batch)}

    def train_metrics(self, module, out, batch) -> dict[str, Array]:
        return {}

    def predict(self, module, params, batch, rng) -> dict[str, Array]:
        """The head's outputs without labels or dropout, for evaluation on the host: `{"logits"}`, or
        `{"start_logits", "end_logits"}` for span QA."""
        self.check_head(module)
        out = _apply(module, params, self.model_inputs(batch), rng, True)
        if self.kind == "question_answering":
            return {"start_logits": out.start_logits.astype(jnp.float32),
                    "end_logits": out.end_logits.astype(jnp.float32)}
        return {"logits": out.logits.astype(jnp.float32)}


def _class_accuracy(logits: Array, labels: Array) -> Array:
    return masked_mean_cross_entropy(logits, labels.astype(jnp.int32))[1]


@register("sequence_classification")
@dataclasses.dataclass(frozen=True)
class SequenceClassification(_TaskHead):
    """`*ForSequenceClassification`: one label per row (or per pair), `[batch]` class ids, `[batch]` regression
    targets or `[batch, num_labels]` multi-label targets; the model's `problem_type` picks the loss."""

    kind = "sequence_classification"

    def train_metrics(self, module, out, batch):
        labels = batch["labels"]
        if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
            return {}  # regression and multi-label: the loss says it
        return {"accuracy": _class_accuracy(out.logits, labels)}


@register("token_classification")
@dataclasses.dataclass(frozen=True)
class TokenClassification(_TaskHead):
    """`*ForTokenClassification`: `labels [batch, length]`, -100 on special tokens, padding and (unless the data
    labels every sub-token) word continuations."""

    kind = "token_classification"

    def train_metrics(self, module, out, batch):
        return {"accuracy": _class_accuracy(out.logits, batch["labels"])}


@register("question_answering")
@dataclasses.dataclass(frozen=True)
class QuestionAnswering(_TaskHead):
    """`*ForQuestionAnswering`: `start_positions` / `end_positions [batch]`, token positions of the answer in the
    window (the first token, `[CLS]`, for a window without the answer)."""

    kind = "question_answering"

    def train_metrics(self, module, out, batch):
        start = jnp.argmax(out.start_logits, -1) == batch["start_positions"]
        end = jnp.argmax(out.end_logits, -1) == batch["end_positions"]
        return {"span_accuracy": jnp.mean(start & end)}


@register("multiple_choice")
@dataclasses.dataclass(frozen=True)
class MultipleChoice(_TaskHead):
    """`*ForMultipleChoice`: inputs `[batch, choices, length]`, `labels [batch]` the index of the right choice."""

    kind = "multiple_choice"

    def train_metrics(self, module, out, batch):
        return {"accuracy": _class_accuracy(out.logits, batch["labels"])}


@register("seq2seq")
@dataclasses.dataclass(frozen=True)
class Seq2Seq(_TaskHead):
    """`*ForConditionalGeneration` (an encoder-decoder): `labels [batch, target_length]` the target tokens (-100 on
    padding); the model reads them shifted right behind its decoder start token and scores each next token.
    Evaluation generates (`train.finetune`); `predict` gives the teacher-forced loss of each row."""

    kind = "seq2seq"

    def predict(self, module, params, batch, rng):
        """`target_nll [batch]` (summed over the row's target tokens) and `target_tokens [batch]`."""
        self.check_head(module)
        labels = batch["labels"]
        out = _apply(module, params, {**self.model_inputs(batch), "labels": labels}, rng, True)
        logp = jax.nn.log_softmax(out.logits.astype(jnp.float32), axis=-1)
        mask = labels != IGNORE_INDEX
        picked = jnp.take_along_axis(logp, jnp.where(mask, labels, 0)[..., None], axis=-1)[..., 0]
        return {"target_nll": -jnp.sum(jnp.where(mask, picked, 0.0), axis=-1),
                "target_tokens": jnp.sum(mask, axis=-1).astype(jnp.int32)}


TASK_OBJECTIVES = {cls.kind: cls for cls in (SequenceClassification, TokenClassification, QuestionAnswering,
                                              MultipleChoice, Seq2Seq)}


@register("finetune")
@dataclasses.dataclass(frozen=True)
class FineTune:
    """Fine-tunes whatever task head the model has: the objective of its class-name suffix (`HEAD_KINDS`)."""

    def for_module(self, module):
        return TASK_OBJECTIVES[task_kind(self, type(module).__name__)]()

    def __call__(self, module, params, batch, rng, *, deterministic: bool):
        return self.for_module(module)(module, params, batch, rng, deterministic=deterministic)

    def predict(self, module, params, batch, rng):
        return self.for_module(module).predict(module, params, batch, rng)


def task_kind(objective, architecture: str) -> str | None:
    """The kind of task `objective` trains on a model of class `architecture` (None for pretraining objectives);
    a task objective on a head of another kind raises `ValueError` naming the config keys."""
    kind = head_kind(architecture)
    if isinstance(objective, FineTune):
        if kind is None:
            raise ValueError(f"config.objective.name='finetune': config.model.architectures[0]={architecture!r} is "
                             f"no task head (one of {', '.join('*' + s for s in HEAD_KINDS)})")
        return kind
    if isinstance(objective, _TaskHead):
        if kind != objective.kind:
            wanted = next(s for s, k in HEAD_KINDS.items() if k == objective.kind)
            raise ValueError(f"config.objective.name={objective.name!r} trains a '*{wanted}' head; "
                             f"config.model.architectures[0] is {architecture!r} (change one of them, or use "
                             "objective 'finetune', which follows the head)")
        return kind
    return None
