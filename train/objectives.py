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
