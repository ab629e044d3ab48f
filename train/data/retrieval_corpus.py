"""The data of retrieval-augmented training (REALM): an evidence store, pretraining sentences and a synthetic open-QA
set, all cut from one corpus (the embedded King James Bible by default), built once and cached.

    corpus = RetrievalCorpus.build(RetrievalCorpusSpec(source="kjv", block_tokens=288), cache_dir)
    corpus.store                  # the evidence blocks: a REALM block store (token ids + texts, memory-mapped)
    corpus.sentences              # pretraining sentences: ids [S, query_len], salient-span ids, source block
    corpus.questions("train")     # open-QA: question ids [Q, query_len], answer ids [Q, 1, answer_len], gold block

What is built (`build`), deterministically from the spec:
- **Tokenizer**: an uncased WordPiece vocabulary (BERT's normaliser and pre-tokeniser, specials `[PAD] [UNK] [CLS]
  [SEP] [MASK]` = 0..4) trained with HF `tokenizers` on the corpus; saved as `vocab.txt`, read back through the
  REALM tokenizer, so the store's ids are what the model's tokenizer gives.
- **Blocks**: each document (a KJV chapter) is cut into consecutive runs of whole sentences (verses) of at most
  `block_tokens` WordPiece tokens (REALM's 288 by default); a sentence longer than that is a block by itself
  (truncated in the store's ids). Written as the pickle-free block store REALM reads (`block_store.BlockStore`).
- **Pretraining sentences**: every sentence holding at least one *salient span*, with the block it lies in (the
  objective excludes that block from retrieval: retrieving the sentence's own text would make the task trivial,
  as REALM excludes the trivial candidate). Salient spans approximate REALM's named entities and dates without a
  tagger: maximal runs of capitalised words and numbers, not counting a sentence's first word (capitalised anyway),
  stored as a span number per WordPiece token (0 = none).
- **Synthetic open-QA set** (provenance: generated here from the corpus, no external data): for each word of a
  sentence (4+ letters, or a number) whose (lower-cased) WordPiece ids occur in exactly one block of the store, a
  question: the template ``which word is missing : <the sentence with the word replaced by "_">``, answered by the
  word (at most `questions_per_sentence` per sentence, the first ones). The answer's block is the only block
  holding the answer, so recall of that block is well defined. Questions are split by a hash of their sentence:
  every `heldout_every`-th sentence's questions go to `validation` (held out: no training question comes from
  that sentence), the rest to `train`.

Cache: `<cache_dir>/<hash of the spec>/`; the spec and counts are in `corpus.json`. The store's identity
(`identity`: a hash of its token ids and counts) goes into checkpoints so a resumed run refuses another store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Iterator, Mapping

import numpy as np

from train.data import text_corpus

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = range(5)
FORMAT_VERSION = 3
QUESTION_PREFIX = "which word is missing :"
BLANK = "_"
# A word of capitals (first letter) or a number; punctuation ends a run.
_WORD = re.compile(r"[A-Za-z0-9']+|[^\sA-Za-z0-9']")
_SENTENCE = re.compile(r"(?<=[.?!])\s+(?=[A-Z])")


@dataclasses.dataclass(frozen=True)
class RetrievalCorpusSpec:
    """What to build; every field is part of the cache key.

    source: "kjv" (the embedded corpus) or a local text file (documents separated by blank lines, one sentence per
      line or several per line); block_tokens: the most WordPiece tokens of a block; vocab_size: WordPiece pieces;
    max_documents: the first documents only (0 = all; the tiny presets and tests use a few); query_len: tokens of a
    sentence or question row with its [CLS] and [SEP] (longer ones are dropped); answer_len: tokens of an answer;
    heldout_every: the questions of one sentence in this many are held out; questions_per_sentence: the most
    questions made from one sentence.
    """

    source: str = "kjv"
    block_tokens: int = 288
    vocab_size: int = 4096
    max_documents: int = 0
    query_len: int = 48
    answer_len: int = 4
    heldout_every: int = 5
    questions_per_sentence: int = 2

    def __post_init__(self):
        for name, low in (("block_tokens", 4), ("vocab_size", 64), ("max_documents", 0), ("query_len", 8),
                          ("answer_len", 1), ("heldout_every", 2),
                          ("questions_per_sentence", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"config.data.{name}={value!r}: expected an int >= {low}")

    def key(self) -> str:
        text = json.dumps({**dataclasses.asdict(self), "format": FORMAT_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _documents(spec: RetrievalCorpusSpec) -> list[list[str]]:
    """Documents as lists of sentences."""
    if spec.source in ("kjv", "embedded"):
        lines = text_corpus.read_embedded_corpus()
    else:
        path = os.path.expanduser(spec.source)
        if not os.path.isfile(path):
            raise ValueError(f"config.data.source={spec.source!r}: not 'kjv' and not a text file")
        lines = (line.rstrip("\n") for line in text_corpus.open_text(path))
    docs = []
    for doc in text_corpus.iter_documents(lines):
        sentences = [s.strip() for line in doc.split("\n") for s in _SENTENCE.split(line) if s.strip()]
        if sentences:
            docs.append(sentences)
        if spec.max_documents and len(docs) >= spec.max_documents:
            break
    return docs


def salient_words(sentence: str) -> list[tuple[int, int, int]]:
    """``(start, end, span)`` character ranges of the words of salient spans (capitalised words and numbers after
    the sentence's first word; adjacent ones form one span, numbered from 1)."""
    out, span, previous_salient = [], 0, False
    for i, m in enumerate(_WORD.finditer(sentence)):
        word = m.group()
        salient = i > 0 and (word[0].isupper() or word[0].isdigit()) and word not in ("I", "O")
        if salient:
            if not previous_salient:
                span += 1
            out.append((m.start(), m.end(), span))
        previous_salient = salient
    return out


def _train_wordpiece(texts: list[str], vocab_size: int, directory: str) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), min_frequency=1,
                                        initial_alphabet=[BLANK],
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("\n".join(word for word, _ in vocab) + "\n")


class RetrievalCorpus:
    """A built corpus directory (see the module docstring). ``family``: the model family's registry record, whose
    ``block_store`` class stores the blocks and whose ``tokenizer`` reads the WordPiece vocabulary."""

    def __init__(self, path: str, family):
        BlockStore = family.block_store  # noqa: N806

        self.path = path
        with open(os.path.join(path, "corpus.json")) as f:
            self.meta = json.load(f)
        self.spec = RetrievalCorpusSpec(**self.meta["spec"])
        self.store = BlockStore.open(os.path.join(path, "store"))
        self.tokenizer = self.store.tokenizer
        arrays = np.load(os.path.join(path, "examples.npz"), allow_pickle=False)
        self.arrays = {k: arrays[k] for k in arrays.files}
        self.sentences = {k[len("sentence_"):]: v for k, v in self.arrays.items() if k.startswith("sentence_")}

    @property
    def identity(self) -> str:
        return self.meta["identity"]

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def questions(self, split: str) -> dict[str, np.ndarray]:
        if split not in ("train", "validation"):
            raise ValueError(f"split={split!r}: expected 'train' or 'validation'")
        return {k[len(split) + 1:]: v for k, v in self.arrays.items() if k.startswith(split + "_")}

    @classmethod
    def build(cls, spec: RetrievalCorpusSpec, cache_dir: str | None, family) -> "RetrievalCorpus":
        cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "jaxmodels", "retrieval_corpus")
        path = os.path.join(cache_dir, spec.key())
        if family.block_store is None:
            raise ValueError(f"config.model.model_type={family.model_type!r}: not a retrieval family (no block store)")
        if os.path.isfile(os.path.join(path, "corpus.json")):
            return cls(path, family)
        tmp = f"{path}.tmp-{os.getpid()}"
        _write(spec, tmp, family)
        try:
            os.rename(tmp, path)
        except OSError:  # another process finished first: use its copy
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        return cls(path, family)


def _write(spec: RetrievalCorpusSpec, path: str, family) -> None:
    BlockStore, load_tokenizer = family.block_store, family.tokenizer  # noqa: N806

    docs = _documents(spec)
    if not docs:
        raise ValueError(f"config.data.source={spec.source!r}: no documents")
    _train_wordpiece([s for d in docs for s in d], spec.vocab_size, os.path.join(path, "vocab"))
    tok = load_tokenizer(os.path.join(path, "vocab"))
    if (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) != (PAD, CLS, SEP, MASK):
        raise AssertionError("WordPiece specials are not [PAD]=0 [CLS]=2 [SEP]=3 [MASK]=4")
    encode = lambda texts: tok(list(texts), add_special_tokens=False)["input_ids"]  # noqa: E731

    # Blocks: whole sentences packed up to block_tokens.
    blocks, sentence_rows = [], []  # sentence_rows: (sentence text, its ids, block index)
    for doc in docs:
        ids = encode(doc)
        current, count = [], 0
        for sentence, sid in zip(doc, ids):
            if current and count + len(sid) > spec.block_tokens:
                blocks.append(" ".join(current))
                current, count = [], 0
            current.append(sentence)
            count += len(sid)
            sentence_rows.append((sentence, sid, len(blocks)))
        if current:
            blocks.append(" ".join(current))
    store = BlockStore.write(os.path.join(path, "store"), blocks, tok, reader_seq_len=spec.block_tokens + 3)
    block_ids = np.asarray(store.token_ids)
    block_counts = np.asarray(store.num_tokens)

    width = spec.query_len - 2  # [CLS] ... [SEP]
    sent_ids, sent_spans, sent_block = [], [], []
    candidates = []  # (sentence, start, end, answer ids, block)
    vocab_cache: dict[str, list[int]] = {}
    for sentence, _, block in sentence_rows:
        words = salient_words(sentence)
        # Answer candidates: words of 4+ letters (or numbers); kept below when they occur in exactly one block.
        for m in _WORD.finditer(sentence):
            word = m.group()
            if (len(word) >= 4 and word.isalpha()) or word.isdigit():
                if word not in vocab_cache:
                    vocab_cache[word] = encode([word])[0]
                if 0 < len(vocab_cache[word]) <= spec.answer_len:
                    candidates.append((sentence, m.start(), m.end(), tuple(vocab_cache[word]), block))
        if not words:
            continue
        # Word by word (BERT's pre-tokeniser splits there anyway), so each token knows its word.
        matches = list(_WORD.finditer(sentence))
        missing = [m.group() for m in matches if m.group() not in vocab_cache]
        if missing:
            vocab_cache.update(zip(missing, encode(missing)))
        span_of = {start: span for start, _, span in words}
        ids, spans = [], []
        for m in matches:
            piece = vocab_cache[m.group()]
            ids += piece
            spans += [span_of.get(m.start(), 0)] * len(piece)
        if len(ids) <= width and any(spans):
            sent_ids.append([CLS] + ids + [SEP] + [PAD] * (width - len(ids)))
            sent_spans.append([0] + spans + [0] * (width + 1 - len(ids)))
            sent_block.append(block)
    # Which blocks hold each candidate answer (its n-grams over every block's tokens).
    wanted = {c[3] for c in candidates}
    holders: dict[tuple, set] = {a: set() for a in wanted}
    for b in range(len(blocks)):
        row = block_ids[b, :block_counts[b]].tolist()
        for n in range(1, spec.answer_len + 1):
            for i in range(len(row) - n + 1):
                gram = tuple(row[i:i + n])
                if gram in holders:
                    holders[gram].add(b)
    questions, per_sentence = [], {}
    for s, a, e, ans, block in candidates:
        if holders[ans] == {block} and per_sentence.get((s, block), 0) < spec.questions_per_sentence:
            per_sentence[(s, block)] = per_sentence.get((s, block), 0) + 1
            questions.append((f"{QUESTION_PREFIX} {s[:a]}{BLANK}{s[e:]}", list(ans), block, s))
    arrays: dict[str, Any] = {
        "sentence_inputs": np.asarray(sent_ids, np.int32).reshape(-1, spec.query_len),
        "sentence_salient_spans": np.asarray(sent_spans, np.int32).reshape(-1, spec.query_len),
        "sentence_source_block": np.asarray(sent_block, np.int32),
    }
    q_ids = encode([q[0] for q in questions]) if questions else []
    split_rows: dict[str, list] = {"train": [], "validation": []}
    for (question, answer, block, sentence), ids in zip(questions, q_ids):
        if len(ids) > width:
            continue
        # Split by sentence: a held-out question's sentence has no training question.
        digest = int(hashlib.sha256(sentence.encode()).hexdigest(), 16)
        split = "validation" if digest % spec.heldout_every == 0 else "train"
        split_rows[split].append(([CLS] + ids + [SEP] + [PAD] * (width - len(ids)),
                                  answer + [-1] * (spec.answer_len - len(answer)), block))
    for split, rows in split_rows.items():
        arrays[f"{split}_inputs"] = np.asarray([r[0] for r in rows], np.int32).reshape(-1, spec.query_len)
        arrays[f"{split}_answers"] = np.asarray([r[1] for r in rows], np.int32).reshape(-1, 1, spec.answer_len)
        arrays[f"{split}_answer_block"] = np.asarray([r[2] for r in rows], np.int32)
    np.savez(os.path.join(path, "examples.npz"), **arrays)
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(block_ids).tobytes())
    digest.update(np.ascontiguousarray(block_counts).tobytes())
    meta = {"spec": dataclasses.asdict(spec), "format": FORMAT_VERSION, "identity": digest.hexdigest()[:32],
            "vocab_size": tok.vocab_size, "num_blocks": len(blocks), "num_sentences": len(sent_ids),
            "num_questions": {k: len(v) for k, v in split_rows.items()},
            "provenance": "generated from the corpus by train/data/retrieval_corpus.py (see its docstring)"}
    with open(os.path.join(path, "corpus.json"), "w") as f:
        json.dump(meta, f, indent=2)


class ExampleBatches:
    """Batches of rows of a dict of arrays (same first dimension), shuffled with `seed` afresh each epoch, with
    `get_state` / `set_state` for exact resume; this process's rows of each global batch."""

    def __init__(self, arrays: Mapping[str, np.ndarray], *, global_batch_size: int, seed: int, shuffle: bool = True,
                 process_index: int = 0, process_count: int = 1):
        self.arrays = dict(arrays)
        self.n = len(next(iter(self.arrays.values())))
        if self.n == 0:
            raise ValueError("no examples: the corpus gave none (raise config.data.max_documents?)")
        self.batch, self.seed, self.shuffle = global_batch_size, seed, shuffle
        per = global_batch_size // process_count
        self.rows = slice(process_index * per, (process_index + 1) * per)
        self.position = 0  # examples consumed, over all epochs

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        idx = [self._order((self.position + i) // self.n)[(self.position + i) % self.n] for i in range(self.batch)]
        self.position += self.batch
        idx = np.asarray(idx)[self.rows]
        return {k: v[idx] for k, v in self.arrays.items()}

    def get_state(self) -> dict:
        return {"num_shards": 1, "shards": {"0": {"position": self.position, "seed": self.seed, "n": self.n}}}

    def set_state(self, state: Mapping[str, Any]) -> None:
        shard = state["shards"]["0"]
        if shard["seed"] != self.seed or shard["n"] != self.n:
            raise ValueError(f"data state of another dataset (seed/examples {shard['seed']}/{shard['n']}, here "
                             f"{self.seed}/{self.n})")
        self.position = int(shard["position"])


__all__ = ["RetrievalCorpus", "RetrievalCorpusSpec", "ExampleBatches", "salient_words"]
