"""One quality run end to end (tiny variants, a few steps): every task and model kind, the
record, the checkpoint, determinism, resume and the folder rules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import write_corpus

from harness.quality.checkpoint import load_checkpoint
from harness.quality.data import prepare
from harness.quality.model import build_model
from harness.quality.run import check_folder, plan_runs, run_folder, run_one
from harness.quality.spec import QualityError, RunSpec
from harness.quality.train import Budget
from harness.results import FIELDS


def spec(tmp_path: Path, task: str = "lm", **fields) -> RunSpec:
    """A run of 4 steps of 4 x 64 tokens of the tiny variant, evaluated every 2 steps."""
    fields.setdefault("budget", Budget(tokens=4 * 4 * 64))
    fields.setdefault("corpus", str(write_corpus(tmp_path)))
    fields.setdefault("eval_every", 2)
    return RunSpec(task=task, variant="tiny", seqlen=fields.pop("seqlen", 64), batch_size=4,
                   **fields)


@pytest.mark.parametrize("model, task, metric", [
    ("gpt", "lm", "bits_per_byte"), ("rwkv", "lm", "bits_per_byte"),
    ("pangu-pi", "lm", "bits_per_byte"), ("transformer", "lm", "bits_per_byte"),
    ("llama", "lm", "bits_per_byte"), ("mamba", "lm", "bits_per_byte"),
    ("mamba2", "lm", "bits_per_byte"), ("gpt-neox", "lm", "bits_per_byte"),
    ("bloom", "lm", "bits_per_byte"), ("opt", "lm", "bits_per_byte"),
    ("gpt-j", "lm", "bits_per_byte"), ("gpt-neo", "lm", "bits_per_byte"),
    ("t5", "lm", "bits_per_byte"), ("bart", "lm", "bits_per_byte"),
    ("ctrl", "lm", "bits_per_byte"),
    ("bert", "mlm", "mlm_accuracy"), ("roberta", "mlm", "mlm_accuracy"),
    ("mosaic-bert", "mlm", "mlm_accuracy"), ("albert", "mlm", "mlm_accuracy"),
])
def test_every_model_trains_and_records(tmp_path, model, task, metric):
    data = prepare(spec(tmp_path, task))
    result = run_one(model, data, tmp_path / "out")
    rec = result.record
    assert set(FIELDS) <= set(rec.to_dict())
    assert rec.kind == "quality" and rec.model == model and rec.metric == metric
    assert rec.steps == 4 and rec.tokens == 4 * 4 * 64
    assert math.isfinite(rec.value) and rec.params > 0
    assert rec.value == rec.scores[metric]
    assert len(result.history.evals) == 2  # at steps 2 and 4
    if metric == "bits_per_byte":
        assert 0 < rec.value < 12 and rec.baseline == pytest.approx(data.baseline)
    else:
        assert 0 <= rec.value <= 1
    # the checkpoint loads back to the same model
    model_back, tok, meta = load_checkpoint(tmp_path / "out")
    assert meta["seqlen"] == 64 and meta["task"] == rec.task
    assert model_back.num_params() == rec.params
    assert not (tmp_path / "out" / "state.pt").exists()


def test_the_record_says_the_precision_routes_and_speed(tmp_path):
    full = run_one("gpt", prepare(spec(tmp_path)), tmp_path / "a").record
    mixed = run_one("gpt", prepare(spec(tmp_path, dtype="bfloat16")), tmp_path / "b").record
    assert (full.dtype, mixed.dtype) == ("float32", "bfloat16")
    assert full.routes == ["linear", "ffn", "dropout", "loss"]
    # train_seconds is rounded to 0.1 s; tokens_per_s is computed from the exact time
    seconds = full.tokens / full.tokens_per_s
    assert abs(seconds - full.train_seconds) <= 0.05 + 1e-9


def test_a_run_that_shared_its_cores_says_so(tmp_path, monkeypatch):
    """The load meter around the training goes into the record (contention, in cores); a busy
    reading into its notes, which say what it cost the budget: steps for a time budget, the
    speed for a token budget."""
    from harness import machine

    cores = len(machine.usable_cores())
    tokens, seconds = Budget(tokens=4 * 4 * 64), Budget(seconds=0.5)
    for reading, budget, cost in (
            (0.8, tokens, "its tokens/s read low"),
            (0.8, seconds, "a time budget bought fewer steps than a quiet machine gives: "
                           "train it again"),
            (0.1, tokens, None)):
        monkeypatch.setattr(machine.LoadMeter, "others", lambda self, r=reading: r)
        data = prepare(spec(tmp_path, budget=budget))
        rec = run_one("gpt", data, tmp_path / f"{reading}-{budget}").record
        busy = [n for n in rec.notes if n.startswith("the machine was busy")]
        assert rec.contention == reading
        whose = "the core's" if cores == 1 else f"the {cores} cores'"
        assert busy == ([f"the machine was busy: other work took 0.80 of {whose} time "
                         f"during training; {cost}"] if cost else [])


def test_encoder_decoder_runs_lm_as_seq2seq(tmp_path):
    rec = run_one("transformer", prepare(spec(tmp_path)), tmp_path / "o").record
    assert rec.task == "seq2seq" and any("encoder reads 32" in n for n in rec.notes)


def test_masking_recipes(tmp_path):
    notes = {m: run_one(m, prepare(spec(tmp_path, "mlm")), tmp_path / m).record.notes
             for m in ("bert", "mosaic-bert", "albert")}
    assert "15% masking, static" in notes["bert"][0]
    assert "30% masking, dynamic" in notes["mosaic-bert"][0]
    assert "no sentence-order head" in notes["albert"][1]
    assert "n-grams of up to 3" in notes["albert"][2]


def test_mqar_run(tmp_path):
    from harness.quality.tasks import MQARConfig

    mqar = MQARConfig(vocab_size=128, seqlen=32, num_kv_pairs=4, num_train=256, num_test=64)
    data = prepare(spec(tmp_path, "mqar", mqar=mqar, seqlen=None))
    rec = run_one("gpt", data, tmp_path / "m").record
    assert rec.task == "mqar" and rec.metric == "accuracy" and rec.seqlen == 32
    assert rec.chance == 0.25 and rec.mqar["num_kv_pairs"] == 4
    assert rec.vocab_size == 128 and 0 <= rec.value <= 1
    # GPT's dropout (0.1 in the catalog's variants) is off for the recall task, and said so
    assert load_checkpoint(tmp_path / "m")[0].config.dropout == 0.0
    assert "dropout set to 0 for the recall task" in rec.notes
    lm_model = build_model("gpt", "lm", prepare(spec(tmp_path)))
    assert lm_model.config.dropout == 0.1  # the language-modelling task keeps it


@pytest.mark.parametrize("model", ["llama", "gpt-neox", "bloom", "opt", "gpt-j", "gpt-neo",
                                   "mamba", "mamba2"])
def test_the_new_models_run_the_recall_task(tmp_path, model):
    from harness.quality.tasks import MQARConfig

    mqar = MQARConfig(vocab_size=128, seqlen=32, num_kv_pairs=4, num_train=256, num_test=64)
    rec = run_one(model, prepare(spec(tmp_path, "mqar", mqar=mqar, seqlen=None)),
                  tmp_path / model).record
    assert rec.task == "mqar" and rec.model == model and rec.steps == 8  # 1,024 tokens, 4 x 32
    assert 0 <= rec.value <= 1 and rec.params > 0


def test_same_seed_same_numbers(tmp_path):
    values = []
    for i in range(2):
        data = prepare(spec(tmp_path))
        values.append(run_one("gpt", data, tmp_path / f"r{i}").record.scores)
    assert values[0] == values[1]
    other = run_one("gpt", prepare(spec(tmp_path, seed=1)), tmp_path / "s").record
    assert other.scores != values[0]


def test_bpe_tokenizer_gives_comparable_bits_per_byte(tmp_path):
    data = prepare(spec(tmp_path, tokenizer="bpe", bpe_vocab=300))
    assert data.tokenizer.vocab_size <= 300
    rec = run_one("gpt", data, tmp_path / "b").record
    assert rec.tokenizer == "bpe" and rec.vocab_size == data.tokenizer.vocab_size
    assert 0 < rec.value < 12


def test_folder_rules(tmp_path):
    folder = tmp_path / "f"
    check_folder(folder, resume=False, force=False)  # a new folder is fine
    with pytest.raises(QualityError, match="no interrupted run"):
        check_folder(folder, resume=True, force=False)
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(QualityError, match="already holds a checkpoint; pass --force"):
        check_folder(folder, resume=False, force=False)
    check_folder(folder, resume=False, force=True)
    (folder / "state.pt").write_text("")
    check_folder(folder, resume=True, force=False)
    blocked = tmp_path / "a-file"  # the run would train, then fail to save
    blocked.write_text("")
    with pytest.raises(QualityError, match=f"--out {blocked} is a file; give a folder"):
        check_folder(blocked, resume=False, force=True)
    with pytest.raises(QualityError, match=f"--out {blocked / 'x' / 'gpt'}: {blocked} is a "
                                           "file, not a folder"):
        check_folder(blocked / "x" / "gpt", resume=False, force=True)


def test_run_folders(tmp_path):
    lm = RunSpec(task="lm", budget=Budget(tokens=1), variant="tiny", seed=2)
    assert run_folder(None, "gpt", lm, several=False) == Path("runs/gpt-lm-tiny-seed2")
    assert run_folder(None, "gpt", lm, several=True) == Path("runs/quality-lm/gpt")
    assert run_folder(tmp_path, "gpt", lm, several=False) == tmp_path
    assert run_folder(tmp_path, "gpt", lm, several=True) == tmp_path / "gpt"


def test_plan_checks_every_model_and_folder_before_any_work(tmp_path):
    lm = RunSpec(task="lm", budget=Budget(tokens=1), variant="tiny")
    plan = plan_runs(["gpt", "transformer"], lm, tmp_path, several=True, resume=False,
                     force=False)
    assert plan.folders == {"gpt": tmp_path / "gpt", "transformer": tmp_path / "transformer"}
    assert plan.tasks == {"lm", "seq2seq"}  # what `prepare` must build for the two
    with pytest.raises(QualityError, match="bert is an encoder"):
        plan_runs(["gpt", "bert"], lm, tmp_path, several=True, resume=False, force=False)
    (tmp_path / "gpt").mkdir()
    (tmp_path / "gpt" / "config.json").write_text("{}")
    with pytest.raises(QualityError, match="already holds a checkpoint"):
        plan_runs(["gpt"], lm, tmp_path, several=True, resume=False, force=False)
    assert not (tmp_path / "transformer").exists()  # checking writes nothing


def test_resume_matches_uninterrupted(tmp_path):
    """An interrupted run resumed from its save ends with the numbers of an uninterrupted one."""
    full = run_one("gpt", prepare(spec(tmp_path)), tmp_path / "full").record

    class Stop(Exception):
        pass

    def stop_after_save(history, lr):
        if history.steps == 3:  # the save at step 2 is on disk
            raise Stop

    data = prepare(spec(tmp_path))
    with pytest.raises(Stop):
        run_one("gpt", data, tmp_path / "cut", on_step=stop_after_save)
    assert (tmp_path / "cut" / "state.pt").exists()
    resumed = run_one("gpt", data, tmp_path / "cut", resume=True).record
    assert resumed.scores == full.scores and resumed.steps == full.steps
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["steps"] == 4


def test_test_seconds_time_the_testing_alone(tmp_path, monkeypatch):
    """A resumed run's training clock holds the seconds trained before it began (here 1000):
    testing's time is measured where it runs, never derived from that clock."""
    import harness.quality.run as run_module

    real_train = run_module.train

    def resumed_after_long_training(net, *args, **kwargs):
        history = real_train(net, *args, **kwargs)
        history.seconds += 1000.0
        return history

    monkeypatch.setattr(run_module, "train", resumed_after_long_training)
    record = run_one("gpt", prepare(spec(tmp_path)), tmp_path / "run").record
    assert record.train_seconds >= 1000 and 0 <= record.test_seconds < 100


def test_length_curves_are_recorded_and_learned_positions_say_na(tmp_path):
    """Trained at 32 and scored up to 128: GPT's learned positions stop at its training length
    (n/a, no number), RWKV takes every length; the loss by position averages to the windows'
    loss and the record carries both curves."""
    rows = {}
    for model in ("gpt", "rwkv"):
        data = prepare(spec(tmp_path, seqlen=32, extrapolate=128, stride=16))
        rec = run_one(model, data, tmp_path / model).record
        rows[model] = {(r["eval_seqlen"], r["mode"]): r for r in rec.extrapolation}
        assert set(rows[model]) == {(L, mode) for L in (32, 64, 128)
                                    for mode in ("nonoverlapping", "sliding")}
        # the loss by position at the training length (every model: comparable), then at the
        # longest length the model takes
        assert [c["seqlen"] for c in rec.position_loss] == ([32] if model == "gpt" else [32, 128])
        for curve in rec.position_loss:
            weighted = sum(loss * n for loss, n in zip(curve["loss"], curve["tokens"],
                                                       strict=True) if n) / sum(curve["tokens"])
            assert weighted == pytest.approx(curve["mean_loss"], rel=1e-6)
    gpt, rwkv = rows["gpt"], rows["rwkv"]
    assert gpt[32, "nonoverlapping"]["bits_per_byte"] > 0
    for L in (64, 128):
        assert gpt[L, "nonoverlapping"]["bits_per_byte"] is None
        assert "n/a" in gpt[L, "sliding"]["note"]
        assert rwkv[L, "nonoverlapping"]["bits_per_byte"] > 0
    # the sliding windows score the same targets as the nonoverlapping ones
    assert rwkv[128, "sliding"]["tokens"] == rwkv[128, "nonoverlapping"]["tokens"]


@pytest.mark.parametrize("model, task", [("t5", "seq2seq"), ("bert", "mlm")])
def test_every_task_has_a_validation_score_for_the_grid_to_choose_on(tmp_path, model, task):
    """A grid chooses learning rates on the validation split: the encoder-decoder's and the
    encoders' cells have that score too (they had none, and `--grid` stopped on it)."""
    data = prepare(spec(tmp_path, task))
    rec = run_one(model, data, tmp_path / "out").record
    assert rec.val_value is not None and math.isfinite(rec.val_value)
    assert rec.val_value != rec.value  # the validation split, not the test


def test_an_encoder_decoder_gets_a_length_curve_of_its_own(tmp_path):
    """--extrapolate with the encoder-decoder (lm runs as seq2seq): at each length the encoder
    reads half and the decoder writes the other half, over the same targets at every length;
    no sliding windows or loss by position, which the note says."""
    data = prepare(spec(tmp_path, seqlen=32, extrapolate=128, stride=16))
    rec = run_one("t5", data, tmp_path / "t5").record
    assert rec.task == "seq2seq" and rec.position_loss is None
    assert [(r["eval_seqlen"], r["mode"]) for r in rec.extrapolation] == [
        (32, "nonoverlapping"), (64, "nonoverlapping"), (128, "nonoverlapping")]
    assert len({r["tokens"] for r in rec.extrapolation}) == 1
    assert all(r["bits_per_byte"] > 0 for r in rec.extrapolation)
    assert any(note.startswith("length curve: at each length the encoder reads half")
               for note in rec.notes)


def test_mqar_cells_choose_on_a_validation_split_of_their_own(tmp_path):
    """MQAR's validation examples are neither training nor test examples, and the record's
    validation score is measured on them."""
    from harness.quality.tasks import MQARConfig

    mqar = MQARConfig(vocab_size=64, seqlen=16, num_kv_pairs=2, num_train=64, num_test=32,
                      num_valid=32)
    data = prepare(RunSpec(task="mqar", budget=Budget(tokens=2 * 16 * 16), variant="tiny",
                           batch_size=16, mqar=mqar, eval_every=1))
    mq = data.mqar
    rows = {tuple(r) for r in mq.train_inputs.tolist()}
    assert not rows & {tuple(r) for r in mq.valid_inputs.tolist()}
    assert not {tuple(r) for r in mq.test_inputs.tolist()} & {tuple(r) for r in
                                                              mq.valid_inputs.tolist()}
    rec = run_one("gpt", data, tmp_path / "out").record
    assert rec.val_value is not None and rec.kv_pairs == 2 and rec.width == 64
    assert "mixer-only blocks (d_ff = 0), as Zoology's" in rec.notes


CPU_REFUSAL = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
               "memory: you tried to allocate 4294967296 bytes. Error code 12")


def test_running_out_of_memory_in_training_is_one_error_that_says_what_to_shrink(
        tmp_path, monkeypatch):
    import harness.quality.run as run_module

    def refuse(*args, **kwargs):
        raise RuntimeError(CPU_REFUSAL)

    monkeypatch.setattr(run_module, "train", refuse)
    with pytest.raises(QualityError) as error:
        run_one("gpt", prepare(spec(tmp_path)), tmp_path / "out")
    assert str(error.value) == ("gpt: out of memory training 4 x 64 tokens a step on cpu (an "
                                "allocation of 4.0 GiB refused); give a smaller --batch-size or "
                                "--seqlen")
    monkeypatch.setattr(run_module, "train", lambda *a, **k: 1 / 0)  # other errors pass through
    with pytest.raises(ZeroDivisionError):
        run_one("gpt", prepare(spec(tmp_path)), tmp_path / "out")
    monkeypatch.setattr(run_module, "build_model", refuse)  # the weights alone: too wide
    with pytest.raises(QualityError, match="gpt: out of memory building it on cpu .*; give a "
                                           "smaller --width or --variant$"):
        run_one("gpt", prepare(spec(tmp_path)), tmp_path / "out")


def test_running_out_of_memory_in_testing_keeps_the_trained_state_for_resume(
        tmp_path, monkeypatch):
    """Training ends with its state saved whatever --eval-every is, so that testing out of
    memory loses none of it: --resume trains no further and tests again."""
    import harness.quality.run as run_module

    full = run_one("gpt", prepare(spec(tmp_path, eval_every=3)), tmp_path / "full").record
    real_setup = run_module.setup_task

    def setup_that_runs_out(*args, **kwargs):
        setup = real_setup(*args, **kwargs)

        def refuse(net):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")

        setup.test = refuse
        return setup

    data = prepare(spec(tmp_path, eval_every=3))  # saves at step 3 of 4, then at the end
    monkeypatch.setattr(run_module, "setup_task", setup_that_runs_out)
    with pytest.raises(QualityError) as error:
        run_one("gpt", data, tmp_path / "cut")
    state = tmp_path / "cut" / "state.pt"
    assert str(error.value) == (f"gpt: out of memory testing on cpu (an allocation of 2.00 GiB "
                                f"refused); {state} is kept: --resume continues from it")
    assert torch.load(state, weights_only=False)["history"]["steps"] == 4
    monkeypatch.setattr(run_module, "setup_task", real_setup)
    steps = []
    resumed = run_one("gpt", data, tmp_path / "cut", resume=True,
                      on_step=lambda history, lr: steps.append(history.steps)).record
    assert steps == [] and resumed.steps == 4 and resumed.scores == full.scores
    assert not state.exists()
