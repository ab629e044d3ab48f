"""REALM pretraining on the embedded corpus (tiny model, minutes on a CPU): salient-span masked LM whose
knowledge-augmented encoder reads the top-k evidence blocks retrieved from an index of block embeddings that is
refreshed from the current retriever every `refresh_every` steps (train/objectives.py `realm_pretrain`), plus
ORQA's inverse cloze task (`ict_weight`), REALM's retriever warm start: each masked sentence must score its own
block above the batch's other blocks and every row's retrieved ones. Without it the marginal likelihood gives the
retriever no signal while its top-k is unrelated to the sentence.

    python -m train --config configs/realm_pretrain.py --workdir runs/realm_pretrain
    python -m train --config configs/realm_openqa.py --workdir runs/realm_openqa \
        --config.init_from=runs/realm_pretrain      # open-QA fine-tuning from this run (configs/realm_openqa.py)

The evidence store, pretraining sentences and open-QA questions come from `train/data/retrieval_corpus.py`
(the first `data.max_documents` chapters cut into blocks of at most `data.block_tokens` WordPiece tokens).
`--config.model=...` with a base-sized dict gives REALM's shapes (train/AOT.md).
"""

from train.experiment import base_config

TINY = dict(
    model_type="realm", architectures=["RealmForRetrievalPretraining"], vocab_size=1024, hidden_size=64,
    retriever_proj_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
    hidden_act="gelu_new", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=128,
    num_candidates=5,  # 4 retrieved blocks + the null block
    span_hidden_size=32, max_span_width=4, reader_beam_size=4, reader_seq_len=96, num_block_records=1024,
    searcher_beam_size=8, pad_token_id=0,
    # ~1/sqrt(hidden_size), not BERT's 0.02: at 0.02 a 64-wide model's attention starts uniform and every [CLS]
    # embedding is the same to 4 decimals (cosine 0.9999 between any two), and neither ICT nor open QA moves the
    # retriever off that in hundreds of steps; at 0.1 ICT's in-batch accuracy passes 0.8 within 100 steps.
    initializer_range=0.1,
    # The trainer sets num_block_records to the block store's count; this value only sizes `python -m train.aot`.
)


def get_config():
    config = base_config(model=TINY)
    config.objective = dict(name="realm_pretrain", refresh_every=20, mask_token_id=4, ict_weight=1.0)
    config.data.source = "kjv"
    config.data.vocab_size = 1024
    config.data.block_tokens = 64
    config.data.max_documents = 30
    config.seq_len = 48  # sentence rows ([CLS] s [SEP]); encoder rows are seq_len + block_tokens + 1
    config.batch_size = 32  # ICT's in-batch negatives: 32 own blocks + 4 retrieved per row
    config.total_steps = 150
    config.log_every = 10
    config.eval_every = 50
    config.eval_steps = 2
    config.checkpoint_every = 50
    config.learning_rate = 1e-3
    config.warmup_steps = 10
    config.rng_impl = "rbg"
    return config
