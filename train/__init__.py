"""Everything that turns a model into a trained checkpoint. Nothing outside `train` imports it.

    python -m train --config configs/<name>.py --workdir DIR [--config.<key>=<value> ...]

Modules (import what you need; this package imports nothing itself, so `train.data` stays light):
  `experiment`    the config keys every experiment has, start-up validation naming the key, model presets
  `data`          embedded corpus, TFDS array_record sources, SentencePiece, resumable grain batches
  `objectives`    mlm, mlm_sop (ALBERT), causal_lm; finetune and one per task head kind; a registry
  `finetune`      fine-tuning data (the user's JSONL / CSV files, tokenizer) and evaluation on the eval file
  `task_metrics`  accuracy / F1 / Matthews, Pearson / Spearman, entity F1, SQuAD EM / F1
  `evaluate`      `python -m train.evaluate --workdir DIR [--step N]`: re-scores a checkpoint of a run
  `optim`         adamw / lamb / adafactor / sgd by name, warm-up + cosine / linear decay, global-norm clipping,
                  per-parameter rates (a task head's factor, layer-wise decay)
  `state`         TrainState (step, params, opt_state) and sharded init, fresh or from an HF checkpoint
  `partitioning`  mesh from "data=..,fsdp=..,tensor=..", logical-axis rules, shardings
  `step`          the pure jitted train / eval steps (donated state, rng = fold_in(seed, step), accumulation)
  `checkpoint`    Orbax CheckpointManager: DIR/checkpoints/<step>/{state,data,metadata}, async, keep N
  `metrics`       metrics.jsonl, TensorBoard events, progress bar, loss.png
  `loop`          `run(config, workdir)`: the training run, resumable, SIGTERM-safe, NaN-guarded
  `host_memory`   opt-in: keep freed host memory in the process (glibc), so a CPU step stops page-faulting its scratch
"""
