"""bench.lm_claims and bench.lm_report on tiny runs: what a record holds, and the tables, plots
and document generated from records. Also the Jacobian-penalty knob the driver's groups use.

Tiny means d=32, one backbone block, 32-token context, batch 4, a few steps on the first 60k
characters of KJV: a run takes about a second.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attractor.errors import ConfigError
from attractor.models import build
from attractor.run import load_run
from bench import lm_claims, lm_report

TINY = ("model.d=32", "model.seq_len=32", "train.batch_size=4", "train.eval_batches=2", "data.max_chars=60000")
SHAPES = {"attractor-1m": ("n_backbone=1",), "deq-1m": ("n_prelude=1",), "transformer-1m": ("n_layer=2",)}


def tiny(tmp_path, preset: str, name: str, steps: int = 4, extra: tuple[str, ...] = ()) -> lm_claims.Spec:
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    return lm_claims.Spec(name, preset, (*TINY, cache, *SHAPES[preset], *extra), seed=0, steps=steps, eval_every=2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Records of a tiny attractor, DEQ and transformer run under one root."""
    root = tmp_path_factory.mktemp("claims")
    records = {}
    for preset in SHAPES:
        spec = tiny(root, preset, f"g/{preset}-s0-n4")
        records[preset] = lm_claims.train_run(spec, root=root, log=lambda line: None)
    return root, records


def test_record_has_an_evaluation_at_start_every_interval_and_end(runs):
    root, records = runs
    for preset, rec in records.items():
        assert [e["step"] for e in rec["evals"]] == [0, 2, 4], preset
        assert [e["tokens"] for e in rec["evals"]] == [0, 2 * 4 * 32, 4 * 4 * 32]
        assert rec["done"] and rec["tokens_per_s"] > 0
        assert json.loads((root / "g" / f"{preset}-s0-n4" / "claims.json").read_text()) == json.loads(json.dumps(rec))


def test_sweep_depths_per_family(runs):
    _, records = runs
    for preset in ("attractor-1m", "deq-1m"):
        last = records[preset]["evals"][-1]
        assert list(last["sweep"]) == ["0", "1", "2", "4", "8", "adaptive"]
        assert last["sweep"]["adaptive"] == last["adaptive"]["loss"]
        assert 0 <= last["adaptive"]["converged"] <= 1
    assert list(records["transformer-1m"]["evals"][-1]["sweep"]) == ["adaptive"]
    assert "contraction" not in records["transformer-1m"]["evals"][-1]


def test_sweep_matches_an_independent_evaluation_of_the_checkpoint(runs):
    """The recorded T=0 and adaptive losses are those of the saved weights on the same batches."""
    root, records = runs
    model, _, run, step = load_run(root / "g" / "attractor-1m-s0-n4")
    assert step == 4
    from attractor.data import prepare
    from attractor.evaluate import evaluate
    from attractor.run import validation

    val = validation(run, prepare(run.data, progress=False))
    last = records["attractor-1m"]["evals"][-1]
    assert evaluate(model, val, iters=0)["val_loss"] == pytest.approx(last["sweep"]["0"], rel=1e-6)
    assert evaluate(model, val)["val_loss"] == pytest.approx(last["sweep"]["adaptive"], rel=1e-6)


def test_flops_follow_the_realised_evaluations(runs):
    _, records = runs
    last = records["attractor-1m"]["evals"][-1]
    model = build("attractor-1m", d=32, seq_len=32, n_backbone=1)
    assert last["flops_per_token"] == pytest.approx(model.flops_per_token(last["adaptive"]["n_evals"]))
    assert last["flops_per_token"] > model.flops_per_token(0)


def test_per_token_and_contraction_fields(runs):
    _, records = runs
    last = records["attractor-1m"]["evals"][-1]
    tok = last["per_token"]
    assert sum(b["tokens"] for b in tok["bins"]) == lm_claims.TOKEN_BATCHES * 4 * 32
    assert 0 <= tok["never"] <= 1 and tok["own_mean"] >= 0
    con = last["contraction"]
    assert len(con["rho_start"]) == len(con["rho_fixed"]) == lm_claims.SPECTRAL_SEQS
    assert all(0 <= r < 10 for r in con["rho_start"] + con["rho_fixed"])


def test_a_finished_run_is_not_overwritten(runs):
    root, _ = runs
    with pytest.raises(ConfigError, match="already holds a finished run"):
        lm_claims.train_run(tiny(root, "attractor-1m", "g/attractor-1m-s0-n4"), root=root, log=lambda line: None)


def test_tables_from_records(runs):
    root, records = runs
    recs = lm_report.load_records("g/", root)
    assert set(recs) == {f"g/{p}-s0-n4" for p in SHAPES}
    table = lm_report.comparison_table(recs)
    assert len(table.splitlines()) == 2 + len(SHAPES)
    sweep = lm_report.sweep_table(recs).splitlines()
    assert len(sweep) == 2 + 2  # the transformer has no sweep
    row = next(line for line in sweep if "attractor" in line).split("|")
    s = records["attractor-1m"]["evals"][-1]["sweep"]
    assert float(row[9]) == pytest.approx(s["0"] - s["adaptive"], abs=1e-4)  # gap column
    assert "deq-1m" in lm_report.token_table(recs)
    gaps = lm_report.gap_table(recs).splitlines()  # Attractor runs only: a DEQ's T=0 is its zero start
    assert gaps[0] == "| run | step 0 | step 2 | step 4 |" and len(gaps) == 2 + 1
    e = records["attractor-1m"]["evals"][1]
    assert f"{e['sweep']['0'] - e['sweep']['adaptive']:+.4f} / {e['adaptive']['n_evals']:.1f}" in gaps[2]
    # columns are the shown runs' steps: another budget's DEQ or transformer adds none
    other = {name: {**rec, "evals": [{**e, "step": e["step"] + 1} for e in rec["evals"]]}
             for name, rec in recs.items() if "attractor" not in name}
    assert lm_report.gap_table({**recs, **{n + "x": r for n, r in other.items()}}).splitlines()[0] == gaps[0]


def test_report_rewrites_only_generated_blocks(runs, tmp_path):
    root, _ = runs
    doc = tmp_path / "results.md"
    doc.write_text("# Hand text\n\n<!-- generated: sweep:g/ -->\nold\n<!-- end -->\n\nmore hand text\n"
                   "<!-- generated: plots:g/ -->\n<!-- end -->\n"
                   "<!-- generated: gaps:g/attractor+g/deq -->\n<!-- end -->\n"
                   "<!-- generated: tokens:g/attractor+g/deq -->\n<!-- end -->\n"
                   "<!-- generated: plots:g/attractor=named -->\n<!-- end -->\n")
    lm_report.report(doc, root)
    text = doc.read_text()
    assert text.startswith("# Hand text\n") and "more hand text" in text and "old" not in text
    assert "| g/attractor-1m-s0-n4 |" in text
    gaps = text.split("gaps:g/attractor+g/deq -->\n")[1]
    assert "g/attractor-1m-s0-n4" in gaps and "deq" not in gaps.split("<!-- end -->")[0]
    tokens = text.split("tokens:g/attractor+g/deq -->\n")[1]  # both prefixes' records, no others
    assert "g/attractor-1m-s0-n4" in tokens and "g/deq-1m-s0-n4" in tokens and "transformer" not in tokens
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["results-lm-g-internalization.png", "results-lm-g-iterations.png", "results-lm-g-loss-vs-iters.png",
                    "results-lm-named-internalization.png", "results-lm-named-iterations.png",
                    "results-lm-named-loss-vs-iters.png"]
    named = text.split("plots:g/attractor=named -->\n")[1].split("<!-- end -->")[0]
    assert named.count("results-lm-named-") == 6  # three images, each name twice
    lm_report.report(doc, root)  # idempotent
    assert doc.read_text() == text


def test_a_prefix_with_a_star_is_a_pattern(runs):
    root, _ = runs
    assert set(lm_report.load_records("g/*-n4", root)) == {f"g/{p}-s0-n4" for p in SHAPES}
    assert set(lm_report.load_records("g/*m-s0-n4", root)) == {f"g/{p}-s0-n4" for p in SHAPES}
    assert lm_report.load_records("g/*-n40", root) == {}  # a pattern matches the whole name
    assert set(lm_report.load_records("g/deq*", root)) == {"g/deq-1m-s0-n4"}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-1000, 1000), min_size=3, max_size=30, unique=True))
def test_rank_correlation_is_one_for_monotone_and_minus_one_for_reversed(values):
    a = torch.tensor(values, dtype=torch.float64)
    assert lm_claims.rank_correlation(a, a**3 + a) == pytest.approx(1.0)  # monotone, not linear
    assert lm_claims.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert math.isnan(lm_claims.rank_correlation(a, torch.zeros_like(a)))


def test_groups_and_labels():
    specs = lm_claims.group("compare-1m", 300, [0, 1])
    assert len(specs) == 8 and len({s.name for s in specs}) == 8
    assert [lm_report.run_label(s.name) for s in specs[:4]] == ["transformer-1m", "looped-1m", "deq-1m", "attractor-1m"]
    for name in lm_claims.GROUPS:  # every group's settings are valid configs
        for spec in lm_claims.group(name, 10, [0]):
            spec.run_config()
    assert lm_report.run_label("stop-1m/stop-sample-s0-n600") == "stop-sample"
    with pytest.raises(ConfigError, match="unknown group"):
        lm_claims.group("compare-2m", 10, [0])


def test_wallclock_steps_follow_the_side_by_side_speed(tmp_path, monkeypatch):
    monkeypatch.setattr(lm_claims, "CLAIMS", tmp_path)
    with pytest.raises(ConfigError, match="speed"):
        lm_claims.wallclock_group("compare-1m", 100, [0])
    (tmp_path / "compare-1m").mkdir()
    speeds = {"transformer-1m": 0.5, "looped-1m": 2.0, "deq-1m": 1.0, "attractor-1m": 1.6}
    (tmp_path / "compare-1m" / "speed.json").write_text(
        json.dumps({"models": {k: {"s_per_step": v} for k, v in speeds.items()}}))
    specs = lm_claims.wallclock_group("compare-1m", 100, [0])
    assert {lm_report.run_label(s.name): s.steps for s in specs} == {k: round(100 / v) for k, v in speeds.items()}


def test_speed_averages_in_the_trained_cost_of_each_finished_run(tmp_path, monkeypatch):
    monkeypatch.setattr(lm_claims, "CLAIMS", tmp_path)
    specs = lm_claims.group("compare-1m", 10, [0])
    finished = {s.name for s in specs if "looped" not in s.name}  # looped not trained yet
    for name in finished:
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "latest").write_text("step_10")
    timed = []

    def fake_seconds(specs, rounds, warmup, trained):
        timed.append((trained, {s.name for s in specs}))
        return {s.name: (3.0 if trained else 1.0) for s in specs}

    monkeypatch.setattr(lm_claims, "step_seconds", fake_seconds)
    monkeypatch.setattr(lm_claims, "peak_memory", lambda spec, threads: 100.0)
    result = lm_claims.speed("compare-1m", 10, 0, threads=torch.get_num_threads(), rounds=2)
    assert timed == [(False, {s.name for s in specs}), (True, finished)]  # only finished runs re-timed
    models = result["models"]
    assert models["looped-1m"]["s_per_step"] == 1.0 and models["looped-1m"]["s_per_step_trained"] is None
    assert models["attractor-1m"]["s_per_step"] == 2.0 and models["attractor-1m"]["s_per_step_trained"] == 3.0
    assert json.loads((tmp_path / "compare-1m" / "speed.json").read_text())["models"] == models


def test_jacobian_penalty_adds_to_the_training_loss_only():
    torch.manual_seed(0)
    plain = build("attractor-1m", d=32, seq_len=16, n_backbone=1)
    penalised = build("attractor-1m", d=32, seq_len=16, n_backbone=1, jac_penalty=10.0)
    penalised.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 256, (2, 16))
    torch.manual_seed(1)
    base = plain(idx, idx).loss
    torch.manual_seed(1)
    out = penalised(idx, idx)
    assert out.loss > base + 1e-4  # the penalty is positive
    out.loss.backward()
    assert all(p.grad is not None for p in penalised.attractor.parameters())
    penalised.eval()
    with torch.no_grad():
        assert penalised(idx, idx).loss == pytest.approx(plain.eval()(idx, idx).loss.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="jac_penalty"):
        build("attractor-1m", jac_penalty=-1.0)
