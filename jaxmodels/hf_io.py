"""Reading and writing HF checkpoint directories, and the generic param <-> state-dict engine.

A family describes its checkpoint with one function, ``key_fn(path, shape) -> [(hf_name, index), ...]``: for each
leaf of our param tree (``path`` a tuple of keys), the HF tensor name(s) it holds and, for stacked leaves, the
index into the leaf where each tensor lives. Several names at the same index are aliases (tied tensors): export
writes all of them, import takes the first one present. Leaf transforms are fixed by the leaf name: ``kernel`` is the
transposed torch ``Linear.weight``; ``embedding`` and ``scale`` are ``weight``; ``bias`` is ``bias``. Both
directions (import and export) are driven by the same ``key_fn``, so they cannot drift apart.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

import numpy as np

Path = tuple[str, ...]
KeyFn = Callable[[Path, tuple[int, ...]], Sequence[tuple[str, tuple[int, ...]]]]

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
TORCH_NAME = "pytorch_model.bin"

TORCH_LEAF_NAMES = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}


def torch_leaf(path: Path) -> str:
    """HF name of our param path, one to one: ``("a", "b", "kernel") -> "a.b.weight"``."""
    return ".".join(path[:-1] + (TORCH_LEAF_NAMES.get(path[-1], path[-1]),))


def stacked_layer_names(path: Path, count: int, stack: str = "layers") -> list[tuple[str, tuple[int]]]:
    """The HF names of a leaf of a stacked layer tree, ``path = (..., stack, *rest)`` with leaves ``[count, ...]``:
    layer i is ``<...>.<stack>.{i}.<rest>`` at index ``(i,)`` (``encoder.layers.3.fc1.weight``)."""
    at = path.index(stack)
    stem, rest = ".".join(path[:at + 1]), torch_leaf(path[at + 1:])
    return [(f"{stem}.{i}.{rest}", (i,)) for i in range(count)]


def _to_torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
    return value.T if leaf == "kernel" and value.ndim == 2 else value


def _from_torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
    return value.T if leaf == "kernel" and value.ndim == 2 else value


def flatten(tree: dict, prefix: Path = ()) -> dict[Path, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten(flat: dict[Path, Any]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


def params_to_state_dict(params: dict, key_fn: KeyFn) -> dict[str, np.ndarray]:
    """Our (unboxed) param tree -> ``{hf_name: array in torch layout}``."""
    sd = {}
    for path, value in flatten(params).items():
        value = np.asarray(value)
        for name, index in key_fn(path, value.shape):
            sd[name] = np.ascontiguousarray(_to_torch_layout(path[-1], value[index]))
    return sd


def state_dict_to_params(state_dict: dict[str, np.ndarray], shapes: dict, key_fn: KeyFn,
                         dtype=np.float32) -> tuple[dict, list[str], list[str]]:
    """``{hf_name: array}`` -> our param tree shaped like ``shapes`` (a tree of ShapeDtypeStructs / arrays).

    Returns (params, missing, unexpected): leaves with any tensor missing are left out of ``params`` and their
    HF names listed in ``missing``; HF names nobody asked for are listed in ``unexpected``.
    """
    used, missing, flat = set(), [], {}
    for path, spec in flatten(shapes).items():
        by_index: dict[tuple, list[str]] = {}
        for name, index in key_fn(path, tuple(spec.shape)):
            by_index.setdefault(index, []).append(name)
        chosen = {index: next((n for n in names if n in state_dict), None) for index, names in by_index.items()}
        if any(name is None for name in chosen.values()):
            missing.extend(names[0] for index, names in by_index.items() if chosen[index] is None)
            continue
        used.update(n for names in by_index.values() for n in names if n in state_dict)
        value = np.zeros(spec.shape, dtype)
        for index, name in chosen.items():
            tensor = _from_torch_layout(path[-1], np.asarray(state_dict[name]))
            if value[index].shape != tensor.shape:
                raise ValueError(f"checkpoint tensor {name} has shape {tuple(np.shape(state_dict[name]))}, which does "
                                 f"not fit {'/'.join(path)} {value[index].shape} as the config implies")
            value[index] = tensor
        flat[path] = value
    unexpected = sorted(set(state_dict) - used)
    return unflatten(flat), missing, unexpected


# -- directories -------------------------------------------------------------------------------------------------
def read_config(path: str) -> dict[str, Any]:
    if not os.path.isdir(path):
        raise ValueError(f"from_pretrained expects a checkpoint directory written by save_pretrained; {path!r} is not a directory")
    cfg = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(cfg):
        raise ValueError(f"{path!r} has no {CONFIG_NAME}; not an HF checkpoint directory")
    with open(cfg) as f:
        return json.load(f)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Weights of an HF directory: safetensors (single or sharded), else ``pytorch_model.bin`` loaded with
    ``torch.load(weights_only=True)`` (never a full unpickle). Anything else is refused."""
    from safetensors.numpy import load_file

    single = os.path.join(path, SAFETENSORS_NAME)
    if os.path.isfile(single):
        return load_file(single)
    index = os.path.join(path, SAFETENSORS_INDEX_NAME)
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        sd: dict[str, np.ndarray] = {}
        for shard in shards:
            sd.update(load_file(os.path.join(path, shard)))
        return sd
    binary = os.path.join(path, TORCH_NAME)
    if os.path.isfile(binary):
        try:
            import torch
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ValueError(f"{binary} is a PyTorch file; install torch (the [ref] extra) or convert it to safetensors") from e
        sd = torch.load(binary, map_location="cpu", weights_only=True)
        return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}
    raise ValueError(
        f"{path!r} holds no {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME} or {TORCH_NAME}; other weight formats "
        "(TF, Flax msgpack, pickles) are refused"
    )


def save_directory(path: str, config: dict[str, Any], state_dict: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    # HF refuses safetensors files without a "format" entry in their metadata.
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, os.path.join(path, SAFETENSORS_NAME),
              metadata={"format": "pt"})


def strip_or_add_prefix(state_dict: dict[str, np.ndarray], prefix: str, want_prefix: bool) -> dict[str, np.ndarray]:
    """Bridges HF's ``base_model_prefix``: a bare-model checkpoint has no ``albert.`` prefix, a head checkpoint has it."""
    dot = prefix + "."
    has = any(k.startswith(dot) for k in state_dict)
    if want_prefix and not has:
        return {dot + k: v for k, v in state_dict.items()}
    if not want_prefix and has:
        return {k[len(dot):]: v for k, v in state_dict.items() if k.startswith(dot)}
    return state_dict
