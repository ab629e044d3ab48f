"""Reader inputs built on device from pre-tokenised blocks: what HF's ``RealmRetriever`` does on the host with text.

HF retrieves block ids, decodes the question back to text, tokenises ``(question, block text)`` pairs as
``[CLS] q [SEP] block [SEP]`` (truncated ``longest_first`` to ``reader_seq_len``, padded to the longest row) and
searches each answer's token ids between the two ``[SEP]``. Here the blocks are already token ids
(:class:`BlockTokens`, from a ``jaxmodels.realm.block_store.BlockStore``), so the same rows come out of index
arithmetic on static shapes, for a whole batch of questions in one jitted call:

    question_tokens   [B, Lq] ids, mask        -> the question's tokens without special tokens, lengths [B]
    build_rows        + blocks [B, K, Lb]      -> input_ids / token types / attention mask / block mask [B, K, M]
    block_rows        blocks [..., Lb]         -> [CLS] block [SEP] ids, mask [..., Lb + 2] (the retriever's rows;
                                                  BlockTokens.rows gathers and frames store rows)
    answer_matches    + answers [B, A, La]     -> [B, K, A, M]: answer a starts at position p inside the block
                                                  (BlockTokens.holding: which store blocks hold an answer, [B, N])

Rows are padded to ``M = reader_seq_len`` (HF pads to the longest row of the call): the tokens, types and masks of
every row's first HF-length positions are HF's, the rest is padding.

Equal to HF when the question ids came from the tokenizer (HF's decode -> encode round trip then only drops the
special tokens, ``[UNK]`` included, which :func:`question_tokens` drops too) and the store keeps at least
``reader_seq_len - 3`` tokens of every block (``BlockStore`` checks this; each block's full token count is stored,
so the truncation arithmetic sees the untruncated length as HF does).
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@flax.struct.dataclass
class BlockTokens:
    """Evidence blocks as token ids, on device (rows may be padded to a multiple of a shard count).

    ``token_ids [N, block_len]`` (uint16 or int32, the block's first ``block_len`` tokens, no special tokens),
    ``num_tokens [N]`` int32 (the block's full token count, before the cut to ``block_len``); the special ids of the
    tokenizer that made them are static fields.
    """

    token_ids: Array
    num_tokens: Array
    cls_token_id: int = flax.struct.field(pytree_node=False, default=101)
    sep_token_id: int = flax.struct.field(pytree_node=False, default=102)
    pad_token_id: int = flax.struct.field(pytree_node=False, default=0)
    special_ids: tuple = flax.struct.field(pytree_node=False, default=())

    def rows(self, ids: Array, take=None) -> tuple[Array, Array]:
        """:func:`block_rows` of blocks ``ids [...]``: ``(input_ids, attention_mask) [..., block_len + 2]``.
        ``take(table, ids)`` gathers rows (default ``jnp.take``; ``layers.retrieval.sharded_take`` for a store split
        by rows over devices)."""
        take = take or (lambda table, i: jnp.take(table, i, axis=0))
        return block_rows(take(self.token_ids, ids), take(self.num_tokens, ids), cls_token_id=self.cls_token_id,
                          sep_token_id=self.sep_token_id, pad_token_id=self.pad_token_id)

    def holding(self, answers: Array) -> Array:
        """``[B, N]`` bool: whether block ``n`` holds one of row ``b``'s ``answers [B, A, La]`` (token ids, -1
        padded; an all -1 answer matches nothing) wholly inside its tokens. Every block is searched: for stores
        small enough to scan."""
        tokens = self.token_ids.astype(jnp.int32)  # [N, Lb]
        width = tokens.shape[-1]
        lengths = answer_lengths(answers)  # [B, A]
        limit = jnp.minimum(self.num_tokens, width)
        # Past a block's tokens nothing matches (-2 is no token id, and not the answers' -1 padding).
        tokens = jnp.where(jnp.arange(width) < limit[:, None], tokens, -2)
        ok = _starts_matching(tokens[None, None], answers[:, :, None], lengths[:, :, None])  # [B, A, N, Lb]
        return jnp.any(ok, axis=(1, 3))


@flax.struct.dataclass
class ReaderRows:
    """``[..., M]`` reader inputs: ``input_ids``, ``token_type_ids``, ``attention_mask`` (int32) and ``block_mask``
    (bool: the block's tokens, HF's ``~special_tokens_mask & token_type_ids``)."""

    input_ids: Array
    token_type_ids: Array
    attention_mask: Array
    block_mask: Array


def question_tokens(input_ids: Array, attention_mask: Array | None, special_ids) -> tuple[Array, Array]:
    """``input_ids [B, L]`` -> ``(tokens [B, L], lengths [B])``: each row's attended non-special tokens moved to the
    front in order (the rest is unspecified), as HF's ``decode(skip_special_tokens=True)`` then re-tokenising gives."""
    keep = jnp.ones(input_ids.shape, bool) if attention_mask is None else attention_mask != 0
    if special_ids:
        keep = keep & ~jnp.isin(input_ids, jnp.asarray(special_ids, input_ids.dtype))
    order = jnp.argsort(~keep, axis=1, stable=True)
    return jnp.take_along_axis(input_ids, order, axis=1), jnp.sum(keep, axis=1, dtype=jnp.int32)


def truncate_pair(first: Array, second: Array, budget: int) -> tuple[Array, Array]:
    """Tokens kept of two sequences of ``first`` and ``second`` tokens (int arrays) to fit ``budget`` together:
    transformers' ``longest_first`` arithmetic (even out the lengths, then alternate; the second sequence gives up
    the odd token on a tie)."""
    remove = jnp.maximum(first + second - budget, 0)
    even_out = jnp.minimum(jnp.abs(second - first), remove)
    rest = remove - even_out
    first_longer = first > second
    cut_first = jnp.where(first_longer, even_out + rest // 2, rest // 2)
    cut_second = jnp.where(first_longer, rest - rest // 2, even_out + rest - rest // 2)
    return jnp.maximum(first - cut_first, 0), jnp.maximum(second - cut_second, 0)


def build_rows(question: Array, question_len: Array, blocks: Array, block_len: Array, *, seq_len: int,
               cls_token_id: int, sep_token_id: int, pad_token_id: int) -> ReaderRows:
    """``[CLS] q [SEP] block [SEP]`` rows, truncated ``longest_first`` to ``seq_len`` and padded to it.

    ``question [B, Lq]`` / ``question_len [B]`` (from :func:`question_tokens`), ``blocks [B, K, Lb]`` (the retrieved
    blocks' token ids) / ``block_len [B, K]`` (their full token counts) -> :class:`ReaderRows` ``[B, K, seq_len]``.
    Token types are 0 up to the first ``[SEP]``, 1 for the block and its ``[SEP]``, 0 on padding (HF's layout).
    """
    q_keep, b_keep = truncate_pair(question_len[:, None], block_len, seq_len - 3)  # [B, K]
    b_keep = jnp.minimum(b_keep, blocks.shape[-1])
    p = jnp.arange(seq_len, dtype=jnp.int32)  # [M]
    qk, bk = q_keep[..., None], b_keep[..., None]  # [B, K, 1]
    block_start = qk + 2
    block_end = block_start + bk  # the second [SEP]
    q_tok = jnp.take(question, jnp.clip(p - 1, 0, question.shape[1] - 1), axis=1)[:, None, :]  # [B, 1, M]
    b_tok = jnp.take_along_axis(blocks, jnp.clip(p - block_start, 0, blocks.shape[-1] - 1), axis=2)
    in_question = (p >= 1) & (p <= qk)
    in_block = (p >= block_start) & (p < block_end)
    ids = jnp.where(p == 0, cls_token_id,
                    jnp.where(in_question, q_tok.astype(jnp.int32),
                              jnp.where((p == qk + 1) | (p == block_end), sep_token_id,
                                        jnp.where(in_block, b_tok.astype(jnp.int32), pad_token_id))))
    attention = p <= block_end
    types = (p >= block_start) & attention
    return ReaderRows(ids.astype(jnp.int32), types.astype(jnp.int32), attention.astype(jnp.int32), in_block)


def block_rows(tokens: Array, num_tokens: Array, *, cls_token_id: int, sep_token_id: int,
               pad_token_id: int) -> tuple[Array, Array]:
    """``[CLS] block [SEP]`` rows, the retriever's view of a block (what an index of block embeddings embeds).

    ``tokens [..., Lb]`` (a block's first ``Lb`` token ids), ``num_tokens [...]`` (its full count; more than ``Lb``
    is cut to ``Lb``) -> ``(input_ids, attention_mask) [..., Lb + 2]`` int32, padded after the ``[SEP]``."""
    width = tokens.shape[-1]
    n = jnp.minimum(num_tokens, width)[..., None]
    p = jnp.arange(width + 2)
    body = jnp.take(tokens.astype(jnp.int32), jnp.clip(p - 1, 0, width - 1), axis=-1)
    row = jnp.where(p == 0, cls_token_id, jnp.where(p <= n, body, jnp.where(p == n + 1, sep_token_id, pad_token_id)))
    return row.astype(jnp.int32), (p <= n + 1).astype(jnp.int32)


def answer_lengths(answers: Array) -> Array:
    """``answers [..., La]`` token ids, each padded with -1 at its end -> their lengths ``[...]`` int32 (0 for an
    all -1 answer)."""
    real = answers >= 0
    return jnp.where(jnp.any(real, axis=-1), answers.shape[-1] - jnp.argmax(real[..., ::-1], axis=-1),
                     0).astype(jnp.int32)


def _starts_matching(ids: Array, answers: Array, lengths: Array) -> Array:
    """``ids [..., M]``, ``answers [..., La]``, ``lengths [...]`` (broadcastable) -> ``[..., M]`` bool: the answer
    of ``lengths > 0`` tokens equals ``ids[p .. p + length - 1]``, all inside the row."""
    m = ids.shape[-1]
    p = jnp.arange(m)
    ok = jnp.broadcast_to(lengths[..., None] > 0, jnp.broadcast_shapes(ids.shape, lengths.shape + (m,)))
    for j in range(answers.shape[-1]):
        shifted = jnp.take(ids, jnp.clip(p + j, 0, m - 1), axis=-1)
        ok = ok & ((j >= lengths)[..., None] | ((shifted == answers[..., j, None]) & (p + j < m)))
    return ok


def answer_matches(rows: ReaderRows, answers: Array) -> tuple[Array, Array]:
    """Where each answer starts in each row's block: ``(matches [B, K, A, M] bool, lengths [B, A])``.

    ``answers [B, A, La]`` token ids, each answer padded with -1 at its end (an all -1 answer matches nothing).
    Answer ``a`` matches at ``p`` when ``p`` is a block position and the row's tokens ``p .. p + len - 1`` (which
    may run past the block, as HF's slice does) equal the answer; a match must fit in the row.
    """
    lengths = answer_lengths(answers)  # [B, A]
    ok = _starts_matching(rows.input_ids[:, :, None], answers[:, None], lengths[:, None])  # [B, K, A, M]
    return ok & rows.block_mask[:, :, None, :], lengths


def answer_positions(matches: Array, lengths: Array, max_answers: int) -> tuple[Array, Array]:
    """HF's ``start_pos`` / ``end_pos`` lists ``[B, K, max_answers]`` from :func:`answer_matches`: matches in answer
    order then position order, -1 padded (HF pads to the largest count over the rows of the call)."""
    b, k, a, m = matches.shape
    flat = matches.reshape(b, k, a * m)
    order = jnp.argsort(~flat, axis=-1, stable=True)[..., :max_answers]
    found = jnp.take_along_axis(flat, order, axis=-1)
    start = (order % m).astype(jnp.int32)
    end = start + jnp.take_along_axis(jnp.broadcast_to(lengths[:, None, :], (b, k, a)), order // m, axis=-1) - 1
    return jnp.where(found, start, -1), jnp.where(found, end, -1)


def span_correct(matches: Array, lengths: Array, starts: np.ndarray, ends: np.ndarray) -> Array:
    """Which candidate spans are an answer: ``[B, R, A, M]`` matches -> ``[B, R, num_spans]`` bool, span ``s`` being
    correct when some answer of length ``ends[s] - starts[s] + 1`` matches at ``starts[s]``."""
    at_start = jnp.take(matches, jnp.asarray(starts), axis=-1)  # [B, R, A, S]
    width = jnp.asarray(ends - starts + 1)
    return jnp.any(at_start & (lengths[:, None, :, None] == width), axis=2)
