"""REALM learns, end to end through `python -m train`: the pretraining preset (salient-span MLM with ORQA's inverse
cloze task as the retriever's warm start), then the open-QA preset started from that run's checkpoint
(`--config.init_from`: the retriever from its embedder, the reader from its knowledge-augmented encoder), scored on
held-out questions before its first step and after its last.

The corpus, model and tokenizer are the presets' (30 chapters of the embedded corpus, 627 blocks, 270 training and
60 held-out questions whose answer lies in exactly one block); only the step counts are cut. Held-out questions
come from sentences no training question comes from (train/data/retrieval_corpus.py). The pretraining sentences
cover the whole corpus, as REALM pretrains on its knowledge corpus.

Thresholds, from this test's run and the full presets' run (150 ICT + 200 open-QA steps), stop 31, this machine;
64 held-out rows (the 60 questions, 4 of them twice):
- ICT's in-batch accuracy (own block among 32 own + 128 retrieved blocks; chance 1/160 = 0.006) reaches 0.5 by step
  30 (the init already matches some words) and 0.97 at step 120. The test asks >= 0.5 in the last logged batch and
  a rise of >= 0.15 from the first.
- Held-out recall@5 of the answer block among 627: untrained 0.19; after ICT 0.58 (presets: 0.50); after open QA
  0.73 (presets: 0.59 at step 100, 0.67 at 150-200). The test asks: ICT alone >= +0.15, and after open QA >= 0.55
  and >= +0.25 over untrained.
- Open QA's own gain over ICT: held-out retriever loss 4.67 -> 2.42 (presets 6.06 -> 2.91-3.30) and recall@1
  0.19 -> 0.38 (presets 0.23 -> 0.38). The test asks for the loss to fall to <= 0.7x and recall@1 to rise >= 0.1.
- Held-out exact match: 0 untrained, 0.03 after ICT, 0.09 after open QA (presets 0.03 -> 0.05-0.06; training
  batches 0.5-0.9). The test asks >= 0.03, 2 of 64 rows. Chance is about 1 in 250 for a row whose block is read
  (64 positions x 4 widths), so 2 hits by chance has probability ~3%. Exact match is low because with 270
  training questions the reader memorises rather than learns to read.
"""

import json

from tests.e2e.conftest import ROOT

PRETRAIN_STEPS = 120
OPENQA_STEPS = 100
COMMON = ("--config.async_checkpointing=False", "--config.log_every=10")


def _rows(workdir):
    return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def _open_qa(cli, workdir, steps, *overrides):
    result = cli(workdir, *COMMON, f"--config.total_steps={steps}", f"--config.checkpoint_every={steps}",
                 f"--config.eval_every={steps}", *overrides, config=f"{ROOT}/configs/realm_openqa.py", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(workdir)
    evals = {r["step"]: r for r in rows if r.get("split")}
    assert sorted(evals) == [0, steps]  # eval_at_start: the held-out questions before the first step too
    return result, rows, evals


def test_ict_pretraining_then_open_qa_learns_to_retrieve_and_read(cli, tmp_path):
    # The untrained model's held-out scores: the open-QA preset from scratch, evaluated before its one step. (It
    # also compiles the open-QA programs into the shared cache for the run from the checkpoint below.)
    _, _, evals = _open_qa(cli, tmp_path / "untrained", 1, "--config.warmup_steps=1")
    untrained = evals[0]

    pretrain = tmp_path / "realm_pretrain"
    result = cli(pretrain, *COMMON, f"--config.total_steps={PRETRAIN_STEPS}",
                 f"--config.checkpoint_every={PRETRAIN_STEPS}", "--config.eval_every=0",
                 config=f"{ROOT}/configs/realm_pretrain.py", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    train = [r for r in _rows(pretrain) if "split" not in r]
    assert {"loss", "ict_loss", "ict_accuracy", "mlm_accuracy", "null_block_probability", "retrieval_entropy",
            "index_refresh_seconds", "index_step"} <= set(train[-1])
    first, last = train[0]["ict_accuracy"], train[-1]["ict_accuracy"]
    assert last >= 0.5 and last >= first + 0.15, (first, last)

    result, rows, evals = _open_qa(cli, tmp_path / "realm_openqa", OPENQA_STEPS, f"--config.init_from={pretrain}")
    # The span head is the only new part (the reader's own MLM decoder too, unused in QA).
    assert "newly initialised" in result.stderr and "reader/qa_outputs" in result.stderr
    assert "embedder/" not in result.stderr.split("newly initialised")[1].split("\n")[0]
    names = {"eval_loss", "eval_retriever_loss", "eval_reader_loss", "eval_recall@1", "eval_recall@5",
             "eval_recall@beam", "eval_exact_match"}
    assert names <= set(evals[0])
    train = [r for r in rows if "split" not in r]
    assert {"recall@1", "recall@5", "recall@beam", "exact_match", "retriever_loss", "reader_loss",
            "index_refresh_seconds"} <= set(train[-1])
    pretrained, after = evals[0], evals[OPENQA_STEPS]
    print({k: (untrained[k], pretrained[k], after[k]) for k in sorted(names)})
    recall = [r["eval_recall@5"] for r in (untrained, pretrained, after)]
    assert recall[1] >= recall[0] + 0.15, recall  # ICT alone
    assert recall[2] >= 0.55 and recall[2] >= recall[0] + 0.25, recall
    # Open QA on top of ICT: the retriever's held-out loss (over all 627 blocks) and its top-1 hit rate.
    assert after["eval_retriever_loss"] <= 0.7 * pretrained["eval_retriever_loss"], (pretrained, after)
    assert after["eval_recall@1"] >= pretrained["eval_recall@1"] + 0.1, (pretrained, after)
    assert untrained["eval_exact_match"] == 0.0
    assert after["eval_exact_match"] >= 0.03, (untrained, pretrained, after)
