"""The experiment config: its keys, their checks, and the model it names.

Every experiment file (`configs/<name>.py`) returns an `ml_collections.ConfigDict` built on
`configs/defaults.base_config()`, so the keys here are exactly the keys there. `validate` runs at start-up,
before any data is read or anything traced, and raises `ValueError` naming the key (`config.<key>`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Mapping

import ml_collections

from configs import defaults, presets
from configs.axis_rules import resolve_rules
from train import objectives, optim

DTYPES = ("float32", "bfloat16", "float16")
RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
_INT_KEYS = {  # key -> smallest allowed value
    "batch_size": 1, "seq_len": 2, "total_steps": 1, "log_every": 1, "eval_every": 0, "eval_steps": 1,
    "checkpoint_every": 1, "keep_checkpoints": 1, "seed": 0, "warmup_steps": 0, "grad_accum_steps": 1,
    "sample_tokens": 0,
}
_FLOAT_KEYS = {"learning_rate", "end_learning_rate_factor", "weight_decay", "b1", "b2", "eps", "grad_clip_norm"}


def to_dict(config: Any) -> dict:
    """A plain (JSON-able) dict of a ConfigDict or mapping."""
    if isinstance(config, ml_collections.ConfigDict):
        return config.to_dict()
    return json.loads(json.dumps(dict(config)))


def _fail(key: str, value: Any, rule: str) -> None:
    raise ValueError(f"config.{key}={value!r}: {rule}")


def validate(config: ml_collections.ConfigDict) -> dict:
    """Checks every key of `config` and returns the resolved HF model dict. Raises ValueError naming the key."""
    known = defaults.base_config()
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
    resolve_rules(config.axis_rules)  # raises naming config.axis_rules
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
    max_pos = model.get("max_position_embeddings")
    if model.get("model_type") == "albert" and isinstance(max_pos, int) and config.seq_len > max_pos:
        _fail("seq_len", config.seq_len, f"exceeds model.max_position_embeddings={max_pos}")
    if model.get("model_type") == "reformer":
        shape = model.get("axial_pos_shape")
        if model.get("axial_pos_embds", True) and shape and math.prod(shape) != config.seq_len:
            _fail("seq_len", config.seq_len, f"a Reformer with axial positions trains at prod(model.axial_pos_shape)"
                  f"={math.prod(shape)}")
        chunks = [model.get(k) for k in ("local_attn_chunk_length", "lsh_attn_chunk_length") if model.get(k)]
        if chunks and config.seq_len % math.lcm(*chunks):
            _fail("seq_len", config.seq_len, f"must be a multiple of the attention chunk lengths {chunks}")
    return model


def model_config(config: ml_collections.ConfigDict) -> dict:
    """The HF-style dict `config.model` names (a preset name or the dict itself), checked field by field."""
    model = config.model
    if isinstance(model, str):
        if model not in presets.MODELS:
            _fail("model", model, f"unknown preset; presets: {sorted(presets.MODELS)}, or give an HF config dict")
        model = dict(presets.MODELS[model])
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
        family.config_class.from_hf_dict(model)
    except (TypeError, ValueError) as error:
        raise ValueError(f"config.model: {error}") from error
    architectures = model.get("architectures") or [family.default_architecture]
    if architectures[0] not in family.architectures:
        _fail("model.architectures", architectures, f"available: {sorted(family.architectures)}")
    return model
