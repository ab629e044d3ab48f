"""HF's ``RealmRetriever`` over a pickle-free :class:`BlockStore`: retrieved block ids + question + answers ->
reader rows and answer spans, computed by the same on-device code ``RealmForOpenQA`` runs
(``jaxmodels.realm.reader_inputs``), here for a host caller (one question, as HF, or a batch).

    retriever = RealmRetriever.from_pretrained("store_dir")
    has_answers, start_pos, end_pos, rows = retriever(block_ids, question_ids, [[answer ids], ...], max_length=320)
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels.realm import reader_inputs
from jaxmodels.realm.block_store import BlockStore
from jaxmodels.realm.reader_inputs import ReaderRows


def pad_answers(answer_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """HF's ``answer_ids`` (a list of token-id lists) -> ``[num_answers, longest]`` int32, -1 padded."""
    answers = [list(a) for a in answer_ids]
    if not answers or any(not a for a in answers):
        raise ValueError(f"answer_ids: expected a non-empty list of non-empty token-id lists, got {answer_ids!r}")
    out = np.full((len(answers), max(map(len, answers))), -1, np.int32)
    for i, a in enumerate(answers):
        out[i, :len(a)] = a
    return out


@functools.partial(jax.jit, static_argnames=("seq_len", "cls_token_id", "sep_token_id", "pad_token_id", "special_ids"))
def _rows_and_matches(question_ids, question_mask, blocks, block_len, answers, *, seq_len, cls_token_id, sep_token_id,
                      pad_token_id, special_ids):
    tokens, lengths = reader_inputs.question_tokens(question_ids, question_mask, special_ids)
    rows = reader_inputs.build_rows(tokens, lengths, blocks, block_len, seq_len=seq_len, cls_token_id=cls_token_id,
                                    sep_token_id=sep_token_id, pad_token_id=pad_token_id)
    matches, answer_lengths = reader_inputs.answer_matches(rows, answers)
    return rows, matches, answer_lengths


class RealmRetriever:
    """Block store + its tokenizer -> reader inputs, with HF's ``RealmRetriever`` call."""

    def __init__(self, store: BlockStore):
        self.store = store
        self.tokenizer = store.tokenizer

    @classmethod
    def from_pretrained(cls, path: str) -> "RealmRetriever":
        """A block store directory (``python -m jaxmodels.realm.convert_blocks`` makes one from HF's files)."""
        return cls(BlockStore.open(path))

    def __call__(self, retrieved_block_ids, question_input_ids, answer_ids, max_length: Optional[int] = None,
                 question_attention_mask=None):
        """HF's retriever call: ``(has_answers [K], start_pos [K, A], end_pos [K, A], rows)`` for one question
        (``question_input_ids [1, Lq]``, ``retrieved_block_ids [K]``; a batch ``[B, Lq]`` / ``[B, K]`` gives a
        leading ``B`` everywhere). ``rows``: :class:`ReaderRows` numpy arrays ``[K, max_length]`` (HF pads to the
        longest row: the first HF-length positions are equal). ``A`` is the largest number of answer matches of a
        row, as HF pads; the first three are None without ``answer_ids`` (a list of token-id lists; a batch: one
        such list per question).
        """
        ids = np.asarray(retrieved_block_ids)
        questions = np.asarray(question_input_ids)
        single = ids.ndim == 1
        if single:
            ids, answer_ids = ids[None], None if answer_ids is None else [answer_ids]
        if questions.ndim != 2 or questions.shape[0] != ids.shape[0]:
            raise ValueError(f"question_input_ids has shape {questions.shape}; expected [{ids.shape[0]}, length] for "
                             f"retrieved_block_ids of shape {np.shape(retrieved_block_ids)}")
        if max_length is None:
            raise ValueError("max_length is required: the reader rows are built at a static length (reader_seq_len)")
        blocks = np.asarray(self.store.token_ids[ids.reshape(-1)]).reshape(ids.shape + (-1,))  # reads these rows only
        if answer_ids is None:
            answers = np.full((ids.shape[0], 1, 1), -1, np.int32)
        else:
            padded = [pad_answers(a) for a in answer_ids]
            answers = np.full((len(padded), max(a.shape[0] for a in padded), max(a.shape[1] for a in padded)), -1,
                              np.int32)
            for i, a in enumerate(padded):
                answers[i, :a.shape[0], :a.shape[1]] = a
        meta = self.store.meta
        rows, matches, lengths = _rows_and_matches(
            jnp.asarray(questions), None if question_attention_mask is None else jnp.asarray(question_attention_mask),
            jnp.asarray(blocks), jnp.asarray(np.asarray(self.store.num_tokens)[ids]), jnp.asarray(answers),
            seq_len=max_length, cls_token_id=meta["cls_token_id"], sep_token_id=meta["sep_token_id"],
            pad_token_id=meta["pad_token_id"], special_ids=tuple(meta["special_ids"]))
        rows = ReaderRows(*(np.asarray(x) for x in (rows.input_ids, rows.token_type_ids, rows.attention_mask,
                                                      rows.block_mask)))
        squeeze = (lambda x: x[0]) if single else (lambda x: x)
        if answer_ids is None:
            return None, None, None, jax.tree.map(squeeze, rows)
        most = int(np.max(np.sum(np.asarray(matches), axis=(2, 3)), initial=0))
        start, end = reader_inputs.answer_positions(matches, lengths, max(most, 1))
        has = np.asarray(jnp.any(matches, axis=(2, 3)))
        start, end = np.asarray(start)[..., :most], np.asarray(end)[..., :most]
        return squeeze(has), squeeze(start), squeeze(end), jax.tree.map(squeeze, rows)
