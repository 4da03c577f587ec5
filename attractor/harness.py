"""Downstream tasks through lm-evaluation-harness (Gao et al., EleutherAI): a trained language
model of this library as an `lm_eval` model, registered as "attractor".

    AttractorHarnessLM(run="runs/a1", iters=4)          # or model=..., tokenizer=...
    lm_eval.simple_evaluate(model=lm, tasks=["hellaswag"])  # or `attractor eval RUN --tasks ...`

Every score comes from the model's own forward at one depth `iters` (None: adaptive, the model's
own rule), in float32 log-probabilities:
- `loglikelihood(context, continuation)`: the summed log-probability of the continuation's tokens
  and whether each is the most likely one. As in lm-eval's causal models, a trailing space of the
  context moves to the continuation and the continuation's tokens are those of encode(context +
  continuation) past len(encode(context)).
- `loglikelihood_rolling(text)`: the summed log-probability of the text's tokens, each predicted
  once. The tokenizers have no beginning-of-text token, so the first token is the context of the
  second and is not scored (lm-eval puts its BOS or EOS token there).
- `generate_until(context, gen_kwargs)`: attractor.generate's continuation (greedy unless
  do_sample), cut before the first of the `until` strings, at most max_gen_toks tokens.

The window rule (`windows`), one for both scorers: the tokens to score go in consecutive runs of
at most seq_len, and each run is predicted by one forward over the seq_len tokens (fewer at the
start) that end just before its last token. This is lm-eval's `get_rolling_token_windows` with
context_len 1 and `make_disjoint_window`, and for a context longer than the model it is the
library's sliding window: the last seq_len tokens. Windows of different lengths share a forward
right-padded (`generate.shares_padding`), else they are grouped by length.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from torch import nn

from attractor.errors import ConfigError
from attractor.generate import generate_batches, shares_padding

# generation_kwargs an lm-eval task may set, and what they mean here (others are refused by name)
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p", "seed")


def windows(tokens: list[int], start: int, seq_len: int) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) pairs that score tokens[start:] (start >= 1) each exactly once: targets
    are a run of at most seq_len tokens, predicted at the last len(targets) positions of inputs,
    the (at most) seq_len tokens just before the run's last token."""
    pairs = []
    for a in range(start, len(tokens), seq_len):
        b = min(a + seq_len, len(tokens))
        pairs.append((tokens[max(0, b - 1 - seq_len):b - 1], tokens[a:b]))
    return pairs


@register_model("attractor")
class AttractorHarnessLM(LM):
    """A trained language model (a run directory or checkpoint, or a model and its tokenizer)
    scored and sampled at depth `iters` for lm-evaluation-harness.

    Args:
        run: a checkpoint or run directory (its newest), loaded as `attractor eval` loads it.
        model, tokenizer: an already loaded model and tokenizer, instead of `run`.
        iters: the recurrent depth (None: adaptive / the model's own rule); a model without depth
            (the transformer) takes only None.
        batch_size: windows (or prompts) per forward; its logits take batch_size * seq_len *
            vocab_size floats at most (4 bytes each).
        device: where `run` is loaded ('cpu', 'cuda', 'auto', ...).
        max_gen_toks: generate_until's token limit where a task sets none.
    """

    def __init__(self, run: str | Path | None = None, *, model: nn.Module | None = None, tokenizer=None,
                 iters: int | None = None, batch_size: int = 8, device: str = "cpu", max_gen_toks: int = 256):
        super().__init__()
        if (run is None) == (model is None):
            raise ValueError("give a run directory or a model (with its tokenizer), one of them")
        if run is not None:
            from attractor.run import load_run

            model, tokenizer, config, _ = load_run(run, device=device)
            if not config.task.continues_text:
                raise ConfigError(f"{run} holds a {config.task.model_kind}: downstream tasks need a language model")
        if tokenizer is None:
            raise ValueError("a model needs its tokenizer")
        if iters is not None and not model.has_depth:
            raise ValueError(f"{type(model).__name__} has no depth: iters must be None, got {iters!r}")
        if batch_size < 1 or max_gen_toks < 0:
            raise ValueError(f"batch_size={batch_size} must be >= 1 and max_gen_toks={max_gen_toks} >= 0")
        self.model, self.tokenizer, self.iters = model.eval(), tokenizer, iters
        self.batch_size, self.max_gen_toks = int(batch_size), int(max_gen_toks)
        self.seq_len = model.cfg.seq_len
        self._device = next(model.parameters()).device

    # ---- scoring

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """(log p(continuation | context), whether every continuation token is the greedy one)
        per request (args: (context, continuation)). An empty context gives the continuation's
        first token as context, unscored."""
        pairs = []
        for context, continuation in (r.args for r in requests):
            spaces = len(context) - len(context.rstrip())  # " world" tokenizes as a word, "hello " does not
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            whole, head = self.tokenizer.encode(context + continuation), self.tokenizer.encode(context)
            pairs.append((head + whole[len(head):], max(len(head), 1)))
        return self._score(pairs)

    def loglikelihood_rolling(self, requests) -> list[float]:
        """log p(text) per request (args: (text,)), every token after the first scored once."""
        return [logprob for logprob, _ in self._score([(self.tokenizer.encode(r.args[0]), 1) for r in requests])]

    @torch.no_grad()
    def _score(self, sequences: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        """(summed log-probability, all greedy) of tokens[start:] for each (tokens, start), over
        the windows of the module docstring, batch_size windows per forward, longest first."""
        todo = [(i, inputs, targets) for i, (tokens, start) in enumerate(sequences)
                for inputs, targets in windows(tokens, start, self.seq_len)]
        todo.sort(key=lambda w: -len(w[1]))
        padded = shares_padding(self.model, self.iters)
        logprob, greedy = [0.0] * len(sequences), [True] * len(sequences)
        first = 0
        while first < len(todo):
            width, last = len(todo[first][1]), first + 1
            while last < min(first + self.batch_size, len(todo)) and (padded or len(todo[last][1]) == width):
                last += 1
            chunk, first = todo[first:last], last
            feed = torch.tensor([w[1] + [0] * (width - len(w[1])) for w in chunk], device=self._device)  # (B, T)
            logits = self.model(feed, **self._depth()).logits  # (B, T, V)
            for row, (i, inputs, targets) in enumerate(chunk):
                at = slice(len(inputs) - len(targets), len(inputs))
                scores = torch.log_softmax(logits[row, at].float(), -1)  # (n, V)
                target = torch.tensor(targets, device=scores.device)
                logprob[i] += scores.gather(-1, target[:, None]).sum().item()
                greedy[i] = greedy[i] and bool((scores.argmax(-1) == target).all())
        return list(zip(logprob, greedy))

    def _depth(self) -> dict:
        return {} if self.iters is None else {"iters": self.iters}

    # ---- generation

    def generate_until(self, requests) -> list[str]:
        """The continuation of each request (args: (context, gen_kwargs)), cut before the first
        of gen_kwargs["until"] (a string or a list); batch_size prompts at a time, with a KV
        cache where the model has one at this depth. Greedy unless do_sample (then temperature,
        default 1, top_k, top_p and seed, default 0, as attractor.generate takes them)."""
        out = [""] * len(requests)
        groups: dict[str, list[int]] = {}  # one sampling setting per generate_batches call
        for i, r in enumerate(requests):
            groups.setdefault(repr(sorted(r.args[1].items())), []).append(i)
        for rows in groups.values():
            until, seed, options = self._gen_options(requests[rows[0]].args[1])
            prompts = [self.tokenizer.encode(requests[i].args[0]) for i in rows]
            if not all(prompts):
                raise ValueError("generate_until needs a context of at least one token")
            def stop(tokens: list[int], until: list[str] = until) -> bool:  # a row ends at its first stop string
                return any(s in self.tokenizer.decode(tokens) for s in until)

            results = generate_batches(self.model, prompts, seeds=[seed] * len(rows), iters=self.iters,
                                       batch_size=self.batch_size, stop=stop if until else None, **options)
            for j, generated in results:
                text = self.tokenizer.decode(generated.tokens)
                out[rows[j]] = text[:min([text.find(s) for s in until if s in text], default=len(text))]
        return out

    def _gen_options(self, gen_kwargs: dict) -> tuple[list[str], int, dict]:
        """(stop strings, seed, generate_batches' sampling options) of a task's generation_kwargs;
        ValueError naming a key this model cannot honour."""
        unknown = sorted(set(gen_kwargs) - set(GEN_KWARGS))
        if unknown:
            raise ValueError(f"generation_kwargs {unknown} are not supported (known: {', '.join(GEN_KWARGS)})")
        until = gen_kwargs.get("until", [])
        until = [until] if isinstance(until, str) else list(until)
        sampled = bool(gen_kwargs.get("do_sample", False))
        options = dict(max_new_tokens=int(gen_kwargs.get("max_gen_toks", self.max_gen_toks)),
                       temperature=float(gen_kwargs.get("temperature", 1.0)) if sampled else 0.0,
                       top_k=gen_kwargs.get("top_k"), top_p=gen_kwargs.get("top_p"))
        return [s for s in until if s], int(gen_kwargs.get("seed", 0)), options


# ---- tasks


def task_manager(names: list[str], include_path: str | Path | None = None):
    """lm-eval's TaskManager knowing every task (or group, or tag) in `names`: the configs under
    include_path alone where they hold all of them (indexing lm-eval's own ~15000 configs takes
    10 s or more), else those and lm-eval's. ConfigError for a name neither holds, naming the
    closest known ones."""
    import difflib

    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not Path(include_path).is_dir():
            raise ConfigError(f"--include-path {include_path}: no such directory")
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(name in local.all_subtasks for name in names):
            return local
    manager = TaskManager(include_path=None if include_path is None else str(include_path))
    for name in names:
        if name not in manager.all_tasks:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            where = "lm-eval" if include_path is None else "lm-eval and --include-path"
            raise ConfigError(f"unknown task {name!r}{hint} ({len(manager.all_tasks)} known to {where}; "
                              "`lm-eval ls tasks` lists them)")
    return manager


def evaluate_tasks(lm: AttractorHarnessLM, names: list[str], manager, *, limit: int | None = None) -> list[dict]:
    """lm-eval's simple_evaluate of `lm` on the tasks `names` (found by `manager`, see
    task_manager), the first `limit` documents of each where given; ConfigError where a task's
    data is neither cached nor a local file (nothing is downloaded offline). Returns one row per
    task and metric: {"task", "metric" (with its filter where not 'none'), "value", "stderr" (None
    where lm-eval has none)}."""
    import contextlib
    import sys

    from lm_eval import simple_evaluate

    try:
        with contextlib.redirect_stdout(sys.stderr):  # its progress notes, so that stdout holds only results
            results = simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit, log_samples=False)
    except ConnectionError as err:  # offline, and the data is not in the datasets cache
        raise ConfigError(f"{err}: a task's data is not on this machine (fetch it once with HF_DATASETS_OFFLINE=0 "
                          "HF_HUB_OFFLINE=0, or point a config under --include-path at local files)") from None
    except FileNotFoundError as err:  # a config's data_files
        raise ConfigError(f"a task's data: {err}") from None
    rows = []
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, _, where = key.partition(",")
            if not where or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue  # "alias", a sample count, a stderr (read beside its metric)
            stderr = metrics.get(f"{metric}_stderr,{where}")
            rows.append({"task": task, "metric": metric if where == "none" else key, "value": value,
                         "stderr": stderr if isinstance(stderr, (int, float)) else None})
    return rows
