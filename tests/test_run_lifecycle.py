"""A run's life in its directory: one writer at a time (RUN/lock), Ctrl-C and SIGTERM checkpoint
the step reached, resume says what it does and what it may change, a damaged checkpoint is named.

Signals and locks are tested on real processes (`python -m attractor train`, torchrun with two
gloo processes), with tiny models; each subprocess costs about 3 s of imports.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import losses, sets, tiny_settings
from torch import nn

from attractor import io
from attractor.cli import main
from attractor.config import run_config
from attractor.errors import Interrupted
from attractor.models.base import ModelOutput, ParamGroup
from attractor.run import train
from attractor.train import Callbacks, Trainer, TrainConfig, wsd

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STEPS = 100_000  # the runs below are stopped long before their end


def long_settings(tmp_path) -> list[str]:
    """A tiny transformer run that logs every step, checkpoints only at its end, never evaluates,
    and has no cooldown: its learning rates do not depend on its length, so a run stopped early
    and resumed with a --steps of its own can be compared with a short one."""
    return tiny_settings("transformer-1m", tmp_path / "cache", "train.checkpoint_every=100000", "train.eval_every=null",
                         "train.cooldown=0")


def long_run(tmp_path, corpus, steps: int = STEPS) -> list[str]:
    """`attractor train` arguments (without --out) of that run, `steps` long."""
    return ["transformer-1m", "--data", str(corpus), "--steps", str(steps), "--quiet", *sets(long_settings(tmp_path))]


def start(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "attractor", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, **kw)


def torchrun(args: list[str]) -> subprocess.Popen:
    """`torchrun --nproc_per_node=2 -m attractor train ARGS` in a process group of its own (as a
    terminal's job), so that a test can signal, or kill, the agent and its workers together."""
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "attractor", "train", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, start_new_session=True)


def end_group(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left of a torchrun() process group (a rank left waiting)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def wait_for_first_step(proc: subprocess.Popen, out, timeout: float = 120) -> None:
    """Until the run in `out` has logged a step (its first metrics line)."""
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and metrics.read_text().count("\n") >= 1:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its first step: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no metrics line in time")


def stopped_at(stderr: str, pattern: str) -> int:
    """The step an interruption message names; the message must be stderr's last line."""
    assert "Traceback" not in stderr, stderr
    match = re.fullmatch(pattern, stderr.strip().splitlines()[-1])
    assert match, stderr
    return int(match[1])


def checkpointed_at(out, step: int) -> None:
    assert (out / "latest").read_text().strip() == f"ckpt-{step:08d}"
    assert io.verify(out / f"ckpt-{step:08d}")["step"] == step


# ---- one writer per run directory -------------------------------------------------------------


def test_a_second_writer_is_refused_and_the_hold_ends_with_the_process(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    args = long_run(tmp_path, corpus)
    holder = start([*args, "--out", str(out)])
    try:
        wait_for_first_step(holder, out)
        config = (out / "config.json").stat()
        short = long_run(tmp_path, corpus, steps=3)  # were one let through, it would end soon
        for argv in ([*short, "--out", str(out)], [*short, "--out", str(out), "--resume"],
                     ["--out", str(out), "--resume", "--steps", "3"]):
            assert main(["train", *argv]) == 2
            err = capsys.readouterr().err.strip()
            assert err.count("\n") == 0 and f"{out} is in use by process {holder.pid} (" in err, err
            assert "-m attractor train" in err  # the holder's command line
        assert (out / "config.json").stat().st_mtime_ns == config.st_mtime_ns  # the refused ones wrote nothing
    finally:
        holder.kill()  # SIGKILL: no handler, no cleanup; the OS drops the lock with the process
        holder.communicate()
    assert not (out / "latest").exists()  # killed before its first checkpoint: config.json and logs only
    # The lock went with the process. A run without a checkpoint resumes from step 0 with its
    # config.json; its length may change.
    assert main(["train", "--out", str(out), "--resume", "--steps", "3", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"resuming {out} from step 0: it has no checkpoint yet" in printed
    assert f"changed: train.steps: {STEPS} -> 3" in printed
    assert len(losses(out)) == 3 and json.loads((out / "config.json").read_text())["train"]["steps"] == 3


def test_the_lock_is_held_while_training_and_released_after(tmp_path):
    out = tmp_path / "run"
    with io.RunLock(out) as held:
        assert held.held and out.is_dir()
        assert (out / "lock").read_text().split("\n")[0] == str(os.getpid())
        with pytest.raises(io.RunBusyError, match=f"in use by process {os.getpid()}"):
            io.RunLock(out).acquire()  # another open file: refused even within one process
    assert not held.held
    io.RunLock(out).acquire()  # free again (the file stays; only a held lock counts)


# ---- Ctrl-C and SIGTERM -----------------------------------------------------------------------


def test_ctrl_c_checkpoints_the_step_and_resume_repeats_the_uninterrupted_losses(tmp_path, corpus):
    from attractor.data import prepare

    args = long_run(tmp_path, corpus)
    prepare(run_config("transformer-1m", long_settings(tmp_path), data=str(corpus)).data)  # the run prints nothing else
    out = tmp_path / "run"
    proc = start([*args, "--out", str(out)])
    wait_for_first_step(proc, out)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.count("\n") == 1, stderr  # one line: no traceback, nothing else
    step = stopped_at(stderr, rf"attractor: interrupted at step (\d+) \(checkpoint written\); "
                              rf"continue with: attractor train --out {re.escape(str(out))} --resume")
    checkpointed_at(out, step)
    assert len(losses(out)) == step
    # the command the message gives, made to end soon; then a run of that length without a stop
    end = step + 6
    assert main(["train", "--out", str(out), "--resume", "--steps", str(end), "--quiet"]) == 0
    full = tmp_path / "full"
    train(run_config("transformer-1m", long_settings(tmp_path), data=str(corpus), steps=end), full, progress=False)
    a, b = losses(full), losses(out)
    assert len(a) == len(b) == end
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=0, atol=1e-6)


def test_sigterm_checkpoints_the_step_and_exits_143(tmp_path, corpus):
    out = tmp_path / "run"
    proc = start([*long_run(tmp_path, corpus), "--out", str(out)])
    wait_for_first_step(proc, out)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    step = stopped_at(stderr, r"attractor: stopped by SIGTERM at step (\d+) \(checkpoint written\); continue with: .*")
    checkpointed_at(out, step)


class Counting:
    """Batches of random tokens, batch n a function of n (a stand-in for TokenBatches)."""

    def __init__(self):
        self.n = 0

    def __next__(self):
        self.n += 1
        idx = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(self.n))
        return idx[:, :-1], idx[:, 1:]

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


class DropoutLM(nn.Module):
    """Embedding, dropout, head: its dropout masks are the only draws from torch's global
    generator, which a resume must restore."""

    def __init__(self):
        super().__init__()
        self.embed, self.drop, self.head = nn.Embedding(64, 16), nn.Dropout(0.5), nn.Linear(16, 64)

    def param_groups(self) -> list[ParamGroup]:
        return [ParamGroup("all", list(self.parameters()), "adamw")]

    def forward(self, idx, targets=None):
        logits = self.head(self.drop(self.embed(idx)))
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return ModelOutput(logits, loss)


def fit_in_process(cfg: TrainConfig, *, signal_at: dict[int, int] = (), signal_in_checkpoint: int | None = None):
    """Fit DropoutLM, sending this process the signal signal_at[step] after that step, and
    `signal_in_checkpoint` while the checkpoint callback runs; returns (trainer, logged steps,
    checkpointed steps)."""
    torch.manual_seed(0)
    logged, checkpointed = [], []

    def progress(record):
        if record["step"] in dict(signal_at):
            os.kill(os.getpid(), dict(signal_at)[record["step"]])

    def checkpoint(step):
        if signal_in_checkpoint is not None:
            os.kill(os.getpid(), signal_in_checkpoint)
        checkpointed.append(step)

    trainer = Trainer(DropoutLM(), Counting(), [], cfg, Callbacks(log=lambda r: logged.append(r["step"]),
                                                                 checkpoint=checkpoint, progress=progress))
    return trainer, logged, checkpointed


@pytest.fixture
def unhandled_signals_fail():
    """Outside fit(), SIGINT and SIGTERM fail the test instead of stopping (or killing) pytest."""
    def fail(signum, frame):
        raise AssertionError(f"{signal.Signals(signum).name} reached the test, not the trainer")

    previous = {number: signal.signal(number, fail) for number in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in previous.items():
        signal.signal(number, handler)


def test_a_signal_stops_fit_after_its_step_with_a_checkpoint(unhandled_signals_fail):
    cfg = TrainConfig(steps=50, batch_size=2, warmup=0, log_every=2, eval_every=None, checkpoint_every=None)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    for number, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        trainer, logged, checkpointed = fit_in_process(cfg, signal_at={3: number})
        with pytest.raises(Interrupted, match=r"at step 3 \(checkpoint written\)") as stop:
            trainer.fit()
        assert stop.value.exit_code == code and trainer.step == 3
        assert checkpointed == [3] and logged == [2]  # no extra log line: the resumed run writes the uninterrupted one's
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_second_signal_stops_at_once(unhandled_signals_fail):
    before = signal.getsignal(signal.SIGINT)
    cfg = TrainConfig(steps=50, batch_size=2, warmup=0, log_every=1, eval_every=None, checkpoint_every=None)
    trainer, logged, checkpointed = fit_in_process(cfg, signal_at={2: signal.SIGINT}, signal_in_checkpoint=signal.SIGINT)
    with pytest.raises(Interrupted, match="SIGINT again at step 2: stopped at once, without a checkpoint") as stop:
        trainer.fit()
    assert stop.value.exit_code == 130 and checkpointed == []  # the second one came while it was being written
    assert signal.getsignal(signal.SIGINT) == before


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux: from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # the fields after the command's name
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.ddp
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds torchrun's workers in /proc (Linux)")
def test_torchrun_processes_stop_at_the_same_step_on_ctrl_c(tmp_path, corpus):
    """A terminal's Ctrl-C reaches the workers, and torchrun, which forwards it to them once more:
    both stop after the same step, rank 0 having checkpointed it, the repeat ignored. Steps of
    about half a second (batch 2048) leave the repeat time to arrive mid-step."""
    out = tmp_path / "run"
    proc = torchrun([*long_run(tmp_path, corpus), "--set", "train.batch_size=2048", "--out", str(out)])
    try:
        wait_for_first_step(proc, out)
        workers = children(proc.pid)
        assert len(workers) == 2, workers
        for pid in workers:
            os.kill(pid, signal.SIGINT)
        time.sleep(0.05)  # apart, so that a worker sees two signals, not one (Python merges a quick repeat)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        end_group(proc)
    # not line by line: the two processes share stderr, and one's newline may come after the other's line
    steps = [int(m) for m in re.findall(r"attractor: interrupted at step (\d+) \(checkpoint written\); continue with: "
                                        rf"torchrun --nproc_per_node=2 -m attractor train --out {re.escape(str(out))} --resume",
                                        stderr)]
    assert len(steps) == 2 and steps[0] == steps[1], stderr[-3000:]
    checkpointed_at(out, steps[0])
    assert len(losses(out)) == steps[0]


@pytest.mark.ddp
def test_torchrun_processes_all_learn_that_the_directory_is_in_use(tmp_path, corpus):
    """Rank 0 finds the lock held (here by this test) and tells rank 1, which would otherwise wait
    for it at the next collective: both refuse at once, and nothing is written."""
    out = tmp_path / "run"
    with io.RunLock(out):
        proc = torchrun([*long_run(tmp_path, corpus, steps=3), "--out", str(out)])
        try:
            _, stderr = proc.communicate(timeout=120)
        finally:
            end_group(proc)
    refusals = re.findall(rf"attractor: error: {re.escape(str(out))} is in use by process {os.getpid()} ", stderr)
    assert proc.returncode != 0 and len(refusals) == 2, stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["lock"]


# ---- resume ------------------------------------------------------------------------------------


def test_resume_needs_a_run(tmp_path, corpus, capsys):
    for out in (tmp_path / "missing", tmp_path):
        for preset in ([], long_run(tmp_path, corpus, steps=1)):
            assert main(["train", *preset, "--out", str(out), "--resume"]) == 2
            err = capsys.readouterr().err.strip()
            assert err == f"attractor: error: {out} holds no run to resume; drop --resume to start one", err
    assert not (tmp_path / "missing").exists()


def test_resume_counts_only_typed_settings_and_may_extend_the_run(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    settings = tiny_settings("transformer-1m", tmp_path / "cache", "train.eval_every=null")
    assert main(["train", "transformer-1m", "--out", str(out), "--data", str(corpus), "--steps", "4", "--quiet",
                 *sets(settings)]) == 0
    capsys.readouterr()
    # the preset alone: its defaults (d=128, ...) are not changes to the saved run (d=32)
    assert main(["train", "transformer-1m", "--out", str(out), "--resume", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"resuming {out} from step 4 (ckpt-00000004); the run is complete at 4 steps" in printed
    # longer, and logging and checkpointing at another rate
    assert main(["train", "--out", str(out), "--resume", "--steps", "7", "--log-every", "2", "--quiet"]) == 0
    assert (f"resuming {out} from step 4 (ckpt-00000004); changed: train.log_every: 1 -> 2, train.steps: 4 -> 7"
            in capsys.readouterr().out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 6, 7]
    assert (out / "latest").read_text().strip() == "ckpt-00000007"
    saved = json.loads((out / "config.json").read_text())["train"]
    assert saved["steps"] == 7 and saved["log_every"] == 2
    # what would change the results is refused, naming it, and so is a length the run has passed
    for argv, match in ((["--set", "train.lr=0.01"], "other settings (train.lr: 0.003 -> 0.01)"),
                        (["--set", "train.eval_batches=3"], "other settings (train.eval_batches: 2 -> 3)"),
                        (["--set", "model.d=64"], "other settings (model.d: 32 -> 64)"),
                        (["--steps", "5"], "train.steps=5: " + f"{out} is at step 7 already")):
        assert main(["train", "--out", str(out), "--resume", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and match in err, err
    assert main(["train", "looped-1m", "--out", str(out), "--resume"]) == 2
    assert "holds a run of a transformer model, not looped" in capsys.readouterr().err


def test_an_extended_run_continues_at_the_new_schedules_rate():
    """After `--resume --steps N` the next step's rate is the new schedule's (here the full rate
    again: the run had cooled down to 0), not the old one's last value."""
    short = TrainConfig(steps=8, batch_size=2, warmup=0, eval_every=None, checkpoint_every=None)
    trainer, _, _ = fit_in_process(short)
    trainer.fit()
    assert trainer.optimizers[0].param_groups[0]["lr"] == 0.0  # cooled down
    longer = TrainConfig(steps=16, batch_size=2, warmup=0, eval_every=None, checkpoint_every=None)
    resumed, _, _ = fit_in_process(longer)
    resumed.load_state_dict(copy.deepcopy(trainer.state_dict()))
    assert resumed.optimizers[0].param_groups[0]["lr"] == longer.lr * wsd(8, longer) == longer.lr


def test_resume_restores_the_global_generator_dropout_draws_from():
    """A model with dropout, killed after step 7 and resumed from its step-5 checkpoint in a
    'new process' (another global seed): the same losses as the uninterrupted run."""
    cfg = TrainConfig(steps=12, batch_size=2, warmup=2, log_every=1, eval_every=None, checkpoint_every=5)

    def run(kill_after: int | None = None, state: dict | None = None):
        torch.manual_seed(0)
        model = DropoutLM()
        saved, logged = {}, []

        def progress(record):
            if record["step"] == kill_after:
                raise KeyboardInterrupt

        callbacks = Callbacks(log=lambda r: logged.append(r["loss"]), progress=progress,
                              checkpoint=lambda step: saved.update(model=copy.deepcopy(model.state_dict()),
                                                                   state=copy.deepcopy(trainer.state_dict())))
        trainer = Trainer(model, Counting(), [], cfg, callbacks)
        if state is not None:
            torch.manual_seed(1234)  # a new process's generator
            model.load_state_dict(state["model"])
            trainer.load_state_dict(state["state"])
        try:
            trainer.fit()
        except KeyboardInterrupt:
            pass
        return logged, saved

    full, _ = run()
    killed, saved = run(kill_after=7)
    assert len(killed) == 6 and saved["state"]["step"] == 5  # step 7 ran, its log line never came
    resumed, _ = run(state=saved)
    assert len(resumed) == 7
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(full[5:]), rtol=0, atol=1e-6)


# ---- a damaged newest checkpoint --------------------------------------------------------------


def test_a_damaged_newest_checkpoint_is_named_and_the_previous_one_used(tmp_path, corpus, capsys):
    out = tmp_path / "run"
    settings = tiny_settings("transformer-1m", tmp_path / "cache", "train.eval_every=null")
    assert main(["train", "transformer-1m", "--out", str(out), "--data", str(corpus), "--steps", "6", "--quiet",
                 *sets(settings)]) == 0
    capsys.readouterr()
    weights = out / "ckpt-00000006" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    warning = (f"attractor: warning: {out}/ckpt-00000006 is damaged (model.safetensors is truncated or corrupt "
               "(size or sha256 differs from the manifest)); using ckpt-00000003")
    assert main(["eval", str(out), "--iters", "0", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == warning and json.loads(captured.out)["step"] == 3
    assert main(["train", "--out", str(out), "--resume", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip() == warning
    assert f"resuming {out} from step 3 (ckpt-00000003)" in captured.out
    assert (out / "latest").read_text().strip() == "ckpt-00000006" and io.verify(out / "ckpt-00000006")
