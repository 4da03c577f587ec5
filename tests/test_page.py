"""The solve page (attractor/page.py) in a real headless Chromium: what it shows at the first and
the last frame, the slider, play, and that it makes no network request.

Needs Debian's chromium (/usr/bin/chromium; `make test` installs it where apt-get can) and
Playwright from PyPI (the dev extra), which drives it through its executable path: Playwright's
own browser download is never used. Without either, these tests skip and say how to install it.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from attractor.data import maze, sudoku
from attractor.models import build
from attractor.page import render_page, write_page
from attractor.puzzle_solve import Frame, Solution, check, read_maze, read_sudoku, solve

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
HARD = "4...3.......6..8..........1....5..9..8....6...7.2........1.27..5.3....4.9........"


def frames_towards(puzzle, answer: str, n_frames: int) -> list[Frame]:
    """Frames that fill the answer in a few cells at a time, confidence rising, residual falling."""
    todo = [i for i, (p, a) in enumerate(zip(puzzle.cells, answer)) if p != a]
    frames, previous = [], puzzle.cells
    for k in range(n_frames):
        shown = set(todo[:len(todo) * (k + 1) // n_frames])
        cells = "".join(a if i in shown else p for i, (p, a) in enumerate(zip(puzzle.cells, answer)))
        confidence = [min(1.0, 0.3 + 0.7 * (k + 1) / n_frames) if i in shown else 0.2 for i in range(len(cells))]
        frames.append(Frame(cells, confidence, [i for i in range(len(cells)) if cells[i] != previous[i]],
                            10.0 ** -k if k else None, f"step 1, iteration {k + 1}"))
        previous = cells
    return frames


def made_solution(kind: str) -> Solution:
    if kind == "sudoku":
        puzzle, answer = read_sudoku(HARD), sudoku.solve(HARD).solution
    else:
        made = maze.generate(1, size=11, rng=3)[0]
        puzzle, answer = read_maze(maze.show(made.question, 11)), made.answer
    frames = frames_towards(puzzle, answer, 6)
    return Solution(puzzle, answer, frames[-1].confidence, check(puzzle, answer), 6, 6, frames)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A persistent Chromium context with a fresh user-data-dir, or a skip that says what is missing
    (a failure where ATTRACTOR_REQUIRE_CHROMIUM is set, as .ci/run sets it)."""
    missing = pytest.fail if os.environ.get("ATTRACTOR_REQUIRE_CHROMIUM") else pytest.skip
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (make test does) or set CHROMIUM")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed: pip install -e '.[dev]'")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS)
        yield context
        context.close()


def open_page(browser, path):
    """The page at `path`, with every request and script error it makes recorded."""
    page = browser.new_page()
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    return page, requests, errors


def shown(page) -> dict:
    """What the page shows now, read from its DOM."""
    return page.evaluate("""() => ({
        step: Number(document.getElementById('app').dataset.step),
        steps: Number(document.getElementById('app').dataset.steps),
        cells: Array.from(document.querySelectorAll('#grid .cell')).map(c => c.textContent).join(''),
        changed: Array.from(document.querySelectorAll('#grid .cell[data-changed="1"]')).map(c => Number(c.dataset.i)),
        count: Number(document.getElementById('changed').dataset.count),
        label: document.getElementById('label').textContent,
        slider: Number(document.getElementById('slider').value),
        marker: document.getElementById('marker') && document.getElementById('marker').getAttribute('cy'),
    })""")


@pytest.mark.parametrize("kind", ["sudoku", "maze"])
def test_page_shows_the_first_and_last_frame_and_steps_through(browser, tmp_path, kind):
    solution = made_solution(kind)
    frames = solution.frames
    path = tmp_path / "solve.html"
    write_page(path, solution, title=f"a {kind} </script> & more")
    page, requests, errors = open_page(browser, path)

    first = shown(page)
    assert first["steps"] == len(frames) and first["step"] == 0 and first["slider"] == 0
    assert first["cells"] == frames[0].cells != frames[-1].cells
    assert first["changed"] == frames[0].changed and first["count"] == len(frames[0].changed) > 0
    assert first["label"] == frames[0].label and first["marker"] is None   # frame 1 has no residual
    assert page.title() == f"a {kind} </script> & more"

    page.focus("#slider")
    page.keyboard.press("End")                             # the slider as a person moves it
    last = shown(page)
    assert last["step"] == last["slider"] == len(frames) - 1
    assert last["cells"] == frames[-1].cells == solution.answer
    assert last["changed"] == frames[-1].changed and last["count"] == len(frames[-1].changed)
    assert last["label"] == frames[-1].label
    assert float(last["marker"]) > 0 and last["marker"] != shown_at(page, 1)["marker"]   # residual falls

    page.keyboard.press("Home")
    assert shown(page)["step"] == 0
    page.keyboard.press("ArrowRight")
    assert shown(page)["step"] == 1 and shown(page)["cells"] == frames[1].cells
    page.keyboard.press("Home")
    page.evaluate("""() => {                                 // every frame play shows, in order
        window.seen = [];
        new MutationObserver(() => window.seen.push(Number(document.getElementById('app').dataset.step)))
            .observe(document.getElementById('app'), {attributes: true, attributeFilter: ['data-step']});
    }""")
    page.click("#play")                                    # a selector wait: the page's CSP forbids eval
    page.wait_for_selector(f"#app[data-playing='0'][data-step='{len(frames) - 1}']", timeout=20000)
    assert page.evaluate("() => window.seen") == list(range(1, len(frames)))
    assert shown(page)["cells"] == frames[-1].cells          # played to the end, then stopped

    assert "Solved:" in page.text_content("#verdict")
    assert errors == []
    assert requests == [path.as_uri()]                     # the page itself, nothing else


def test_page_of_a_real_solve_shows_the_models_trace(browser, tmp_path):
    """An (untrained) Attractor reasoner's solve: the page's first and last frames are the
    trace's predictions, the last is the answer, and the residual curve marks the solver's."""
    model = build("attractor-reasoner-cpu", d=32, n_head=2, seq_len=36, vocab_size=8, halt_max_steps=2, h_cycles=1)
    made, _, _ = sudoku.generate(1, rng=6, box=(2, 3))[0]
    solution = solve(model, read_sudoku(made, (2, 3)), trace=True)
    frames = solution.frames
    assert len(frames) >= 4 and any(f.residual is not None for f in frames)
    path = tmp_path / "real.html"
    write_page(path, solution, title="AttractorReasoner on a 6x6 Sudoku")
    page, requests, errors = open_page(browser, path)
    first = shown(page)
    assert first["cells"] == frames[0].cells and first["steps"] == len(frames) and first["label"] == frames[0].label
    page.focus("#slider")
    page.keyboard.press("End")
    last = shown(page)
    assert last["cells"] == frames[-1].cells == solution.answer and last["label"] == frames[-1].label
    assert last["changed"] == frames[-1].changed
    assert (last["marker"] is None) == (frames[-1].residual is None)
    assert errors == [] and requests == [path.as_uri()]


def shown_at(page, step: int) -> dict:
    page.focus("#slider")
    page.keyboard.press("Home")
    for _ in range(step):
        page.keyboard.press("ArrowRight")
    return shown(page)


def test_the_page_embeds_everything(tmp_path):
    """No reference to anything outside the page: no src/href, no url(), no @import; the trace
    JSON reads back (a '</script>' in a label cannot end it early)."""
    solution = made_solution("sudoku")
    text = render_page(solution, title="t")
    for needle in ("src=", "href=", "url(", "@import", "<link"):
        assert needle not in text, needle
    data = json.loads(text.split('<script id="trace" type="application/json">')[1].split("</script>")[0]
                      .replace("<\\/", "</"))
    assert [f["cells"] for f in data["frames"]] == [f.cells for f in solution.frames]
    assert data["verdict"] == {"ok": True, "message": solution.verdict.message}
