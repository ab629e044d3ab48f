"""The run-side pieces of retrieval-augmented training: the corpus and its batches, the block store on the devices,
the index of block embeddings in the train state, and its refresh.

    setup = RetrievalSetup.create(config, objective, module, mesh, shardings)
    state = setup.attach_index(state, step=0)        # embeds every block with the current retriever
    state, seconds = setup.refresh(state, step)       # the same, later: every objective.refresh_every steps

The index has one row per block, padded to a multiple of the shards; its rows (and the block store's) are split over
the mesh axis ``objective.index_axis`` ("data"), and the refresh runs under ``shard_map``: each device embeds its own
blocks, in scan steps of ``objective.embed_chunk``, and keeps its rows of the result (no gather). Retrieval searches
and gathers shard by shard (``layers.retrieval.sharded_mips_topk`` / ``sharded_take``).

A refresh is a pure function of the params,
so a run killed during one recomputes the same index from the same checkpoint; the index and the step it was
computed at are part of the checkpointed state, so a run killed after one resumes onto the same trajectory.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from train.data import retrieval_corpus
from train.state import IndexedTrainState


def corpus_spec(config) -> retrieval_corpus.RetrievalCorpusSpec:
    d = config.data
    return retrieval_corpus.RetrievalCorpusSpec(
        source=d.source, block_tokens=d.block_tokens, vocab_size=d.vocab_size, max_documents=d.max_documents,
        query_len=config.seq_len)


def examples(objective, corpus: retrieval_corpus.RetrievalCorpus, split: str) -> dict:
    """The rows an objective trains (``train``) or is evaluated (``validation``) on: pretraining sentences (the
    validation rows are every 10th sentence, also trained on: the pretraining metric is the masked-LM fit), or
    open-QA questions (validation = held-out questions)."""
    if objective.name == "realm_pretrain":
        sentences = corpus.sentences
        return sentences if split == "train" else {k: v[::10] for k, v in sentences.items()}
    return corpus.questions(split)


@dataclasses.dataclass
class RetrievalSetup:
    corpus: Any
    blocks: Any  # BlockTokens on the devices, rows split like the index
    index_sharding: NamedSharding
    context_sharding: Any
    refresh_fn: Any
    num_rows: int
    proj_size: int

    @classmethod
    def create(cls, config, objective, module, mesh, params_sharding) -> tuple["RetrievalSetup", Any, Any]:
        """The setup, the module with ``num_block_records`` set to the store's block count (and, over several
        shards, searching its index shard by shard), and the objective bound to the mesh."""
        from jaxmodels import registry

        corpus = retrieval_corpus.RetrievalCorpus.build(corpus_spec(config), config.data.cache_dir or None,
                                                        registry.of_config(module.config))
        c = module.config
        if module.config.num_block_records != len(corpus.store):
            module = module.clone(config=dataclasses.replace(c, num_block_records=len(corpus.store)))
        if corpus.vocab_size > module.config.vocab_size:
            raise ValueError(f"config.model.vocab_size={module.config.vocab_size}: the corpus' WordPiece vocabulary "
                             f"has {corpus.vocab_size} pieces")
        axis = objective.index_axis
        if axis not in mesh.axis_names:
            raise ValueError(f"config.objective.index_axis={axis!r}: not an axis of the mesh {dict(mesh.shape)}")
        shards = int(mesh.shape[axis])
        rows = P(axis)
        # Rows padded with empty blocks to a multiple of the shards (never retrieved: num_valid).
        blocks = corpus.store.tokens(multiple=shards, sharding=NamedSharding(mesh, rows))
        index_sharding = NamedSharding(mesh, P(axis, None))
        if shards > 1:
            from layers.retrieval import RowSharding

            objective = dataclasses.replace(objective, index_mesh=mesh)
            if hasattr(module, "index_sharding"):
                module = module.clone(index_sharding=RowSharding(mesh, axis))
        block_sharding = jax.tree.map(lambda _: NamedSharding(mesh, rows), blocks)

        def local_index(params, token_ids, num_tokens):
            # Inside shard_map every mesh axis is manual: the modules' logical activation constraints must not apply.
            with nn.logical_axis_rules(()):
                return objective.embed_blocks(module, params,
                                              blocks.replace(token_ids=token_ids, num_tokens=num_tokens))

        def refresh(params, blocks_):
            return jax.shard_map(local_index, mesh=mesh, in_specs=(P(), rows, rows), out_specs=P(axis, None),
                                 check_vma=False)(params, blocks_.token_ids, blocks_.num_tokens)

        refresh_fn = jax.jit(refresh, in_shardings=(params_sharding, block_sharding), out_shardings=index_sharding)
        setup = cls(corpus, blocks, index_sharding, {"blocks": block_sharding}, refresh_fn,
                    int(blocks.token_ids.shape[0]), module.config.retriever_proj_size)
        return setup, module, objective

    @property
    def context(self) -> dict:
        return {"blocks": self.blocks}

    def shardings(self, shardings) -> IndexedTrainState:
        return IndexedTrainState(step=shardings.step, params=shardings.params, opt_state=shardings.opt_state,
                                 index=self.index_sharding, index_step=shardings.step)

    def abstract_state(self, abstract) -> IndexedTrainState:
        return IndexedTrainState(
            step=abstract.step, params=abstract.params, opt_state=abstract.opt_state,
            index=jax.ShapeDtypeStruct((self.num_rows, self.proj_size), jnp.float32, sharding=self.index_sharding),
            index_step=jax.ShapeDtypeStruct((), jnp.int32, sharding=abstract.step.sharding))

    def embed(self, params):
        return self.refresh_fn(params, self.blocks)

    def attach_index(self, state, step: int) -> tuple[IndexedTrainState, float]:
        """``state`` (a TrainState) with the index computed from its params; and the seconds it took."""
        started = time.perf_counter()
        index = jax.block_until_ready(self.embed(state.params))
        return IndexedTrainState(step=state.step, params=state.params, opt_state=state.opt_state, index=index,
                                 index_step=jnp.asarray(step, jnp.int32)), time.perf_counter() - started

    def refresh(self, state: IndexedTrainState, step: int) -> tuple[IndexedTrainState, float]:
        started = time.perf_counter()
        index = jax.block_until_ready(self.embed(state.params))
        return state.replace(index=index, index_step=jnp.asarray(step, jnp.int32)), time.perf_counter() - started


__all__ = ["RetrievalSetup", "corpus_spec", "examples"]
