"""Base for family configs: frozen dataclasses whose fields and defaults are the HF config's.

A family config lists the HF fields it uses; ``from_hf_dict`` keeps those (plus ``num_labels`` derived from
``id2label`` as HF does) and drops HF bookkeeping (``architectures``, ``torch_dtype``, ...); ``to_hf_dict`` gives a
dict that ``transformers.<Family>Config(**d)`` accepts. ``__post_init__`` in each family calls ``validate`` so a
bad value fails at construction with the field named, long before anything is traced.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterable

# Keys every HF config.json may carry that no family computes with.
_HF_BOOKKEEPING = {
    "architectures", "torch_dtype", "transformers_version", "_name_or_path", "model_type", "id2label", "label2id",
    "return_dict", "output_hidden_states", "output_attentions", "torchscript", "use_bfloat16", "tie_word_embeddings",
    "_attn_implementation_autoset", "finetuning_task", "task_specific_params", "prefix", "chunk_size_feed_forward",
    "is_encoder_decoder", "add_cross_attention", "tie_encoder_decoder", "pruned_heads", "problem_type",
}


@dataclasses.dataclass(frozen=True)
class HFConfig:
    """Mixin: HF dict conversion and validation helpers. Subclasses are frozen dataclasses."""

    model_type: ClassVar[str] = ""

    @classmethod
    def unknown_keys(cls, d: dict[str, Any]) -> list[str]:
        """Keys of an HF config dict that are neither fields of this config nor HF bookkeeping (typos, or fields of
        another family): ``from_hf_dict`` ignores them, which hides a misspelt ``hiden_size``."""
        names = {f.name for f in dataclasses.fields(cls)}
        return sorted(k for k in d if k not in names and k not in _HF_BOOKKEEPING and k != "label2id")

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]):
        d = dict(d)
        if "num_labels" not in d and d.get("id2label"):
            d["num_labels"] = len(d["id2label"])
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        if "id2label" in names and d.get("id2label"):
            id2label = {int(k): v for k, v in d["id2label"].items()}
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
