"""One self-contained HTML page that steps through a solve: the attractor at work.

    from attractor.page import write_page
    write_page("solve.html", solution, title="TRM on a 9x9 Sudoku")   # solution: attractor.puzzle_solve.Solution

The page needs nothing but itself (inline CSS and JavaScript, the trace embedded as JSON, no
fonts, images or scripts from elsewhere), so it opens offline and can be mailed. It shows, for
each frame of the trace (model.trace: every solver iteration of every supervision step), the
grid with each predicted cell coloured by its confidence (the softmax probability of the
predicted token: red 0 to green 1) and outlined where it changed since the previous frame, the
clues (Sudoku) or walls, start and goal (maze) drawn apart from predicted cells, the residual
curve (log scale, the current frame marked), the frame's label, a slider and play/pause.

What the page shows can be read back from the DOM (tests/test_page.py does): #app carries
data-step (the frame shown, from 0) and data-steps; each cell is `.cell[data-i]` whose text is
the predicted character (maze: '#', ' ', 'S', 'G', 'o') and with data-changed="1" when it
changed; #changed carries data-count; #label holds the frame's label.

Standard library only: the page is text built from the solution's plain fields.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from attractor.puzzle_solve import Solution


def page_data(solution: Solution, title: str) -> dict:
    """The JSON the page embeds: the puzzle, the verdict and every frame (the final answer as
    the one frame when the solve was not traced)."""
    puzzle = solution.puzzle
    frames = solution.frames or [None]
    return {
        "title": title,
        "kind": puzzle.kind,
        "side": puzzle.side,
        "box": list(puzzle.box) if puzzle.box else None,
        "puzzle": puzzle.cells,
        "given": [int(g) for g in puzzle.given()],
        "verdict": {"ok": solution.verdict.ok, "message": solution.verdict.message},
        "frames": [{"cells": solution.answer, "confidence": _rounded(solution.confidence),
                    "changed": [i for i, (a, b) in enumerate(zip(puzzle.cells, solution.answer)) if a != b],
                    "residual": None, "label": "answer"} if f is None else
                   {"cells": f.cells, "confidence": _rounded(f.confidence), "changed": f.changed,
                    "residual": f.residual, "label": f.label} for f in frames],
    }


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]   # three digits are all a colour shows; keeps the page small


def render_page(solution: Solution, title: str) -> str:
    """The page as one HTML string (see the module docstring)."""
    data = json.dumps(page_data(solution, title), separators=(",", ":"))
    data = data.replace("</", "<\\/")   # no "</script>" can end the embedded JSON early
    return _TEMPLATE.replace("{{TITLE}}", html.escape(title)).replace("{{DATA}}", data)


def write_page(path: str | Path, solution: Solution, title: str) -> None:
    """Write render_page(...) to `path` atomically (attractor.io)."""
    from attractor.io import atomic_write_text

    atomic_write_text(path, render_page(solution, title))


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{{TITLE}}</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
  h1 { font-size: 19px; margin: 0 0 4px; }
  #verdict.ok { color: #1a7f37; } #verdict.bad { color: #b42318; }
  #layout { display: flex; gap: 32px; flex-wrap: wrap; align-items: flex-start; margin-top: 12px; }
  #grid { display: grid; border: 2px solid #222; width: max-content; }
  .cell { display: flex; align-items: center; justify-content: center; box-sizing: border-box;
          border: 1px solid #ccc; font-family: ui-monospace, monospace; white-space: pre; }
  .sudoku .cell { width: 38px; height: 38px; font-size: 20px; }
  .sudoku .cell.clue { background: #e6e6e6; font-weight: bold; color: #000; }
  .sudoku .cell.box-right { border-right: 2px solid #222; }
  .sudoku .cell.box-bottom { border-bottom: 2px solid #222; }
  .maze .cell { width: 16px; height: 16px; font-size: 11px; border: 0; }
  .maze .cell.clue { background: #333; color: #333; }
  .maze .cell.start { background: #2e7d32; color: #fff; }
  .maze .cell.goal { background: #c62828; color: #fff; }
  .cell[data-changed="1"] { outline: 2px solid #f59e0b; outline-offset: -3px; }
  #controls { display: flex; gap: 10px; align-items: center; margin: 14px 0; }
  #slider { width: 320px; }
  #legend { font-size: 13px; color: #555; }
  .swatch { display: inline-block; width: 14px; height: 14px; vertical-align: middle; border: 1px solid #999; }
  svg text { font-size: 11px; fill: #555; }
</style>
</head>
<body>
<main id="app" data-step="0" data-steps="0" data-playing="0">
  <h1 id="title"></h1>
  <div id="verdict"></div>
  <div id="controls">
    <button id="play" type="button">Play</button>
    <input id="slider" type="range" min="0" max="0" value="0" aria-label="frame">
    <span id="step"></span>
  </div>
  <div><b id="label"></b> &middot; <span id="changed" data-count="0"></span> &middot; <span id="residual"></span></div>
  <div id="layout">
    <div id="grid"></div>
    <div style="width: 380px">
      <svg id="curve" width="380" height="180" role="img" aria-label="residual per frame"></svg>
      <p id="legend">Cell colour: confidence of the prediction, from
        <span class="swatch" style="background:hsl(0,75%,80%)"></span> 0 to
        <span class="swatch" style="background:hsl(120,75%,80%)"></span> 1.
        <span class="swatch" style="outline:2px solid #f59e0b;outline-offset:-3px"></span> changed since the
        previous frame. Grey: given by the puzzle.</p>
    </div>
  </div>
</main>
<script id="trace" type="application/json">{{DATA}}</script>
<script>
"use strict";
const data = JSON.parse(document.getElementById("trace").textContent);
const app = document.getElementById("app"), grid = document.getElementById("grid");
const slider = document.getElementById("slider"), playButton = document.getElementById("play");
const n = data.side, frames = data.frames;
const SVG = "http://www.w3.org/2000/svg", WRONG = "#f3b";
let step = 0, timer = null;

document.getElementById("title").textContent = data.title;
const verdict = document.getElementById("verdict");
verdict.textContent = (data.verdict.ok ? "Solved: " : "Not solved: ") + data.verdict.message;
verdict.className = data.verdict.ok ? "ok" : "bad";
app.dataset.steps = frames.length;
slider.max = frames.length - 1;

// The cells, built once; given cells (clues, walls, S, G) keep their look, predicted cells take colours.
grid.className = data.kind;
grid.style.gridTemplateColumns = "repeat(" + n + ", auto)";
const cells = [];
for (let i = 0; i < n * n; i++) {
  const cell = document.createElement("div"), r = Math.floor(i / n), c = i % n;
  cell.className = "cell";
  cell.dataset.i = i;
  if (data.given[i]) cell.classList.add("clue");
  if (data.kind === "sudoku") {
    if ((c + 1) % data.box[1] === 0 && c + 1 < n) cell.classList.add("box-right");
    if ((r + 1) % data.box[0] === 0 && r + 1 < n) cell.classList.add("box-bottom");
  } else if (data.puzzle[i] === "S") { cell.classList.add("start"); cell.classList.remove("clue"); }
  else if (data.puzzle[i] === "G") { cell.classList.add("goal"); cell.classList.remove("clue"); }
  grid.appendChild(cell);
  cells.push(cell);
}

// The residual curve: log10 scale, one point per frame that has a residual.
const curve = document.getElementById("curve");
const W = 380, H = 180, padLeft = 44, padRight = 10, padTop = 10, padBottom = 28;
const points = frames.map((f, k) => [k, f.residual]).filter(p => p[1] !== null && p[1] > 0);
let marker = null;
function x(k) { return padLeft + (frames.length > 1 ? k / (frames.length - 1) : 0.5) * (W - padLeft - padRight); }
function svgEl(name, attrs) {
  const el = document.createElementNS(SVG, name);
  for (const key in attrs) el.setAttribute(key, attrs[key]);
  curve.appendChild(el);
  return el;
}
if (points.length) {
  const logs = points.map(p => Math.log10(p[1]));
  let lo = Math.floor(Math.min(...logs)), hi = Math.ceil(Math.max(...logs));
  if (hi === lo) hi = lo + 1;
  const y = v => padTop + (hi - Math.log10(v)) / (hi - lo) * (H - padTop - padBottom);
  for (let e = lo; e <= hi; e++) {
    svgEl("line", {x1: padLeft, x2: W - padRight, y1: y(10 ** e), y2: y(10 ** e), stroke: "#eee"});
    svgEl("text", {x: 4, y: y(10 ** e) + 4}).textContent = "1e" + e;
  }
  svgEl("polyline", {points: points.map(p => x(p[0]) + "," + y(p[1])).join(" "), fill: "none",
                     stroke: "#1f6feb", "stroke-width": 2});
  marker = svgEl("circle", {id: "marker", r: 5, fill: "#f59e0b", stroke: "#222"});
  marker.place = k => {
    const r = frames[k].residual;
    marker.style.display = r === null || r <= 0 ? "none" : "";
    if (r !== null && r > 0) { marker.setAttribute("cx", x(k)); marker.setAttribute("cy", y(r)); }
  };
  svgEl("text", {x: padLeft, y: H - 8}).textContent = "residual per frame (log scale)";
} else {
  svgEl("text", {x: padLeft, y: H / 2}).textContent = "no solver residual (one pass)";
}

function show(k) {
  step = Math.max(0, Math.min(frames.length - 1, k));
  const f = frames[step], changed = new Set(f.changed);
  cells.forEach((cell, i) => {
    const ch = f.cells[i], conf = f.confidence[i];
    cell.textContent = ch;
    cell.dataset.changed = changed.has(i) ? "1" : "0";
    cell.title = (data.given[i] ? "given " + JSON.stringify(data.puzzle[i]) + ", " : "") + "confidence " + conf.toFixed(3);
    const colour = "hsl(" + Math.round(120 * conf) + ",75%,80%)";
    // A given cell the model keeps shows as given; one it changes shows what it predicts instead:
    // a Sudoku clue by confidence, a maze wall, S or G in magenta, as any maze cell it fills wrongly.
    const kept = data.given[i] && ch === data.puzzle[i];
    if (data.kind === "sudoku") cell.style.background = kept ? "" : colour;
    else cell.style.background = kept ? "" : ch === "o" && !data.given[i] ? colour : ch === " " ? "#fff" : WRONG;
  });
  app.dataset.step = step;
  slider.value = step;
  document.getElementById("step").textContent = "frame " + (step + 1) + " of " + frames.length;
  document.getElementById("label").textContent = f.label;
  const count = document.getElementById("changed");
  count.dataset.count = f.changed.length;
  count.textContent = f.changed.length + " changed";
  document.getElementById("residual").textContent =
    f.residual === null ? "" : "residual " + f.residual.toExponential(2);
  if (marker) marker.place(step);
}

function pause() {
  clearInterval(timer);
  timer = null;
  app.dataset.playing = "0";
  playButton.textContent = "Play";
}
function play() {
  if (step === frames.length - 1) show(0);
  app.dataset.playing = "1";
  playButton.textContent = "Pause";
  timer = setInterval(() => { if (step >= frames.length - 1) pause(); else show(step + 1); }, 400);
}
playButton.addEventListener("click", () => timer ? pause() : play());
slider.addEventListener("input", () => { pause(); show(Number(slider.value)); });
document.addEventListener("keydown", e => {
  if (e.target === slider) return;   // the slider moves itself (and reports through "input")
  if (e.key === "ArrowRight") { pause(); show(step + 1); }
  if (e.key === "ArrowLeft") { pause(); show(step - 1); }
});
show(0);
</script>
</body>
</html>
"""
