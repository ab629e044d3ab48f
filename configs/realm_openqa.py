"""REALM open-domain QA fine-tuning on the synthetic question set of the embedded corpus (tiny model, minutes on a
CPU): `RealmForOpenQA` retrieves `beam_size` blocks from the index in the train state, the reader reads the first
`reader_beam_size`; loss = the reader's marginal span loss + the retriever's marginal loss
(train/objectives.py `realm_openqa`). The index is refreshed from the current embedder every `refresh_every` steps
(0 freezes it, as ORQA does with a pretrained index). With `retriever_loss="index"` (this preset) the retriever
term is the exact marginal over every block of the index, which a store this small allows: with REALM's top-k
term a question whose answer block has left the beam gets no retriever gradient, and from a weak retriever
recall collapses (train/objectives.py `realm_openqa`).

Start it from a pretraining run (configs/realm_pretrain.py): the retriever from its embedder, the reader from its
knowledge-augmented encoder, the span head new (jaxmodels/realm/convert.py `checkpoint_renames`):

    python -m train --config configs/realm_pretrain.py --workdir runs/realm_pretrain
    python -m train --config configs/realm_openqa.py --workdir runs/realm_openqa \
        --config.init_from=runs/realm_pretrain

From scratch (no `init_from`) the retriever has nothing to start from (see the pretraining preset).

Questions (train/data/retrieval_corpus.py): "which name is missing : <a sentence with a name replaced by _>", the
name occurring in exactly one block; every 5th question is held out (the eval split). metrics.jsonl has recall@1,
recall@5, recall@beam, exact_match and the loss terms, for training batches and held-out questions (eval_*), the
latter also before the first step (`eval_at_start`).
"""

from train.experiment import base_config

TINY = dict(
    model_type="realm", architectures=["RealmForOpenQA"], vocab_size=1024, hidden_size=64, retriever_proj_size=32,
    num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, hidden_act="gelu_new",
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=128, num_candidates=5,
    span_hidden_size=32, max_span_width=4, reader_beam_size=4, reader_seq_len=112, num_block_records=1024,
    searcher_beam_size=8, pad_token_id=0, initializer_range=0.1,  # as the pretraining preset (the span head is new)
    # The trainer sets num_block_records to the block store's count; this value only sizes `python -m train.aot`.
)


def get_config():
    config = base_config(model=TINY)
    config.objective = dict(name="realm_openqa", beam_size=8, refresh_every=20, retriever_loss="index")
    config.data.source = "kjv"
    config.data.vocab_size = 1024
    config.data.block_tokens = 64
    config.data.max_documents = 30
    config.seq_len = 48  # question rows ([CLS] q [SEP])
    config.batch_size = 16
    config.total_steps = 200
    config.log_every = 10
    config.eval_every = 50
    config.eval_steps = 4  # 64 rows: the 60 held-out questions (4 of them twice)
    config.eval_at_start = True
    config.checkpoint_every = 50
    config.learning_rate = 1e-3
    config.warmup_steps = 10
    config.rng_impl = "rbg"
    return config
