"""The family contract: one typed record per family, and the table that finds it by HF ``model_type``.

A family package (``jaxmodels/<family>/``) defines ``FAMILY = Family(...)`` in its ``__init__.py``; adding a family
is that package plus one line in ``_PACKAGES`` below. Nothing outside the family's package (the doorway, the
trainer, the tokenizer doorway) names a family: they read these records.

    family = registry.get("albert")                # imports jaxmodels.albert on first use, never the others
    module = family.architectures["AlbertForMaskedLM"](config=family.config_class(...))
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Any, Callable, Mapping

from jaxmodels.hf_io import KeyFn

# model_type (as in an HF config.json) -> the package that defines its ``FAMILY``. Imported lazily.
_PACKAGES = {
    "albert": "jaxmodels.albert",
    "reformer": "jaxmodels.reformer",
    "mega": "jaxmodels.mega",
    "rembert": "jaxmodels.rembert",
    "realm": "jaxmodels.realm",
    "longformer": "jaxmodels.longformer",
    "bart": "jaxmodels.bart",
}


def _no_check(config: Any, length: int) -> None:
    return None


def _no_kwargs(config: Any, length: int, key: Any) -> dict:
    return {}


def _no_renames(checkpoint_architecture: str, architecture: str) -> tuple:
    return ()


@dataclasses.dataclass(frozen=True)
class Family:
    """Everything the doorway, the tokenizer doorway and the trainer need to know about one family.

    Fields:
      model_type: the HF ``model_type`` (``"albert"``).
      config_class: the family's frozen config dataclass (``from_hf_dict`` / ``to_hf_dict``).
      architectures: HF class name -> Linen module class, for every head.
      default_architecture: the class ``from_config`` builds when a config names none (the bare model).
      base_model_prefix: HF's ``base_model_prefix`` (``"albert"``): bare and head checkpoints differ by it.
      key_fn: ``config -> (path, shape) -> [(hf_name, index)]``, the checkpoint names (``jaxmodels.hf_io``).
      dummy_inputs: ``(config, architecture) -> kwargs``: the smallest inputs that initialise a head.
      tied_keys: checkpoint names no param reads and that are not "unexpected": tied copies of another tensor
        (an LM head's decoder weight), or buffers the family loads on its own (REALM's ``block_emb`` index).
      tokenizer: ``directory -> tokenizer`` for an HF tokenizer directory, or None when the family has none.
      check_training_length: ``(config, length) -> None``, raising ``ValueError`` when a model cannot train on
        rows of ``length`` tokens (beyond the position table; a Reformer's fixed axial length). The message
        names the rule; the trainer prefixes ``config.seq_len``.
      rng_streams: PRNG streams (besides ``"dropout"``) a training forward pass draws from (Reformer: ``"lsh"``).
      generation_kwargs: ``(config, total_length, key) -> kwargs`` extra arrays ``jaxmodels.generation.generate``
        passes to every decoding call of a sample (Reformer: one set of LSH rotations for the whole sample).
      sequence_parallel: the family's modules take a ``sequence_sharding`` field
        (``layers.sequence_parallel.SequenceSharding``) and split the length over that mesh axis.
      block_store: a retrieval family's evidence-store class (``BlockStore``: ``write`` / ``open`` / ``tokens()``,
        its ``token_class``), which the trainer's retrieval objectives build their corpus with; None elsewhere.
      checkpoint_renames: ``(checkpoint_architecture, architecture) -> ((prefix, checkpoint_prefix), ...)``: where
        a head reads its params in an Orbax checkpoint of another of the family's classes, when the two name the
        same weights differently (REALM: an open-QA model's ``reader`` starts from the pretraining model's
        ``encoder``). A param whose path starts with ``prefix`` is read at ``checkpoint_prefix`` + the rest.
      presets: named model configs (HF ``config.json`` dicts) an experiment can give as ``config.model``; every
        name starts with ``<model_type>-`` (``albert-base-v2``), which is how :func:`preset` finds the family.
    """

    model_type: str
    config_class: type
    architectures: Mapping[str, type]
    default_architecture: str
    base_model_prefix: str
    key_fn: Callable[[Any], KeyFn]
    dummy_inputs: Callable[[Any, str], dict]
    tied_keys: tuple[str, ...] = ()
    tokenizer: Callable[[str], Any] | None = None
    check_training_length: Callable[[Any, int], None] = _no_check
    rng_streams: tuple[str, ...] = ()
    generation_kwargs: Callable[[Any, int, Any], dict] = _no_kwargs
    sequence_parallel: bool = False
    presets: Mapping[str, dict] = dataclasses.field(default_factory=dict)
    block_store: Any = None
    checkpoint_renames: Callable[[str, str], tuple] = _no_renames

    def __post_init__(self):
        if self.default_architecture not in self.architectures:
            raise ValueError(f"Family({self.model_type!r}).default_architecture={self.default_architecture!r} "
                             f"is not one of its architectures {sorted(self.architectures)}")
        if getattr(self.config_class, "model_type", None) != self.model_type:
            raise ValueError(f"Family({self.model_type!r}).config_class.model_type="
                             f"{getattr(self.config_class, 'model_type', None)!r} must equal the family's model_type")
        for name, model in self.presets.items():
            if not name.startswith(self.model_type + "-") or model.get("model_type") != self.model_type:
                raise ValueError(f"Family({self.model_type!r}).presets[{name!r}]: a preset's name starts with "
                                 f"'{self.model_type}-' and its dict has model_type={self.model_type!r}")


def model_types() -> list[str]:
    """Every ``model_type`` this checkout supports."""
    return sorted(_PACKAGES)


def get(model_type: str) -> Family:
    """The record of ``model_type``; imports that family's package (only that one)."""
    if model_type not in _PACKAGES:
        raise ValueError(f"model_type={model_type!r} is not supported; supported: {model_types()}")
    package = importlib.import_module(_PACKAGES[model_type])
    record = getattr(package, "FAMILY", None)
    if not isinstance(record, Family) or record.model_type != model_type:
        raise RuntimeError(f"{_PACKAGES[model_type]} must define FAMILY = Family(model_type={model_type!r}, ...)")
    return record


def of_config(config: Any) -> Family:
    """The record of a family config instance (``AlbertConfig(...)``)."""
    return get(getattr(type(config), "model_type", None))


def preset(name: str) -> dict:
    """A copy of the named model config (``"albert-base-v2"``): the family is the name's ``<model_type>-`` prefix."""
    model_type = name.split("-", 1)[0] if isinstance(name, str) else None
    presets = get(model_type).presets if model_type in _PACKAGES else {}
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; presets are named '<model_type>-...' after a family "
                         f"({', '.join(model_types())}){'; ' + model_type + ' has ' + str(sorted(presets)) if presets else ''}")
    return json.loads(json.dumps(presets[name]))
