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

from train import objectives, optim, partitioning

DTYPES = ("float32", "bfloat16", "float16")
RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
_INT_KEYS = {  # key -> smallest allowed value
    "batch_size": 1, "seq_len": 2, "total_steps": 1, "log_every": 1, "eval_every": 0, "eval_steps": 1,
    "checkpoint_every": 1, "keep_checkpoints": 1, "seed": 0, "warmup_steps": 0, "grad_accum_steps": 1,
    "sample_tokens": 0,
}
_FLOAT_KEYS = {"learning_rate", "end_learning_rate_factor", "weight_decay", "b1", "b2", "eps", "grad_clip_norm"}


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
    ))
    config.batch_size = 8      # global batch (rows per optimizer step)
    config.seq_len = 128
    config.total_steps = 1000
    config.log_every = 50
    config.eval_every = 500    # 0 disables evaluation
    config.eval_steps = 8
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
    config.init_from = ""        # weights to start from: an HF directory or Hub id, or an Orbax checkpoint
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
    objectives.get_objective(to_dict(objective))  # raises naming config.objective.<option>
    model = model_config(config)
    vocab = model.get("vocab_size")
    if isinstance(vocab, int) and vocab < config.data.vocab_size:
        _fail("model.vocab_size", vocab, f"must be >= data.vocab_size={config.data.vocab_size} (the tokenizer's ids)")
    import jaxmodels

    family = jaxmodels.family(model["model_type"])
    try:
        family.check_training_length(family.config_class.from_hf_dict(model), config.seq_len)
    except ValueError as error:
        _fail("seq_len", config.seq_len, str(error))
    return model


def model_config(config: ml_collections.ConfigDict) -> dict:
    """The HF-style dict `config.model` names (a preset name or the dict itself), checked field by field."""
    model = config.model
    if isinstance(model, str):
        from jaxmodels import registry

        try:
            model = registry.preset(model)
        except ValueError as error:
            _fail("model", model, f"{error}; or give an HF config dict")
    elif isinstance(model, (Mapping, ml_collections.ConfigDict)):
        model = to_dict(model)
    else:
        _fail("model", model, "expected an HF config dict or a preset name")
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
    for key in family.config_class.unknown_keys(model):
        _fail(f"model.{key}", model[key], f"not a field of {family.config_class.__name__}")
    try:
        family.config_class.from_hf_dict(model, strict=True)
    except (TypeError, ValueError) as error:
        raise ValueError(f"config.model: {error}") from error
    architectures = model.get("architectures") or [family.default_architecture]
    if architectures[0] not in family.architectures:
        _fail("model.architectures", architectures, f"available: {sorted(family.architectures)}")
    return model


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
    model = validate(config)
    import jaxmodels

    tx, schedule = optim.from_config(config)
    d = config.data
    return Experiment(
        config=config, model=model, family=jaxmodels.family(model["model_type"]),
        objective=objectives.get_objective(to_dict(config.objective)), tx=tx, schedule=schedule,
        mesh_spec=str(config.mesh), rules=partitioning.resolve_rules(config.axis_rules),
        data=DataSpec(source=d.source, vocab_size=d.vocab_size, tokenizer=d.tokenizer, data_dir=d.data_dir or None,
                      cache_dir=d.cache_dir or None, eval_split=d.eval_split, shards=d.shards,
                      batch_size=config.batch_size, seq_len=config.seq_len),
    )
