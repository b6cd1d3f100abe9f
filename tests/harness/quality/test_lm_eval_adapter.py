"""The lm-eval adapter scores exactly what a direct computation with the model gives, and the
local tasks run through lm-eval's own `simple_evaluate` offline."""

from __future__ import annotations

import json
import math

import pytest
import torch
from lm_eval.api.instance import Instance

from harness.models import build_variant
from harness.quality.checkpoint import save_checkpoint
from harness.quality.lm_eval_adapter import ZooLM, evaluate_checkpoint
from harness.quality.lm_eval_tasks import (
    HELDOUT_TASK,
    LASTWORD_TASK,
    last_word_examples,
    task_manager,
    write_tasks,
)
from harness.quality.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
START = TOK.eos_id  # the adapter's default prefix: the trainer's document separator
MODELS = ["gpt", "rwkv", "pangu-pi"]
DOCUMENTS = [
    "The quick brown fox jumps over the lazy dog, then rests by the river.\n\n"
    "A second paragraph follows the first one and ends with a plain word.",
    "Short one.",
    "déjà vu: the library returns its value to the caller when the call succeeds.",
]


def tiny_model(name: str):
    """A tiny random model over bytes whose output rows for ids >= 128 are zero, so that its
    greedy choices are ASCII bytes (which decode to the same one character and back).
    GPT's output head is its tied token embedding."""
    torch.manual_seed(0)
    model = build_variant(name, "tiny", vocab_size=TOK.vocab_size).eval()
    head = getattr(model, {"gpt": "wte", "rwkv": "head", "pangu-pi": "lm_head"}[name]).weight
    with torch.no_grad():
        head[128:] = 0
    return model


@pytest.fixture(scope="module", params=MODELS)
def checkpoint(request, tmp_path_factory):
    """(checkpoint folder, the model it holds)."""
    model = tiny_model(request.param)
    folder = save_checkpoint(tmp_path_factory.mktemp(request.param) / "ckpt", request.param,
                             model, TOK)
    return folder, model


def requests(kind: str, *args: tuple) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


@torch.no_grad()
def logprobs_of(model, tokens: list[int]) -> torch.Tensor:
    """log p(tokens[t] | tokens[:t]) for t = 1.. from one plain forward pass (batch of one)."""
    logits = model(torch.tensor([tokens[:-1]])).logits[0].double()  # (T, V)
    picked = logits.gather(-1, torch.tensor(tokens[1:])[:, None])[:, 0]
    return picked - torch.logsumexp(logits, dim=-1)


def direct_loglikelihood(model, context: str, continuation: str, start: int = START) -> float:
    context_ids, continuation_ids = TOK.encode(context), TOK.encode(continuation)
    scores = logprobs_of(model, [start, *context_ids, *continuation_ids])
    return scores[-len(continuation_ids):].sum().item()


@torch.no_grad()
def greedy_text(model, context: str, n: int) -> str:
    ids = torch.tensor([[START, *TOK.encode(context)]])
    new = model.generate(ids, max_new_tokens=n)[0, ids.size(1):].tolist()
    assert all(i < 128 for i in new)  # ASCII, see tiny_model
    return TOK.decode(new)


def test_loglikelihood_equals_direct_computation(checkpoint):
    folder, model = checkpoint
    lm = ZooLM(folder, device="cpu", batch_size=2)
    pairs = [("The quick brown", " fox"), ("", "Hello world"), ("déjà", " vu"),
             ("a", " much longer continuation than its context")]
    results = lm.loglikelihood(requests("loglikelihood", *pairs))
    for (context, continuation), (logprob, _) in zip(pairs, results, strict=True):
        assert logprob == pytest.approx(direct_loglikelihood(model, context, continuation),
                                        abs=1e-5)
    # lm-eval's convention: a context's trailing space belongs to the continuation (is scored)
    [(moved, _)] = lm.loglikelihood(requests("loglikelihood", ("déjà ", "vu")))
    assert moved == pytest.approx(results[2][0], abs=1e-5)


def test_prefix_token(checkpoint):
    folder, model = checkpoint
    lm = ZooLM(folder, device="cpu", prefix_token="bos")
    [(logprob, _)] = lm.loglikelihood(requests("loglikelihood", ("", "Hello")))
    assert logprob == pytest.approx(direct_loglikelihood(model, "", "Hello", TOK.bos_id),
                                    abs=1e-5)
    with pytest.raises(ValueError, match="prefix_token must be 'eos' or 'bos'"):
        ZooLM(folder, device="cpu", prefix_token="pad")


def test_a_published_checkpoint_is_conditioned_on_its_bos_as_lm_evals_hf_model_does(tmp_path):
    """GPT-2's BOS and EOS are one token; a checkpoint whose BOS is another (LLaMA's <s>
    beside </s>) gets its BOS before every text, as lm-eval's Hugging Face model puts it."""
    from tiny_checkpoints import gpt2_folder

    folder = gpt2_folder(tmp_path / "gpt2")
    assert ZooLM(folder, device="cpu").prefix_id == 0  # <|endoftext|>, both
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "bos_token_id": 5}))
    assert ZooLM(folder, device="cpu").prefix_id == 5
    assert ZooLM(folder, device="cpu", prefix_token="eos").prefix_id == 0


def test_a_published_checkpoint_is_scored_as_lm_evals_own_hf_model_scores_it(tmp_path):
    """A GPT-2 folder through the zoo adapter and through lm-eval's Hugging Face model: the
    same log-likelihoods (within 1e-4) and greedy flags for contexts, empty contexts and whole
    documents, and the same generated text."""
    pytest.importorskip("accelerate")  # lm-eval's hf model needs it
    from lm_eval.models.huggingface import HFLM
    from tiny_checkpoints import gpt2_folder

    folder = gpt2_folder(tmp_path / "gpt2")
    ours = ZooLM(folder, device="cpu", batch_size=2)
    theirs = HFLM(pretrained=str(folder), device="cpu", batch_size=2)
    assert theirs.max_length == ours.max_length == 64  # the position table
    pairs = requests("loglikelihood", ("The quick brown", " fox"), ("A model reads ", "tokens."),
                     ("", "Hello there"), ("Zoë's café", " costs €3.50!"))
    for (got, got_greedy), (want, want_greedy) in zip(
            ours.loglikelihood(pairs), theirs.loglikelihood(pairs, disable_tqdm=True),
            strict=True):
        assert got == pytest.approx(want, abs=1e-4) and got_greedy == want_greedy
    documents = requests("loglikelihood_rolling", (" ".join(DOCUMENTS) * 2,), ("short",))
    assert ours.loglikelihood_rolling(documents) == pytest.approx(
        theirs.loglikelihood_rolling(documents, disable_tqdm=True), abs=1e-4)
    generate = requests("generate_until", ("The quick", {"until": ["\n"], "max_gen_toks": 8,
                                                         "do_sample": False}))
    assert ours.generate_until(generate) == theirs.generate_until(generate, disable_tqdm=True)


def test_a_published_t5_is_scored_as_lm_evals_own_seq2seq_model_scores_it(tmp_path):
    """A T5 folder through the zoo adapter and through lm-eval's Hugging Face model with its
    seq2seq backend: the same log-likelihoods (within 1e-4) and greedy flags for contexts
    (each with T5's </s>, the continuations without), empty contexts and whole documents (with
    </s>) cut into windows whose contexts the encoder reads; greedy generation as
    transformers' generate gives it, cut at the stop string."""
    pytest.importorskip("accelerate")  # lm-eval's hf model needs it
    import transformers
    from lm_eval.models.huggingface import HFLM
    from tiny_checkpoints import t5_folder

    folder = t5_folder(tmp_path / "t5", seed=1)
    ours = ZooLM(folder, device="cpu", batch_size=2, max_length=24)
    theirs = HFLM(pretrained=str(folder), device="cpu", batch_size=2, backend="seq2seq",
                  max_length=24)
    assert ours.encoder_decoder and ours.decoder_start == 0  # config.json's (T5's <pad>)
    pairs = requests("loglikelihood", ("The quick brown", " fox"), ("A model reads ", "tokens."),
                     ("", "Hello there"), ("Zoë's café", " costs €3.50!"),
                     (" ".join(DOCUMENTS), " and the next one."))  # a context over 24 tokens
    for (got, got_greedy), (want, want_greedy) in zip(
            ours.loglikelihood(pairs), theirs.loglikelihood(pairs, disable_tqdm=True),
            strict=True):
        assert got == pytest.approx(want, abs=1e-4) and got_greedy == want_greedy
    documents = requests("loglikelihood_rolling", (" ".join(DOCUMENTS),), ("short",))
    rolled = ours.loglikelihood_rolling(documents)
    # a document's sum of hundreds of terms, lm-eval's in float32
    assert rolled == pytest.approx(theirs.loglikelihood_rolling(documents, disable_tqdm=True),
                                   rel=1e-6, abs=1e-4)
    assert len(ours.rolling_windows(ours._encode_document(" ".join(DOCUMENTS)))) > 2
    model = transformers.T5ForConditionalGeneration.from_pretrained(str(folder)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    for context, until in (("The quick brown fox", ["zzz"]), ("A model", ["a"])):
        ids = tokenizer(context, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, do_sample=False, max_new_tokens=8)[0, 1:].tolist()
        out = out[:out.index(1)] if 1 in out else out
        text = tokenizer.decode(out, skip_special_tokens=True)
        text = text[:text.find(until[0])] if until[0] in text else text
        generate = requests("generate_until", (context, {"until": until, "max_gen_toks": 8}))
        assert ours.generate_until(generate) == [text]


def test_a_seq2seq_run_is_scored_from_its_bos_after_the_eos_its_sources_began_with(tmp_path):
    """A `catalog train --task seq2seq` T5: the encoder reads EOS + the context, the decoder
    starts from BOS, as in training: the log-likelihood is the model's own loss on those ids."""
    torch.manual_seed(0)
    model = build_variant("t5", "tiny", vocab_size=TOK.vocab_size).eval()
    folder = save_checkpoint(tmp_path / "t5", "t5", model, TOK, task="seq2seq", seqlen=256)
    ours = ZooLM(folder, device="cpu")
    assert (ours.prefix_id, ours.decoder_start) == (TOK.eos_id, TOK.bos_id)
    assert ours.max_length == 128  # each stack's half of the 256 tokens it trained at
    context, continuation = TOK.encode("The quick brown"), TOK.encode(" fox jumps")
    src = torch.tensor([[TOK.eos_id, *context]])
    tgt = torch.tensor([[TOK.bos_id, *continuation[:-1]]])
    with torch.no_grad():
        loss = model(src, tgt, targets=torch.tensor([continuation])).loss.item()
    (got, _), = ours.loglikelihood(requests("loglikelihood", ("The quick brown", " fox jumps")))
    assert got == pytest.approx(-loss * len(continuation), abs=1e-4)


def test_is_greedy(checkpoint):
    folder, model = checkpoint
    lm = ZooLM(folder, device="cpu")
    greedy = greedy_text(model, "Once upon", 4)
    other = greedy[:-1] + ("a" if greedy[-1] != "a" else "b")  # the last token is not argmax
    (_, yes), (_, no) = lm.loglikelihood(requests("loglikelihood", ("Once upon", greedy),
                                                  ("Once upon", other)))
    assert yes is True and no is False


def test_loglikelihood_truncates_the_context_from_the_left(checkpoint):
    folder, model = checkpoint
    lm = ZooLM(folder, device="cpu", max_length=16)
    context, continuation = "x" * 40 + "0123456789", " abc"
    [(logprob, _)] = lm.loglikelihood(requests("loglikelihood", (context, continuation)))
    tokens = [START, *TOK.encode(context + continuation)][-17:]  # 16 read + the last
    assert logprob == pytest.approx(logprobs_of(model, tokens)[-4:].sum().item(), abs=1e-5)
    with pytest.raises(ValueError, match="does not fit in max_length 16"):
        lm.loglikelihood(requests("loglikelihood", ("a", "y" * 17)))


def test_rolling_equals_the_direct_sum_when_the_text_fits(checkpoint):
    folder, model = checkpoint
    lm = ZooLM(folder, device="cpu")
    texts = [DOCUMENTS[0], DOCUMENTS[2], "x"]
    results = lm.loglikelihood_rolling(requests("loglikelihood_rolling", *[(t,) for t in texts]))
    for text, logprob in zip(texts, results, strict=True):
        direct = logprobs_of(model, [START, *TOK.encode(text)]).sum().item()
        assert logprob == pytest.approx(direct, abs=1e-5)


def sliding_oracle(model, tokens: list[int], max_length: int, back_to_back: bool) -> float:
    """Each token scored once, from a plain forward over the window that predicts it:
    back_to_back: lm-eval's windows (blocks of max_length tokens; the last, partial block
    reads the full max_length tokens before its end); else every token with the longest
    context that fits (stride 1)."""
    sequence = [START, *tokens]  # token j is sequence[j + 1]
    n, total = len(tokens), 0.0
    for j in range(n):
        block_start = j // max_length * max_length
        if not back_to_back:
            start = max(0, j + 1 - max_length)
        elif block_start + max_length <= n or block_start == 0:  # a whole block
            start = block_start
        else:  # the last, partial block: a full window that ends with the text
            start = n - max_length
        window = sequence[start:min(start + max_length, n) + 1]
        total += logprobs_of(model, window)[j - start].item()
    return total


@pytest.mark.parametrize("rolling_context", [1, 5, 16])
def test_rolling_scores_every_token_once_in_short_windows(checkpoint, rolling_context):
    folder, model = checkpoint
    lm = ZooLM(folder, device="cpu", max_length=16, batch_size=3, rolling_context=rolling_context)
    tokens = TOK.encode(DOCUMENTS[0])  # 139 bytes: 8 whole windows, a partial one
    windows = lm.rolling_windows(tokens)
    assert [t for _, cont in windows for t in cont] == tokens  # each token once, in order
    assert all(len(ctx) + len(cont) - 1 <= 16 for ctx, cont in windows)
    assert all(len(ctx) >= min(rolling_context, 16) for ctx, _ in windows[1:])
    [logprob] = lm.loglikelihood_rolling(requests("loglikelihood_rolling", (DOCUMENTS[0],)))
    if rolling_context in (1, 16):  # lm-eval's default windows; maximal context everywhere
        oracle = sliding_oracle(model, tokens, 16, back_to_back=rolling_context == 1)
        assert logprob == pytest.approx(oracle, abs=1e-5)


def test_generate_until_stops_at_the_stop_string_and_max_gen_toks(checkpoint):
    folder, model = checkpoint
    lm = ZooLM(folder, device="cpu")
    greedy = greedy_text(model, "Hello", 12)
    calls = []
    forward = lm.model.forward
    lm.model.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    stop = greedy[5]
    cut, short = lm.generate_until(requests(
        "generate_until", ("Hello", {"until": [stop], "max_gen_toks": 100}),
        ("Hello", {"until": ["never there"], "max_gen_toks": 7})))
    assert cut == greedy[:greedy.index(stop)]
    assert short == greedy[:7]
    # stopped at once: prefill + one step per token fed back, for both requests
    assert len(calls) == (1 + greedy.index(stop)) + (1 + 6)
    with pytest.raises(ValueError, match="decodes greedily"):
        lm.generate_until(requests("generate_until", ("Hi", {"do_sample": True,
                                                           "temperature": 0.7})))


def test_generation_respects_the_position_table(checkpoint):
    folder, model = checkpoint
    lm = ZooLM(folder, device="cpu", max_length=16)
    [text] = lm.generate_until(requests("generate_until",
                                        ("x" * 40, {"until": [], "max_gen_toks": 40})))
    # The context keeps its last token to leave room: 1 + 15 new tokens fed back = 16 positions.
    assert len(text) == 16


def test_last_word_examples():
    examples = last_word_examples([
        "one two three four five six seven eight.\n\nToo short here.\n\n"
        "a b c d e f g h 1234\n\nends  in a\nquoted word, then a \"quote\"!",
        "Newer models were called state-of-the-art."], min_words=5)
    assert examples == [  # not: too short, a number, a word after an opening quote
        {"context": "one two three four five six seven", "target": " eight"},
        {"context": "Newer models were called", "target": " state-of-the-art"},
    ]


def test_write_tasks_points_at_absolute_data(tmp_path):
    written = write_tasks(tmp_path / "tasks", DOCUMENTS)
    assert set(written) == {HELDOUT_TASK, LASTWORD_TASK}
    data = [json.loads(line) for line in
            (tmp_path / "tasks" / f"{HELDOUT_TASK}.jsonl").read_text().splitlines()]
    assert [row["text"] for row in data] == DOCUMENTS
    text = written[HELDOUT_TASK].read_text()
    assert str((tmp_path / "tasks" / f"{HELDOUT_TASK}.jsonl").resolve()) in text
    # no cloze example: that task is not written (an empty data file cannot be loaded)
    assert set(write_tasks(tmp_path / "tasks", ["Too short."])) == {HELDOUT_TASK}
    assert not (tmp_path / "tasks" / f"{LASTWORD_TASK}.yaml").exists()


@pytest.fixture
def offline(monkeypatch):
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.setenv(name, "1")


def test_simple_evaluate_offline_bits_per_byte(checkpoint, tmp_path, offline):
    """lm-eval's bits_per_byte = -(sum over documents of log p(doc | EOS)) / (sum of their
    UTF-8 bytes) / ln 2, a ratio of corpus totals."""
    import lm_eval

    folder, model = checkpoint
    write_tasks(tmp_path / "tasks", DOCUMENTS)
    output = lm_eval.simple_evaluate(
        model="zoo", model_args=f"pretrained={folder},max_length=32", device="cpu",
        batch_size=4, tasks=[HELDOUT_TASK, LASTWORD_TASK],
        task_manager=task_manager(tmp_path / "tasks"), bootstrap_iters=0, log_samples=False)
    heldout = output["results"][HELDOUT_TASK]
    lm = ZooLM(folder, device="cpu", max_length=32)
    nats = -sum(sliding_oracle(model, TOK.encode(d), 32, back_to_back=True) for d in DOCUMENTS)
    n_bytes = sum(len(d.encode("utf-8")) for d in DOCUMENTS)
    n_words = sum(len(d.split()) for d in DOCUMENTS)
    assert heldout["bits_per_byte,none"] == pytest.approx(nats / n_bytes / math.log(2), rel=1e-4)
    assert heldout["byte_perplexity,none"] == pytest.approx(math.exp(nats / n_bytes), rel=1e-4)
    assert heldout["word_perplexity,none"] == pytest.approx(math.exp(nats / n_words), rel=1e-4)
    cloze = output["results"][LASTWORD_TASK]
    examples = last_word_examples(DOCUMENTS)
    scored = lm.loglikelihood(requests("loglikelihood",
                                       *[(e["context"], e["target"]) for e in examples]))
    assert cloze["acc,none"] == pytest.approx(sum(g for _, g in scored) / len(scored))
    assert cloze["perplexity,none"] == pytest.approx(
        math.exp(-sum(ll for ll, _ in scored) / len(scored)), rel=1e-4)


def test_evaluate_checkpoint(checkpoint, tmp_path, offline, monkeypatch):
    folder, _ = checkpoint
    seeds = []
    monkeypatch.setattr(torch, "manual_seed", seeds.append)
    metrics = evaluate_checkpoint(folder, DOCUMENTS, tmp_path / "tasks", tasks=[HELDOUT_TASK],
                                  device="cpu", max_length=32)
    assert set(metrics) == {HELDOUT_TASK}
    assert set(metrics[HELDOUT_TASK]) == {"word_perplexity", "byte_perplexity", "bits_per_byte"}
    assert 0 < metrics[HELDOUT_TASK]["bits_per_byte"] < 20
    assert seeds == []  # lm-eval left the caller's torch generator alone


def test_registered_as_zoo_and_rejects_encoders(tmp_path):
    from lm_eval.api.registry import get_model, model_registry

    assert get_model("zoo") is ZooLM
    assert "hf" in model_registry  # lm-eval's own names are still there
    torch.manual_seed(0)
    bert = build_variant("bert", "tiny", vocab_size=TOK.vocab_size)
    save_checkpoint(tmp_path / "bert", "bert", bert, TOK)
    with pytest.raises(ValueError, match="is an encoder alone"):
        ZooLM(tmp_path / "bert", device="cpu")
    gpt = save_checkpoint(tmp_path / "gpt", "gpt", tiny_model("gpt"), TOK)
    with pytest.raises(ValueError, match="exceeds the 1024 positions"):
        ZooLM(gpt, device="cpu", max_length=2048)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, not 'auto'"):
        ZooLM(gpt, device="cpu", batch_size="auto")
    assert ZooLM(gpt, device="cpu", batch_size="4", max_length="64").max_length == 64  # CLI text


@pytest.mark.parametrize("name", ["llama", "gpt-neox", "bloom", "mamba"])
def test_models_without_a_position_table_are_not_capped(name, tmp_path):
    """LLaMA's, GPT-NeoX's and BLOOM's max_seq_len is the trained context (RoPE and ALiBi have
    no table) and Mamba has no positions: none limits max_length, which defaults to 2048 as for
    RWKV and Pangu-pi."""
    torch.manual_seed(0)
    model = build_variant(name, "tiny", vocab_size=TOK.vocab_size,
                          **({} if name == "mamba" else {"max_seq_len": 32})).eval()
    folder = save_checkpoint(tmp_path / name, name, model, TOK)
    assert ZooLM(folder, device="cpu").max_length == 2048
    lm = ZooLM(folder, device="cpu", max_length=64)
    (score,) = lm.loglikelihood_rolling(requests("loglikelihood_rolling", (DOCUMENTS[0],)))
    # lm-eval's back-to-back windows of 64 tokens, each a plain forward pass past position 32
    oracle = sliding_oracle(model, TOK.encode(DOCUMENTS[0]), 64, back_to_back=True)
    assert score == pytest.approx(oracle, abs=1e-5)
