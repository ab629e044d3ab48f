"""Input checks shared by every family: they run in Python on static shapes (and on values when those are
concrete, or compiled in under ``layers.checks.checked``), before anything is traced, so a bad batch fails with
the argument named instead of a deep XLA error or a silently clamped index."""

from __future__ import annotations

import numpy as np

from layers.checks import check_range as _check_range
from layers.checks import is_concrete

__all__ = ["check_array", "check_nonempty", "check_range", "check_token_inputs", "check_token_shapes", "is_concrete"]


def check_range(name: str, x, upper: int, rule: str) -> None:
    """Raises ValueError naming ``name`` if ``x`` has values outside ``[0, upper)``; ``rule`` explains why."""
    _check_range(name, x, upper, rule)


def check_array(name: str, x) -> None:
    """``x`` is None or an array (numpy / jax): a Python list of ids gets a message, not an ``AttributeError``."""
    if x is not None and not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise ValueError(f"{name}: expected an array (numpy or jax), got {type(x).__name__}; "
                         f"wrap it with jnp.asarray({name})")


def check_nonempty(name: str, shape: tuple[int, ...]) -> None:
    """Every dimension of ``name`` is at least 1 (a zero-length batch or sequence has nothing to compute)."""
    if any(int(d) == 0 for d in shape):
        raise ValueError(f"{name}: shape {tuple(shape)} has an empty dimension; a batch and a sequence need at "
                         "least one element")


def check_token_inputs(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, *, rank: int,
                       embedding_field: str, embedding_size: int, vocab_size: int, type_vocab_size: int,
                       max_position_embeddings: int) -> tuple[int, ...]:
    """The checks of a BERT-style input layer (word ids or their embeddings, padding mask, token types, absolute
    positions), raising ValueError naming the argument. Returns the input shape (``[batch, length]``, or
    ``[batch, choices, length]`` with ``rank`` 3).

    ``embedding_field`` / ``embedding_size``: the config field giving the width of ``inputs_embeds``.
    """
    for name, x in (("input_ids", input_ids), ("attention_mask", attention_mask),
                    ("token_type_ids", token_type_ids), ("position_ids", position_ids),
                    ("inputs_embeds", inputs_embeds)):
        check_array(name, x)
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    if input_ids is not None:
        shape = tuple(input_ids.shape)
        if len(shape) != rank:
            raise ValueError(f"input_ids must have rank {rank}, got shape {shape}")
        if not np.issubdtype(input_ids.dtype, np.integer):
            raise ValueError(f"input_ids must be integer, got {input_ids.dtype}")
    else:
        shape = tuple(inputs_embeds.shape[:-1])
        if len(shape) != rank or inputs_embeds.shape[-1] != embedding_size:
            raise ValueError(f"inputs_embeds must have shape [{'batch, choices' if rank == 3 else 'batch'}, length, "
                             f"{embedding_field}={embedding_size}], got {tuple(inputs_embeds.shape)}")
    for name, x in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if x is not None and tuple(x.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)} but input_ids has shape {shape}; they must match")
    if position_ids is not None and tuple(position_ids.shape) not in (shape, (1,) + shape[1:], shape[-1:]):
        raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}; expected {shape} or {(1,) + shape[1:]}")
    check_nonempty("input_ids" if input_ids is not None else "inputs_embeds", shape)
    if shape[-1] > max_position_embeddings:
        raise ValueError(f"sequence length {shape[-1]} exceeds max_position_embeddings={max_position_embeddings}")
    check_range("input_ids", input_ids, vocab_size, f"ids must be in [0, vocab_size={vocab_size})")
    check_range("token_type_ids", token_type_ids, type_vocab_size,
                f"token types must be in [0, type_vocab_size={type_vocab_size})")
    check_range("position_ids", position_ids, max_position_embeddings,
                f"positions must be in [0, max_position_embeddings={max_position_embeddings})")
    return shape


def check_token_shapes(input_ids, inputs_embeds, *, width: int, rank: int = 2, width_field: str = "hidden_size",
                       **same_shape) -> tuple[int, ...]:
    """The ``[batch, (choices,) length]`` shape of a model's token inputs (exactly one of ``input_ids`` (integer) and
    ``inputs_embeds`` (``[..., width]``)), after checking it and that every array of ``same_shape`` (name -> array
    or None) has that shape too. Raises ValueError naming the argument."""
    for name, x in (("input_ids", input_ids), ("inputs_embeds", inputs_embeds), *same_shape.items()):
        check_array(name, x)
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    layout = "[batch, choices, length]" if rank == 3 else "[batch, length]"
    if input_ids is not None:
        shape = tuple(input_ids.shape)
        if len(shape) != rank:
            raise ValueError(f"input_ids must have rank {rank} {layout}, got shape {shape}")
        if not np.issubdtype(input_ids.dtype, np.integer):
            raise ValueError(f"input_ids must be integer, got {input_ids.dtype}")
    else:
        shape = tuple(inputs_embeds.shape[:-1])
        if len(shape) != rank or inputs_embeds.shape[-1] != width:
            raise ValueError(f"inputs_embeds must have shape {layout[:-1]}, {width_field}={width}], got "
                             f"{tuple(inputs_embeds.shape)}")
    for name, x in same_shape.items():
        if x is not None and tuple(x.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)} but the inputs have shape {shape} {layout}; "
                             "they must match")
    check_nonempty("input_ids" if input_ids is not None else "inputs_embeds", shape)
    return shape
