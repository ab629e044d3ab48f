"""Shared pieces of the REALM oracle tests: the toy vocabulary and corpus of the spec's cases, HF models with random
non-default weights (built once per session and saved to disk) and ours loaded from the same directories."""

from __future__ import annotations

import functools
import os
import tempfile

import numpy as np

import jaxmodels
from tests.oracle import randomize_, require_torch

WORDS = ("[PAD] [UNK] [CLS] [SEP] [MASK] the a cat dog sat on mat is who where what paris france capital of city "
         "river big small red blue green house tree").split()
V = len(WORDS)  # 29
BASE = dict(vocab_size=V, hidden_size=16, retriever_proj_size=8, num_hidden_layers=2, num_attention_heads=2,
            num_candidates=3, intermediate_size=24, max_position_embeddings=40, hidden_act="gelu_new",
            span_hidden_size=10, max_span_width=3, reader_beam_size=2, reader_seq_len=20, num_block_records=7,
            searcher_beam_size=4, pad_token_id=0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
BLOCKS = [b"the cat sat on the mat", b"paris is the capital of france", b"the dog is big", b"a red river",
          b"the small blue city", b"where is paris", b"the green house is red"]
QUESTIONS = ["where is paris", "who is the cat", "what is the big red tree"]
# Blocks "the cat sat on the mat" (0), "paris is the capital of france" (1) and "where is paris" (5) are made the
# best matches of these questions, in the order 1, 0, 5: the reader's top 2 hold the first two answers.
_BLOCK_PULL = [4.0, 5.0, 0.0, 0.0, 0.0, 3.0, 0.0]
# Made once per process and reused by every test: HF builds and saves take most of a small test.
_ROOT = tempfile.TemporaryDirectory(prefix="realm_cases_")


def vocab_dir() -> str:
    path = os.path.join(_ROOT.name, "vocab")
    if not os.path.isdir(path):
        os.makedirs(path)
        with open(os.path.join(path, "vocab.txt"), "w") as f:
            f.write("\n".join(WORDS) + "\n")
    return path


@functools.cache
def hf_tokenizer():
    require_torch()
    import transformers

    tok = transformers.RealmTokenizer(os.path.join(vocab_dir(), "vocab.txt"))
    saved = os.path.join(_ROOT.name, "hf_tokenizer")
    tok.save_pretrained(saved)
    return tok, saved


@functools.cache
def pair(cls: str, config_items: tuple = ()):
    """``(hf_model, saved_dir, module, params)`` for HF class ``cls`` on ``BASE`` + ``config_items``; HF weights
    random (seeded), ``block_emb`` of RealmForOpenQA ``0.3 randn(7, 8)`` (generator seed 4) pulled towards the
    questions by ``_BLOCK_PULL``, HF in eval mode."""
    torch = require_torch()
    import transformers

    config = transformers.RealmConfig(**{**BASE, **dict(config_items)})
    torch.manual_seed(0)
    if cls == "RealmForOpenQA":
        from transformers.models.deprecated.realm.retrieval_realm import RealmRetriever

        tok, _ = hf_tokenizer()
        model = transformers.RealmForOpenQA(config, retriever=RealmRetriever(np.array(BLOCKS, dtype=object), tok))
    else:
        model = getattr(transformers, cls)(config)
    model.eval()
    randomize_(model, seed=1, std=0.3)
    if cls == "RealmForOpenQA":
        tok, _ = hf_tokenizer()
        with torch.no_grad():
            question = model.embedder(**tok(QUESTIONS, padding=True, return_tensors="pt")).projected_score.mean(0)
            noise = torch.randn(7, 8, generator=torch.Generator().manual_seed(4)) * 0.3
            model.block_emb.copy_(noise + torch.tensor(_BLOCK_PULL)[:, None] * question / question.dot(question))
    path = os.path.join(_ROOT.name, f"{cls}-{abs(hash(config_items))}")
    # HF can save only the embedder and the knowledge-augmented encoder as safetensors (shared tensors elsewhere).
    model.save_pretrained(path, safe_serialization=cls in ("RealmEmbedder", "RealmKnowledgeAugEncoder"))
    module, params = jaxmodels.from_pretrained(path)
    return model, path, module, params


def bert_ids(rs, b: int, length: int, pad_tail=()):
    """``[CLS] x... [SEP] [PAD]...`` rows (ids >= 5) and their mask; row r has ``pad_tail[r]`` pads."""
    x = rs.randint(5, V, (b, length)).astype(np.int64)
    m = np.ones((b, length), np.int64)
    x[:, 0], x[:, -1] = 2, 3
    for r, n in enumerate(pad_tail):
        if n:
            x[r, -n - 1], x[r, -n:], m[r, -n:] = 3, 0, 0
    return x, m
