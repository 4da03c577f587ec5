"""The command line of Attractor Models: train, evaluate and sample language models, build
puzzle datasets and solve puzzles. Run it as `attractor <command>` or `python -m attractor
<command>`, and as `torchrun --nproc_per_node=N -m attractor train ...` for several processes.

    attractor models [NAME ...]
    attractor train [--preset] NAME --out DIR [--data PATH|kjv|PUZZLE_DIR] [--steps N] [--set key=value ...]
                    [--log-every N] [--checkpoint-every N] [--eval-every N] [--resume]
    attractor eval [--checkpoint] DIR [--iters 0,1,2,4,8,adaptive] [--batches N] [--json] [--plot FILE]
                    (puzzle runs: [--steps 1,2,4,all] [--puzzles N] instead of --batches)
    attractor eval DIR --tasks NAME,... [--include-path DIR] [--limit N] [--iters adaptive] [--json]
                    (lm-evaluation-harness tasks, offline)
    attractor generate [--checkpoint] DIR --prompt TEXT|--prompt-file FILE [--num-samples N] [--batch-size B]
                    [--max-new-tokens N] [--iters K] [--no-cache | --cache MODE] [--temperature T] [--top-k K] [--top-p P]
                    [--seed S] [--json | --show-depth]   (one result prints as it goes; Ctrl-C keeps it)
    attractor export DIR --out HFDIR [--batches N] [--force]   (safetensors, config, tokenizer, model card)
    attractor demo [--out runs/demo] [--steps N]
    attractor sudoku rate FILE | generate --count N [--rating LO:HI] [--seed S] [--out FILE]
    attractor maze generate --count N [--size 30] [--min-path L] [--seed S] [--csv] [--out FILE]
    attractor data sudoku|maze --out DIR [--train N] [--test N] ...   (offline, from our generators)
    attractor data sudoku-extreme|maze-hard --out DIR [--csv-dir DIR]  (the official sets, from the hub)
    attractor data parity --out DIR [--train-bits 16] [--test-bits 16,32,...,512]  (offline)
    attractor data maze-sizes --out DIR [--train-size 9] [--test-sizes 9,13,17,25,33]  (offline)
    attractor solve sudoku PUZZLE|maze FILE --checkpoint DIR [--trace] [--html FILE]
    attractor solve parity BITS --checkpoint DIR [--set solver=picard]

Errors a user can cause (unknown names or keys, bad values, missing data, a corrupt or missing
checkpoint) print as one line and exit with code 2; a run stopped by non-finite losses exits 1.
Ctrl-C prints one line and exits 130 (`train` first checkpoints the step it reached, and so
does SIGTERM, exit 143; see docs/training.md); output into a pipe that closed (`| head`) ends quietly
with 141.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys

from attractor.errors import ConfigError, DiskFullError, Interrupted


def cmd_models(args: argparse.Namespace) -> int:
    """Print every model preset with its parameter counts and forward FLOPs per token."""
    from attractor.models import PRESETS, describe

    names = args.names or list(PRESETS)
    rows = [describe(n) for n in names]
    wn, wf = max(len("preset"), *(len(r["name"]) for r in rows)), max(len("family"), *(len(r["family"]) for r in rows))
    print(f"{'preset':<{wn}} {'family':<{wf}} {'dense':>8} {'total':>8} {'GFLOP/tok':>10} {'+/iter':>8}")
    for r in rows:
        per_iter = f"{r['flops_per_iter'] / 1e9:8.4f}" if r["flops_per_iter"] else f"{'-':>8}"
        print(f"{r['name']:<{wn}} {r['family']:<{wf}} {r['dense'] / 1e6:7.2f}M {r['total'] / 1e6:7.2f}M "
              f"{r['flops_base'] / 1e9:10.4f} {per_iter}")
    print("dense: parameters in matrix multiplies (the embedding lookup is excluded); GFLOP/tok: "
          "forward with no recurrent iterations; +/iter: each attractor evaluation or loop.")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train a model preset on a corpus into a run directory (or resume the run there)."""
    from attractor import io
    from attractor.config import run_config
    from attractor.memory import check_step_memory
    from attractor.run import train
    from attractor.train import NonFiniteError, check_device

    io.check_writable_dir(args.out, "--out")  # before any work: an unwritable --out fails at once
    args.preset = _one_of(args.preset, args.preset_name, "preset")
    flags = [f"train.{k}={v}" for k, v in (("log_every", args.log_every), ("checkpoint_every", args.checkpoint_every),
                                           ("eval_every", args.eval_every)) if v is not None]
    # what the user typed: on --resume only these count as changes to the saved run, not defaults
    typed = [*([f"data.source={args.data}"] if args.data is not None else []),
             *([f"train.steps={args.steps}"] if args.steps is not None else []), *flags, *args.set]
    if args.preset is None:
        if not args.resume:
            raise ConfigError("--preset is required (see `attractor models`), unless --resume continues a run")
        run = None  # the saved run's
    else:
        run = run_config(args.preset, [*flags, *args.set], data=args.data, steps=args.steps)
        # before any data or model is built: a device this machine lacks, a first step too big for memory
        check_device(run.train.device)
        check_step_memory(run)
    try:
        trainer = train(run, args.out, resume=args.resume, settings=typed if args.resume else None,
                        progress=not args.quiet)
    except NonFiniteError as err:
        print(f"attractor: error: {err}", file=sys.stderr)
        return 1
    if trainer.rank == 0:
        print(f"trained {trainer.step} steps, {trainer.tokens} tokens ({trainer.skipped} skipped); run in {args.out}")
    return 0


def _one_of(flag, positional, what: str):
    """The value given as --flag or positionally (not both, unless they agree)."""
    if flag is not None and positional is not None and flag != positional:
        raise ConfigError(f"two {what}s given ({positional!r} and --{what} {flag!r}): give one")
    return flag if flag is not None else positional


def cmd_eval(args: argparse.Namespace) -> int:
    """Validation loss and perplexity of a checkpoint at each depth, with solve statistics; for a
    puzzle checkpoint exact and cell accuracy on the test split, by depth, supervision steps and rating;
    with --tasks, lm-evaluation-harness tasks at each depth."""
    from attractor.evaluate import parse_depths
    from attractor.run import load_run

    tasks = args.tasks is not None
    # flags of the other mode are refused by name (before the checkpoint loads)
    wrong = ((args.batches, "--batches"), (args.puzzles, "--puzzles"), (args.data, "--data"), (args.plot, "--plot")) \
        if tasks else ((args.include_path, "--include-path"), (args.limit, "--limit"))
    for value, flag in wrong:
        if value is not None:
            raise ConfigError(f"{flag} is for the validation sweep, not --tasks" if tasks
                              else f"{flag} goes with --tasks")
    if args.plot:  # checked before the evaluation, which can take minutes
        from attractor.io import check_writable_file

        check_writable_file(args.plot, "--plot")
    args.checkpoint = _one_of(args.checkpoint, args.run, "checkpoint")
    if args.checkpoint is None:
        raise ConfigError("name the checkpoint or run directory to evaluate: attractor eval RUN")
    try:
        depths = parse_depths(args.iters if args.iters is not None else "adaptive" if tasks else "0,1,2,4,8,adaptive")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for value, flag in ((args.batches, "--batches"), (args.puzzles, "--puzzles"), (args.limit, "--limit")):
        if value is not None:
            _positive(value, flag)
    if tasks:
        return _eval_tasks(args, depths)
    model, vocab, run, step = load_run(args.checkpoint, settings=args.set)
    return EVAL_TABLES[run.task.evaluator](args, model, run, step, depths, vocab)


def _eval_tasks(args: argparse.Namespace, depths: list[int | None]) -> int:
    """`attractor eval --tasks`: lm-evaluation-harness tasks (attractor.harness) at each depth,
    one row per depth, task and metric. Nothing is downloaded: the tasks' data must come from
    --include-path configs or the datasets cache."""
    import os

    from attractor.run import load_run

    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    if not names:
        raise ConfigError("--tasks: give at least one task name")
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):  # read when `datasets` is imported: set them first
        os.environ.setdefault(name, "1")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        _report("attractor: error: --tasks needs lm-evaluation-harness: pip install 'attractor-models[eval]'")
        return 1
    from attractor.harness import AttractorHarnessLM, evaluate_tasks, task_manager

    manager = task_manager(names, args.include_path)  # an unknown name fails before the checkpoint loads
    model, tokenizer, run, step = load_run(args.checkpoint, settings=args.set)
    if not run.task.continues_text:
        raise ConfigError(f"{args.checkpoint} holds a {run.task.model_kind}: --tasks needs a language model")
    rows = []
    for iters in depths if model.has_depth else [None]:
        lm = AttractorHarnessLM(model=model, tokenizer=tokenizer, iters=iters)
        rows += [{"iters": "adaptive" if iters is None else iters, **row}
                 for row in evaluate_tasks(lm, names, manager, limit=args.limit)]
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "step": step, "family": type(model).__name__,
                          "limit": args.limit, "tasks": rows}))
        return 0
    width = max(len("task"), *(len(r["task"]) for r in rows))
    metric = max(len("metric"), *(len(r["metric"]) for r in rows))
    limit = f", the first {args.limit} documents of each task" if args.limit else ""
    print(f"{type(model).__name__} at step {step}{limit}")
    print(f"{'iters':>9} {'task':<{width}} {'metric':<{metric}} {'value':>11} {'stderr':>11}")
    for r in rows:  # 6 significant digits: accuracies and perplexities in the millions alike
        stderr = "-" if r["stderr"] is None else f"{r['stderr']:.6g}"
        print(f"{r['iters']!s:>9} {r['task']:<{width}} {r['metric']:<{metric}} {r['value']:11.6g} {stderr:>11}")
    return 0


def _eval_text(args: argparse.Namespace, model, run, step: int, depths: list[int | None], tokenizer) -> int:
    """`attractor eval` of a language model: evaluate.depth_sweep on the run's validation batches."""
    from attractor.data import prepare
    from attractor.evaluate import depth_sweep
    from attractor.run import validation

    if args.puzzles is not None or args.data is not None:
        raise ConfigError("--puzzles and --data are for puzzle checkpoints; a language model takes --batches")
    data = prepare(run.data, progress=False)
    if args.batches is not None:
        run = dataclasses.replace(run, train=dataclasses.replace(run.train, eval_batches=args.batches))
    batches = validation(run, data)
    rows = depth_sweep(model, batches, depths)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "step": step, "family": type(model).__name__,
                          "sweep": rows}))
    else:
        print(f"{type(model).__name__} at step {step}, {rows[0]['val_tokens']} validation tokens")
        print(f"{'iters':>9} {'loss':>8} {'ppl':>9} {'depth':>6} {'evals':>6} {'converged':>9}")
        for r in rows:
            print(f"{r['iters']!s:>9} {r['val_loss']:8.4f} {r['val_ppl']:9.3f} {_cell(r, 'val_depth', '6.2f')} "
                  f"{_cell(r, 'val_n_evals', '6.1f')} {_cell(r, 'val_converged', '9.3f')}")
        for r in rows:
            if "val_residuals" in r:
                print("residuals per token (adaptive): " + ", ".join(f"{k}: {v}" for k, v in r["val_residuals"].items()))
    if args.plot:
        from attractor.plots import plot_sweep

        plot_sweep({type(model).__name__: rows}, args.plot)
    return 0


def _cell(row: dict, key: str, spec: str) -> str:
    """row[key] formatted with `spec` ('6.2f'), or a '-' as wide where the column does not apply
    (the depth of a model without one, the converged share of a loop without a tolerance)."""
    if row.get(key) is None:
        return f"{'-':>{int(spec.split('.')[0])}}"
    return format(row[key], spec)


def _eval_puzzles(args: argparse.Namespace, model, run, step: int, depths: list[int | None], meta: dict) -> int:
    """`attractor eval` of a puzzle checkpoint: the sweeps of evaluate.puzzle_sweep on the test
    split of its dataset, or of another dataset of the same kind and geometry (`--data`)."""
    from attractor.evaluate import parse_depths, puzzle_sweep
    from attractor.run import load_data
    from attractor.tasks import test_batches

    if args.batches is not None or args.plot:
        raise ConfigError("--batches and --plot are for language models; a puzzle checkpoint takes --puzzles N")
    try:
        steps = parse_depths(args.steps, word="all", flag="--steps")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if args.data is not None:
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, source=args.data))
    data = load_data(run)
    geometry = ("kind", "box", "size", "seq_len", "vocab_size")
    if any(data["meta"].get(k) != meta.get(k) for k in geometry):
        mine, theirs = ({k: m[k] for k in geometry if k in m} for m in (meta, data["meta"]))
        raise ConfigError(f"the dataset {run.data.source} holds {theirs}, the checkpoint's model was trained on {mine}")
    test = test_batches(data["test"], run.train.micro_batch,
                        _positive(args.puzzles, "--puzzles") if args.puzzles is not None else None)
    if test.n == 0:
        raise ConfigError(f"the dataset {run.data.source} has no test puzzles to evaluate")
    sweep = puzzle_sweep(model, test, depths, steps, ratings=test.ratings)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "step": step, "family": type(model).__name__,
                          "task": run.task.name, "puzzles": test.n, "sweep": sweep["iters"], "steps_sweep": sweep["steps"]}))
        return 0
    print(f"{type(model).__name__} at step {step}, {test.n} test puzzles of {run.data.source}")
    print(f"{'iters':>9} {'steps':>6} {'exact':>7} {'cell':>7} {'changed':>7} {'loss':>8} {'depth':>6} {'converged':>9}")
    for r in sweep["iters"] + sweep["steps"]:
        print(f"{r.get('iters', 'adaptive')!s:>9} {r.get('steps', 'all')!s:>6} {r['val_exact']:7.3f} {r['val_cell']:7.3f} "
              f"{r['val_changed']:7.3f} "
              f"{r['val_loss']:8.4f} {_cell(r, 'val_depth', '6.2f')} {_cell(r, 'val_converged', '9.3f')}")
    for r in sweep["iters"]:  # the adaptive row carries these (attractor.evaluate.puzzle_sweep)
        if "val_residuals" in r:
            print("residuals (adaptive): " + ", ".join(f"{k}: {v}" for k, v in r["val_residuals"].items()))
        for b in r.get("by_rating", []):
            print(f"rating {b['rating'][0]}-{b['rating'][1]}: {b['puzzles']} puzzles, exact {b['exact']:.3f}, "
                  f"cell {b['cell']:.3f}, changed {b['changed']:.3f}" + (f", depth {b['depth']:.2f}" if "depth" in b else ""))
    return 0


def _eval_parity(args: argparse.Namespace, model, run, step: int, depths: list[int | None], meta: dict,
                 unit: str = "bits") -> int:
    """`attractor eval` of a parity checkpoint: exact and bit accuracy and iterations at every
    test length of its dataset (or of another parity dataset, `--data`), at each depth; with
    unit="side", of a maze-sizes checkpoint at every test side (accuracy of cells)."""
    from attractor import evaluate
    from attractor.run import load_data
    from attractor.tasks.parity import LengthBatches

    evaluate_sizes = getattr(evaluate, run.task.evaluator)
    what = "strings per length" if unit == "bits" else "mazes per side"
    if args.batches is not None or args.plot:
        raise ConfigError(f"--batches and --plot are for language models; a {run.task.model_kind} takes --puzzles N "
                          f"({what})")
    if args.data is not None:
        run = dataclasses.replace(run, data=dataclasses.replace(run.data, source=args.data))
    test = load_data(run)["test"]
    per_length = None
    if args.puzzles is not None:
        per_length = -(-_positive(args.puzzles, "--puzzles") // run.train.micro_batch)
        test = {n: type(s)(s.inputs[:args.puzzles], s.labels[:args.puzzles]) for n, s in test.items()}
    batches = LengthBatches(test, run.train.micro_batch, per_length)
    rows = []
    for iters in depths if model.has_depth else [None]:
        result = evaluate_sizes(model, batches, iters=iters)
        for n in batches.lengths:
            rows.append({"iters": "adaptive" if iters is None else iters, unit: n, "strings": len(test[n]),
                         "exact": result[f"val_exact_{n}"], "bit_accuracy": result[f"val_bits_{n}"],
                         "depth": result.get(f"val_depth_{n}"), "converged": result.get(f"val_converged_{n}")})
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "step": step, "family": type(model).__name__,
                          "task": run.task.name, "sweep": rows}))
        return 0
    items, accuracy = ("strings", "bit acc") if unit == "bits" else ("mazes", "cell acc")
    print(f"{type(model).__name__} at step {step}, test {items} of {run.data.source}")
    print(f"{'iters':>9} {unit:>6} {items:>7} {'exact':>7} {accuracy:>8} {'depth':>8} {'converged':>9}")
    for r in rows:
        print(f"{r['iters']!s:>9} {r[unit]:6d} {r['strings']:7d} {r['exact']:7.3f} {r['bit_accuracy']:8.4f} "
              f"{_cell(r, 'depth', '8.1f')} {_cell(r, 'converged', '9.3f')}")
    return 0


# The `attractor eval` of each evaluator a task names (Task.evaluator): the table prints what it measures.
EVAL_TABLES = {"evaluate": _eval_text, "evaluate_puzzles": _eval_puzzles, "evaluate_parity": _eval_parity,
               "evaluate_grids": functools.partial(_eval_parity, unit="side")}


def cmd_generate(args: argparse.Namespace) -> int:
    """Continue prompts with a trained checkpoint (or a folder `attractor export` wrote): one
    prompt's text printed as it is made, or one block (or JSON line) per result for several
    prompts or samples."""
    import math

    from attractor.generate import generate_batches, stream_depth
    from attractor.run import load_run

    args.checkpoint = _one_of(args.checkpoint, args.run, "checkpoint")
    if args.checkpoint is None:
        raise ConfigError("name the checkpoint or run directory to sample from: attractor generate RUN --prompt TEXT")
    # Options that cannot work are refused before the checkpoint loads, naming the flag.
    if args.max_new_tokens < 0:
        raise ConfigError(f"--max-new-tokens {args.max_new_tokens} must be >= 0")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ConfigError(f"--temperature {args.temperature} must be a finite number >= 0 (0 is greedy)")
    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k {args.top_k} must be at least 1")
    if args.top_p is not None and not 0 < args.top_p <= 1:  # NaN fails too
        raise ConfigError(f"--top-p {args.top_p} must be in (0, 1] (1 keeps every token)")
    if args.iters is not None and args.iters < 0:
        raise ConfigError(f"--iters {args.iters} must be >= 0")
    if args.num_samples < 1:
        raise ConfigError(f"--num-samples {args.num_samples} must be at least 1")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size} must be at least 1")
    if args.json and args.show_depth:
        raise ConfigError("--json already holds each token's depth; give --json or --show-depth, not both")
    texts = _generate_prompts(args)  # [(number, text)]
    from attractor import hub

    if hub.is_folder(args.checkpoint):  # what `attractor export` or save_pretrained wrote
        model = hub.load_folder(args.checkpoint)
        tokenizer = model.tokenizer
        if tokenizer is None:
            raise ConfigError(f"{args.checkpoint} holds a {type(model).__name__} without tokenizer.json; "
                              "generate continues text (attractor solve runs puzzle models)")
    else:
        model, tokenizer, run, step = load_run(args.checkpoint)
        if not run.task.continues_text:
            raise ConfigError(f"{args.checkpoint} holds a {run.task.model_kind} ({type(model).__name__} at step "
                              f"{step}); generate continues text (attractor solve runs puzzle models)")
    if args.top_k is not None and args.top_k > model.cfg.vocab_size:
        raise ConfigError(f"--top-k {args.top_k} is above the vocabulary of {args.checkpoint} "
                          f"({model.cfg.vocab_size} tokens)")
    prompts = []
    for number, text in texts:
        ids = tokenizer.encode(text)
        if not ids:
            where = "--prompt" if args.prompt is not None else f"line {number} of --prompt-file {args.prompt_file}"
            raise ConfigError(f"{where} must hold at least one token (give some text)")
        prompts.append((number, text, ids))
    # sample j of every prompt draws with seed --seed + j: each result is `--prompt TEXT --seed S+j` alone
    results = [(number, text, ids, j, args.seed + j) for number, text, ids in prompts for j in range(args.num_samples)]
    options = dict(max_new_tokens=args.max_new_tokens, iters=args.iters, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, cache=False if args.no_cache else args.cache)
    out = sys.stdout
    view = DepthView(out.isatty(), type(model).__name__) if args.show_depth else None
    if len(results) == 1 and not args.json:
        _, text, ids, _, seed = results[0]
        _stream_one(out, text, stream_depth(model, ids, seed=seed, **options), tokenizer.decode, view)
        return 0
    batches = generate_batches(model, [r[2] for r in results], seeds=[r[4] for r in results],
                               batch_size=args.batch_size, **options)
    for i, generated in batches:
        number, text, ids, j, seed = results[i]
        pieces = _token_pieces(generated.tokens, tokenizer.decode)
        if args.json:
            tokens = [{"id": t, "text": p, "depth": d} for t, p, d in zip(generated.tokens, pieces, generated.depths)]
            line = {"prompt": text, "prompt_number": number, "sample": j, "seed": seed, "model": type(model).__name__,
                    "iters": args.iters, "text": "".join(pieces), "tokens": tokens}
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
        else:
            body = "".join(pieces) if view is None else view.render(pieces, generated.depths)
            out.write(f"{'' if i == 0 else chr(10)}==> prompt {number}, sample {j + 1} of {args.num_samples}, "
                      f"seed {seed} <==\n{text}{body}\n" + ("" if view is None else view.legend() + "\n"))
        out.flush()
    return 0


def _generate_prompts(args: argparse.Namespace) -> list[tuple[int, str]]:
    """(number, text) of each prompt: --prompt (number 1), or each line of --prompt-file ('-':
    stdin), numbered from 1; an empty line is refused."""
    if (args.prompt is None) == (args.prompt_file is None):
        raise ConfigError("give --prompt TEXT or --prompt-file FILE (one prompt a line, - for stdin), one of them")
    if args.prompt is not None:
        return [(1, args.prompt)]
    if args.prompt_file == "-":
        content = sys.stdin.read()
    else:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                content = f.read()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"--prompt-file {args.prompt_file}: cannot read it ({err})") from err
    lines = content.split("\n")
    if lines and lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    if not lines:
        raise ConfigError(f"--prompt-file {args.prompt_file} holds no prompt (one prompt a line)")
    prompts = []
    for number, line in enumerate(lines, 1):
        line = line.removesuffix("\r")
        if not line:
            raise ConfigError(f"line {number} of --prompt-file {args.prompt_file} is empty (one prompt a line)")
        prompts.append((number, line))
    return prompts


def _token_pieces(tokens: list[int], decode) -> list[str]:
    """Each token's piece of the text (attractor.generate.TextPieces: a token that ends in the
    middle of a character gets '' and the one that completes it the whole character; the last
    one also what is held back at the end). The pieces joined are decode(tokens)."""
    from attractor.generate import TextPieces

    text = TextPieces(decode)
    pieces = [text.add(t) for t in tokens]
    if pieces:
        pieces[-1] += text.finish()
    return pieces


def _stream_one(out, prompt: str, steps, decode, view: DepthView | None) -> None:
    """Print the prompt, then each new piece as its token comes (flushed: a terminal, a pipe or
    a file alike), shown with its depth where `view` says so; Ctrl-C ends the line and re-raises."""
    from attractor.generate import TextPieces

    pieces = TextPieces(decode)
    out.write(prompt)
    out.flush()
    depths: list[int | None] = []  # of the tokens whose piece is not shown yet
    try:
        for token, depth in steps:
            piece = pieces.add(token)
            depths.append(depth)
            if piece:
                out.write(piece if view is None else view.piece(piece, depths))
                out.flush()  # each piece now, also when stdout is a pipe or a file
                depths = []
    except KeyboardInterrupt:  # keep what was printed and end its line; main() reports the interrupt
        out.write("\n")
        out.flush()
        raise
    rest = pieces.finish()
    out.write((rest if view is None or not rest else view.piece(rest, depths)) + "\n")
    if view is not None:
        out.write(view.legend() + "\n")
    out.flush()


class DepthView:
    """`generate --show-depth`: each generated piece with the depth its token took (solver
    iterations, or loops; `attractor.generate.token_depth`). In a terminal the piece is shaded by
    depth (ANSI 256-colour backgrounds, one shade per band of DEPTH_BANDS); elsewhere (a pipe, a
    file) it is plain text with the depth as a superscript after the piece, e.g. 'cat³'. A piece
    that several tokens made (a character cut in two) shows the largest of their depths; a model
    without per-token depth (the transformer) prints plain text. `legend()` is the line that
    explains it."""

    BANDS = ((0, 1), (2, 2), (3, 3), (4, 4), (5, 6), (7, 9), (10, 15), (16, None))  # depth ranges, inclusive
    SHADES = (21, 27, 33, 39, 220, 214, 202, 196)  # blue (few iterations) to red (many)
    SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")

    def __init__(self, colour: bool, model: str):
        self.colour, self.model, self.seen = colour, model, False

    def piece(self, text: str, depths: list[int | None]) -> str:
        known = [d for d in depths if d is not None]
        if not known:
            return text
        self.seen, depth = True, max(known)
        if not self.colour:
            return text + str(depth).translate(self.SUPERSCRIPT)
        return f"\x1b[30;48;5;{self.SHADES[self._band(depth)]}m{text}\x1b[0m"

    def render(self, pieces: list[str], depths: list[int | None]) -> str:
        """A whole continuation: its tokens' pieces and depths (a '' piece's depth joins the next)."""
        shown, pending = [], []
        for piece, depth in zip(pieces, depths):
            pending.append(depth)
            if piece:
                shown.append(self.piece(piece, pending))
                pending = []
        return "".join(shown)

    def _band(self, depth: int) -> int:
        return next(i for i, (lo, hi) in enumerate(self.BANDS) if hi is None or depth <= hi)

    def legend(self) -> str:
        if not self.seen:
            return f"(depth: {self.model} reports no per-token depth)"
        if not self.colour:
            return "(depth: the superscript after each piece is the solver iterations its token took)"
        keys = " ".join(f"\x1b[30;48;5;{shade}m {lo}{'' if hi == lo else '+' if hi is None else f'-{hi}'} \x1b[0m"
                        for (lo, hi), shade in zip(self.BANDS, self.SHADES))
        return f"depth (solver iterations per token): {keys}"


def cmd_export(args: argparse.Namespace) -> int:
    """Write a language model run's model as a folder to share: model.safetensors, config.json,
    tokenizer.json and a model card with its validation loss and depth sweep (attractor/hub.py)."""
    from attractor import hub
    from attractor.data import prepare
    from attractor.evaluate import depth_sweep
    from attractor.io import size_text
    from attractor.run import load_run, validation

    _positive(args.batches, "--batches")
    hub.check_new_folder(args.out, args.force)  # before the evaluation, which can take minutes
    model, tokenizer, run, step = load_run(args.run)
    if not run.task.continues_text:
        raise ConfigError(f"{args.run} holds a {run.task.model_kind} ({type(model).__name__}); export writes language "
                          "models, with their tokenizer and validation loss (any model saves with "
                          "attractor.hub.hub_model(model).save_pretrained(DIR))")
    run_val = dataclasses.replace(run, train=dataclasses.replace(run.train, eval_batches=args.batches))
    rows = depth_sweep(model, validation(run_val, prepare(run.data, progress=False)), hub.SWEEP_DEPTHS)
    card = hub.model_card(model, tokenizer=tokenizer, run=run, step=step, sweep=rows, batches=args.batches)
    paths = hub.write_new_folder(args.out, model, tokenizer=tokenizer, card=card, force=args.force)
    own = next(r for r in rows if r["iters"] == "adaptive")
    print(f"exported {type(model).__name__} at step {step} to {args.out}: "
          + ", ".join(f"{p.name} ({size_text(p.stat().st_size)})" for p in paths))
    print(f"validation loss {own['val_loss']:.4f} on {args.batches} batches ({own['val_tokens']} tokens); "
          f"load it with attractor.from_pretrained({str(args.out)!r})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train an Attractor and a Transformer on the embedded corpus; compare, sweep, sample, plot."""
    from pathlib import Path

    from attractor.demo import DEFAULT_OUT, demo
    from attractor.io import check_writable_dir

    out = Path(args.out)
    # the default's runs/ is ours to create (demo() does); a --out the user names gets only its last directory
    check_writable_dir(out.parent if args.out == DEFAULT_OUT and not out.parent.exists() else out, "--out")
    demo(out, steps=args.steps, progress=not args.quiet)
    return 0


def cmd_sudoku(args: argparse.Namespace) -> int:
    """Sudoku: rate a file of puzzles (solution, rating), or generate rated unique puzzles."""
    from attractor.data import sudoku

    box = _box(args.box)
    if args.action == "rate":
        return sudoku.rate_file(args.file, box=box)
    count = _positive(args.count, "--count")
    from attractor.io import atomic_write_text, check_writable_file

    if args.out:
        check_writable_file(args.out, "--out")
    lines = [f"{p}\t{r}\n" for p, _, r in sudoku.generate(count, args.rating, rng=args.seed, box=box)]
    if args.out:
        atomic_write_text(args.out, "".join(lines))
    else:
        sys.stdout.write("".join(lines))
    return 0


def _box(text: str) -> tuple[int, int]:
    rows, sep, cols = text.partition("x")
    if not (sep and rows.isdigit() and cols.isdigit()):
        raise ConfigError(f"--box {text!r} must be ROWSxCOLS, such as 3x3 (9x9 Sudoku) or 2x3 (6x6)")
    from attractor.data.sudoku import geometry

    geometry((int(rows), int(cols)))  # checks the size
    return int(rows), int(cols)


def _positive(value: int, flag: str) -> int:
    if value < 1:
        raise ConfigError(f"{flag}={value} must be at least 1")
    return value


def cmd_maze(args: argparse.Namespace) -> int:
    """Mazes: generate N x N mazes with a start, a goal and their shortest path (BFS)."""
    from attractor.data import maze
    from attractor.io import atomic_write_text, check_writable_file

    if args.out:
        check_writable_file(args.out, "--out")
    mazes = maze.generate(_positive(args.count, "--count"), _positive(args.size, "--size"), args.min_path,
                          rng=args.seed, loops=args.loops)
    if args.csv:  # the official layout (Maze-Hard): source,question,answer,rating (= path length)
        text = "source,question,answer,rating\n" + "".join(
            f"attractor-maze-seed{args.seed},{m.question},{m.answer},{m.path_length}\n" for m in mazes)
    else:
        text = "".join(f"# maze {i + 1}: {args.size}x{args.size}, shortest path {m.path_length} moves\n"
                       f"{maze.show(m.answer, args.size)}\n\n" for i, m in enumerate(mazes))
    if args.out:
        atomic_write_text(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """Build a puzzle or parity dataset: offline from our generators, or the official sets from the hub."""
    from attractor.io import check_writable_dir

    if check_writable_dir(args.out, "--out").exists():  # before generating or downloading anything
        raise ConfigError(f"{args.out} already exists; delete it or choose another --out")
    return DATA_BUILDERS[args.action](args)


def _data_parity(args: argparse.Namespace) -> int:
    """`attractor data parity`: bit strings and their prefix parities (attractor/data/parity.py)."""
    from attractor.data.parity import build_parity, parse_bits_list, read_meta

    out = build_parity(args.out, _positive(args.train_bits, "--train-bits"), parse_bits_list(args.test_bits),
                       _positive(args.train, "--train"), _positive(args.test, "--test"), args.seed)
    print(f"wrote {out}: " + ", ".join(f"{k} {v['examples']:,} strings of {v['bits']} bits"
                                       for k, v in read_meta(out)["splits"].items()))
    return 0


def _data_maze_sizes(args: argparse.Namespace) -> int:
    """`attractor data maze-sizes`: mazes of one training side and several test sides (attractor/data/maze_sizes.py)."""
    from attractor.data.maze_sizes import build_maze_sizes, parse_sizes, read_meta

    if args.train_size < 3:
        raise ConfigError(f"--train-size={args.train_size} must be at least 3")
    out = build_maze_sizes(args.out, args.train_size, parse_sizes(args.test_sizes), _positive(args.train, "--train"),
                           _positive(args.test, "--test"), args.seed, args.min_path, args.loops)
    print(f"wrote {out}: " + ", ".join(f"{k} {v['examples']:,} mazes of side {v['side']}"
                                       for k, v in read_meta(out)["splits"].items()))
    return 0


def _data_puzzles(args: argparse.Namespace) -> int:
    """`attractor data sudoku|maze|sudoku-extreme|maze-hard` (attractor/data/puzzles.py)."""
    from attractor.data import puzzles

    if args.action == "sudoku":
        out = puzzles.build_sudoku(args.out, args.train, args.test, args.aug, args.rating, args.seed, _box(args.box))
    elif args.action == "maze":
        out = puzzles.build_maze(args.out, args.train, args.test, _positive(args.size, "--size"), args.min_path,
                                 args.loops, not args.no_aug, args.seed)
    elif args.action == "sudoku-extreme":
        train, test = puzzles.download(puzzles.SUDOKU_EXTREME, ["train.csv", "test.csv"], args.csv_dir)
        out = puzzles.convert_sudoku_extreme(train, test, args.out, args.subsample, args.aug, args.seed,
                                             args.min_rating, args.test_limit)
    else:
        train, test = puzzles.download(puzzles.MAZE_HARD, ["train.csv", "test.csv"], args.csv_dir)
        out = puzzles.convert_maze_hard(train, test, args.out, not args.no_aug, args.seed)
    splits = puzzles.load_puzzles(out)["meta"]["splits"]
    print(f"wrote {out}: " + ", ".join(f"{k} {v['examples']:,} examples of {v['groups']:,} puzzles"
                                       for k, v in splits.items()))
    return 0


def cmd_solve(args: argparse.Namespace) -> int:
    """Solve a Sudoku, a maze or a parity string with a checkpoint: the answer, its check, the
    iterations (exit 0 when solved, 1 when not)."""
    return SOLVE_KINDS[args.kind](args)


def _solve_parity(args: argparse.Namespace) -> int:
    """`attractor solve parity BITS` (attractor/parity_solve.py)."""
    from attractor.parity_solve import parity_command

    if args.trace or args.html is not None:
        raise ConfigError("--trace and --html show a grid: they are for sudoku and maze, not parity")
    return parity_command(args.puzzle, args.checkpoint, settings=args.set)


def _solve_grid(args: argparse.Namespace) -> int:
    """`attractor solve sudoku|maze` (attractor/puzzle_solve.py)."""
    from attractor.io import check_writable_file
    from attractor.puzzle_solve import solve_command

    if args.set:
        raise ConfigError("--set is for parity checkpoints (the solve of a puzzle model is its own)")
    if args.html is not None:  # before loading and solving: a page that cannot be written fails at once
        check_writable_file(args.html, "--html")
    return solve_command(args.kind, args.puzzle, args.checkpoint, trace=args.trace, html=args.html)


DATA_BUILDERS = {"sudoku": _data_puzzles, "maze": _data_puzzles, "sudoku-extreme": _data_puzzles,
                 "maze-hard": _data_puzzles, "parity": _data_parity, "maze-sizes": _data_maze_sizes}
SOLVE_KINDS = {"sudoku": _solve_grid, "maze": _solve_grid, "parity": _solve_parity}
COMMANDS = {"models": cmd_models, "train": cmd_train, "eval": cmd_eval, "generate": cmd_generate, "demo": cmd_demo,
            "sudoku": cmd_sudoku, "maze": cmd_maze, "data": cmd_data, "solve": cmd_solve, "export": cmd_export}


def parser() -> argparse.ArgumentParser:
    from attractor import __version__

    p = argparse.ArgumentParser(prog="attractor", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"attractor {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help=cmd_models.__doc__)
    models.add_argument("names", nargs="*", help="presets to show (default: all)")

    train = sub.add_parser("train", help=cmd_train.__doc__)
    train.add_argument("preset_name", nargs="?", metavar="PRESET", help="model preset (attractor models lists them)")
    train.add_argument("--preset", help="the same, as an option")
    train.add_argument("--out", required=True, help="run directory: metrics, checkpoints")
    train.add_argument("--data", help="kjv (embedded default), a .txt/.jsonl file or folder, or hf:NAME; "
                       "for a puzzle model a dataset folder (attractor data ...)")
    train.add_argument("--steps", type=int, help="total optimiser steps of the run (the schedule's length)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any config field: model.d=64, tol=1e-4, train.lr=1e-3, data.tokenizer=bpe")
    train.add_argument("--log-every", type=int)
    train.add_argument("--checkpoint-every", type=int)
    train.add_argument("--eval-every", type=int)
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    ev = sub.add_parser("eval", help=cmd_eval.__doc__)
    ev.add_argument("run", nargs="?", metavar="RUN", help="a checkpoint or a run directory (its newest)")
    ev.add_argument("--checkpoint", help="the same, as an option")
    ev.add_argument("--iters", help="depths to evaluate, comma-separated (default: 0,1,2,4,8,adaptive; "
                    "with --tasks adaptive)")
    ev.add_argument("--batches", type=int, help="validation batches (default: the run's eval_batches)")
    ev.add_argument("--puzzles", type=int, help="puzzle checkpoints: the first N test puzzles (default: all)")
    ev.add_argument("--data", help="puzzle checkpoints: evaluate on this dataset's test split (same kind and "
                    "geometry; default: the run's own dataset)")
    ev.add_argument("--steps", default="1,2,4,8", help="puzzle checkpoints with supervision steps (TRM, "
                    "AttractorReasoner): the steps to sweep, at the model's own depth ('all': halt_max_steps)")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change the saved config before evaluating, e.g. min_iter=1 or solver=picard (repeatable)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--plot", help="write the depth sweep as an image (needs matplotlib)")
    ev.add_argument("--tasks", metavar="NAME,...", help="lm-evaluation-harness tasks, groups or tags instead of "
                    "the validation sweep (needs the eval extra; offline: their data must be on this machine)")
    ev.add_argument("--include-path", metavar="DIR", help="with --tasks: a folder of your own task configs (YAML)")
    ev.add_argument("--limit", type=int, metavar="N", help="with --tasks: the first N documents of each task")

    gen = sub.add_parser("generate", help=cmd_generate.__doc__)
    gen.add_argument("run", nargs="?", metavar="RUN", help="a checkpoint or a run directory (its newest)")
    gen.add_argument("--checkpoint", help="the same, as an option")
    gen.add_argument("--prompt", help="the text to continue")
    gen.add_argument("--prompt-file", metavar="FILE", help="one prompt a line (- reads stdin), instead of --prompt; "
                     "the prompts are generated together in batches, one block (or JSON line) per result")
    gen.add_argument("--num-samples", type=int, default=1, metavar="N", help="N samples per prompt; sample j "
                     "(from 0) of every prompt draws with seed --seed + j, as `--seed S+j` alone would")
    gen.add_argument("--batch-size", type=int, default=8, help="results generated together, at most (default 8)")
    gen.add_argument("--max-new-tokens", type=int, default=200, help="at most this many tokens (Ctrl-C stops "
                     "early and keeps what was printed)")
    gen.add_argument("--iters", type=int, help="recurrent depth (default: adaptive)")
    gen.add_argument("--temperature", type=float, default=0.8, help="0 is greedy; finite, >= 0")
    gen.add_argument("--top-k", type=int, help="sample among the K most likely tokens (1 to the vocabulary size)")
    gen.add_argument("--top-p", type=float, metavar="P", help="then sample among the most likely tokens whose "
                     "probability reaches P (nucleus sampling), 0 < P <= 1; 1 keeps every token")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--json", action="store_true", help="one JSON line per result: the prompt, the text, and its "
                     "tokens, each with its text piece and the solver iterations it took (depth)")
    gen.add_argument("--show-depth", action="store_true", help="show each token's solver iterations: colour "
                     "shading in a terminal, a superscript after each piece elsewhere; a legend line follows")
    gen.add_argument("--no-cache", action="store_true", help="re-run the model on the whole context for every "
                     "token (default: a KV cache, exact up to rounding, for every family and depth but an "
                     "adaptive solve stopped per sample)")
    gen.add_argument("--cache", choices=("exact", "converged"), default="exact", help="what an equilibrium model's cache keeps: "
                     "every solver step's keys and values (exact, the default) or only each earlier "
                     "position's last iterate's (converged: less memory, close to the full forward, not exact)")
    ex = sub.add_parser("export", help=cmd_export.__doc__)
    ex.add_argument("run", metavar="DIR", help="a language model's checkpoint or run directory (its newest)")
    ex.add_argument("--out", required=True, metavar="HFDIR", help="the folder to write (missing or empty)")
    ex.add_argument("--batches", type=int, default=4, help="validation batches the card's losses are measured on "
                    "(default 4)")
    ex.add_argument("--force", action="store_true", help="replace an earlier export in --out")
    dm = sub.add_parser("demo", help=cmd_demo.__doc__)
    dm.add_argument("--out", default="runs/demo")
    dm.add_argument("--steps", type=int, default=300, help="training steps per model")
    dm.add_argument("--quiet", action="store_true", help="no progress bars")

    sd = sub.add_parser("sudoku", help=cmd_sudoku.__doc__).add_subparsers(dest="action", required=True)
    rate = sd.add_parser("rate", help="print SOLUTION<tab>RATING per puzzle line of FILE (- for stdin); "
                         "exit 1 if any is malformed, unsolvable or not unique")
    rate.add_argument("file")
    gen_s = sd.add_parser("generate", help="print N unique-solution puzzles as PUZZLE<tab>RATING lines")
    gen_s.add_argument("--count", type=int, required=True)
    gen_s.add_argument("--rating", help="LO:HI, the search nodes the solver needs (1 = singles alone); "
                       "either side may be empty")
    gen_s.add_argument("--seed", type=int, default=0)
    gen_s.add_argument("--out", help="write to this file (atomically) instead of stdout")
    mz = sub.add_parser("maze", help=cmd_maze.__doc__).add_subparsers(dest="action", required=True)
    gen_m = mz.add_parser("generate", help="print N mazes with their shortest path drawn as 'o'")
    gen_m.add_argument("--count", type=int, required=True)
    gen_m.add_argument("--csv", action="store_true", help="the official layout: source,question,answer,rating")
    gen_m.add_argument("--out", help="write to this file (atomically) instead of stdout")

    data = sub.add_parser("data", help=cmd_data.__doc__).add_subparsers(dest="action", required=True)
    d_sudoku = data.add_parser("sudoku", help="generate a Sudoku dataset offline (unique puzzles, augmented)")
    d_sudoku.add_argument("--rating", help="LO:HI rating range of the puzzles (attractor sudoku generate)")
    d_maze = data.add_parser("maze", help="generate a maze dataset offline (8 symmetries of each training maze)")
    d_extreme = data.add_parser("sudoku-extreme", help="download and convert sapientinc/sudoku-extreme "
                                "(1000 training puzzles x 1000 augmentations, the full test set)")
    d_extreme.add_argument("--subsample", type=int, default=1000, help="training puzzles drawn (seeded)")
    d_extreme.add_argument("--min-rating", type=int, help="keep puzzles with the official rating >= this")
    d_extreme.add_argument("--test-limit", type=int, help="keep the first N test puzzles (default: all)")
    d_hard = data.add_parser("maze-hard", help="download and convert sapientinc/maze-30x30-hard-1k (1000 x 8, 1000)")
    # The growing tasks' datasets: one training size, test sizes far beyond it.
    growing = {}
    for action, what, flags, sizes, tests in (
            ("parity", "prefix-parity bit strings", ("bits", "bits", "length"), (16, "16,32,64,128,256,512"), 1000),
            ("maze-sizes", "mazes for maze-local", ("size", "sizes", "side"), (9, "9,13,17,25,33"), 200)):
        sp = growing[action] = data.add_parser(action, help=f"generate {what} offline: one training {flags[2]}, "
                                               f"test {flags[2]}s far beyond it")
        sp.add_argument(f"--train-{flags[0]}", type=int, default=sizes[0], help=f"{flags[2]} of the training data")
        sp.add_argument(f"--test-{flags[1]}", default=sizes[1], help=f"test {flags[2]}s, comma-separated")
        sp.add_argument("--train", type=int, default=10000, help="training examples")
        sp.add_argument("--test", type=int, default=tests, help=f"test examples of each {flags[2]}")
    d_parity, d_sizes = growing["parity"], growing["maze-sizes"]
    d_sizes.add_argument("--min-path", type=int, help="least moves from S to G (default 111 at 30x30, scaled by area)")
    for sp in (d_sudoku, d_maze, d_extreme, d_hard, d_parity, d_sizes):
        sp.add_argument("--out", required=True, help="dataset folder to create (must not exist)")
        sp.add_argument("--seed", type=int, default=0)
    for sp in (d_sudoku, d_maze):
        sp.add_argument("--train", type=int, default=1000, help="training puzzles before augmentation")
        sp.add_argument("--test", type=int, default=1000, help="test puzzles (never augmented)")
    for sp in (d_sudoku, d_extreme):
        sp.add_argument("--aug", type=int, default=1000, help="augmented copies of each training puzzle")
    for sp in (d_extreme, d_hard):
        sp.add_argument("--csv-dir", help="a folder holding the official train.csv and test.csv (no download)")
    for sp in (d_maze, d_hard):
        sp.add_argument("--no-aug", action="store_true", help="no dihedral augmentation of the training mazes")
    for sp in (rate, gen_s, d_sudoku):
        sp.add_argument("--box", default="3x3", help="box shape ROWSxCOLS: 3x3 is the 9x9 Sudoku, 2x3 the 6x6")
    d_sizes.add_argument("--loops", type=float, default=0.0, help="share of inner walls removed (cycles)")
    for sp in (gen_m, d_maze):
        sp.add_argument("--size", type=int, default=30, help="side of the grid (Maze-Hard: 30)")
        sp.add_argument("--min-path", type=int, help="least moves from S to G (default 111 at 30x30, scaled by area)")
        sp.add_argument("--loops", type=float, default=0.0, help="fraction of inner walls removed to make cycles")
    gen_m.add_argument("--seed", type=int, default=0)

    sv = sub.add_parser("solve", help=cmd_solve.__doc__.splitlines()[0])
    sv.add_argument("kind", choices=list(SOLVE_KINDS))
    sv.add_argument("puzzle", metavar="PUZZLE", help="sudoku: the puzzle (digits, '.' or '0' for blanks) or a "
                    "file holding it; maze: a file of rows of '# SG' (- reads stdin); parity: bits (0 and 1, any "
                    "length) or a file holding them")
    sv.add_argument("--checkpoint", required=True, metavar="DIR",
                    help="a puzzle or parity checkpoint or run directory (its newest)")
    sv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="parity: change the saved solve, e.g. solver=picard or max_iter_per_position=4")
    sv.add_argument("--trace", action="store_true", help="print the grid after every iteration")
    sv.add_argument("--html", metavar="FILE", help="write a page that steps through the iterations")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from attractor.io import CheckpointError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, CheckpointError) as err:
        _report(f"attractor: error: {err}")
        return 2
    except DiskFullError as err:
        _report(f"attractor: error: {err}")
        return 1
    except Interrupted as err:
        _report(f"attractor: {err}")
        return err.exit_code
    except KeyboardInterrupt:
        _report("attractor: interrupted")
        return 130
    except BrokenPipeError:  # the reader of stdout went away (`attractor generate ... | head`)
        _silence_stdout()
        return 141  # 128 + SIGPIPE, as for a process the closed pipe had stopped


def _report(line: str) -> None:
    """One line on stderr in one write, so the lines of torchrun's processes do not interleave."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of the text a closed pipe
    did not take ends quietly instead of printing an 'Exception ignored' message."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is no file (a test's capture)
        pass
