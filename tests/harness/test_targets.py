"""The performance-target table: each target is met, missed or not measured from records."""

from harness import targets


def rec(model, impl, mode, seqlen, tps, mem=1000, act=100, mfu=None, ms=None, dtype="float32",
        status="ok", variant=None):
    return {"kind": "bench", "model": model, "variant": variant, "impl": impl, "mode": mode,
            "seqlen": seqlen,
            "dtype": dtype, "status": status, "tokens_per_s": tps, "peak_mem_bytes": mem,
            "act_mem_bytes": act, "mfu": mfu, "ms_median": ms}


def find(rows, target, cell):
    found = [r for r in rows if r.target == target and r.cell == cell]
    assert len(found) == 1, (target, cell, rows)
    return found[0]


def test_forward_against_hf_and_mfu():
    rows = targets.check([rec("gpt", "zoo", "forward", 2048, 1100, mem=900, mfu=0.85),
                          rec("gpt", "hf", "forward", 2048, 1000, mem=1000),
                          rec("bert", "zoo", "forward", 2048, 900, mem=1100, mfu=0.5),
                          rec("bert", "hf", "forward", 2048, 1000, mem=1000)])
    assert find(rows, "throughput vs HF", "gpt forward 2048").met is True
    assert abs(find(rows, "throughput vs HF", "gpt forward 2048").value - 1.1) < 1e-12
    assert find(rows, "peak memory vs HF", "gpt forward 2048").met is True
    assert find(rows, "MFU (fp32 peak)", "gpt forward 2048").met is True
    assert find(rows, "throughput vs HF", "bert forward 2048").met is False
    assert find(rows, "peak memory vs HF", "bert forward 2048").met is False
    assert find(rows, "MFU (fp32 peak)", "bert forward 2048").met is False


def test_a_failed_peer_is_not_measured_rather_than_met():
    rows = targets.check([rec("roberta", "zoo", "forward", 512, 1000),
                          rec("roberta", "hf", "forward", 512, None, status="oom")])
    row = find(rows, "throughput vs HF", "roberta forward 512")
    assert row.met is None and row.value is None and row.verdict == "not measured"
    assert not [r for r in rows if r.target.startswith("MFU")]  # only from 2048 on


def test_rwkv_prefill_decoding_and_flatness():
    rows = targets.check([
        rec("rwkv", "zoo", "forward", 8192, 2000), rec("rwkv", "hf", "forward", 8192, 1000),
        rec("rwkv", "rwkv-pip", "forward", 8192, 1500),
        rec("rwkv", "zoo", "generate", 512, 400, mem=100, ms=2.5),
        rec("rwkv", "zoo", "generate", 8192, 390, mem=104, ms=2.6),
        rec("rwkv", "hf", "generate", 512, 150), rec("rwkv", "rwkv-pip", "generate", 8192, 300)])
    assert find(rows, "RWKV prefill vs hf", "rwkv forward 8192").met is True
    assert find(rows, "RWKV prefill vs rwkv-pip", "rwkv forward 8192").met is False  # 1.33
    assert find(rows, "RWKV decoding vs hf", "rwkv generate 512").met is True
    assert find(rows, "RWKV decoding vs rwkv-pip", "rwkv generate 8192").met is False
    assert find(rows, "RWKV decoding vs hf", "rwkv generate 8192").met is None
    flat = find(rows, "RWKV per-token latency, long / short", "rwkv generate 8192 / 512")
    assert flat.met is True and abs(flat.value - 2.6 / 2.5) < 1e-12
    assert find(rows, "RWKV decoding memory, long / short", "rwkv generate 8192 / 512").met


def test_decoders_against_hf_gpt2_and_linear_memory_and_bf16():
    rows = targets.check([
        rec("gpt", "zoo", "generate", 512, 300), rec("pangu-pi", "zoo", "generate", 512, 200),
        rec("gpt", "hf", "generate", 512, 150),
        rec("mosaic-bert", "zoo", "forward", 4096, 1, act=100),
        rec("mosaic-bert", "zoo", "forward", 8192, 1, act=400),  # quadratic: 4x per doubling
        rec("pangu-pi", "zoo", "forward", 4096, 1, act=100),
        rec("pangu-pi", "zoo", "forward", 8192, 1, act=210),
        rec("bert", "zoo", "forward", 2048, 1000), rec("bert", "zoo", "forward", 2048, 3500,
                                                       dtype="bfloat16")])
    assert find(rows, "decoding vs HF GPT-2", "gpt generate 512").met is True
    assert find(rows, "decoding vs HF GPT-2", "pangu-pi generate 512").met is False  # 1.33
    assert find(rows, "activation memory per doubling", "mosaic-bert forward 8192 / 4096"
                ).met is False
    assert find(rows, "activation memory per doubling", "pangu-pi forward 8192 / 4096").met
    assert find(rows, "bf16 vs fp32 throughput", "bert forward 2048").met is True


def test_plan_covers_every_target_group():
    plans = targets.plan((512, 2048), (512, 2048))
    assert {p.dtype for p in plans} == {"float32", "bfloat16"}
    assert any(p.models == ("rwkv",) and "rwkv-pip" in p.against for p in plans)
    bf16 = [p for p in plans if p.dtype == "bfloat16"][0]
    assert bf16.seqlens == (2048,) and set(bf16.models) == set(targets.DENSE)


def test_base_sizes_are_their_own_cells_and_never_pair_with_small():
    rows = targets.check([rec("gpt", "zoo", "forward", 2048, 1100, mfu=0.81, variant="small"),
                          rec("gpt", "hf", "forward", 2048, 1000, variant="small"),
                          rec("gpt", "zoo", "forward", 2048, 300, mfu=0.7, variant="gpt2"),
                          rec("gpt", "hf", "forward", 2048, 330, variant="gpt2"),
                          rec("bert", "zoo", "forward", 2048, 500, variant="base")])
    assert find(rows, "throughput vs HF", "gpt small forward 2048").met is True
    base = find(rows, "throughput vs HF", "gpt gpt2 forward 2048")
    assert base.met is False and abs(base.value - 300 / 330) < 1e-12
    assert find(rows, "MFU (fp32 peak)", "gpt gpt2 forward 2048").met is False
    assert find(rows, "throughput vs HF", "bert base forward 2048").met is None  # no HF record
    assert [r.cell for r in rows][:3] == ["gpt small forward 2048"] * 3  # small first


def test_plan_adds_the_base_sizes_against_hf():
    plans = targets.plan((512, 2048), (512,))
    base = [p for p in plans if p.variant]
    assert {(p.models, p.variant) for p in base} == {(("bert",), "base"), (("gpt",), "gpt2"),
                                                      (("roberta",), "base")}
    assert all(p.against == ("hf",) and p.seqlens == (512, 2048) for p in base)
    assert not [p for p in targets.plan((512,), (512,), base_sizes=False) if p.variant]


def test_markdown_table_counts_met_missed_and_not_measured():
    rows = targets.check([rec("gpt", "zoo", "forward", 2048, 1100, mfu=0.9),
                          rec("gpt", "hf", "forward", 2048, 1000),
                          rec("bert", "zoo", "forward", 512, 900)])
    text = targets.markdown(rows)
    assert "| throughput vs HF | gpt forward 2048 | 1.10 | >= 1.00 | met |" in text
    assert "| throughput vs HF | bert forward 512 |  | >= 1.00 | not measured |" in text
    assert text.endswith("3 of 5 met, 0 missed, 2 not measured.\n")


def test_a_cell_measured_in_several_rounds_keeps_its_fastest_record():
    rows = targets.check([rec("gpt", "zoo", "forward", 512, 900, mem=800),
                          rec("gpt", "hf", "forward", 512, 1000),
                          rec("gpt", "zoo", "forward", 512, 1200, mem=700),
                          rec("gpt", "hf", "forward", 512, 800),
                          rec("gpt", "zoo", "forward", 512, 5000, status="error")])
    row = find(rows, "throughput vs HF", "gpt forward 512")
    assert abs(row.value - 1.2) < 1e-12  # 1200 (zoo's best) / 1000 (HF's best)
    assert abs(find(rows, "peak memory vs HF", "gpt forward 512").value - 0.7) < 1e-12


def test_every_plan_belongs_to_a_group_that_only_selects():
    plans = targets.plan((512, 2048), (512,))
    assert {p.group for p in plans} == set(targets.GROUPS)
    decoding = [p for p in plans if p.group == "decoding"]
    assert {m for p in decoding for m in p.models} == {"rwkv", "gpt", "pangu-pi"}
    assert all(p.modes == ("generate",) for p in decoding)


def test_fastest_records_are_the_ones_the_table_uses():
    slow, fast = rec("gpt", "zoo", "forward", 512, 900), rec("gpt", "zoo", "forward", 512, 1200)
    other = rec("gpt", "zoo", "forward", 1024, 800)
    assert targets.fastest([slow, fast, other, rec("gpt", "hf", "forward", 512, None,
                                                    status="oom")]) == [fast, other]


def test_training_targets():
    train = [rec("gpt", "zoo", "train", 1024, 600, mem=900, mfu=0.55),
             rec("gpt", "hf", "train", 1024, 500, mem=1000),
             rec("bert", "zoo", "train", 256, 400, mem=1100, mfu=0.4),
             rec("bert", "hf", "train", 256, 410, mem=1000),
             rec("rwkv", "zoo", "train", 1024, 950), rec("rwkv", "hf", "train", 1024, 300),
             rec("gpt", "zoo", "train", 1024, 1300, dtype="bfloat16"),
             rec("gpt", "zoo", "forward", 1024, 5000)]  # not a training cell: ignored
    rows = targets.check_training(train)
    assert find(rows, "training vs HF", "gpt train 1024").met is True
    assert abs(find(rows, "training vs HF", "gpt train 1024").value - 1.2) < 1e-12
    assert find(rows, "training peak memory vs HF", "gpt train 1024").met is True
    assert find(rows, "training MFU (fp32 peak)", "gpt train 1024").met is True
    assert find(rows, "training vs HF", "bert train 256").met is False
    assert find(rows, "training peak memory vs HF", "bert train 256").met is False
    assert find(rows, "training MFU (fp32 peak)", "bert train 256").met is False
    assert find(rows, "RWKV training vs HF", "rwkv train 1024").met is True  # 3.17
    assert find(rows, "RWKV training vs our GPT", "rwkv train 1024").met is True  # 1.58
    assert find(rows, "bf16 (mixed) vs fp32 training", "gpt train 1024").met is True  # 2.17
    assert not [r for r in rows if "MFU" in r.target and r.cell.startswith("rwkv")]
    assert not [r for r in rows if "forward" in r.cell]


def test_training_plan():
    plans = targets.train_plan((256, 512, 1024))
    assert {p.group for p in plans} == set(targets.TRAIN_GROUPS)
    assert all(p.modes == ("train",) for p in plans)
    bf16 = next(p for p in plans if p.dtype == "bfloat16")
    assert bf16.seqlens == (256, 1024) and bf16.against == ()


def test_training_targets_in_bf16_as_on_a_gpu():
    """With HF's step measured in bf16 (the table on a GPU), ours is compared in bf16 too,
    cell by cell, the cells naming their dtype; MFU rows stay float32's alone."""
    train = [rec("gpt", "zoo", "train", 1024, 9000, mem=900, mfu=0.3, dtype="bfloat16"),
             rec("gpt", "hf", "train", 1024, 6000, mem=1000, dtype="bfloat16"),
             rec("gpt", "zoo", "train", 1024, 3000, mem=800, mfu=0.55),
             rec("gpt", "zoo", "train", 4096, 5000, dtype="bfloat16"),  # no fp32 beside it
             rec("rwkv", "zoo", "train", 1024, 12000, dtype="bfloat16"),
             rec("rwkv", "hf", "train", 1024, None, dtype="bfloat16", status="oom")]
    rows = targets.check_training(train)
    assert abs(find(rows, "training vs HF", "gpt train 1024 bfloat16").value - 1.5) < 1e-12
    assert find(rows, "training peak memory vs HF", "gpt train 1024 bfloat16").met is True
    assert find(rows, "training vs HF", "rwkv train 1024 bfloat16").met is None  # HF: OOM
    assert abs(find(rows, "RWKV training vs our GPT", "rwkv train 1024 bfloat16").value
               - 12000 / 9000) < 1e-12
    assert not [r for r in rows if r.cell == "gpt train 1024" and "HF" in r.target]
    assert [r.cell for r in rows if "MFU" in r.target] == ["gpt train 1024"]
    assert abs(find(rows, "bf16 (mixed) vs fp32 training", "gpt train 1024").value - 3) < 1e-12
    assert [r.cell for r in rows if r.target.startswith("bf16")] == ["gpt train 1024"]


def test_bf16_cells_without_an_hf_peer_are_no_comparison_with_hf():
    rows = targets.check_training([rec("gpt", "zoo", "train", 256, 1500, dtype="bfloat16"),
                                   rec("gpt", "zoo", "train", 256, 1000),
                                   rec("gpt", "hf", "train", 256, 900)])
    assert not [r for r in rows if r.cell.endswith("bfloat16")]
    assert find(rows, "bf16 (mixed) vs fp32 training", "gpt train 256").met is False  # 1.5


def test_torch_compile_is_checked_against_the_eager_default():
    rows = targets.check_training([rec("gpt", "zoo", "train", 256, 1000),
                                   rec("gpt", "zoo-compiled", "train", 256, 800),
                                   rec("bert", "zoo", "train", 1024, 700, dtype="bfloat16"),
                                   rec("bert", "zoo-compiled", "train", 1024, 1400,
                                       dtype="bfloat16"),
                                   rec("rwkv", "zoo", "train", 1024, 2000),
                                   rec("rwkv", "zoo-compiled", "train", 1024, None,
                                       status="timeout")])
    target = "eager (default) vs torch.compile training"
    assert find(rows, target, "gpt train 256").met is True  # 1.25: compile stays off
    row = find(rows, target, "bert train 1024 bfloat16")
    assert row.met is False and abs(row.value - 0.5) < 1e-12
    assert find(rows, target, "rwkv train 1024").verdict == "not measured"


def test_training_plan_on_a_gpu_in_bf16_with_compile():
    train, other, more, newer = targets.train_plan((1024, 4096), "bfloat16", compile=True)
    assert (more.models, more.dtype, more.compile) == (targets.TRAIN_MORE, "bfloat16", True)
    assert (newer.models, newer.dtype, newer.compile) == (targets.TRAIN_NEWER, "bfloat16", True)
    assert newer.group == "train-newer" and newer.seqlens == (1024, 4096)
    assert (train.dtype, train.against, train.compile) == ("bfloat16", ("hf",), True)
    assert train.models == targets.TRAIN_MODELS and train.seqlens == (1024, 4096)
    assert (other.dtype, other.seqlens, other.compile) == ("float32", (1024,), False)


def test_the_other_models_with_an_hf_peer_are_compared_too():
    rows = targets.check_training([rec("llama", "zoo", "train", 1024, 1600, mem=900, mfu=0.5),
                                   rec("llama", "hf", "train", 1024, 1000, mem=1000),
                                   rec("mamba", "zoo", "train", 2048, 700, mfu=0.2),
                                   rec("mamba", "hf", "train", 2048, None, status="timeout"),
                                   rec("roberta", "zoo", "train", 256, 1500, mfu=0.45),
                                   rec("roberta", "hf", "train", 256, 800),
                                   rec("bloom", "zoo", "train", 4096, 400, mem=3000, mfu=0.45),
                                   rec("bloom", "hf", "train", 4096, 360, mem=13000),
                                   rec("opt", "zoo", "train", 1024, 900, mem=1200, mfu=0.7),
                                   rec("opt", "hf", "train", 1024, 1000, mem=2100),
                                   rec("t5", "zoo", "train", 1024, 1100, mem=1400, mfu=0.55),
                                   rec("t5", "hf", "train", 1024, 700, mem=2300)])
    assert abs(find(rows, "training vs HF", "llama train 1024").value - 1.6) < 1e-12
    assert find(rows, "training vs HF", "bloom train 4096").met is True  # 1.11
    assert find(rows, "training peak memory vs HF", "bloom train 4096").met is True
    assert not [r for r in rows if "MFU" in r.target and r.cell == "bloom train 4096"]
    assert find(rows, "training vs HF", "opt train 1024").met is False  # 0.9
    assert find(rows, "training MFU (fp32 peak)", "opt train 1024").met is True
    assert find(rows, "training MFU (fp32 peak)", "llama train 1024").met is True
    assert find(rows, "training MFU (fp32 peak)", "roberta train 256").met is False
    assert find(rows, "training vs HF", "mamba train 2048").verdict == "not measured"
    assert not [r for r in rows if "MFU" in r.target and r.cell.startswith("mamba")]
    assert find(rows, "training vs HF", "t5 train 1024").met is True  # the encoder-decoder too
    assert find(rows, "training peak memory vs HF", "t5 train 1024").met is True
    assert find(rows, "training MFU (fp32 peak)", "t5 train 1024").met is True
