"""Base for family configs: frozen dataclasses whose fields and defaults are the HF config's.

A family config lists the HF fields it uses; ``from_hf_dict`` keeps those (plus ``num_labels`` derived from
``id2label`` as HF does) and drops HF bookkeeping (``architectures``, ``torch_dtype``, ...); ``to_hf_dict`` gives a
dict that ``transformers.<Family>Config(**d)`` accepts. ``__post_init__`` in each family validates its rules so a
bad value fails at construction with the field named, long before anything is traced; before it, every field's
value is checked against the field's annotation (a JSON ``"false"`` is not a bool, ``"1e-12"`` not a float).

Keys of a dict that are neither fields nor HF bookkeeping (a misspelt ``hiden_size``, a field of another family)
would otherwise fall back to the default silently: ``from_hf_dict`` warns naming them, and raises with
``strict=True`` (what ``python -m train`` uses). HF itself keeps unknown keys as attributes without a word.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
import warnings
from typing import Any, ClassVar, Iterable

# Keys every HF config.json may carry that no family computes with: PretrainedConfig's own attributes
# (transformers 4.46.3), which a family that has a use for one lists as a field instead.
_HF_BOOKKEEPING = {
    "_attn_implementation_autoset", "_name_or_path", "_commit_hash", "add_cross_attention", "architectures",
    "bad_words_ids", "begin_suppress_tokens", "bos_token_id", "chunk_size_feed_forward", "cross_attention_hidden_size",
    "decoder_start_token_id", "diversity_penalty", "do_sample", "early_stopping", "encoder_no_repeat_ngram_size",
    "eos_token_id", "exponential_decay_length_penalty", "finetuning_task", "forced_bos_token_id",
    "forced_eos_token_id", "gradient_checkpointing", "id2label", "is_decoder", "is_encoder_decoder", "label2id",
    "length_penalty", "max_length", "min_length", "model_type", "no_repeat_ngram_size", "num_beam_groups",
    "num_beams", "num_return_sequences", "output_attentions", "output_hidden_states", "output_scores",
    "pad_token_id", "prefix", "problem_type", "pruned_heads", "remove_invalid_values", "repetition_penalty",
    "return_dict", "return_dict_in_generate", "sep_token_id", "suppress_tokens", "task_specific_params",
    "temperature", "tf_legacy_loss", "tie_encoder_decoder", "tie_word_embeddings", "tokenizer_class", "top_k",
    "top_p", "torch_dtype", "torchscript", "transformers_version", "typical_p", "use_bfloat16", "use_cache",
}


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (JSON's lists count as tuples; ints count as floats)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is tuple or origin is tuple or hint is list or origin is list:
        return isinstance(value, (list, tuple))
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    return True  # an annotation this check does not know: the family's own rules decide


def _describe(hint: Any) -> str:
    names = {bool: "a bool (JSON true/false)", int: "an int", float: "a number", str: "a string",
             type(None): "null", tuple: "a list", list: "a list", dict: "a dict"}
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    return names.get(origin or hint, str(hint))


@functools.cache
def _field_hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name in hints}


@dataclasses.dataclass(frozen=True)
class HFConfig:
    """Mixin: HF dict conversion and validation helpers. Subclasses are frozen dataclasses."""

    model_type: ClassVar[str] = ""
    # Keys HF's own config of this family writes that are no field here (derived values, unused options).
    hf_derived_keys: ClassVar[frozenset] = frozenset()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Every family's __post_init__ starts with the type check, without each family having to call it.
        own = cls.__dict__.get("__post_init__")
        if own is not None and not getattr(own, "_checks_types", False):
            @functools.wraps(own)
            def __post_init__(self):
                self._check_types()
                own(self)

            __post_init__._checks_types = True
            cls.__post_init__ = __post_init__

    def _check_types(self) -> None:
        for name, hint in _field_hints(type(self)).items():
            value = getattr(self, name)
            if not _matches(value, hint):
                raise ValueError(f"{type(self).__name__}.{name}={value!r}: must be {_describe(hint)}, got "
                                 f"{type(value).__name__}")

    @classmethod
    def unknown_keys(cls, d: dict[str, Any]) -> list[str]:
        """Keys of an HF config dict that are neither fields of this config nor HF bookkeeping (typos, or fields of
        another family): ``from_hf_dict`` ignores them, which hides a misspelt ``hiden_size``."""
        names = {f.name for f in dataclasses.fields(cls)}
        return sorted(k for k in d if k not in names and k not in _HF_BOOKKEEPING and k not in cls.hf_derived_keys)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], *, strict: bool = False):
        """The config of an HF dict. Keys that are neither fields nor HF bookkeeping warn (``strict``: raise)."""
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__}: an HF config must be a JSON object (a dict), got {type(d).__name__}")
        unknown = cls.unknown_keys(d)
        if unknown:
            message = (f"{cls.__name__}: {unknown} {'is not a field' if len(unknown) == 1 else 'are not fields'} of "
                       f"the {cls.model_type} config (misspelt? from another model?); "
                       f"{'refused' if strict else 'ignored'}")
            if strict:
                raise ValueError(message)
            warnings.warn(message, stacklevel=3)
        d = dict(d)
        id2label = d.get("id2label")
        if id2label is not None and not isinstance(id2label, dict):
            raise ValueError(f"{cls.__name__}.id2label={id2label!r}: must be a dict of label index -> name")
        if "num_labels" not in d and id2label:
            d["num_labels"] = len(id2label)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if "id2label" in names and id2label:
            try:
                id2label = {int(k): v for k, v in id2label.items()}
            except (TypeError, ValueError):
                raise ValueError(f"{cls.__name__}.id2label={d['id2label']!r}: keys must be label indices "
                                 "(integers, or their strings as JSON writes them)") from None
            if sorted(id2label) != list(range(len(id2label))):
                raise ValueError(f"{cls.__name__}.id2label: keys must be 0 .. num_labels - 1, got {sorted(id2label)}")
            # HF writes LABEL_i names for every config; only real label names are worth keeping.
            is_default = id2label == {i: f"LABEL_{i}" for i in range(len(id2label))}
            kwargs["id2label"] = None if is_default else id2label
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model_type"] = self.model_type
        if "num_labels" in d:
            id2label = d.pop("id2label", None) or {i: f"LABEL_{i}" for i in range(d["num_labels"])}
            d["id2label"] = {str(k): v for k, v in id2label.items()}
            d["label2id"] = {v: int(k) for k, v in d["id2label"].items()}
        return d

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    # -- validation helpers: each raises ValueError naming the field and the rule ----------------------------
    def _positive(self, *fields: str) -> None:
        for f in fields:
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{type(self).__name__}.{f}={v!r}: must be a positive integer")

    def _non_negative(self, *fields: str) -> None:
        for f in fields:
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{type(self).__name__}.{f}={v!r}: must be a non-negative integer")

    def _probability(self, *fields: str) -> None:
        for f in fields:
            v = getattr(self, f)
            if v is not None and not (0.0 <= float(v) < 1.0):
                raise ValueError(f"{type(self).__name__}.{f}={v!r}: must be a dropout probability in [0, 1)")

    def _choice(self, field: str, allowed: Iterable[Any]) -> None:
        v = getattr(self, field)
        allowed = tuple(allowed)
        if v not in allowed:
            raise ValueError(f"{type(self).__name__}.{field}={v!r}: must be one of {allowed}")

    def _divisible(self, field: str, by_field: str) -> None:
        a, b = getattr(self, field), getattr(self, by_field)
        if a % b:
            raise ValueError(f"{type(self).__name__}.{field}={a} must be divisible by {by_field}={b}")
