"""Hub model ids to local directories, through ``huggingface_hub`` (its cache layout, ``HF_HUB_OFFLINE``,
``local_files_only``), so every loader keeps one code path: the directory one.

    path = resolve("albert/albert-base-v2", revision="main")      # a snapshot directory of the local cache
    path = resolve("path/to/dir")                                 # an existing local directory wins

Only the files a model or a tokenizer is made of are fetched (configs, weights, vocabularies), never code. Every
failure is a ``ValueError`` naming the id (and revision, and file where there is one): an unknown id, a revision
that does not exist, an id that is not in the cache when offline.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Sequence

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
               "model-*.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.json",
                   "spiece.model", "sentencepiece.model", "sentencepiece.bpe.model", "vocab.json", "merges.txt",
                   "vocab.txt")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def is_local(name_or_path: str) -> bool:
    """Whether ``name_or_path`` is meant as a path (it exists, or is written like one) rather than a Hub id."""
    return (os.path.exists(name_or_path) or name_or_path.startswith(("/", "./", "../", "~"))
            or os.sep in name_or_path.strip("/").replace("/", "", 1))


def resolve(name_or_path: str, *, revision: str | None = None, cache_dir: str | None = None,
            local_files_only: bool | None = None, token: str | bool | None = None,
            files: Sequence[str] = MODEL_FILES + TOKENIZER_FILES) -> str:
    """The local directory of ``name_or_path``: itself when it is a directory, else the snapshot of the Hub model
    id in the ``huggingface_hub`` cache (``cache_dir``, default the library's), downloaded when allowed.

    ``local_files_only`` (default: the ``HF_HUB_OFFLINE`` environment variable) never touches the network.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise ValueError(f"expected a directory or a Hub model id (a string), got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    if os.path.isdir(name):
        return name
    if is_local(name):
        raise ValueError(f"{name!r} is not a directory (and, written as a path, not a Hub model id 'org/name')")
    if not _REPO_ID.fullmatch(name):
        raise ValueError(f"{name!r} is neither a directory nor a Hugging Face Hub model id ('org/name')")
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hub_errors

    where = f"{name!r}" + (f" (revision {revision!r})" if revision else "")
    try:
        return snapshot_download(name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                 token=token, allow_patterns=list(files))
    except hub_errors.RevisionNotFoundError:
        raise ValueError(f"model id {where}: the revision does not exist") from None
    except hub_errors.RepositoryNotFoundError:
        raise ValueError(f"model id {name!r}: no such repository on the Hub (or it is private: pass token=)") from None
    except hub_errors.LocalEntryNotFoundError:
        from huggingface_hub import constants

        offline = local_files_only or constants.HF_HUB_OFFLINE
        cache = cache_dir or constants.HF_HUB_CACHE
        cached = _cached_revisions(cache, name)
        if cached and revision:
            what = f"revision {revision!r} is not in the cache {cache} (cached: {', '.join(cached)})"
        else:
            what = f"not in the cache {cache}"
        if offline:
            raise ValueError(f"model id {where}: {what}, and downloads are off (HF_HUB_OFFLINE / local_files_only); "
                             "download it once on a connected machine") from None
        raise ValueError(f"model id {where}: {what}, and the Hub could not be reached") from None
    except hub_errors.HfHubHTTPError as error:
        raise ValueError(f"model id {where}: the Hub refused the download ({error})") from None
    except (OSError, ValueError) as error:  # a malformed cache, an invalid revision name, ...
        raise ValueError(f"model id {where}: {type(error).__name__}: {error}") from None


def _cached_revisions(cache: str, name: str) -> list[str]:
    """The branch / tag names and snapshot hashes the cache holds for model id ``name`` (empty if none)."""
    folder = os.path.join(os.fspath(cache), "models--" + name.replace("/", "--"))
    refs = []
    for root, _, files in os.walk(os.path.join(folder, "refs")):
        refs += [os.path.relpath(os.path.join(root, f), os.path.join(folder, "refs")) for f in files]
    snapshots = os.path.join(folder, "snapshots")
    return sorted(refs) + sorted(os.listdir(snapshots) if os.path.isdir(snapshots) else [])


@contextlib.contextmanager
def naming(name_or_path: str, directory: str):
    """Errors (``ValueError``) raised about the files of ``directory`` also name the model id it came from."""
    if os.path.abspath(os.fspath(name_or_path)) == os.path.abspath(directory):
        yield
        return
    try:
        yield
    except ValueError as error:
        raise ValueError(f"model id {os.fspath(name_or_path)!r}: {error}") from error
