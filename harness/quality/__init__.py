"""Quality: tasks that need no download, equal-budget training, and lm-eval evaluation.

One module per job, each importing only those listed above it:

  tokenizer       bytes or a byte-level BPE, saved with a checkpoint
  tasks           corpora, MQAR, masking, batches and the bits-per-byte arithmetic
  train           budgets and the equal-budget trainer (data parallel under torchrun)
  checkpoint      a trained model's folder: config.json, model.safetensors, tokenizer.json
  spec            RunSpec (what a comparison holds fixed), the tasks, defaults and recipes
  sizing          a model width for a training budget (about 20 tokens per parameter)
  data            Prepared: the corpus or MQAR data, built once per comparison
  model           which task a model runs; the model built for it
  scoring         the scores of a model on an evaluation set, per kind of task
  task_setup      a task's training batches, validation and test
  curves          quality against context length: extrapolation, loss by token position
  run             run_one: train, test, save, record; the checkpoint folders
  grid            quality grids: one process per (model, width, length, lr, seed) cell
  cell            `python -m harness.quality.cell`: one grid cell
  selection       the learning rate chosen on validation; the chosen cells' curves
  distributed     joining torchrun's process group
  lm_eval_tasks   the local lm-eval tasks: YAML templates and the held-out data they read
  lm_eval_adapter the `zoo` model for lm-evaluation-harness
  evaluate        lm-eval on a checkpoint, offline, as records
"""
