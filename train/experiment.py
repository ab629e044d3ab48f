"""The experiment config: its defaults, its keys' checks, and the one resolved `Experiment` it describes.

Every experiment file (`configs/<name>.py`) returns an `ml_collections.ConfigDict` built on `base_config()` here, so
the keys here are exactly the keys there. `resolve` reads a config once, at start-up, before any data is read or
anything traced, raising `ValueError` naming the key (`config.<key>`), and returns an `Experiment`: the model, the
objective, the optimizer and schedule, the mesh and its rules, and the data. `train/loop.py` (`python -m train`)
and `train/aot.py` (`python -m train.aot`) both run from it, so they cannot interpret a config differently.

    experiment = resolve(load_config("configs/quickstart.py"))
    mesh = experiment.make_mesh()                   # or make_mesh(devices) for an ahead-of-time TPU topology
    module = experiment.build_module(mesh)          # the family's class, dtype, remat, sequence sharding
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
from typing import Any, Mapping, Sequence

import ml_collections

from train import objectives, optim, partitioning, task_metrics
from train.data import task_features
from train.data.task_features import TaskSpec

DTYPES = ("float32", "bfloat16", "float16")
RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
_INT_KEYS = {  # key -> smallest allowed value
    "batch_size": 1, "seq_len": 2, "total_steps": 1, "log_every": 1, "eval_every": 0, "eval_steps": 1,
    "checkpoint_every": 1, "keep_checkpoints": 1, "seed": 0, "warmup_steps": 0, "grad_accum_steps": 1,
    "sample_tokens": 0,
}
_FLOAT_KEYS = {"learning_rate", "end_learning_rate_factor", "weight_decay", "b1", "b2", "eps", "grad_clip_norm",
               "head_learning_rate_factor", "layer_decay"}
_TASK_INT_KEYS = {"doc_stride": 1, "max_query_tokens": 1, "max_answer_tokens": 1, "max_target_length": 2,
                  "num_beams": 1}


def base_config(model=""):
    """`model`: an HF-style config dict (model_type, architectures, fields) or a preset name (`albert-base-v2`:
    a family's `presets`, see `jaxmodels.registry.preset`).

    Its type is fixed here (ml_collections is type-safe), so a file switching between a dict and a preset name
    does it inside `config.ignore_type()`.
    """
    config = ml_collections.ConfigDict()
    config.model = model
    # Objective name from train.objectives plus its options, e.g. dict(name="mlm", mask_prob=0.15).
    config.objective = ml_collections.ConfigDict({"name": "causal_lm"})
    config.data = ml_collections.ConfigDict(dict(
        source="kjv",          # "kjv", a local text path, or a prepared TFDS name
        vocab_size=8000,       # SentencePiece pieces trained on the source on first use
        tokenizer="",          # a .model path instead of training one
        data_dir="",           # TFDS data dir ("" = TFDS default)
        cache_dir="",          # tokenizer cache ("" = ~/.cache/jaxmodels/sentencepiece)
        eval_split="validation",
        shards=0,              # document shards making each global batch (0 = one per process); keep it
                               # fixed to get the same batches, and resume, under any number of processes
        block_tokens=288,      # retrieval objectives: most WordPiece tokens of an evidence block (REALM's 288)
        max_documents=0,       # retrieval objectives: the corpus' first documents only (0 = all)
        # Fine-tuning (objective "finetune" or a task objective; the keys above but `tokenizer`, `vocab_size` and
        # `cache_dir` are for language-model objectives). README "Fine-tuning" shows the file formats.
        train_file="",         # labelled examples, .jsonl (one JSON object a line) or .csv (a header row)
        eval_file="",          # held-out examples in the same format ("" = none; then config.eval_every=0);
                               # the whole file is evaluated each time (config.eval_steps is for LMs)
        # Field names in the files per role; a head reads only its own roles (sequence classification: text,
        # text_pair ("" = single texts), label; token classification: tokens, tags; extractive QA: question,
        # context, answers; multiple choice: text, choices, label; sequence to sequence: source, target).
        schema=ml_collections.ConfigDict(dict(
            text="text", text_pair="", label="label", tokens="tokens", tags="tags", question="question",
            context="context", answers="answers", choices="choices", source="source", target="target")),
        labels=(),             # class / tag names in id order; () = the sorted distinct labels of train_file
        label_all_tokens=False,  # token classification: every sub-token of a word takes its tag (B-X
                                 # continuations take I-X), instead of the first one only (the rest -100)
        buckets=(),            # padded lengths, ascending, the last = seq_len; () = 16, 32, 64, ... up to seq_len
                               # (lengths the model cannot train on left out): one compiled step per bucket
        doc_stride=64,         # extractive QA: tokens between the starts of consecutive context windows
        max_query_tokens=64,   # extractive QA: questions are cut to this many tokens
        max_answer_tokens=30,  # extractive QA: longest answer (in tokens) evaluation predicts
        max_target_length=64,  # sequence to sequence: targets are cut to this many tokens (and generated up to it)
        num_beams=4,           # sequence to sequence: beams of the evaluation's beam search
    ))
    config.batch_size = 8      # global batch (rows per optimizer step)
    config.seq_len = 128
    config.total_steps = 1000
    config.log_every = 50
    config.eval_every = 500    # 0 disables evaluation
    config.eval_steps = 8
    config.eval_at_start = False  # also evaluate before the first step (logged as step 0): a run's starting point
    config.checkpoint_every = 500
    config.keep_checkpoints = 3
    config.seed = 0
    config.rng_impl = "threefry2x32"  # "rbg" compiles much faster on CPU; both resume exactly
    config.optimizer = "adamw"  # adamw | lamb | adafactor | sgd
    config.learning_rate = 1e-3
    config.warmup_steps = 100
    config.schedule = "cosine"  # cosine | linear | constant (after warm-up)
    config.end_learning_rate_factor = 0.0
    config.weight_decay = 0.01
    config.b1 = 0.9
    config.b2 = 0.999
    config.eps = 1e-6
    config.grad_clip_norm = 1.0  # 0 disables clipping
    config.grad_accum_steps = 1  # micro-batches per optimizer step (batch_size must divide)
    config.mesh = "data=-1"      # axes data/fsdp/sequence/tensor; -1 fills the rest of the devices
    config.axis_rules = "default"  # logical -> mesh axis rules: a name from train.partitioning.RULE_SETS, or pairs
    config.dtype = "float32"     # compute dtype; params stay float32
    config.remat = False
    config.init_from = ""        # weights to start from: an HF directory or Hub id, or an Orbax checkpoint;
                                 # config.model's fields go on top of its config.json (a head's num_labels,
                                 # architectures: a fresh head on its backbone)
    # Fine-tuning: the eval metric whose best checkpoint is kept in DIR/best/ besides the latest ones ("" = the
    # task's headline metric: accuracy, entity_f1, SQuAD f1, pearson for regression; see train.task_metrics).
    config.best_metric = ""
    config.best_mode = ""        # "max" | "min" ("" = min for loss and mse, max for the others)
    config.head_learning_rate_factor = 1.0  # the task head's learning rate is this times the backbone's
    # Layer-wise learning-rate decay (1.0 = none): the top row of the layer stack learns at decay x the head's
    # rate, each row below at decay x the one above, the embeddings below the bottom row; see train/optim.py.
    config.layer_decay = 1.0
    config.async_checkpointing = True
    config.sample_prompt = ""    # causal LMs: text to continue at the end of the run ("" = none)
    config.sample_tokens = 32
    return config


def load_config(path: str) -> ml_collections.ConfigDict:
    """The `get_config()` of an experiment file, loaded by path (configs are data, not an importable package).

    A config that builds on another loads it the same way, relative to itself:
    `load_config(os.path.join(os.path.dirname(__file__), "albert_pretrain.py"))`.
    """
    if not os.path.isfile(path):
        raise ValueError(f"--config={path!r}: no such config file")
    name = "_experiment_config_" + re.sub(r"\W", "_", os.path.abspath(path))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"--config={path!r}: the file defines no get_config()")
    return module.get_config()


def to_dict(config: Any) -> dict:
    """A plain (JSON-able) dict of a ConfigDict or mapping."""
    if isinstance(config, ml_collections.ConfigDict):
        return config.to_dict()
    return json.loads(json.dumps(dict(config)))


def _fail(key: str, value: Any, rule: str) -> None:
    raise ValueError(f"config.{key}={value!r}: {rule}")


def validate(config: ml_collections.ConfigDict) -> dict:
    """Checks every key of `config` and returns the resolved HF model dict. Raises ValueError naming the key."""
    return _validated(config)[0]


def _validated(config: ml_collections.ConfigDict) -> tuple[dict, Any, TaskSpec | None]:
    """`validate`'s checks; returns the model dict, the objective and the fine-tuning data (or None)."""
    known = base_config()
    unknown = sorted(set(config.keys()) - set(known.keys()))
    if unknown:
        raise ValueError(f"config.{unknown[0]}: unknown key (known keys: {', '.join(sorted(known.keys()))})")
    data_unknown = sorted(set(config.data.keys()) - set(known.data.keys()))
    if data_unknown:
        raise ValueError(f"config.data.{data_unknown[0]}: unknown key (known: {', '.join(sorted(known.data.keys()))})")
    for key, minimum in _INT_KEYS.items():
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            _fail(key, value, f"expected an int >= {minimum}")
    for key in _FLOAT_KEYS:
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            _fail(key, value, "expected a finite number >= 0")
    if not config.learning_rate > 0:
        _fail("learning_rate", config.learning_rate, "must be > 0")
    if config.batch_size % config.grad_accum_steps:
        _fail("grad_accum_steps", config.grad_accum_steps, f"must divide batch_size={config.batch_size}")
    if config.dtype not in DTYPES:
        _fail("dtype", config.dtype, f"expected one of {DTYPES}")
    if config.rng_impl not in RNG_IMPLS:
        _fail("rng_impl", config.rng_impl, f"expected one of {RNG_IMPLS}")
    if config.optimizer not in optim.OPTIMIZERS:
        _fail("optimizer", config.optimizer, f"expected one of {sorted(optim.OPTIMIZERS)}")
    if config.schedule not in optim.SCHEDULES:
        _fail("schedule", config.schedule, f"expected one of {optim.SCHEDULES}")
    if config.warmup_steps > config.total_steps:
        _fail("warmup_steps", config.warmup_steps, f"must be <= total_steps={config.total_steps}")
    if not re.fullmatch(r"\s*(\w+\s*=\s*-?\d+\s*)(,\s*\w+\s*=\s*-?\d+\s*)*", str(config.mesh)):
        _fail("mesh", config.mesh, "expected 'axis=size,...' such as 'data=2,fsdp=2,tensor=2'")
    if not isinstance(config.data.vocab_size, int) or config.data.vocab_size < 16:
        _fail("data.vocab_size", config.data.vocab_size, "expected an int >= 16")
    partitioning.resolve_rules(config.axis_rules)  # raises naming config.axis_rules
    if not isinstance(config.data.shards, int) or config.data.shards < 0 or \
            (config.data.shards and config.batch_size % config.data.shards):
        _fail("data.shards", config.data.shards, f"expected 0 (one per process) or an int dividing "
              f"batch_size={config.batch_size}")
    if not isinstance(config.data.source, str) or not config.data.source:
        _fail("data.source", config.data.source, "expected a non-empty string")
    objective = config.objective
    if not isinstance(objective, (Mapping, ml_collections.ConfigDict)) or "name" not in objective:
        _fail("objective", objective, "expected a dict with a 'name' and the objective's options")
    objective = objectives.get_objective(to_dict(objective))  # raises naming config.objective.<option>
    if not config.head_learning_rate_factor > 0:
        _fail("head_learning_rate_factor", config.head_learning_rate_factor, "must be > 0")
    if not 0 < config.layer_decay <= 1:
        _fail("layer_decay", config.layer_decay, "must be in (0, 1] (1 = no decay)")
    model = model_config(config)
    task = task_spec(config, model, objective)
    best_checkpoint_rule(config, task)
    vocab = model.get("vocab_size")
    # A tokenizer trained here has at most data.vocab_size ids; a given one (or init_from's) is checked when loaded.
    trains_tokenizer = task is None or not (config.data.tokenizer or config.init_from)
    if trains_tokenizer and isinstance(vocab, int) and vocab < config.data.vocab_size:
        _fail("model.vocab_size", vocab, f"must be >= data.vocab_size={config.data.vocab_size} (the tokenizer's ids)")
    import jaxmodels

    family = jaxmodels.family(model["model_type"])
    try:
        family.check_training_length(family.config_class.from_hf_dict(model), config.seq_len)
    except ValueError as error:
        _fail("seq_len", config.seq_len, str(error))
    if hasattr(objective, "check_model"):  # an objective that needs a kind of head or special ids (denoising)
        architecture = (model.get("architectures") or [family.default_architecture])[0]
        objective.check_model(architecture, family.config_class.from_hf_dict(model))
    return model, objective, task


def model_config(config: ml_collections.ConfigDict) -> dict:
    """The HF-style dict `config.model` names (a preset name or the dict itself), checked field by field.

    With `config.init_from`, `config.model` goes over the checkpoint's `config.json`, so it may give only what
    changes (a task head: `architectures`, `num_labels`); a new `num_labels` drops the checkpoint's label names.
    """
    model = config.model
    if isinstance(model, str) and (model or not config.init_from):
        from jaxmodels import registry

        try:
            model = registry.preset(model)
        except ValueError as error:
            _fail("model", model, f"{error}; or give an HF config dict")
    elif isinstance(model, (Mapping, ml_collections.ConfigDict)):
        model = to_dict(model)
    elif isinstance(model, str):
        model = {}
    else:
        _fail("model", model, "expected an HF config dict or a preset name")
    given = dict(model)
    if config.init_from:
        model = _over_checkpoint(config.init_from, model)
    if "model_type" not in model:
        _fail("model", model, "the dict needs a 'model_type' (as in an HF config.json)")
    import jaxmodels  # deferred: the config checks above should not pay for importing a model family

    try:
        family = jaxmodels.family(model["model_type"])
    except ImportError as error:
        raise ValueError(f"config.model.model_type={model['model_type']!r}: the family package is not available "
                         f"in this checkout ({error}); pick another model") from error
    except ValueError as error:
        raise ValueError(f"config.model.model_type: {error}") from error
    for key in family.config_class.unknown_keys(given):
        _fail(f"model.{key}", given[key], f"not a field of {family.config_class.__name__}")
    # Keys of the checkpoint's own config.json that are no field here are ignored, as the doorway ignores them.
    ignored = set(family.config_class.unknown_keys(model)) - set(given)
    model = {k: v for k, v in model.items() if k not in ignored}
    try:
        family.config_class.from_hf_dict(model, strict=True)
    except (TypeError, ValueError) as error:
        raise ValueError(f"config.model: {error}") from error
    architectures = model.get("architectures") or [family.default_architecture]
    if architectures[0] not in family.architectures:
        _fail("model.architectures", architectures, f"available: {sorted(family.architectures)}")
    return model


def _over_checkpoint(init_from: str, model: dict) -> dict:
    """`model`'s fields over the config.json of the checkpoint `init_from` (an HF directory or Hub id, or an Orbax
    checkpoint), read as `jaxmodels.from_pretrained` reads it."""
    from jaxmodels import hf_io, hub, orbax_io

    try:
        path = hub.resolve(init_from, files=hub.MODEL_FILES)
        base = orbax_io.read_config(path) if orbax_io.is_orbax(path) else hf_io.read_config(path)
    except ValueError as error:
        raise ValueError(f"config.init_from={init_from!r}: {error}") from error
    if "model_type" in model and model["model_type"] != base["model_type"]:
        _fail("model.model_type", model["model_type"], f"config.init_from={init_from!r} holds a "
              f"{base['model_type']!r} model")
    if "num_labels" in model or "id2label" in model:
        base = {k: v for k, v in base.items() if k not in ("id2label", "label2id")}
    return {**base, **model}


def task_spec(config: ml_collections.ConfigDict, model: dict, objective) -> TaskSpec | None:
    """The fine-tuning data of the run (`train.data.task_features.TaskSpec`), or None for a pretraining objective;
    checks the `config.data` keys of fine-tuning, naming the key."""
    import jaxmodels

    family = jaxmodels.family(model["model_type"])
    architecture = (model.get("architectures") or [family.default_architecture])[0]
    kind = objectives.task_kind(objective, architecture)
    d = config.data
    if kind is None:
        if d.train_file:
            _fail("data.train_file", d.train_file, f"labelled examples are for fine-tuning a task head; objective "
                  f"{config.objective.name!r} reads config.data.source")
        return None
    if not isinstance(d.train_file, str) or not d.train_file:
        _fail("data.train_file", d.train_file, "fine-tuning needs a file of labelled examples (.jsonl or .csv)")
    if not isinstance(d.eval_file, str):
        _fail("data.eval_file", d.eval_file, "expected a path or \"\"")
    if config.eval_every and not d.eval_file:
        _fail("data.eval_file", d.eval_file, f"needed to evaluate every config.eval_every={config.eval_every} steps; "
              "give a file of held-out examples, or set config.eval_every=0")
    known_roles = set(base_config().data.schema.keys())
    for role in d.schema.keys():
        if role not in known_roles:
            _fail(f"data.schema.{role}", d.schema[role], f"unknown role (roles: {', '.join(sorted(known_roles))})")
    fields = {}
    for role in task_features.ROLES[kind]:
        field = d.schema[role]
        if not isinstance(field, str) or (not field and role not in task_features.OPTIONAL_ROLES):
            _fail(f"data.schema.{role}", field, f"expected the name of the field holding the {role} of each example")
        if field:
            fields[role] = field
    labels = d.labels
    if not isinstance(labels, (tuple, list)) or not all(isinstance(x, str) and x for x in labels):
        _fail("data.labels", labels, "expected class / tag names in id order (a tuple of strings), or ()")
    if not isinstance(d.label_all_tokens, bool):
        _fail("data.label_all_tokens", d.label_all_tokens, "expected a bool")
    for key, minimum in _TASK_INT_KEYS.items():
        value = d[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            _fail(f"data.{key}", value, f"expected an int >= {minimum}")
    buckets = tuple(d.buckets) if isinstance(d.buckets, (tuple, list)) else d.buckets
    if not isinstance(buckets, tuple) or not all(isinstance(b, int) and not isinstance(b, bool) for b in buckets):
        _fail("data.buckets", d.buckets, "expected ascending ints (padded lengths), or () for the default")
    if buckets:
        if list(buckets) != sorted(set(buckets)) or buckets[-1] != config.seq_len or buckets[0] < 2:
            _fail("data.buckets", buckets, f"expected ascending lengths >= 2 ending with config.seq_len={config.seq_len}")
        for length in buckets:
            try:
                family.check_training_length(family.config_class.from_hf_dict(model), length)
            except ValueError as error:
                _fail("data.buckets", buckets, f"{length}: {error}")
    else:
        buckets = default_buckets(family, model, config.seq_len)
    head = family.config_class.from_hf_dict(model)
    problem_type = ""
    if kind == task_features.SEQUENCE_CLASSIFICATION:
        # HF picks multi-label for float labels when problem_type is unset; a file's labels are read as the config
        # says instead, so a multi-label file needs config.model.problem_type set.
        problem_type = head.problem_type or ("regression" if head.num_labels == 1 else "single_label_classification")
    if kind == task_features.SEQ2SEQ:
        try:
            family.check_training_length(head, d.max_target_length)
        except ValueError as error:
            _fail("data.max_target_length", d.max_target_length, f"the decoder's {error}")
    if kind == task_features.QUESTION_ANSWERING and head.num_labels != 2:
        _fail("model.num_labels", head.num_labels, "a question-answering head has 2 outputs (start and end)")
    return task_features.TaskSpec(
        kind=kind, train_file=d.train_file, eval_file=d.eval_file, fields=fields, labels=tuple(labels),
        num_labels=head.num_labels, problem_type=problem_type, max_length=config.seq_len, buckets=buckets,
        label_all_tokens=d.label_all_tokens, doc_stride=d.doc_stride, max_query_tokens=d.max_query_tokens,
        max_answer_tokens=d.max_answer_tokens, max_target_length=d.max_target_length, num_beams=d.num_beams,
        token_type_ids=_takes_token_types(family, head, architecture))


def _takes_token_types(family, head_config, architecture: str) -> bool:
    """Whether the model reads `token_type_ids`: its call takes them and a trace with them passes its input checks
    (a MEGA without a token-type table refuses them). Only shapes are traced."""
    import inspect

    import jax
    import jax.numpy as jnp

    module_class = family.architectures[architecture]
    if "token_type_ids" not in inspect.signature(module_class.__call__).parameters:
        return False
    inputs = family.dummy_inputs(head_config, architecture)
    types = jnp.zeros_like(inputs["input_ids"])
    try:
        jax.eval_shape(lambda key: module_class(config=head_config).init(key, **inputs, token_type_ids=types),
                       jax.random.PRNGKey(0))
    except ValueError:
        return False
    return True


def default_buckets(family, model: dict, seq_len: int) -> tuple[int, ...]:
    """16, 32, 64, ... below `seq_len`, then `seq_len`; lengths the model cannot train on are left out (a
    Reformer with axial positions trains at one length only)."""
    config = family.config_class.from_hf_dict(model)
    lengths, length = [], 16
    while length < seq_len:
        lengths.append(length)
        length *= 2
    accepted = []
    for length in lengths:
        try:
            family.check_training_length(config, length)
        except ValueError:
            continue
        accepted.append(length)
    return tuple(accepted) + (seq_len,)


def best_checkpoint_rule(config: ml_collections.ConfigDict, task: TaskSpec | None) -> tuple[str, str] | None:
    """`(metric, "max" | "min")` the run keeps its best checkpoint by (None without evaluation or a task)."""
    if config.best_mode not in ("", "max", "min"):
        _fail("best_mode", config.best_mode, "expected 'max', 'min' or '' (by the metric)")
    if not isinstance(config.best_metric, str):
        _fail("best_metric", config.best_metric, "expected a metric name")
    if task is None:
        if config.best_metric:
            _fail("best_metric", config.best_metric, "a best checkpoint is kept for fine-tuning runs only")
        return None
    group = task_metrics.metric_group(task.kind, task.problem_type)
    metric = config.best_metric.removeprefix("eval_") or task_metrics.HEADLINE[group]
    if metric not in task_metrics.METRICS[group]:
        _fail("best_metric", config.best_metric, f"not a metric of this task (its metrics: "
              f"{', '.join(task_metrics.METRICS[group])})")
    if not config.eval_every:
        return None
    return metric, config.best_mode or ("min" if metric in task_metrics.LOWER_IS_BETTER else "max")


# --------------------------------------------------------------------------------------------------------------
# The resolved experiment
# --------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Where the batches come from (the `config.data` keys, checked), and their shape."""

    source: str
    vocab_size: int
    tokenizer: str
    data_dir: str | None
    cache_dir: str | None
    eval_split: str
    shards: int  # 0: one per process
    batch_size: int
    seq_len: int


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run is, read once from a validated config.

    `config` is kept (metadata, summaries); everything else is what `train/loop.py` and `train/aot.py` build from.
    `family` is the model's `jaxmodels.registry.Family` record; `model` the HF-style config dict.
    """

    config: ml_collections.ConfigDict
    model: dict
    family: Any
    objective: Any
    tx: Any
    schedule: Any
    mesh_spec: str
    rules: tuple
    data: DataSpec
    task: TaskSpec | None = None  # fine-tuning: the labelled files and how to read them; None for pretraining
    best: tuple[str, str] | None = None  # fine-tuning: (metric, "max" | "min") of the best checkpoint kept

    @property
    def name(self) -> str:
        """The objective's name (`causal_lm`, `mlm`, ...)."""
        return self.objective.name

    def make_mesh(self, devices: Sequence[Any] | None = None):
        """The run's mesh over `devices` (default: every device of the job)."""
        return partitioning.make_mesh(self.mesh_spec, devices)

    def build_module(self, mesh=None):
        """The module `config.model` names, computing in `config.dtype`, with `config.remat`; a family that runs
        sequence-parallel gets the `sequence_sharding` of `mesh` (when the mesh splits the length)."""
        from train import state

        sharding = None if mesh is None else partitioning.sequence_sharding(mesh, self.rules)
        return state.build_model(self.model, dtype=self.config.dtype, remat=self.config.remat,
                                 sequence_sharding=sharding)


def resolve(config: ml_collections.ConfigDict) -> Experiment:
    """Checks `config` (see `validate`) and resolves it into an `Experiment`. Raises ValueError naming the key."""
    model, objective, task = _validated(config)
    import jaxmodels

    family = jaxmodels.family(model["model_type"])
    factors = None
    if config.head_learning_rate_factor != 1 or config.layer_decay != 1:
        from train import state

        module = state.build_model(model)
        boxed = jax_eval_shape_boxed(module)
        factors = optim.learning_rate_factors(boxed, backbone=family.base_model_prefix,
                                              head_factor=config.head_learning_rate_factor,
                                              layer_decay=config.layer_decay)
    tx, schedule = optim.from_config(config, factors)
    d = config.data
    return Experiment(
        config=config, model=model, family=family, objective=objective, tx=tx, schedule=schedule,
        mesh_spec=str(config.mesh), rules=partitioning.resolve_rules(config.axis_rules),
        data=DataSpec(source=d.source, vocab_size=d.vocab_size, tokenizer=d.tokenizer, data_dir=d.data_dir or None,
                      cache_dir=d.cache_dir or None, eval_split=d.eval_split, shards=d.shards,
                      batch_size=config.batch_size, seq_len=config.seq_len),
        task=task, best=best_checkpoint_rule(config, task),
    )


def jax_eval_shape_boxed(module) -> Any:
    """The module's params, abstract (nothing computed), boxed with their logical axis names."""
    import jax

    import jaxmodels

    return jax.eval_shape(lambda key: jaxmodels.init_params(module, key, boxed=True), jax.random.PRNGKey(0))
