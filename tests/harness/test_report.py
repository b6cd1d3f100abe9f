"""Reports built from synthetic results: full, empty, partial and mixed-machine, and the HTML page
rendered in a real (headless) browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.report import ReportError, build_report
from harness.results import parse


def record(**values) -> dict:
    """A record as the store holds it, checked against its kind's schema."""
    return parse(values).to_dict()

PNG = b"\x89PNG\r\n\x1a\n"
CPU, OTHER_CPU = "AMD EPYC 7B13", "Intel(R) Xeon(R) Platinum 8375C"
MACHINE = dict(cpu=CPU, gpu=None, device="cpu", dtype="float32", threads=2, torch="2.13.0+cpu",
               version="0.1.0", git="abc1234", cores=2, ram_bytes=25 * 2**30)
LENGTHS = (512, 1024, 2048, 4096, 8192)


def bench(model: str, mode: str, seqlen: int, impl: str = "zoo", status: str = "ok",
          **fields) -> dict:
    """A benchmark record as `catalog bench` writes it; attention models' memory above the
    weights grows with the length, RWKV's generate memory does not."""
    attention = model != "rwkv"
    tokens_per_s = 4e6 / seqlen if mode == "forward" and attention else 20_000 / (1 + seqlen / 512)
    if mode == "generate":
        tokens_per_s = 300.0 if not attention else 60_000 / seqlen
    act = (seqlen * 2**12 if attention else 2**20) if mode == "generate" else seqlen * 2**16
    ok = status == "ok"
    values = dict(
        kind="bench", model=model, variant="small", impl=impl, mode=mode, seqlen=seqlen, batch=1,
        status=status, tokens_per_s=tokens_per_s if ok else None,
        ms_median=1000 * seqlen / tokens_per_s if ok else None, ms_iqr=0.5 if ok else None,
        peak_mem_bytes=300 * 2**20 + act if ok else None, act_mem_bytes=act if ok else None,
        flops_per_token=3e8, mfu=0.05 + seqlen / 1e6 if ok else None, params=27_000_000,
        time=f"2026-11-20T10:{seqlen % 60:02d}:00+00:00", peak_flops=8.2e10, warmup=1, repeat=3,
        max_memory=8 * 2**30, timeout_s=600.0, error=None, notes=[], **MACHINE)
    values.update(fields)
    return record(**values)


def quality(model: str, task: str, metric: str, value: float, **fields) -> dict:
    values = dict(
        kind="quality", model=model, variant="small", impl="zoo", mode="train", seqlen=256,
        batch=8, status="ok", params=27_500_000, task=task, metric=metric, value=value,
        time="2026-11-20T11:00:00+00:00", budget="500,000 tokens", budget_tokens=500_000,
        budget_seconds=None, tokens=501_760, steps=245, train_seconds=181.4,
        tokens_per_s=501_760 / 181.4, seed=0, lr=1e-3,
        tokenizer="bytes", vocab_size=259, corpus="python-stdlib-docs", scores={metric: value},
        baseline=4.0522 if metric == "bits_per_byte" else None, checkpoint=f"runs/{model}",
        notes=[], **MACHINE)
    if task == "mqar":
        values.update(chance=0.25, mqar={"seqlen": 64, "num_kv_pairs": 4, "vocab_size": 8192},
                      corpus=None, baseline=None)
    values.update(fields)
    return record(**values)


SWEEP = "catalog bench gpt rwkv --seqlen 512..8192 --mode forward --mode generate"
PEERS = "catalog bench gpt --seqlen 512,1024,4096 --against hf"


def sweep() -> list[dict]:
    """gpt (with a Hugging Face peer) and rwkv, forward and generate, 512..8192; gpt forward
    runs out of memory at 8192 (skipped after), its longest lengths carry a flag. Each record
    carries the command that made it."""
    return [{**r, "command": PEERS if r["impl"] == "hf" else SWEEP} for r in _sweep()]


def _sweep() -> list[dict]:
    out = []
    for model in ("gpt", "rwkv"):
        for mode in ("forward", "generate"):
            for seqlen in LENGTHS:
                notes = (["position table extended to 2048 (published 1024)"]
                         if model == "gpt" and seqlen >= 2048 else [])
                if model == "gpt" and mode == "forward" and seqlen == 8192:
                    out.append(bench(model, mode, seqlen, status="oom", notes=notes,
                                     error="CUDA out of memory"))
                else:
                    out.append(bench(model, mode, seqlen, notes=notes))
    for seqlen in (512, 1024):
        peer = bench("gpt", "forward", seqlen, impl="hf")
        peer["tokens_per_s"] /= 2
        out.append(peer)
    out.append(bench("gpt", "forward", 4096, impl="hf", status="skipped",
                     notes=["skipped: oom at seqlen 2048"]))
    return out


LM = "catalog quality gpt rwkv --task lm --budget 500K-tokens"
EVAL = "catalog eval runs/gpt"


def scores() -> list[dict]:
    """Quality scores of three tasks and an lm-eval score; all but MQAR's carry a command."""
    commands = {"lm": LM, "mlm": "catalog quality bert --task mlm --budget 500K-tokens",
                "zoo_heldout": EVAL}
    return [{**r, "command": commands.get(r["task"])} for r in _scores()]


def _scores() -> list[dict]:
    return [
        quality("gpt", "lm", "bits_per_byte", 2.3456),
        quality("rwkv", "lm", "bits_per_byte", 2.1234, params=28_871_680),
        quality("gpt", "mqar", "accuracy", 0.4321, seqlen=64, batch=32),
        quality("rwkv", "mqar", "accuracy", 0.8765, seqlen=64, batch=32),
        quality("bert", "mlm", "mlm_accuracy", 0.3141, notes=[
            "trained at 15% masking, static; evaluated at 15% (fixed seed)"]),
        record(kind="quality", model="gpt", variant="small", impl="lm-eval", mode="eval",
               seqlen=256, status="ok", task="zoo_heldout", metric="word_perplexity",
               value=123.4567, params=27_500_000, checkpoint="runs/gpt", **MACHINE),
    ]


def write(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """One report of the synthetic sweep and quality runs, shared by the tests that read it."""
    folder = tmp_path_factory.mktemp("full")
    files = [write(folder / "results" / "bench.jsonl", sweep()),
             write(folder / "results" / "quality.jsonl", scores())]
    out = folder / "report"
    made = build_report(files, out, commands=["catalog bench gpt rwkv --seqlen 512..8192"])
    return made, out


def test_report_writes_markdown_html_and_valid_pngs(full):
    made, out = full
    assert {p.name for p in made.files} == {p.name for p in pngs(out)} | {"index.md",
                                                                           "index.html"}
    names = {p.name for p in pngs(out)}
    assert {"cpu-float32-throughput.png", "cpu-float32-memory.png", "cpu-float32-mfu.png",
            "cpu-float32-quality-lm.png", "cpu-float32-quality-mqar.png",
            "cpu-float32-quality-mlm.png"} <= names
    for png in pngs(out):
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    md = (out / "index.md").read_text()
    for name in names:  # relative links to the PNGs next to index.md
        assert f"]({name})" in md
    html = (out / "index.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(names)
    assert not re.search(r'(src|href)="(https?:|//|[^"#d])', html)  # nothing external
    assert html.count("<table>") == len(re.findall(r"^\| ---:? \|", md, re.M)) >= 6
    assert made.sections == [f"{CPU} · cpu · float32"]
    assert not list(out.glob(".*"))  # no temporary file left behind


def test_numbers_parameters_and_budgets_are_in_the_tables(full):
    md = (full[1] / "index.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| gpt | small | zoo | forward")]
    assert "| 512 | 1 | 2 | ok | 7,812 |" in rows[0]  # 4e6 / 512 tokens/s
    assert "| 2.3456 | 27,500,000 | 500,000 tokens | 501,760 | 245 |" in md  # score, params, budget
    assert "| 2.1234 | 28,871,680 |" in md
    # what the budget bought each model, and on what: tokens/s, device and precision
    assert "| 181 s | 2,766 | cpu float32 | 0 | 0.001 |" in md
    assert "| unigram byte baseline |  | 4.0522 |" in md and "| chance |  | 0.2500 |" in md
    assert "| 0.3141 |" in md and "| 0.8765 |" in md
    assert "| gpt | small | zoo_heldout | word_perplexity | 123.4567 |" in md  # lm-eval
    for fact in (CPU, "2.13.0+cpu", "abc1234", "82.0 GFLOP/s", "threads | 2 (benchmarks)",
                 "catalog bench gpt rwkv --seqlen 512..8192"):  # provenance, given command
        assert fact in md


def test_ratio_table_where_peers_were_measured(full):
    md = (full[1] / "index.md").read_text()
    assert "### Ours against peer implementations" in md
    assert "| gpt | small | forward | 512 | hf | 7,812 | 3,906 | 2.00x |" in md
    assert "| gpt | small | forward | 1024 | hf |" in md


def test_flags_and_failed_cells_are_carried(full):
    md = (full[1] / "index.md").read_text()
    flags = md.split("### Flags")[1].split("###")[0]
    assert ("position table extended to 2048 (published 1024) (on 6 cell(s): gpt zoo forward "
            "2048, gpt zoo forward 4096") in flags
    assert "gpt zoo forward 8192: oom (CUDA out of memory)" in flags
    assert "gpt hf forward 4096: skipped" in flags
    assert "| gpt | small | zoo | forward | 8192 | 1 | 2 | oom |" in md


def test_commands_are_those_given_then_those_the_records_carry(full):
    md = (full[1] / "index.md").read_text()
    [block] = re.findall(r"### Commands\n\n(.*?)\n\n(?=##)", md, re.S)
    listed = block.split("```bash\n")[1].split("\n```")[0].splitlines()
    # given first, then each recorded command once, earliest first (the lm-eval score has no
    # time: last)
    assert listed == ["catalog bench gpt rwkv --seqlen 512..8192", SWEEP, PEERS, LM,
                      "catalog quality bert --task mlm --budget 500K-tokens", EVAL]
    assert "The command was not recorded for 2 quality score(s) in " in block  # MQAR's
    assert "--variant small --seqlen 512,1024" not in md  # nothing rebuilt from the fields


def test_records_without_a_command_say_so(tmp_path):
    old = [{**r, "command": None} for r in sweep()]
    path = write(tmp_path / "b.jsonl", old)
    build_report([path], tmp_path / "out")
    md = (tmp_path / "out" / "index.md").read_text()
    commands = md.split("### Commands")[1].split("##")[0]
    assert "```" not in commands
    assert (f"The command was not recorded for 23 benchmark cell(s) in {path}: they were "
            "written before records carried the command that made them; `catalog report "
            "--command` can list it here.") in commands
    build_report([path], tmp_path / "given", commands=["catalog bench gpt rwkv"])
    md = (tmp_path / "given" / "index.md").read_text()
    assert "```bash\ncatalog bench gpt rwkv\n```" in md and "can list it here" not in md


def test_cells_measured_with_other_routes_are_series_of_their_own(tmp_path):
    """The zoo's cells with different --routes are lines of their own, named by the routes
    they ran without and marked apart from the model's other series (one color per model); a
    title over a wide legend stays centred over the panels, clear of it."""
    records = [bench("gpt", "forward", n, routes=routes, time=f"2026-11-20T1{i}:00:00+00:00")
               for i, routes in enumerate((["linear", "ffn", "dropout", "loss"], ["linear"], []))
               for n in (512, 1024)] + [bench("gpt", "forward", n, impl="hf") for n in (512, 1024)]
    # another model, with routes of its own: a model's routes are compared with its own only
    records += [bench("rwkv", "forward", n, routes=["linear", "wkv"]) for n in (512, 1024)]
    made = build_report([write(tmp_path / "results.jsonl", records)], tmp_path / "out")
    figure = made.figures["cpu-float32-throughput.png"]
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()
             if not line.get_label().startswith("_")}
    assert set(lines) == {"gpt", "gpt (hf)", "gpt (no ffn, dropout, loss)", "gpt (no routes)",
                          "rwkv"}
    assert len({lines[name].get_marker() for name in lines if name.startswith("gpt")}) == 4
    assert all(len(line.get_xdata()) == 2 for line in lines.values())
    figure.draw_without_rendering()
    title = figure._suptitle.get_window_extent()
    assert not any(title.overlaps(legend.get_window_extent()) for legend in figure.legends)


def test_a_long_legend_takes_columns_to_fit_the_figure(tmp_path):
    """Thirty series beside one row of panels: the legend stays within the figure's height."""
    records = [bench(f"m{i:02d}", "forward", n) for i in range(30) for n in (512, 1024)]
    made = build_report([write(tmp_path / "results.jsonl", records)], tmp_path / "out")
    figure = made.figures["cpu-float32-throughput.png"]
    figure.draw_without_rendering()
    legend = figure.legends[0].get_window_extent()
    assert legend.y0 >= 0 and legend.y1 <= figure.bbox.height
    colors = {line.get_label(): line.get_color() for line in figure.axes[0].get_lines()}
    assert len({colors[f"m{i:02d}"] for i in range(20)}) == 20  # tab20: no two of 20 alike


def test_figures_have_titles_labels_legends_and_log_scales(full):
    figures = full[0].figures
    throughput = figures["cpu-float32-throughput.png"]
    forward, generate = throughput.axes
    assert "Throughput" in throughput.get_suptitle() and throughput.legends
    for ax in (forward, generate):
        assert ax.get_xscale() == "log" and "sequence length (tokens" in ax.get_xlabel()
        assert "tokens/s" in ax.get_ylabel() and ax.get_title()
    assert forward.get_yscale() == "log"  # 4e6/512 .. 4e6/4096 spans a decade
    styles = {line.get_label(): line.get_linestyle() for line in forward.get_lines()
              if not line.get_label().startswith("_")}
    assert styles["gpt"] == "-" and styles["gpt (hf)"] == "--"
    legend = [t.get_text() for t in throughput.legends[0].get_texts()]
    assert {"gpt", "gpt (hf)", "rwkv"} <= set(legend)
    assert "failed or skipped cell (see the table)" in legend

    memory = figures["cpu-float32-memory.png"]
    assert [ax.get_ylabel().split(" (")[0] for ax in memory.axes] == [
        "peak memory", "peak memory", "memory above the weights", "memory above the weights"]
    assert all("MiB" in ax.get_ylabel() for ax in memory.axes)
    generate_above = memory.axes[3]
    curves = {line.get_label(): list(line.get_ydata()) for line in generate_above.get_lines()
              if not line.get_label().startswith("_")}
    assert curves["rwkv"] == [1.0] * 5  # RWKV's state: flat
    assert curves["gpt"][-1] == 16 * curves["gpt"][0]  # the KV cache grows with the prompt
    assert generate_above.get_yscale() == "log"

    mfu = figures["cpu-float32-mfu.png"]
    assert all(ax.get_ylabel().startswith("MFU (%)") for ax in mfu.axes)

    lm = figures["cpu-float32-quality-lm.png"].axes[0]
    assert "lower is better" in lm.get_ylabel() and "500,000 tokens" in lm.get_title()
    assert "unigram byte baseline: 4.052" in lm.get_legend().get_texts()[0].get_text()
    assert "27,500,000 params" in " ".join(t.get_text() for t in lm.get_xticklabels())
    mqar = figures["cpu-float32-quality-mqar.png"].axes[0]
    assert "chance" in mqar.get_legend().get_texts()[0].get_text()
    assert "higher is better" in mqar.get_ylabel()


def test_timeline_of_the_catalog(tmp_path):
    from harness.catalog import load_catalog

    path = write(tmp_path / "q.jsonl", scores()[:2])
    made = build_report([path], tmp_path / "out", entries=load_catalog(None).entries)
    assert (tmp_path / "out" / "timeline.png").read_bytes()[:8] == PNG
    md = (tmp_path / "out" / "index.md").read_text()
    assert "## The family's timeline" in md and "](timeline.png)" in md
    assert "runnable in the zoo" in [t.get_text() for t in
                                     made.figures["timeline.png"].axes[0].get_legend().texts]


@pytest.mark.parametrize("content", ["", "\n\n", '{"kind": "bench", "mod\n', '{"kind": "x"}\n'])
def test_nothing_to_report_writes_nothing(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    out = tmp_path / "report"
    with pytest.raises(ReportError, match="no results to report"):
        build_report([path], out)
    assert not out.exists()


def test_no_results_files_and_missing_files(tmp_path):
    with pytest.raises(ReportError, match="holds no .jsonl file"):
        build_report([], tmp_path / "out")
    with pytest.raises(ReportError, match="no results file .*missing.jsonl"):
        build_report([tmp_path / "missing.jsonl"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_only_quality(tmp_path):
    made = build_report([write(tmp_path / "q.jsonl", scores())], tmp_path / "out")
    md = (tmp_path / "out" / "index.md").read_text()
    assert "### Quality at an equal budget" in md and "### Throughput" not in md
    assert not any("throughput" in p.name for p in pngs(tmp_path / "out"))
    assert made.bench_cells == 0 and made.quality_scores == 6


def test_only_bench(tmp_path):
    made = build_report([write(tmp_path / "b.jsonl", sweep())], tmp_path / "out")
    md = (tmp_path / "out" / "index.md").read_text()
    assert "### Throughput" in md and "### Quality" not in md
    assert made.quality_scores == 0 and not any("quality" in p.name for p in
                                                pngs(tmp_path / "out"))


def test_every_cell_failed(tmp_path):
    records = [bench("gpt", "forward", 512, status="oom", error="out of memory"),
               bench("gpt", "forward", 1024, status="skipped", notes=["skipped: oom at 512"]),
               bench("rwkv", "train", 512, status="timeout", error="still running after 600 s")]
    made = build_report([write(tmp_path / "b.jsonl", records)], tmp_path / "out")
    md = (tmp_path / "out" / "index.md").read_text()
    assert "rwkv zoo train 512: timeout (still running after 600 s)" in md
    assert "| gpt | small | zoo | forward | 512 | 1 | 2 | oom |  |" in md
    texts = [t.get_text() for ax in made.figures["cpu-float32-throughput.png"].axes
             for t in ax.texts]
    assert texts == ["no successful cell", "no successful cell"]


@pytest.mark.parametrize("change, sections", [
    ({"cpu": OTHER_CPU}, [f"{CPU} · cpu · float32", f"{OTHER_CPU} · cpu · float32"]),
    ({"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3"},
     [f"{CPU} · cpu · float32", f"NVIDIA H100 80GB HBM3 (host CPU {CPU}) · cuda · float32"]),
    ({"dtype": "bfloat16"}, [f"{CPU} · cpu · float32", f"{CPU} · cpu · bfloat16"]),
    # timed beside other cells (harness.launch): same machine, never on one plot, and never
    # the latest measurement that replaces an exclusive one of the same cell
    ({"launcher": "local", "jobs": 2, "cpus": [0], "co_running": 1},
     [f"{CPU} · cpu · float32", f"{CPU} · cpu · float32 · timed with 2 cells at once (local)"]),
])
def test_different_machines_devices_or_dtypes_are_never_compared(tmp_path, change, sections):
    mine = [bench("gpt", "forward", n) for n in LENGTHS]
    theirs = [bench("gpt", "forward", n, **change) | {"tokens_per_s": 1.0} for n in LENGTHS[:3]]
    theirs += [quality("gpt", "lm", "bits_per_byte", 3.5, **change)]
    made = build_report([write(tmp_path / "a.jsonl", mine), write(tmp_path / "b.jsonl", theirs)],
                        tmp_path / "out")
    assert made.sections == sections
    lines = []
    for name in [n for n in made.figures if n.endswith("throughput.png")]:
        [line] = [ln for ln in made.figures[name].axes[0].get_lines()
                  if not ln.get_label().startswith("_")]  # one line per figure, never mixed
        lines.append(list(line.get_ydata()))
    assert sorted(map(len, lines)) == [3, 5] and [1.0, 1.0, 1.0] in lines
    md = (tmp_path / "out" / "index.md").read_text()
    assert md.index("## 1. " + sections[0]) < md.index("## 2. " + sections[1])
    assert f"- [{sections[1]}](#2-" in md  # table of contents
    section_one, section_two = md.split("## 2. ")[0], md.split("## 2. ")[1]
    if "jobs" in change:  # a score on a token budget does not depend on what ran beside it
        section_one, section_two = section_two, section_one
    assert "| 3.5000 |" in section_two and "| 3.5000 |" not in section_one


def test_series_differ_in_threads_or_batch_are_separate_lines(tmp_path):
    records = [bench("gpt", "forward", n, threads=t) for n in (512, 1024) for t in (1, 2)]
    made = build_report([write(tmp_path / "b.jsonl", records)], tmp_path / "out")
    labels = {ln.get_label() for ln in made.figures["cpu-float32-throughput.png"].axes[0]
              .get_lines()}
    assert {"gpt (threads 1)", "gpt (threads 2)"} <= labels


def test_models_filter_and_latest_measurement_wins(tmp_path):
    old = bench("rwkv", "forward", 512) | {"tokens_per_s": 1111.0, "time": "2026-01-01T00:00:00"}
    new = bench("rwkv", "forward", 512) | {"tokens_per_s": 2222.0, "time": "2026-02-01T00:00:00"}
    path = write(tmp_path / "b.jsonl", [new, old, bench("gpt", "forward", 512)])
    made = build_report([path], tmp_path / "out", models=["rwkv", "nope"])
    md = (tmp_path / "out" / "index.md").read_text()
    assert "| rwkv | small | zoo | forward | 512 | 1 | 2 | ok | 2,222 |" in md
    assert "1,111" not in md and "| gpt |" not in md
    assert "--models: no record of 'nope'" in made.warnings
    assert any("replaced by the latest one" in w for w in made.warnings)
    with pytest.raises(ReportError, match="no results to report for bert"):
        build_report([path], tmp_path / "other", models=["bert"])


def test_damaged_lines_are_warnings_and_markdown_cells_are_escaped(tmp_path):
    path = write(tmp_path / "b.jsonl", [bench("gpt", "forward", 512, notes=["a | b"])])
    with open(path, "a") as f:
        f.write('{"kind": "bench", "mo\n')
    made = build_report([path], tmp_path / "out")
    assert any("skipped a damaged line" in w for w in made.warnings)
    md = (tmp_path / "out" / "index.md").read_text()
    assert "a \\| b" in md and "## Method" in md and "skipped a damaged line" in md


def test_unrelated_files_in_the_folder_are_kept_and_reports_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "index.md").write_text("old")
    build_report([write(tmp_path / "b.jsonl", sweep())], out)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "index.md").read_text().startswith("# Transformer family")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  document.body.dataset.images = images.length;
  document.body.dataset.loaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.tables = document.querySelectorAll("table").length;
});
</script>
"""


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (Debian's `chromium`)")
def test_html_report_renders_in_headless_chromium(full, tmp_path):
    """The page opens in a real browser: every image decodes and the tables are there."""
    made, out = full
    page = tmp_path / "probe" / "index.html"  # a copy with a probe; the report stays as is
    page.parent.mkdir()
    page.write_text((out / "index.html").read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
         page.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    body = re.search(r"<body[^>]*>", result.stdout)
    assert body, result.stdout[:2000]
    found = dict(re.findall(r'data-(\w+)="(\d+)"', body.group(0)))
    expected_images = len(pngs(out))
    expected_tables = (out / "index.html").read_text().count("<table>")
    assert found == {"images": str(expected_images), "loaded": str(expected_images),
                     "tables": str(expected_tables)}
    assert expected_tables >= 6 and expected_images >= 6
