"""`catalog train`, `catalog quality` and `catalog eval` as a user runs them, the two-process
data-parallel run under torchrun, and their error paths."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_corpus
from typer.testing import CliRunner

from harness.cli import app
from harness.results import load

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path)


def quick(corpus: Path, tmp_path: Path) -> list[str]:
    """Options of a run of a few seconds: tiny variant, 4 steps of 4 x 64 tokens."""
    return ["--variant", "tiny", "--budget", "1024-tokens", "--seqlen", "64", "--batch-size", "4",
            "--eval-every", "2", "--corpus", str(corpus), "--device", "cpu",
            "--results", str(tmp_path / "quality.jsonl")]


def one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], lines


def test_train_writes_checkpoint_and_record(tmp_path, corpus):
    out = tmp_path / "ckpt"
    result = runner.invoke(app, ["train", "gpt", *quick(corpus, tmp_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors",
                                                "tokenizer.json"}
    [rec] = load([tmp_path / "quality.jsonl"]).records
    assert rec.kind == "quality" and rec.model == "gpt" and rec.task == "lm"
    assert rec.checkpoint == str(out) and rec.steps == 4
    assert rec.command.startswith("catalog train gpt --budget 1024-tokens")
    assert f"--out {out}" in rec.command and "--variant tiny" in rec.command
    assert "bits_per_byte" in result.stdout and "unigram bytes" in result.stdout
    # a second run into the same folder must not overwrite it
    again = runner.invoke(app, ["train", "gpt", *quick(corpus, tmp_path), "--out", str(out)])
    one_line_error(again, "already holds a checkpoint; pass --force")
    assert len(load([tmp_path / "quality.jsonl"]).records) == 1


def test_quality_compares_models_on_one_table(tmp_path, corpus):
    result = runner.invoke(app, ["quality", "gpt", "rwkv", "gpt-2", *quick(corpus, tmp_path),
                                 "--out", str(tmp_path / "cmp")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    records = load([tmp_path / "quality.jsonl"]).records
    assert "tok/s" in result.stdout  # what the budget bought each model
    for r in records:
        assert f" {r.tokens_per_s:,.0f} │" in result.stdout  # right-aligned in its column
    assert [r.model for r in records] == ["gpt", "rwkv"]  # gpt-2 is the gpt zoo model
    assert {r.tokens for r in records} == {1024} and {r.seed for r in records} == {0}
    assert (tmp_path / "cmp" / "gpt" / "config.json").exists()
    assert (tmp_path / "cmp" / "rwkv" / "config.json").exists()
    for name in ("gpt", "rwkv", "unigram bytes"):
        assert name in result.stdout


@pytest.mark.parametrize("args, fragment", [
    (["train", "nosuch"], "unknown model 'nosuch'"),
    (["train", "bert", "--task", "lm"], "bert is an encoder: it runs --task mlm"),
    (["train", "gpt", "--budget", "5 parsecs"], "--budget '5 parsecs'"),
    (["train", "gpt", "--task", "ppl"], "--task 'ppl'"),
    (["train", "gpt", "--corpus", "/no/such/file"], "/no/such/file: no such file"),
    (["train", "gpt", "--variant", "huge"], "huge"),
    (["quality", "gpt", "bert", "--task", "mlm"], "gpt is a decoder"),
    (["train", "gpt", "--eval-every", "0"], "--eval-every must be at least 1, not 0"),
    (["train", "gpt", "--device", "gpu0"], "--device 'gpu0' is not a torch device"),
    (["train", "gpt", "--task", "mqar", "--mqar-seqlen", "63"], "--mqar-seqlen 63"),
    (["quality", "gpt", "--mqar-kv-pairs", "0"], "--mqar-kv-pairs must be at least 1"),
    (["quality", "gpt", "--lr", "1e-3,fast"], "--lr '1e-3,fast': give a number"),
    (["quality", "gpt", "--width", "wide"], "--width 'wide'"),
    (["quality", "gpt", "--task", "mqar", "--seed", "0,1,0"], "--seed '0,1,0': 0 is given twice"),
    (["quality", "gpt", "--task", "mqar", "--lr", "1e-3,0.001"],
     "--lr '1e-3,0.001': 0.001 is given twice"),
    (["quality", "gpt", "--task", "mqar", "--mqar-seqlen", "64,128", "--mqar-kv-pairs", "4"],
     "--cross"),
    (["quality", "gpt", "--task", "mqar", "--mqar-seqlen", "64,128", "--mqar-kv-pairs", "4,64"],
     "seqlen >= 256"),
    (["quality", "gpt", "--task", "mqar", "--extrapolate", "1024"], "--task lm"),
    (["quality", "gpt", "--seqlen", "256", "--extrapolate", "128"], "--extrapolate 128"),
    (["quality", "gpt", "--budget", "2e14-flop"], "--budget '2e14-flop'"),
    (["quality", "gpt", "--task", "mqar", "--lr", "1e-3,1e-2", "--timeout", "0"],
     "--timeout must be a number of seconds above 0, not 0"),
    (["quality", "gpt", "--task", "mqar", "--lr", "1e-3,1e-2", "--timeout", "nan"],
     "--timeout must be a number of seconds above 0, not nan"),
    (["quality", "gpt", "--task", "mqar", "--jobs", "2"], "spread a grid's cells"),
    (["quality", "mamba", "--task", "mqar", "--set", "d_stat=3"],
     "--set d_stat: mamba has no config field 'd_stat'"),
    (["quality", "gpt", "--task", "mqar", "--lr", "1e-3,1e-2", "--set", "n_head=two"],
     "--set n_head=two: gpt's n_head is an integer"),
    (["train", "gpt", "--set", "n_layer"], "--set 'n_layer': give FIELD=VALUE"),
    # --task lm without a variant sizes the model for the budget: --set is checked before that
    (["quality", "gpt", "llama", "--set", "n_head=0"],
     "--set n_head=0: gpt refuses it: n_head must be an integer >= 1, not 0"),
    (["train", "llama", "--task", "mqar", "--set", "n_kv_head=3"], "llama refuses it"),
    (["quality", "gpt", "--task", "mqar", "--lr", "1e-3,1e-2", "--jobs",
      str(len(os.sched_getaffinity(0)) + 1)], "on the CPU needs"),
])
def test_errors_are_one_line(tmp_path, args, fragment):
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "x"),
                                 "--results", str(tmp_path / "q.jsonl")])
    one_line_error(result, fragment)
    assert not (tmp_path / "q.jsonl").exists()


@pytest.mark.parametrize("command", [["train", "gpt"], ["quality", "gpt", "rwkv"],
                                     ["eval", "somewhere"], ["generate", "somewhere"]])
def test_a_cuda_device_the_machine_lacks_is_one_error(tmp_path, monkeypatch, command):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    extra = [] if command[0] == "generate" else ["--results", str(tmp_path / "q.jsonl")]
    result = runner.invoke(app, [*command, "--device", "cuda", *extra])
    one_line_error(result, "--device cuda: no CUDA device on this machine")
    assert not (tmp_path / "q.jsonl").exists()


def test_out_of_memory_in_one_model_keeps_the_records_of_those_before(tmp_path, corpus,
                                                                      monkeypatch):
    import harness.quality.run as run_module

    real_train = run_module.train

    def rwkv_runs_out(net, *args, **kwargs):
        if type(net).__name__.startswith("RWKV"):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                               "allocate 1073741824 bytes. Error code 12")
        return real_train(net, *args, **kwargs)

    monkeypatch.setattr(run_module, "train", rwkv_runs_out)
    result = runner.invoke(app, ["quality", "gpt", "rwkv", *quick(corpus, tmp_path),
                                 "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        "error: rwkv: out of memory training 4 x 64 tokens a step on cpu (an allocation of 1.0 "
        "GiB refused); give a smaller --batch-size or --seqlen")
    assert [r.model for r in load([tmp_path / "quality.jsonl"]).records] == ["gpt"]
    assert (tmp_path / "cmp" / "gpt" / "model.safetensors").exists()


def test_ctrl_c_in_training_says_where_its_state_is_or_that_there_is_none(tmp_path, corpus,
                                                                          monkeypatch):
    import harness.quality.run as run_module

    real_train = run_module.train

    def ctrl_c_at_step_3(net, *args, **kwargs):
        def on_step(history, lr):
            if history.steps == 3:
                os.kill(os.getpid(), signal.SIGINT)
        return real_train(net, *args, **{**kwargs, "on_step": on_step})

    monkeypatch.setattr(run_module, "train", ctrl_c_at_step_3)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "gpt", *quick(corpus, tmp_path), "--out", str(out)])
    assert result.exit_code == 130, result.output
    assert f"interrupted: gpt's training is saved in {out / 'state.pt'}; rerun with --resume" \
        in " ".join(result.stderr.split())
    assert (out / "state.pt").exists() and not (tmp_path / "quality.jsonl").exists()

    import harness.quality.data as data_module

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    for module, name, said in [
            (run_module, "train", "interrupted before gpt trained a step; nothing to resume"),
            (data_module, "prepare", "interrupted while preparing the data; nothing was trained")]:
        monkeypatch.setattr(module, name, ctrl_c)
        result = runner.invoke(app, ["train", "gpt", *quick(corpus, tmp_path), "--out",
                                     str(tmp_path / name)])
        assert result.exit_code == 130, result.output
        assert said in result.stderr


def test_resume_of_a_comparison_keeps_the_models_it_finished(tmp_path, corpus, monkeypatch):
    """`quality A B --resume` after Ctrl-C in B: A's checkpoint and record are kept (not trained
    again, not recorded twice), B goes on from its save; a rerun with another seed is refused."""
    import harness.quality.run as run_module

    real_train = run_module.train
    trained = []

    def llama_interrupted_at_step_3(net, *args, **kwargs):
        trained.append(type(net).__name__)

        def on_step(history, lr):
            if type(net).__name__ == "Llama" and history.steps == 3:
                os.kill(os.getpid(), signal.SIGINT)
        return real_train(net, *args, **{**kwargs, "on_step": on_step})

    monkeypatch.setattr(run_module, "train", llama_interrupted_at_step_3)
    command = ["quality", "gpt", "llama", *quick(corpus, tmp_path), "--out", str(tmp_path / "c")]
    result = runner.invoke(app, command)
    assert result.exit_code == 130, result.output
    assert "interrupted: llama's training is saved in" in result.stderr
    monkeypatch.setattr(run_module, "train", lambda net, *args, **kwargs: (
        trained.append(type(net).__name__), real_train(net, *args, **kwargs))[1])
    trained.clear()
    result = runner.invoke(app, [*command, "--resume"])
    assert result.exit_code == 0, result.output
    assert trained == ["Llama"]
    assert "gpt: finished by an earlier run" in result.stderr
    records = load([tmp_path / "quality.jsonl"]).records
    assert [r.model for r in records] == ["gpt", "llama"] and records[1].steps == 4
    assert "│ gpt " in result.stdout and "│ llama " in result.stdout  # the whole comparison

    result = runner.invoke(app, [*command, "--resume", "--seed", "1"])
    one_line_error(result, "was trained with seed 0, this run asks for 1")
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text(encoding="utf-8") + " and more", encoding="utf-8")
    result = runner.invoke(app, [*command, "--resume", "--corpus", str(other)])
    one_line_error(result, f"was trained on {corpus}, this run's corpus is {other}")
    result = runner.invoke(app, [*command[:-1], str(tmp_path / "none"), "--resume"])
    one_line_error(result, "holds an interrupted or finished run; drop --resume")


def test_a_results_file_that_cannot_be_written_is_refused_before_training(tmp_path, corpus):
    options = [*quick(corpus, tmp_path)][:-1] + ["/proc/x/r.jsonl"]
    result = runner.invoke(app, ["train", "gpt", *options, "--out", str(tmp_path / "x")])
    one_line_error(result, "/proc/x/r.jsonl cannot be written")
    assert not (tmp_path / "x").exists()  # nothing was trained


def test_resume_needs_an_interrupted_run(tmp_path, corpus):
    result = runner.invoke(app, ["train", "gpt", *quick(corpus, tmp_path), "--resume",
                                 "--out", str(tmp_path / "none")])
    one_line_error(result, "holds no interrupted run")
    result = runner.invoke(app, ["train", "gpt", *quick(corpus, tmp_path), "--resume",
                                 "--force", "--out", str(tmp_path / "none")])
    one_line_error(result, "--resume continues what a run saved, --force starts over: give one")
    result = runner.invoke(app, ["quality", "gpt", "--task", "mqar", "--lr", "1e-3,1e-2",
                                 "--resume", "--force", "--results", str(tmp_path / "q.jsonl")])
    one_line_error(result, "--resume continues what a run saved, --force starts over: give one")


def test_eval_agrees_with_the_harness(tmp_path, corpus, monkeypatch):
    """lm-eval's bits per byte of the held-out text, through the `zoo` adapter, within 1% of the
    harness's own evaluation saved at training time; lm-eval's offline settings are gone from
    the environment afterwards."""
    out = tmp_path / "ckpt"
    assert runner.invoke(app, ["train", "gpt", *quick(corpus, tmp_path), "--out", str(out)]
                         ).exit_code == 0
    for name in ("HF_DATASETS_OFFLINE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
        monkeypatch.delenv(name, raising=False)
    result = runner.invoke(app, ["eval", str(out), "--tasks", "zoo_heldout", "--device", "cpu",
                                 "--results", str(tmp_path / "eval.jsonl")])
    assert result.exit_code == 0, result.output
    records = {r.metric: r for r in load([tmp_path / "eval.jsonl"]).records}
    own = json.loads((out / "config.json").read_text())["scores"]["bits_per_byte"]
    assert records["bits_per_byte"].impl == "lm-eval"
    assert records["bits_per_byte"].value == pytest.approx(own, rel=0.01)
    given = f"{out} --tasks zoo_heldout --device cpu --results {tmp_path / 'eval.jsonl'}"
    assert records["bits_per_byte"].command == f"catalog eval {given}"
    assert "bits_per_byte" in result.stdout and "records appended to" in result.stdout
    assert "it/s" not in result.stderr, result.stderr  # no tqdm bar from lm-eval
    assert not {"HF_DATASETS_OFFLINE", "HF_DATASETS_DISABLE_PROGRESS_BARS",
                "TQDM_DISABLE"} & set(os.environ)


def test_eval_errors(tmp_path):
    one_line_error(runner.invoke(app, ["eval", str(tmp_path)]), "not a checkpoint")
    (tmp_path / "config.json").write_text(json.dumps({"zoo": "gpt", "task": "lm"}))
    for option, fragment in ((["--batch-size", "0"], "--batch-size must be at least 1"),
                             (["--tasks", ","], "--tasks names no task"),
                             (["--limit", "0"], "--limit must be at least 1")):
        result = runner.invoke(app, ["eval", str(tmp_path), *option,
                                     "--results", str(tmp_path / "e.jsonl")])
        one_line_error(result, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # nothing written


def test_two_processes_train_data_parallel(tmp_path, corpus):
    """torchrun with two CPU processes (gloo): one checkpoint and one record, the global batch
    and step count of a single-process run, and a model that learned about as much."""
    single = runner.invoke(app, ["train", "gpt", *quick(corpus, tmp_path), "--out",
                                 str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "harness.cli", "train", "gpt", *quick(corpus, tmp_path),
         "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one, two = load([tmp_path / "quality.jsonl"]).records
    assert two.checkpoint == str(tmp_path / "two")
    assert (two.steps, two.tokens) == (one.steps, one.tokens) == (4, 1024)
    # same data, same init; only the dropout masks differ between the two runs
    assert two.value == pytest.approx(one.value, rel=0.02)


def test_set_changes_the_model_and_names_the_variant(tmp_path):
    """`--set` reaches the trained model (its checkpoint's config) and its record, whose
    variant names the field."""
    result = runner.invoke(app, [
        "train", "gpt", "--task", "mqar", "--variant", "tiny", "--budget", "512-tokens",
        "--batch-size", "16", "--mqar-seqlen", "16", "--mqar-kv-pairs", "2", "--mqar-vocab",
        "64", "--eval-every", "1", "--device", "cpu", "--set", "n_layer=1", "--out",
        str(tmp_path / "run"), "--results", str(tmp_path / "q.jsonl")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["config"]["n_layer"] == 1
    rec = load([tmp_path / "q.jsonl"]).records[0]
    assert rec.variant == "tiny n_layer=1" and "--set: n_layer=1" in " ".join(rec.notes)


def test_a_grid_runs_cells_in_processes_and_a_rerun_skips_them(tmp_path):
    """Two learning rates of one tiny MQAR cell: each trained in its own process and recorded,
    the table gives the rate chosen on validation, and the same command again trains nothing."""
    args = ["quality", "gpt", "--task", "mqar", "--budget", "2048-tokens", "--batch-size", "16",
            "--mqar-seqlen", "16", "--mqar-kv-pairs", "2", "--mqar-vocab", "64", "--lr",
            "1e-3,3e-3", "--eval-every", "1", "--device", "cpu", "--out", str(tmp_path / "g"),
            "--results", str(tmp_path / "q.jsonl")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = load([tmp_path / "q.jsonl"]).records
    assert [(r.lr, r.status) for r in records] == [(1e-3, "ok"), (3e-3, "ok")]
    assert all(r.val_value is not None and r.kv_pairs == 2 for r in records)
    assert "learning rate chosen on validation" in result.stdout
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and again.stderr.count("already in the results file") == 2
    assert len(load([tmp_path / "q.jsonl"]).records) == 2


def test_an_lm_grid_trains_every_cell_at_the_width_chosen_for_the_budget(tmp_path, monkeypatch,
                                                                          corpus):
    """Without --width or --variant the size is chosen for the budget, and every cell of a grid
    over training lengths takes it (not the variant's own width)."""
    from harness.quality import grid as grid_module
    from harness.quality import sizing

    seen = []
    monkeypatch.setattr(sizing, "size_for_budget", lambda models, spec, vocab, catalog=None:
                        sizing.Choice(96, {}, {}, "d_model 96 chosen for the test"))
    monkeypatch.setattr(grid_module, "run_grid",
                        lambda grid, on_event, launcher: seen.extend(grid.cells()) or iter(()))
    result = runner.invoke(app, ["quality", "gpt", "rwkv", "--task", "lm", "--seqlen", "64,128",
                                 "--budget", "1e9-flops", "--corpus", str(corpus),
                                 "--results", str(tmp_path / "q.jsonl")])
    assert result.exit_code == 0, result.output
    assert "d_model 96 chosen for the test" in result.stderr
    assert [(c.model, c.spec.train_config.seqlen, c.spec.width, c.spec.depth) for c in seen] == [
        ("gpt", 64, 96, True), ("gpt", 128, 96, True), ("rwkv", 64, 96, True),
        ("rwkv", 128, 96, True)]


@pytest.mark.parametrize("task", ["lm", "seq2seq"])
def test_encoder_decoders_are_sized_for_the_budget_too(tmp_path, monkeypatch, corpus, task):
    """The encoder-decoders (lm runs as their seq2seq) are sized as the decoders are."""
    from harness.quality import grid as grid_module
    from harness.quality import sizing

    seen = []
    monkeypatch.setattr(sizing, "size_for_budget", lambda models, spec, vocab, catalog=None:
                        sizing.Choice(64, {}, {}, f"d_model 64 for {', '.join(models)}"))
    monkeypatch.setattr(grid_module, "run_grid",
                        lambda grid, on_event, launcher: seen.extend(grid.cells()) or iter(()))
    result = runner.invoke(app, ["quality", "t5", "transformer", "--task", task, "--grid",
                                 "--budget", "1e9-flops", "--corpus", str(corpus),
                                 "--results", str(tmp_path / "q.jsonl")])
    assert result.exit_code == 0, result.output
    assert "d_model 64 for t5, transformer" in result.stderr
    assert {(c.model, c.spec.width, c.spec.depth) for c in seen} == {
        ("t5", 64, True), ("transformer", 64, True)}


def test_a_time_budgets_size_is_kept_for_the_runs_that_continue_the_comparison(tmp_path,
                                                                                monkeypatch,
                                                                                corpus):
    """Sizing for a time budget measures speed, which varies: a rerun (a resume, a grid's
    rerun) of the same models and settings takes the width the first run chose, kept beside
    the checkpoints, so it trains the same models; another budget is sized again."""
    from harness.quality import grid as grid_module
    from harness.quality import sizing

    sized, widths = [], iter([96, 128, 192])

    def measured(models, spec, vocab, catalog=None):
        sized.append(str(spec.budget))
        width = next(widths)
        return sizing.Choice(width, {"gpt": 1}, {"gpt": 2.0}, f"d_model {width} measured")

    cells = []
    monkeypatch.setattr(sizing, "size_for_budget", measured)
    monkeypatch.setattr(grid_module, "run_grid",
                        lambda grid, on_event, launcher: cells.extend(grid.cells()) or iter(()))
    command = ["quality", "gpt", "--task", "lm", "--seqlen", "64,128", "--corpus", str(corpus),
               "--out", str(tmp_path / "c"), "--results", str(tmp_path / "q.jsonl")]
    said = []
    for budget in ("30s", "30s", "40s"):
        result = runner.invoke(app, [*command, "--budget", budget])
        assert result.exit_code == 0, result.output
        said.append(" ".join(result.stderr.split()))
    assert sized == ["30 s", "40 s"]
    assert [c.spec.width for c in cells] == [96, 96, 96, 96, 128, 128]
    assert f"d_model 96 measured (sized by an earlier run: {tmp_path / 'c' / 'sizing.json'})" \
        in said[1]
