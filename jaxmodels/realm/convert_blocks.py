"""Converts HF's REALM ``block_records.npy`` into a pickle-free block store (``jaxmodels.realm.block_store``).

    python -m jaxmodels.realm.convert_blocks --block-records block_records.npy --tokenizer TOKENIZER_DIR \\
        --out STORE_DIR --trust-pickle [--reader-seq-len 320]

``block_records.npy`` is a pickled numpy object array: numpy can only read it by unpickling, and unpickling runs
whatever code the file names. So this is the one place that reads it, only when ``--trust-pickle`` says the file
comes from a source you trust, and even then through an unpickler that accepts nothing but a numpy array of bytes
(any other object in the file is refused before it is built). The store it writes holds plain arrays only.
"""

from __future__ import annotations

import argparse
import pickle
import sys

import numpy as np

from jaxmodels.realm.block_store import BlockStore
from jaxmodels.realm.tokenization import load_tokenizer

# What an object array of bytes pickles as (numpy 1.x and 2.x module names; protocol 2 writes bytes via _codecs).
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _ArrayOfBytesUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise ValueError(f"refused to unpickle {module}.{name}: a block records file holds a numpy array of "
                             "bytes, nothing else")
        return super().find_class(module, name)


def read_block_records(path: str) -> np.ndarray:
    """HF's ``block_records.npy`` -> a 1-D object array of ``bytes``, read with :class:`_ArrayOfBytesUnpickler`
    (never ``np.load(allow_pickle=True)``). Raises ValueError for anything else in the file."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"format version {version}; numpy writes object arrays as 1.0 or 2.0")
            shape, _, dtype = read_header(f)
        except ValueError as error:
            raise ValueError(f"{path}: not a .npy file of the kind HF writes ({error})") from None
        if not dtype.hasobject:
            raise ValueError(f"{path}: a {dtype} array, not HF's object array of block texts")
        try:
            records = _ArrayOfBytesUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError) as error:
            raise ValueError(f"{path}: not a readable pickle ({error})") from None
    if not isinstance(records, np.ndarray) or records.ndim != 1 or records.shape != tuple(shape) or \
            not all(isinstance(r, bytes) for r in records):
        raise ValueError(f"{path}: expected a 1-D array of bytes (the UTF-8 block texts)")
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxmodels.realm.convert_blocks", description=__doc__.split("\n")[0])
    parser.add_argument("--block-records", required=True, help="HF's block_records.npy (a pickled object array)")
    parser.add_argument("--tokenizer", required=True, help="the REALM tokenizer directory (vocab.txt + config)")
    parser.add_argument("--out", required=True, help="the block store directory to write")
    parser.add_argument("--reader-seq-len", type=int, default=320, help="the reader's row length (config)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="read the pickled file (only for files from a source you trust)")
    args = parser.parse_args(argv)
    if not args.trust_pickle:
        print(f"refused: {args.block_records} is a pickled numpy object array, and unpickling can run arbitrary code. "
              "If it comes from a source you trust, run again with --trust-pickle (it is then read by an unpickler "
              "that accepts only an array of bytes).", file=sys.stderr)
        return 2
    try:
        records = read_block_records(args.block_records)
        store = BlockStore.write(args.out, records, load_tokenizer(args.tokenizer), reader_seq_len=args.reader_seq_len)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(store)} blocks (block_len {store.block_len}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
