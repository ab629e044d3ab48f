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
def read_json(path: str, what: str) -> Any:
    """A JSON file's content; a file that is not JSON is a ``ValueError`` naming the file and the place."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); "
                         f"expected {what}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file; expected {what}") from None


def read_config(path: str) -> dict[str, Any]:
    if not os.path.isdir(path):
        raise ValueError(f"from_pretrained expects a checkpoint directory written by save_pretrained; {path!r} is not a directory")
    cfg = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(cfg):
        raise ValueError(f"{path!r} has no {CONFIG_NAME}; not an HF checkpoint directory")
    config = read_json(cfg, "an HF model config")
    if not isinstance(config, dict):
        raise ValueError(f"{cfg}: holds a JSON {type(config).__name__}, not an object; expected an HF model config")
    if "model_type" not in config:
        raise ValueError(f"{cfg}: has no 'model_type'; which model it describes is unknown")
    return config


def _load_safetensors(file: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if not os.path.isfile(file):
        raise ValueError(f"{file}: missing (named by the checkpoint's shard index)")
    try:
        return load_file(file)
    except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for every corruption
        raise ValueError(f"{file}: not a readable safetensors file ({type(error).__name__}: {error}); the download "
                         "or copy may be truncated") from None


def _load_torch(file: str) -> dict[str, np.ndarray]:
    """``pytorch_model.bin`` with ``torch.load(weights_only=True)``: tensors only; any other pickled object (which
    could run code when unpickled) is refused with a message that says why and how to convert safely."""
    try:
        import torch
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ValueError(f"{file} is a PyTorch file; install torch (the [ref] extra) or convert it to "
                         "safetensors") from error
    import pickle

    try:
        sd = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{file}: refused. It pickles Python objects besides tensors ({str(error).splitlines()[0][:200]}), and "
            "unpickling those can run arbitrary code, so it is never done here. If you trust the file, convert "
            "it once, in a trusted environment, with transformers: AutoModel.from_pretrained(dir)"
            ".save_pretrained(out, safe_serialization=True), then load the safetensors directory") from None
    except Exception as error:  # noqa: BLE001 - a truncated zip, not a torch file at all, ...
        raise ValueError(f"{file}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(sd, dict):
        raise ValueError(f"{file}: holds a {type(sd).__name__}, not a state dict of tensors")
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Weights of an HF directory: safetensors (single or sharded), else ``pytorch_model.bin`` loaded with
    ``torch.load(weights_only=True)`` (never a full unpickle). Anything else is refused."""
    single = os.path.join(path, SAFETENSORS_NAME)
    if os.path.isfile(single):
        return _load_safetensors(single)
    index = os.path.join(path, SAFETENSORS_INDEX_NAME)
    if os.path.isfile(index):
        weight_map = read_json(index, "a safetensors shard index")
        if not isinstance(weight_map, dict) or not isinstance(weight_map.get("weight_map"), dict):
            raise ValueError(f"{index}: has no 'weight_map' object (tensor name -> shard file)")
        sd: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map["weight_map"].values())):
            sd.update(_load_safetensors(os.path.join(path, shard)))
        return sd
    binary = os.path.join(path, TORCH_NAME)
    if os.path.isfile(binary):
        return _load_torch(binary)
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
