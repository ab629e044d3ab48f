"""REALM family: config, the embedder / scorer / knowledge-augmented encoder / reader / open-QA models, checkpoint
names, the pickle-free block store and its retriever, and the WordPiece tokenizer."""

import jax.numpy as jnp

from jaxmodels.realm.block_store import BlockStore, load_block_emb, save_open_qa_pretrained
from jaxmodels.realm.config import RealmConfig
from jaxmodels.realm.convert import BASE_MODEL_PREFIX, TIED_KEYS, checkpoint_renames, key_fn
from jaxmodels.realm.modeling import (
    ARCHITECTURES,
    RealmEmbedder,
    RealmEmbedderOutput,
    RealmForOpenQA,
    RealmForOpenQAOutput,
    RealmForRetrievalPretraining,
    RealmKnowledgeAugEncoder,
    RealmReader,
    RealmReaderOutput,
    RealmScorer,
    RealmScorerOutput,
)
from jaxmodels.realm.presets import PRESETS
from jaxmodels.realm.reader_inputs import BlockTokens
from jaxmodels.realm.retriever import RealmRetriever
from jaxmodels.realm.tokenization import load_tokenizer
from jaxmodels.registry import Family


def dummy_inputs(config: RealmConfig, architecture: str) -> dict:
    """Smallest inputs that initialise ``architecture`` (shapes only matter)."""
    ids = lambda *shape: jnp.zeros(shape, jnp.int32)  # noqa: E731
    if architecture == "RealmScorer":
        return {"input_ids": ids(1, 1), "candidate_input_ids": ids(1, config.num_candidates, 1)}
    if architecture == "RealmKnowledgeAugEncoder":
        return {"input_ids": ids(1, config.num_candidates, 1)}
    if architecture == "RealmReader":
        width = config.max_span_width
        return {"input_ids": ids(1, width), "token_type_ids": ids(1, width), "relevance_score": jnp.zeros((1,)),
                "block_mask": jnp.zeros((1, width), bool)}
    return {"input_ids": ids(1, 1)}


def check_training_length(config: RealmConfig, length: int) -> None:
    if length > config.max_position_embeddings:
        raise ValueError(f"exceeds model.max_position_embeddings={config.max_position_embeddings}")


FAMILY = Family(
    model_type="realm", config_class=RealmConfig, architectures=ARCHITECTURES, default_architecture="RealmEmbedder",
    base_model_prefix=BASE_MODEL_PREFIX, key_fn=key_fn, dummy_inputs=dummy_inputs, tied_keys=TIED_KEYS,
    tokenizer=load_tokenizer, check_training_length=check_training_length, presets=PRESETS, block_store=BlockStore,
    checkpoint_renames=checkpoint_renames,
)

__all__ = [
    "FAMILY", "RealmConfig", "load_tokenizer", "RealmEmbedder", "RealmScorer", "RealmKnowledgeAugEncoder",
    "RealmReader", "RealmForOpenQA", "RealmEmbedderOutput", "RealmScorerOutput", "RealmReaderOutput",
    "RealmForOpenQAOutput", "RealmForRetrievalPretraining", "BlockTokens", "BlockStore", "RealmRetriever", "load_block_emb",
    "save_open_qa_pretrained", "checkpoint_renames",
]
