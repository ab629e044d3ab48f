"""REALM checkpoint names: our param paths <-> HF state-dict keys (renames, transposes and per-layer stacking).

Our tree mirrors HF's module names, with three differences:
- ``encoder.layer`` is one stacked tree ``[num_hidden_layers, ...]``; leaf i is ``<prefix>encoder.layer.{i}.<rest>``.
- The masked-LM heads are ``layers.heads.MaskedLMHead`` (``predictions.dense`` / ``predictions.LayerNorm``), HF's
  ``predictions.transform.dense`` / ``predictions.transform.LayerNorm``; their ``bias`` is also written as
  ``predictions.decoder.bias`` (HF ties the two and loses the bias when only one is in a safetensors file).
- The scorer's one embedder (``query_embedder`` here) is written under both HF names, ``embedder.*`` and
  ``query_embedder.*``, as HF's own ``pytorch_model.bin`` holds it; it is read from ``embedder.*``.
"""

from __future__ import annotations

from jaxmodels.hf_io import torch_leaf
from jaxmodels.realm.config import RealmConfig

BASE_MODEL_PREFIX = "realm"
# In HF checkpoints but never read as params: the knowledge-augmented encoder's decoder weight is the word-embedding
# table (tied), and RealmForOpenQA's `block_emb` is the retrieval index, a buffer outside the params (read by
# jaxmodels.realm.load_block_emb).
TIED_KEYS = ("cls.predictions.decoder.weight", "block_emb")
_LAYER = ("encoder", "layer")
_SCORER_EMBEDDER = "query_embedder"


def _hf_name(path: tuple[str, ...]) -> str:
    name = torch_leaf(path)
    for part in ("dense", "LayerNorm"):
        name = name.replace(f"cls.predictions.{part}.", f"cls.predictions.transform.{part}.")
    return name


def key_fn(config: RealmConfig):
    """``(path, shape) -> [(hf_name, index)]`` for any REALM param tree (see ``jaxmodels.hf_io``)."""

    def names(path: tuple[str, ...]) -> list[tuple[str, tuple]]:
        for at in range(len(path) - 1):
            if path[at:at + 2] == _LAYER:
                stem, rest = ".".join(path[:at + 2]), torch_leaf(path[at + 2:])
                return [(f"{stem}.{i}.{rest}", (i,)) for i in range(config.num_hidden_layers)]
        name = _hf_name(path)
        if name.endswith("cls.predictions.bias"):
            return [(name, ()), (name[: -len("bias")] + "decoder.bias", ())]
        return [(name, ())]

    def keys(path, shape):
        if path[0] == _SCORER_EMBEDDER:
            inner = names(path[1:])
            return [(f"{prefix}.{name}", index) for prefix in ("embedder", "query_embedder") for name, index in inner]
        return names(path)

    return keys


# Where each class keeps REALM's two networks: the retriever (the query / block embedder) and the BERT that reads
# retrieved text (the knowledge-augmented encoder in pretraining, the reader in open QA; REALM fine-tunes both from
# pretraining, the reader starting from the encoder, its span head new).
_PARTS = {
    "RealmEmbedder": {"retriever": ()},
    "RealmScorer": {"retriever": (_SCORER_EMBEDDER,)},
    "RealmKnowledgeAugEncoder": {"reader": ()},
    "RealmReader": {"reader": ()},
    "RealmForOpenQA": {"retriever": ("embedder",), "reader": ("reader",)},
    "RealmForRetrievalPretraining": {"retriever": ("embedder",), "reader": ("encoder",)},
}


def checkpoint_renames(checkpoint_architecture: str, architecture: str) -> tuple:
    """``((prefix, checkpoint_prefix), ...)`` (``Family.checkpoint_renames``): ``architecture``'s retriever and reader
    params read from where ``checkpoint_architecture`` keeps them, so ``init_from`` a ``RealmForRetrievalPretraining``
    run starts ``RealmForOpenQA`` with both (its ``reader/qa_outputs`` span head, absent there, is initialised)."""
    ours, theirs = _PARTS.get(architecture, {}), _PARTS.get(checkpoint_architecture, {})
    if architecture == checkpoint_architecture:
        return ()
    # Longest prefix first: the first matching pair wins.
    pairs = [(ours[part], theirs[part]) for part in ours if part in theirs]
    return tuple(sorted(pairs, key=lambda pair: -len(pair[0])))
