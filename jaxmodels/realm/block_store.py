"""A pickle-free, memory-mapped store of REALM's evidence blocks: their token ids, token counts and texts.

HF ships the block texts as ``block_records.npy``, a pickled numpy object array of ``bytes`` that
``np.load(allow_pickle=True)`` unpickles: loading a file from the internet that way runs whatever code it carries.
It is converted once (``python -m jaxmodels.realm.convert_blocks``, which needs ``--trust-pickle`` and even then
accepts nothing but an array of bytes) into this store, a directory of plain arrays:

    block_store.json    format, version, block count, block_len, the tokenizer's special ids
    token_ids.npy       [N, block_len] uint16 (int32 for vocabularies over 65536): each block's first block_len
                        WordPiece ids, no special tokens, padded with the pad id
    num_tokens.npy      [N] int32: each block's full token count (the reader's truncation needs it)
    text_offsets.npy    [N + 1] int64: block i's UTF-8 text is text.bin[offsets[i]:offsets[i + 1]]
    text.bin            the texts, concatenated
    tokenizer/          the tokenizer that made the ids (save_pretrained)

Every array is opened memory-mapped with ``allow_pickle=False``: a store holding anything pickled is refused.
``block_len`` is at least ``reader_seq_len - 3`` or the longest block, so reader rows built from the store equal
HF's (``jaxmodels.realm.reader_inputs``).

    store = BlockStore.open("store_dir")
    blocks = store.tokens()                          # BlockTokens on device, for RealmForOpenQA
    store.text(17)                                   # the 18th block's text
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels import hf_io
from jaxmodels.realm.convert import key_fn
from jaxmodels.realm.reader_inputs import BlockTokens
from jaxmodels.realm.tokenization import load_tokenizer
from jaxmodels.tokenization import Tokenizer

FORMAT = "realm-block-store"
VERSION = 1
META = "block_store.json"
TOKEN_IDS, NUM_TOKENS, OFFSETS, TEXT, TOKENIZER = "token_ids.npy", "num_tokens.npy", "text_offsets.npy", "text.bin", \
    "tokenizer"
HF_BLOCK_RECORDS = "block_records.npy"
CONVERT_HINT = ("convert HF's block_records.npy once with: python -m jaxmodels.realm.convert_blocks "
                "--block-records FILE --tokenizer DIR --out STORE --trust-pickle")


def _load_array(path: str) -> np.ndarray:
    """A plain ``.npy`` array, memory-mapped; a pickled one is refused without unpickling anything."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: missing (a REALM block store needs {TOKEN_IDS}, {NUM_TOKENS}, {OFFSETS})")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        if any(s in str(error) for s in ("allow_pickle", "Object arrays", "Python objects")):
            raise ValueError(f"{path}: holds pickled Python objects; refused, since unpickling can run arbitrary "
                             f"code. A block store holds plain arrays only; {CONVERT_HINT}") from None
        raise ValueError(f"{path}: not a readable .npy array ({error})") from None


class BlockStore:
    """The blocks of one store directory (see the module docstring); arrays are memory-mapped, read on use."""

    token_class = BlockTokens  # what tokens() returns

    def __init__(self, path: str, meta: dict, token_ids: np.ndarray, num_tokens: np.ndarray, offsets: np.ndarray,
                 text: np.ndarray, tokenizer: Tokenizer):
        self.path, self.meta = path, meta
        self.token_ids, self.num_tokens, self.offsets, self._text = token_ids, num_tokens, offsets, text
        self.tokenizer = tokenizer

    @classmethod
    def open(cls, path: str, *, reader_seq_len: Optional[int] = None) -> "BlockStore":
        """Opens a store directory; checks every array's shape and dtype against ``block_store.json``, and (given
        ``reader_seq_len``) that the stored ids cover what a reader row can hold of a block."""
        if os.path.isfile(path) or os.path.isfile(os.path.join(path, HF_BLOCK_RECORDS)) and \
                not os.path.isfile(os.path.join(path, META)):
            raise ValueError(f"{path}: HF block records (a pickled object array) are not read here; {CONVERT_HINT}")
        if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, META)):
            raise ValueError(f"{path}: not a REALM block store (no {META}); {CONVERT_HINT}")
        meta = hf_io.read_json(os.path.join(path, META), "a REALM block store description")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{os.path.join(path, META)}: format {meta.get('format') if isinstance(meta, dict) else meta!r}"
                             f" version {meta.get('version') if isinstance(meta, dict) else None}; expected "
                             f"{FORMAT!r} version {VERSION}")
        n, block_len = meta["num_blocks"], meta["block_len"]
        token_ids = _load_array(os.path.join(path, TOKEN_IDS))
        num_tokens = _load_array(os.path.join(path, NUM_TOKENS))
        offsets = _load_array(os.path.join(path, OFFSETS))
        for name, array, shape, kinds in ((TOKEN_IDS, token_ids, (n, block_len), (np.uint16, np.int32)),
                                          (NUM_TOKENS, num_tokens, (n,), (np.int32,)),
                                          (OFFSETS, offsets, (n + 1,), (np.int64,))):
            if array.shape != shape or array.dtype not in kinds:
                raise ValueError(f"{os.path.join(path, name)}: {array.dtype} {array.shape}; the store's {META} says "
                                 f"{' or '.join(np.dtype(k).name for k in kinds)} {shape}")
        text_path = os.path.join(path, TEXT)
        size = os.path.getsize(text_path) if os.path.isfile(text_path) else -1
        if size != int(offsets[-1]):
            raise ValueError(f"{text_path}: {size} bytes; {OFFSETS} ends at {int(offsets[-1])}")
        text = np.memmap(text_path, np.uint8, mode="r") if size else np.zeros((0,), np.uint8)
        store = cls(path, meta, token_ids, num_tokens, offsets, text, load_tokenizer(os.path.join(path, TOKENIZER)))
        if reader_seq_len is not None:
            store.check_block_len(reader_seq_len)
        return store

    def __len__(self) -> int:
        return int(self.meta["num_blocks"])

    @property
    def block_len(self) -> int:
        return int(self.meta["block_len"])

    def check_block_len(self, reader_seq_len: int) -> None:
        """A reader row of ``reader_seq_len`` tokens holds at most ``reader_seq_len - 3`` of a block; fewer stored
        ids would change rows of long blocks."""
        if self.block_len < reader_seq_len - 3 and int(np.max(self.num_tokens, initial=0)) > self.block_len:
            raise ValueError(f"{self.path}: block_len={self.block_len} < reader_seq_len - 3 = {reader_seq_len - 3} and "
                             f"some blocks are longer; rebuild the store with --reader-seq-len {reader_seq_len}")

    def text(self, index: int) -> str:
        """Block ``index``'s text."""
        return bytes(self._text[int(self.offsets[index]):int(self.offsets[index + 1])]).decode("utf-8")

    def texts(self, ids: Sequence[int]) -> list[str]:
        return [self.text(i) for i in np.asarray(ids).reshape(-1)]

    def tokens(self, *, multiple: int = 1, sharding: Optional[jax.sharding.Sharding] = None) -> BlockTokens:
        """The blocks as :class:`BlockTokens` on device, rows padded with empty blocks to a multiple of ``multiple``
        (the index's shard count) and placed with ``sharding`` (e.g. rows over the index's mesh axis)."""
        extra = -len(self) % multiple
        ids, counts = np.asarray(self.token_ids), np.asarray(self.num_tokens)
        if extra:
            ids = np.concatenate([ids, np.full((extra, ids.shape[1]), self.meta["pad_token_id"], ids.dtype)])
            counts = np.concatenate([counts, np.zeros((extra,), counts.dtype)])
        put = (lambda x: jax.device_put(x, sharding)) if sharding is not None else jnp.asarray
        return BlockTokens(put(ids), put(counts), cls_token_id=self.meta["cls_token_id"],
                           sep_token_id=self.meta["sep_token_id"], pad_token_id=self.meta["pad_token_id"],
                           special_ids=tuple(self.meta["special_ids"]))

    @classmethod
    def write(cls, path: str, texts: Sequence, tokenizer: Tokenizer, *, reader_seq_len: int = 320,
              batch: int = 4096) -> "BlockStore":
        """Tokenises ``texts`` (str or UTF-8 bytes, in block order) with ``tokenizer`` into a new store at ``path``.

        ``block_len`` is the longest block's token count, capped at ``reader_seq_len - 3`` (all a reader row can
        hold of a block). The tokenizer is saved with the store. Ids stream into memory-mapped files, so
        the 13.35M blocks of the released index need no more memory than one batch.
        """
        os.makedirs(path, exist_ok=True)
        n, width = len(texts), reader_seq_len - 3
        dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
        wide_path = os.path.join(path, TOKEN_IDS + ".partial")
        wide = np.lib.format.open_memmap(wide_path, "w+", dtype, (n, max(width, 1)))
        counts = np.zeros((n,), np.int32)
        offsets = np.zeros((n + 1,), np.int64)
        with open(os.path.join(path, TEXT), "wb") as text_file:
            for first in range(0, n, batch):
                raw = [t if isinstance(t, bytes) else str(t).encode("utf-8") for t in texts[first:first + batch]]
                for i, (data, ids) in enumerate(zip(raw, tokenizer([r.decode("utf-8") for r in raw],
                                                                   add_special_tokens=False)["input_ids"])):
                    text_file.write(data)
                    offsets[first + i + 1] = offsets[first + i] + len(data)
                    counts[first + i] = len(ids)
                    row = np.full((wide.shape[1],), tokenizer.pad_token_id, dtype)
                    row[:min(len(ids), width)] = ids[:width]
                    wide[first + i] = row
        block_len = max(1, min(width, int(counts.max(initial=0))))
        token_ids = np.lib.format.open_memmap(os.path.join(path, TOKEN_IDS), "w+", dtype, (n, block_len))
        for first in range(0, n, batch):
            token_ids[first:first + batch] = wide[first:first + batch, :block_len]
        token_ids.flush()
        del wide, token_ids
        os.remove(wide_path)
        np.save(os.path.join(path, NUM_TOKENS), counts, allow_pickle=False)
        np.save(os.path.join(path, OFFSETS), offsets, allow_pickle=False)
        tokenizer.save_pretrained(os.path.join(path, TOKENIZER))
        meta = dict(format=FORMAT, version=VERSION, num_blocks=n, block_len=block_len, reader_seq_len=reader_seq_len,
                    cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id,
                    pad_token_id=tokenizer.pad_token_id, special_ids=sorted(tokenizer.all_special_ids))
        with open(os.path.join(path, META), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        return cls.open(path)


def load_block_emb(path: str) -> np.ndarray:
    """``block_emb [num_block_records, retriever_proj_size]`` of an HF ``RealmForOpenQA`` checkpoint directory: from
    ``model.safetensors`` (read lazily: only this tensor) or ``pytorch_model.bin`` (``torch.load(weights_only=True)``,
    memory-mapped). Apply the model with ``{"params": params, "buffers": {"block_emb": block_emb}}``."""
    single = os.path.join(path, hf_io.SAFETENSORS_NAME)
    if os.path.isfile(single):
        from safetensors import safe_open

        with safe_open(single, framework="numpy") as f:
            if "block_emb" not in f.keys():
                raise ValueError(f"{single}: holds no block_emb (not a RealmForOpenQA checkpoint)")
            return f.get_tensor("block_emb")
    binary = os.path.join(path, hf_io.TORCH_NAME)
    if not os.path.isfile(binary):
        raise ValueError(f"{path!r} holds no {hf_io.SAFETENSORS_NAME} or {hf_io.TORCH_NAME} with a block_emb")
    import torch

    try:
        state = torch.load(binary, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - pickled objects, truncated files: all refused alike
        raise ValueError(f"{binary}: refused or unreadable ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
                         "; only tensors are loaded, never arbitrary pickled objects") from None
    if "block_emb" not in state:
        raise ValueError(f"{binary}: holds no block_emb (not a RealmForOpenQA checkpoint)")
    return state["block_emb"].float().numpy()


def save_open_qa_pretrained(module, params: dict, block_emb, path: str) -> None:
    """``jaxmodels.save_pretrained`` for ``RealmForOpenQA`` with its ``block_emb`` buffer, which HF's
    ``RealmForOpenQA.from_pretrained`` reads (without it, HF leaves the index uninitialised memory)."""
    config = module.config.to_hf_dict()
    config["architectures"] = [type(module).__name__]
    config["torch_dtype"] = "float32"
    tensors = hf_io.params_to_state_dict(nn.unbox(params), key_fn(module.config))
    tensors["block_emb"] = np.asarray(block_emb, np.float32)[:module.config.num_block_records]
    hf_io.save_directory(path, config, tensors)
