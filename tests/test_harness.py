"""Downstream tasks through lm-evaluation-harness (attractor.harness, `attractor eval --tasks`),
offline: a multiple-choice task written here scores what the model's own log-likelihoods of the
choices say; loglikelihood_rolling of the validation text is the run's validation loss; the
windows are lm-eval's rolling windows; generate_until is greedy `sample` cut at the stop string;
bad input gives one line."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import sets, tiny_settings

from attractor.cli import main

lm_eval = pytest.importorskip("lm_eval")  # the eval extra (make test installs it)

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

from attractor.harness import AttractorHarnessLM, windows  # noqa: E402


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, and the datasets cache in tmp_path, not the user's."""
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus):
    """A tiny attractor run of 4 steps (bytes, context 32), shared read-only."""
    root = tmp_path_factory.mktemp("harness")
    out = root / "run"
    assert main(["train", "attractor-1m", "--out", str(out), "--data", str(corpus), "--steps", "4", "--quiet",
                 *sets(tiny_settings("attractor-1m", root / "cache"))]) == 0
    return out


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def direct_logprob(model, tokens: list[int], n: int, iters=None) -> float:
    """log p of the last n of `tokens` (at most seq_len + 1 of them) from one forward, alone."""
    x = torch.tensor([tokens])
    with torch.no_grad():
        logits = model(x[:, :-1], **({} if iters is None else {"iters": iters})).logits[0, -n:]
    return torch.log_softmax(logits.float(), -1).gather(-1, x[0, -n:, None]).sum().item()


CHOICES = ["a tree", "the sea", "bread"]
DOCS = [(f"{s} {v}", i % 3) for i, (s, v) in enumerate((s, v) for s in ["the cat", "a dog", "my friend", "the king"]
                                                      for v in ["sees", "likes", "finds"])]  # 12 questions


def write_tasks(folder) -> None:
    """Two tasks over one local jsonl (lm-eval's json loader, no hub): 'tiny_choice' (multiple
    choice: accuracy) and 'tiny_answer' (the log-likelihood of the right answer after "question ":
    perplexity, exp(-mean log p), which any change in the scores moves)."""
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": CHOICES, "answer": a}) + "\n" for q, a in DOCS))
    head = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / "tiny_choice.yaml").write_text(
        f"task: tiny_choice\n{head}output_type: multiple_choice\ndoc_to_text: '{{{{question}}}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n")
    (folder / "tiny_answer.yaml").write_text(  # the context's trailing space joins the answer (as " a tree")
        f"task: tiny_answer\n{head}output_type: loglikelihood\ndoc_to_text: '{{{{question}}}} '\n"
        "doc_to_target: '{{choices[answer]}}'\n"
        "metric_list:\n  - {metric: perplexity, aggregation: perplexity, higher_is_better: false}\n")


def test_a_multiple_choice_task_scores_the_models_own_loglikelihoods(capsys, tmp_path, run_dir):
    import math

    from attractor.run import load_run

    write_tasks(tmp_path)
    assert main(["eval", str(run_dir), "--tasks", "tiny_choice,tiny_answer", "--include-path", str(tmp_path),
                 "--limit", "10"]) == 0
    out = capsys.readouterr().out
    rows = {(r[1], r[2]): r for r in (line.split() for line in out.splitlines()[2:])}
    assert [r[0] for r in rows.values()] == ["adaptive", "adaptive"], out
    acc, ppl = float(rows["tiny_choice", "acc"][3]), float(rows["tiny_answer", "perplexity"][3])
    # by hand: log p of each choice's tokens (after "question ") at the model's adaptive depth, one forward each
    model, tok, _, _ = load_run(run_dir)
    right, answers = [], []
    for question, answer in DOCS[:10]:
        scores = [direct_logprob(model, tok.encode(f"{question} {c}"), len(tok.encode(f" {c}"))) for c in CHOICES]
        right.append(max(range(len(CHOICES)), key=scores.__getitem__) == answer)
        answers.append(scores[answer])
    assert 0 <= acc <= 1 and acc == pytest.approx(sum(right) / 10, abs=1e-6), out  # printed to 6 digits
    assert ppl == pytest.approx(math.exp(-sum(answers) / 10), rel=1e-4), out  # 6 digits, fp32 sums


def test_loglikelihood_is_the_forward_of_each_request_alone_in_a_padded_batch(run_dir):
    """Contexts of several lengths share forwards (right-padded), one past seq_len (the last 32
    tokens), a continuation longer than seq_len (two windows); an empty context leaves the first
    token unscored, as loglikelihood_rolling does."""
    lm = AttractorHarnessLM(run_dir, iters=2, batch_size=3)
    long = "the king finds the sea. a dog sees bread. my friend"  # 51 tokens
    cases = [("the cat", " sees a tree"), ("a", " dog"), (long, " likes bread."), ("hi ", "there")]
    got = lm.loglikelihood(requests("loglikelihood", cases))
    tok = lm.tokenizer
    for (context, continuation), (logprob, _) in zip(cases, got):
        context, continuation = context.rstrip(), continuation if context == context.rstrip() else " " + continuation
        tokens = tok.encode(context + continuation)[-33:]
        want = direct_logprob(lm.model, tokens, len(tok.encode(continuation)), iters=2)
        assert logprob == pytest.approx(want, rel=1e-5)
    text = long + " " + long  # 103 tokens: windows of 32, 32, 32 and 6 scored
    empty = lm.loglikelihood(requests("loglikelihood", [("", text)]))[0][0]
    rolling = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]))[0]
    assert empty == pytest.approx(rolling, rel=1e-6)


@pytest.mark.parametrize("n", [1, 2, 5, 32, 33, 34, 64, 65, 80, 200])
def test_the_windows_are_lm_evals_rolling_windows(n):
    tokens = list(range(100, 100 + n))
    theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens[1:], tokens[0], 32, 1)]
    ours = windows(tokens, 1, 32)
    assert [t for _, t in ours] == [t for _, t in theirs]
    for (inputs, targets), (context, cont) in zip(ours, theirs):  # the forward lm-eval's causal models run
        assert inputs == (context + cont)[:-1][-32:] and len(inputs) <= 32


@pytest.mark.parametrize("iters", [2, None])
def test_loglikelihood_rolling_of_the_validation_text_is_the_validation_loss(run_dir, iters):
    """The validation windows (attractor.data.val_batches) cover tokens[0 : 8*32 + 1] and score
    every token but the first: the rolling windows of that text."""
    from attractor.data import prepare
    from attractor.evaluate import evaluate
    from attractor.run import load_run, validation

    model, tok, run, _ = load_run(run_dir)
    val = validation(run, prepare(run.data, progress=False))
    stream = [int(val[0][0][0, 0])] + torch.cat([y for _, y in val]).view(-1).tolist()  # first input, then targets
    text = tok.decode(stream)
    assert tok.encode(text) == stream and len(stream) == 8 * 32 + 1
    loss = evaluate(model, val, iters=iters)
    lm = AttractorHarnessLM(model=model, tokenizer=tok, iters=iters)
    logprob = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(text,)]))[0]
    assert -logprob / loss["val_tokens"] == pytest.approx(loss["val_loss"], rel=1e-4)  # fp32 sums in another order


def test_generate_until_is_greedy_sample_cut_at_the_stop_string(run_dir):
    from attractor.generate import sample

    lm = AttractorHarnessLM(run_dir, iters=2)
    prompts = ["the cat sees", "a dog"]
    greedy = [lm.tokenizer.decode(sample(lm.model, lm.tokenizer.encode(p), max_new_tokens=24, iters=2,
                                         temperature=0)) for p in prompts]
    stop = greedy[0][10:12]  # a stop string the first continuation holds
    got = lm.generate_until(requests("generate_until", [(p, {"until": [stop, "\x00"], "max_gen_toks": 24})
                                                        for p in prompts]))
    assert got == [g[:g.index(stop)] if stop in g else g for g in greedy]
    assert len(got[0]) <= 10
    with pytest.raises(ValueError, match="num_beams"):
        lm.generate_until(requests("generate_until", [("a", {"until": ["."], "num_beams": 4})]))


def test_the_model_is_registered_for_lm_evals_own_arguments(run_dir):
    lm = lm_eval.api.registry.get_model("attractor").create_from_arg_string(f"run={run_dir},iters=2",
                                                                            {"batch_size": 4, "device": None})
    assert isinstance(lm, AttractorHarnessLM) and lm.iters == 2 and lm.batch_size == 4


def test_an_unknown_task_is_one_line_naming_the_closest(capsys, tmp_path, run_dir):
    write_tasks(tmp_path)
    assert main(["eval", str(run_dir), "--tasks", "tiny_choise", "--include-path", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and "\n" not in err and "unknown task 'tiny_choise'; did you mean 'tiny_choice'" in err


def test_a_task_whose_data_is_missing_is_one_line(capsys, tmp_path, run_dir):
    write_tasks(tmp_path)
    (tmp_path / "docs.jsonl").unlink()
    assert main(["eval", str(run_dir), "--tasks", "tiny_choice", "--include-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after lm-eval's own notes
    assert err.startswith("attractor: error: a task's data") and "docs.jsonl" in err


def test_without_lm_eval_the_error_says_how_to_install_it(capsys, monkeypatch, run_dir):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    assert main(["eval", str(run_dir), "--tasks", "hellaswag"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'attractor-models[eval]'" in err


@pytest.mark.parametrize("argv, match", [(["--limit", "3"], "--limit goes with --tasks"),
                                          (["--tasks", "x", "--plot", "a.png"], "--plot is for the validation sweep"),
                                          (["--tasks", "x", "--limit", "0"], "--limit")])
def test_flags_of_the_other_mode_are_refused(capsys, run_dir, argv, match):
    assert main(["eval", str(run_dir), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and match in err
