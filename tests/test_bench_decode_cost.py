"""bench.decode_cost's quick path: the split of an adaptive token's time, on one short length."""

from __future__ import annotations

from bench import decode_cost


def test_quick_path_splits_an_adaptive_token(capsys):
    decode_cost.main(["--quick", "--lengths", "48", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "1m presets, 48 tokens (16 prompt + 32 generated)" in out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in out.splitlines() if line.startswith("| transformer") or line.startswith("| attractor")}
    assert rows["transformer, cached"][3] == "1.00"
    adaptive = next(v for k, v in rows.items() if k.startswith("attractor adaptive (depth"))
    depth = int(adaptive[0].split("depth ")[1].split(")")[0])
    fixed = rows[f"attractor iters={depth + 1}: + {depth + 1} map evaluations"]
    assert float(fixed[1]) == depth + 1 and fixed[4].startswith("map: ")
    assert float(adaptive[1]) >= depth - 0.5 and adaptive[4].startswith("solver: ")
    assert "ceiling at depth" in rows["attractor adaptive, converged cache"][4]
