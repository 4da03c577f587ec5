"""Batched generation (attractor.generate.generate_batches, `attractor generate --prompt-file /
--num-samples`): every result equals generating it alone, greedy and seeded sampling, prompts of
different lengths together, cached and uncached; nucleus sampling (--top-p); per-token depth in
`generate --json` and `--show-depth`."""

from __future__ import annotations

import io
import json
import re

import pytest
import torch
from conftest import tiny_settings
from test_generate_cache import build

from attractor.cli import main
from attractor.generate import Batch, Context, check_options, generate_batches, sample, sample_batch

PROMPTS = [[1, 2, 3], [5], list(range(10, 22)), [7, 8, 9, 10, 11]]  # the third is past a 16-token window

# (family, iters, cache): the uncached path pads rows of different lengths; the cached one runs
# each length in lockstep
CASES = [("transformer", None, True), ("transformer", None, False), ("attractor", 2, True), ("attractor", 2, False),
         ("attractor", None, False), ("deq", 1, False), ("looped", None, True), ("looped", None, False)]


@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=1.0, top_k=20, top_p=0.9)],
                         ids=["greedy", "seeded-sampling"])
@pytest.mark.parametrize("family, iters, cache", CASES)
def test_a_batch_gives_what_each_prompt_gives_alone(family, iters, cache, sampling):
    model = build(family, 16)
    seeds = [3, 0, 7, 3]
    options = dict(max_new_tokens=12, iters=iters, cache=cache, **sampling)
    alone = [sample(model, p, seed=s, **options) for p, s in zip(PROMPTS, seeds)]
    assert sample_batch(model, PROMPTS, seeds=seeds, batch_size=4, **options) == alone
    assert sample_batch(model, PROMPTS, seeds=seeds, batch_size=3, **options) == alone  # chunks of 3 and 1
    if sampling["temperature"]:
        assert len({tuple(a) for a in alone}) > 1


@pytest.mark.parametrize("family, iters", [("transformer", None), ("attractor", 2), ("attractor", None),
                                           ("looped", None)])
def test_padded_rows_get_the_logits_and_depth_of_each_row_alone(family, iters):
    model = build(family, 16)
    batch = Batch(model, PROMPTS, iters, cache=False)
    assert not batch.cached
    logits = batch.logits()
    for b, prompt in enumerate(PROMPTS):
        one = Context(model, prompt, iters, cache=False)
        torch.testing.assert_close(logits[b], one.logits(), rtol=0, atol=1e-5)
        assert batch.depth[b] == one.depth[0]
    if family == "transformer":
        assert batch.depth == [None] * 4
    elif iters is not None:
        assert batch.depth == [iters] * 4


def test_rows_of_different_lengths_are_grouped_where_they_cannot_be_padded():
    model = build("attractor", 16)
    with pytest.raises(ValueError, match="different lengths"):
        Batch(model, PROMPTS, 2, cache=True)
    results = dict(generate_batches(model, PROMPTS, seeds=[0] * 4, max_new_tokens=3, iters=2, temperature=0))
    assert sorted(results) == [0, 1, 2, 3] and all(len(r.tokens) == len(r.depths) == 3 for r in results.values())
    assert all(d == 2 for r in results.values() for d in r.depths)


@pytest.mark.parametrize("iters", [2, None])
def test_stop_ends_each_row_at_its_own_token_and_the_group_when_all_have(iters):
    model = build("attractor", 32)
    full = dict(generate_batches(model, PROMPTS, seeds=[0] * 4, max_new_tokens=12, iters=iters, temperature=0))
    ends = {i: 3 + i for i in range(4)}  # row i stops after 3 + i tokens
    calls = []

    def stop(tokens):
        calls.append(len(tokens))
        return any(len(tokens) == end and tokens == full[i].tokens[:end] for i, end in ends.items())

    cut = dict(generate_batches(model, PROMPTS, seeds=[0] * 4, max_new_tokens=12, iters=iters, temperature=0,
                                stop=stop))
    for i, result in cut.items():
        assert result.tokens == full[i].tokens[:len(result.tokens)] and len(result.depths) == len(result.tokens)
        assert len(result.tokens) <= ends[i]
    assert max(calls) <= max(ends.values())  # no row asked past the last row's stop: the group ended


def test_top_p():
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="top_p"):
            check_options(max_new_tokens=1, temperature=1.0, top_k=None, top_p=bad)
    model = build("transformer", 32)
    plain = sample(model, [1, 2, 3], max_new_tokens=30, seed=5)
    assert sample(model, [1, 2, 3], max_new_tokens=30, seed=5, top_p=1.0) == plain  # 1 keeps every token
    assert sample(model, [1, 2, 3], max_new_tokens=30, seed=5, top_p=0.5) != plain
    # a nucleus smaller than the most likely token's probability keeps that token alone: greedy
    greedy = sample(model, [1, 2, 3], max_new_tokens=30, temperature=0)
    assert sample(model, [1, 2, 3], max_new_tokens=30, seed=5, top_p=1e-6) == greedy


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus):
    """Tiny transformer and Attractor runs of 2 steps (bytes, context 32)."""
    root = tmp_path_factory.mktemp("batch")
    out = {}
    for preset in ("transformer-1m", "attractor-1m"):
        out[preset] = root / preset
        settings = tiny_settings(preset, root / "cache")
        assert main(["train", preset, "--out", str(out[preset]), "--data", str(corpus), "--steps", "2", "--quiet",
                     *[a for s in settings for a in ("--set", s)]]) == 0
    return out


def blocks(text: str) -> list[tuple[str, str]]:
    """(header, body) of each result block of `generate` with several results."""
    parts = re.split(r"(?:^|\n\n)==> (.*) <==\n", text)
    assert parts[0] == ""
    return [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2)]


def test_prompt_file_and_num_samples_give_each_result_as_alone(capsys, tmp_path, runs):
    lines = ["the cat", "a", "my friend sees the sea"]
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(lines) + "\n")
    run = str(runs["transformer-1m"])
    common = ["--max-new-tokens", "12", "--temperature", "0.9", "--top-p", "0.95", "--seed", "4"]
    capsys.readouterr()
    assert main(["generate", run, "--prompt-file", str(path), "--num-samples", "2", "--batch-size", "4", *common]) == 0
    got = blocks(capsys.readouterr().out)
    assert [h for h, _ in got] == [f"prompt {n}, sample {j} of 2, seed {4 + j - 1}" for n in (1, 2, 3) for j in (1, 2)]
    for (_, body), (n, j) in zip(got, [(n, j) for n in range(3) for j in range(2)]):
        argv = ["generate", run, "--prompt", lines[n], *common[:-1], str(4 + j)]
        assert main(argv) == 0
        assert capsys.readouterr().out.rstrip("\n") == body.rstrip("\n")
        assert body.startswith(lines[n])
    assert len({body for _, body in got}) == 6


def test_prompt_file_from_stdin(capsys, monkeypatch, tmp_path, runs):
    run = str(runs["transformer-1m"])
    argv = ["--max-new-tokens", "6", "--temperature", "0"]
    path = tmp_path / "p.txt"
    path.write_text("the cat\r\nthe king\n")  # a CRLF line ends without its \r
    capsys.readouterr()
    assert main(["generate", run, "--prompt-file", str(path), *argv]) == 0
    from_file = capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("the cat\nthe king"))
    assert main(["generate", run, "--prompt-file", "-", *argv]) == 0
    assert capsys.readouterr().out == from_file
    assert [h for h, _ in blocks(from_file)] == ["prompt 1, sample 1 of 1, seed 0", "prompt 2, sample 1 of 1, seed 0"]


def one_line_error(capsys, argv: list[str], match: str) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and err.startswith("attractor: error:") and match in err, err
    assert captured.out == ""


@pytest.mark.parametrize("option, match", [
    (["--top-p", "0"], "--top-p 0.0 must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p 1.5 must be in (0, 1]"),
    (["--top-p", "nan"], "--top-p nan must be in (0, 1]"),
    (["--num-samples", "0"], "--num-samples 0 must be at least 1"),
    (["--batch-size", "0"], "--batch-size 0 must be at least 1"),
    (["--json", "--show-depth"], "give --json or --show-depth, not both"),
    (["--prompt-file", "missing.txt"], "give --prompt TEXT or --prompt-file FILE"),
])
def test_generate_refuses_batch_options_that_cannot_work(capsys, runs, option, match):
    one_line_error(capsys, ["generate", str(runs["transformer-1m"]), "--prompt", "the cat", *option], match)


def test_prompt_files_that_cannot_work(capsys, tmp_path, runs):
    run = str(runs["transformer-1m"])
    one_line_error(capsys, ["generate", run], "give --prompt TEXT or --prompt-file FILE")
    one_line_error(capsys, ["generate", run, "--prompt-file", str(tmp_path / "none.txt")], "cannot read it")
    (tmp_path / "gap.txt").write_text("the cat\n\nthe king\n")
    one_line_error(capsys, ["generate", run, "--prompt-file", str(tmp_path / "gap.txt")], "line 2 of --prompt-file")
    (tmp_path / "empty.txt").write_text("")
    one_line_error(capsys, ["generate", run, "--prompt-file", str(tmp_path / "empty.txt")], "holds no prompt")


def test_json_lines_hold_each_token_with_its_adaptive_depth(capsys, tmp_path, runs):
    path = tmp_path / "prompts.txt"
    path.write_text("the cat\nthe king sees\n")
    capsys.readouterr()
    assert main(["generate", str(runs["attractor-1m"]), "--prompt-file", str(path), "--max-new-tokens", "8",
                 "--temperature", "0", "--json"]) == 0  # no --iters: adaptive, uncached
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["prompt"], r["prompt_number"], r["sample"], r["seed"]) for r in lines] == [
        ("the cat", 1, 0, 0), ("the king sees", 2, 0, 0)]
    for r in lines:
        assert r["model"] == "AttractorLM" and r["iters"] is None
        assert len(r["tokens"]) == 8 and "".join(t["text"] for t in r["tokens"]) == r["text"]
        assert all(isinstance(t["id"], int) and isinstance(t["depth"], int) and t["depth"] >= 0 for t in r["tokens"])
    # the same tokens and depths as the model's own forward over each context
    from attractor import load

    model = load(runs["attractor-1m"])
    for r in lines:
        ids = list(r["prompt"].encode())
        for t in r["tokens"]:
            with torch.no_grad():
                out = model(torch.tensor([ids]))
            assert int(out.logits[0, -1].argmax()) == t["id"] and int(out.info.depth.view(1, -1)[0, -1]) == t["depth"]
            ids.append(t["id"])
    # one prompt, --json: one line; a fixed depth reports it; the transformer reports none
    assert main(["generate", str(runs["attractor-1m"]), "--prompt", "a", "--max-new-tokens", "3", "--iters", "2",
                 "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert [t["depth"] for t in json.loads(line)["tokens"]] == [2, 2, 2]
    assert main(["generate", str(runs["transformer-1m"]), "--prompt", "a", "--max-new-tokens", "3", "--json"]) == 0
    assert [t["depth"] for t in json.loads(capsys.readouterr().out)["tokens"]] == [None] * 3


SUPERSCRIPTS = "⁰¹²³⁴⁵⁶⁷⁸⁹"


def test_show_depth_without_a_terminal_is_plain_text_with_superscripts(capsys, tmp_path, runs):
    run = str(runs["attractor-1m"])
    argv = ["generate", run, "--prompt", "the cat", "--max-new-tokens", "10", "--temperature", "0"]
    capsys.readouterr()
    assert main(argv) == 0
    plain = capsys.readouterr().out
    assert main([*argv, "--json"]) == 0
    depths = [t["depth"] for t in json.loads(capsys.readouterr().out)["tokens"]]
    assert main([*argv, "--show-depth"]) == 0
    shown = capsys.readouterr().out
    assert "\x1b" not in shown  # no escape codes into a pipe or a file
    text, legend = shown.rstrip("\n").rsplit("\n", 1)
    assert "superscript" in legend and "solver iterations" in legend
    assert re.sub(f"[{SUPERSCRIPTS}]+", "", text) + "\n" == plain
    marks = re.findall(f"[{SUPERSCRIPTS}]+", text[len("the cat"):])
    assert [int(m.translate(str.maketrans(SUPERSCRIPTS, "0123456789"))) for m in marks] == depths  # bytes: one each
    # several results: a legend after each block; the transformer has no depth to show
    (tmp_path / "p.txt").write_text("the cat\na\n")
    assert main(["generate", run, "--prompt-file", str(tmp_path / "p.txt"), "--max-new-tokens", "4",
                 "--show-depth"]) == 0
    got = blocks(capsys.readouterr().out)
    assert len(got) == 2 and all("superscript" in body.rstrip("\n").rsplit("\n", 1)[1] for _, body in got)
    assert main(["generate", str(runs["transformer-1m"]), "--prompt", "a", "--max-new-tokens", "4",
                 "--show-depth"]) == 0
    legend = capsys.readouterr().out.rstrip("\n").rsplit("\n", 1)[1]
    assert legend == "(depth: TransformerLM reports no per-token depth)"


def test_show_depth_in_a_terminal_shades_by_depth():
    from attractor.cli import DepthView

    view = DepthView(True, "AttractorLM")
    assert view.render(["a", "", "é"], [1, 3, 12]) == "\x1b[30;48;5;21ma\x1b[0m\x1b[30;48;5;202mé\x1b[0m"
    assert "16+" in view.legend() and "\x1b[" in view.legend()
