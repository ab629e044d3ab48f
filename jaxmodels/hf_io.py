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


def _plan(path: Path, spec, key_fn: KeyFn, available) -> tuple[dict | None, list[str], set[str]]:
    """For one leaf: ``{index: the chosen HF name}`` (None if some tensor is missing), the missing names, and every
    name of the leaf present in ``available`` (aliases included, so none is reported unexpected)."""
    by_index: dict[tuple, list[str]] = {}
    for name, index in key_fn(path, tuple(spec.shape)):
        by_index.setdefault(index, []).append(name)
    chosen = {index: next((n for n in names if n in available), None) for index, names in by_index.items()}
    used = {n for names in by_index.values() for n in names if n in available}
    if any(name is None for name in chosen.values()):
        return None, [names[0] for index, names in by_index.items() if chosen[index] is None], used
    return chosen, [], used


def state_dict_to_params(state_dict: dict[str, np.ndarray], shapes: dict, key_fn: KeyFn,
                         dtype=np.float32) -> tuple[dict, list[str], list[str]]:
    """``{hf_name: array}`` -> our param tree shaped like ``shapes`` (a tree of ShapeDtypeStructs / arrays).

    Returns (params, missing, unexpected): leaves with any tensor missing are left out of ``params`` and their
    HF names listed in ``missing``; HF names nobody asked for are listed in ``unexpected``.
    """
    used, missing, flat = set(), [], {}
    for path, spec in flatten(shapes).items():
        chosen, absent, names = _plan(path, spec, key_fn, state_dict)
        used |= names
        if chosen is None:
            missing.extend(absent)
            continue
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


class LazyStateDict:
    """The tensors of a checkpoint directory, read only when asked for and only the part asked for: safetensors by
    slice (``safe_open``), a ``pytorch_model.bin`` memory-mapped (``torch.load(mmap=True, weights_only=True)``).

    ``name in lazy``, ``lazy.keys()``, ``lazy.shape(name)`` and ``lazy.read(name, index)`` (a tuple of slices in the
    checkpoint's own, torch, layout). What makes a sharded load's host memory one block, not the whole model.
    """

    def __init__(self, path: str):
        from safetensors import safe_open

        self._files: dict[str, Any] = {}
        self._where: dict[str, str] = {}
        single, index = os.path.join(path, SAFETENSORS_NAME), os.path.join(path, SAFETENSORS_INDEX_NAME)
        if os.path.isfile(single) or os.path.isfile(index):
            if os.path.isfile(single):
                shards = {SAFETENSORS_NAME: None}
            else:
                weight_map = read_json(index, "a safetensors shard index")
                if not isinstance(weight_map, dict) or not isinstance(weight_map.get("weight_map"), dict):
                    raise ValueError(f"{index}: has no 'weight_map' object (tensor name -> shard file)")
                shards = dict.fromkeys(sorted(set(weight_map["weight_map"].values())))
            for shard in shards:
                file = os.path.join(path, shard)
                if not os.path.isfile(file):
                    raise ValueError(f"{file}: missing (named by the checkpoint's shard index)")
                try:
                    handle = safe_open(file, framework="numpy")
                except Exception as error:  # noqa: BLE001 - safetensors' own error types
                    raise ValueError(f"{file}: not a readable safetensors file ({type(error).__name__}: {error}); "
                                     "the download or copy may be truncated") from None
                self._files[file] = handle
                self._where.update({name: file for name in handle.keys()})
            self._torch = None
            return
        binary = os.path.join(path, TORCH_NAME)
        if not os.path.isfile(binary):
            load_state_dict(path)  # raises the directory's error
        self._torch = _torch_load(binary, mmap=True)
        self._where = {name: binary for name in self._torch}

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        if self._torch is not None:
            return tuple(self._torch[name].shape)
        return tuple(self._files[self._where[name]].get_slice(name).get_shape())

    def read(self, name: str, index: tuple = ()) -> np.ndarray:
        """``tensor[index]`` as float32 numpy (ints kept), reading only that part from disk."""
        if self._torch is not None:
            block = self._torch[name][index] if index else self._torch[name]
            block = block.detach()
            return (block.float() if block.is_floating_point() else block).numpy()
        block = self._files[self._where[name]].get_slice(name)[index] if index else \
            self._files[self._where[name]].get_tensor(name)
        block = np.asarray(block)
        return block.astype(np.float32) if np.issubdtype(block.dtype, np.floating) else block


def prefixed_names(names, prefix: str, want_prefix: bool) -> dict[str, str]:
    """``{name as our key_fn says it: name in the checkpoint}`` across HF's ``base_model_prefix`` (a bare-model
    checkpoint has no ``albert.`` prefix, a head checkpoint has it), as ``strip_or_add_prefix`` does for dicts."""
    dot = prefix + "."
    names = list(names)
    has = any(k.startswith(dot) for k in names)
    if want_prefix and not has:
        return {dot + k: k for k in names}
    if not want_prefix and has:
        return {k[len(dot):]: k for k in names if k.startswith(dot)}
    return {k: k for k in names}


def sharded_params(source: LazyStateDict, shapes: dict, key_fn: KeyFn, lookup: dict[str, str] | None = None,
                   ) -> tuple[dict, list[str], list[str]]:
    """Like ``state_dict_to_params``, but every leaf is made on its devices as it is read: ``shapes`` holds
    ``ShapeDtypeStruct``s with shardings, and the checkpoint is asked for each device's block only (for a stacked
    leaf, only the layers in the block; for a kernel, the transposed slice of the torch matrix), so the host holds
    one block at a time. ``lookup``: ``prefixed_names`` (default: names as they are)."""
    import jax

    lookup = {name: name for name in source.keys()} if lookup is None else lookup
    used, missing, flat = set(), [], {}
    for path, spec in flatten(shapes).items():
        chosen, absent, names = _plan(path, spec, key_fn, lookup)
        used |= names
        if chosen is None:
            missing.extend(absent)
            continue
        stack = len(next(iter(chosen)))  # leading dims that index HF tensors (layers, groups)
        leaf = path[-1]
        for index, name in chosen.items():
            want = spec.shape[stack:]
            have = source.shape(lookup[name])
            if tuple(have[::-1] if leaf == "kernel" and len(have) == 2 else have) != tuple(want):
                raise ValueError(f"checkpoint tensor {name} has shape {have}, which does not fit {'/'.join(path)} "
                                 f"{tuple(want)} as the config implies")

        def block(index, chosen=chosen, stack=stack, leaf=leaf, spec=spec):
            index = tuple(index) + (slice(None),) * (len(spec.shape) - len(index))
            rows = [range(*sl.indices(spec.shape[d])) for d, sl in enumerate(index[:stack])]
            inner = index[stack:]
            if leaf == "kernel" and len(inner) == 2:
                inner = inner[::-1]  # torch's Linear weight is [out, in]
            out = np.empty([len(r) for r in rows] + [len(range(*sl.indices(spec.shape[stack + d])))
                                                     for d, sl in enumerate(index[stack:])], np.float32)
            for position in np.ndindex(*[len(r) for r in rows]) if rows else [()]:
                key = tuple(r[p] for r, p in zip(rows, position))
                part = source.read(lookup[chosen[key]], inner)
                out[position] = part.T if leaf == "kernel" and part.ndim == 2 else part
            return out

        # One device's block at a time, sent to its device before the next is read (make_array_from_callback would
        # hold every device's host block of the leaf at once: a whole stacked leaf of host memory).
        blocks = [jax.device_put(block(index), device) for device, index in
                  spec.sharding.addressable_devices_indices_map(tuple(spec.shape)).items()]
        flat[path] = jax.make_array_from_single_device_arrays(tuple(spec.shape), spec.sharding, blocks)
    unexpected = sorted(set(lookup) - used)
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
    sd = _torch_load(file)
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in sd.items()}


def _torch_load(file: str, mmap: bool = False) -> dict:
    """``torch.load`` of tensors only (``weights_only``); anything else is refused, naming the file."""
    import pickle

    try:
        import torch
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ValueError(f"{file} is a PyTorch file; install torch (the [ref] extra) or convert it to "
                         "safetensors") from error

    try:
        sd = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
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
    return sd


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


MAX_SHARD_BYTES = 5 * 10**9  # HF's default max_shard_size ("5GB")
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(size: int | str) -> int:
    """``max_shard_size`` as HF writes it -> bytes: an int, or ``"5GB"``, ``"500MB"``, ``"2GiB"``."""
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise ValueError(f"max_shard_size={size!r}: expected bytes (an int) or a string such as '5GB'")
    if isinstance(size, str):
        text = size.strip().upper().replace(" ", "")
        unit = next((u for u in sorted(_UNITS, key=len, reverse=True) if text.endswith(u)), None)
        try:
            size = int(float(text[:-len(unit)]) * _UNITS[unit]) if unit else int(text)
        except ValueError:
            raise ValueError(f"max_shard_size={size!r}: not a size such as '5GB' or '500MB'") from None
    if size <= 0:
        raise ValueError(f"max_shard_size={size!r}: must be positive")
    return size


def save_directory(path: str, config: dict[str, Any], state_dict: dict[str, np.ndarray], *,
                   max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """``config.json`` and the weights: one ``model.safetensors``, or, above ``max_shard_bytes``, shards
    ``model-0000i-of-0000n.safetensors`` with the ``model.safetensors.index.json`` HF writes and reads."""
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    tensors = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, value in tensors.items():  # HF's rule: fill a shard until the next tensor would overflow it
        if shards[-1] and size + value.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = value
        size += value.nbytes
    # HF refuses safetensors files without a "format" entry in their metadata.
    if len(shards) == 1:
        save_file(shards[0], os.path.join(path, SAFETENSORS_NAME), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(path, file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    with open(os.path.join(path, SAFETENSORS_INDEX_NAME), "w") as f:
        json.dump({"metadata": {"total_size": sum(v.nbytes for v in tensors.values())}, "weight_map": weight_map},
                  f, indent=2, sort_keys=True)


def strip_or_add_prefix(state_dict: dict[str, np.ndarray], prefix: str, want_prefix: bool) -> dict[str, np.ndarray]:
    """Bridges HF's ``base_model_prefix``: a bare-model checkpoint has no ``albert.`` prefix, a head checkpoint has it."""
    dot = prefix + "."
    has = any(k.startswith(dot) for k in state_dict)
    if want_prefix and not has:
        return {dot + k: v for k, v in state_dict.items()}
    if not want_prefix and has:
        return {k[len(dot):]: v for k, v in state_dict.items() if k.startswith(dot)}
    return state_dict
