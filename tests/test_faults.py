"""Faults during a run: Ctrl-C, SIGKILL inside a checkpoint write, a non-finite loss, a full disk, W&B failing
mid-run, and the provenance that results.json records. Every case ends in a state the same command recovers from."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train_student
import train_teacher
from core.checkpoint import file_sha256, remove_stale_temp_files, safe_load
from core.errors import UserError
from helper.student_trainer import StudentRun
from tests.conftest import ROOT

PY = sys.executable
TEACHER_REL = Path("models") / "resnet8_vanilla" / "ckpt_epoch_240.pth"
ENV = {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "CKD_CHECKPOINT_EVERY_S": "0"}  # last.pth after every pseudo-epoch


def student_args(fake_cifar: Path, save_dir: Path, *extra: str) -> list[str]:
    return ["--model_s", "resnet8", "--model_t", "resnet8", "--path_t", str(save_dir / TEACHER_REL), "--relational", "ckd",
            "--subset_size", "200", "--batch_size", "32", "--epochs", "3", "--data_folder", str(fake_cifar), "--device", "cpu",
            "--save_dir", str(save_dir), *extra]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, **ENV, **extra}


def run(cmd: list[str], **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, *cmd], cwd=ROOT, env=env(**extra_env), capture_output=True, text=True, timeout=300)


def results_of(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("results: "), proc.stdout[-2000:]
    return json.loads(Path(last.removeprefix("results: ")).read_text())


def the_run_dir(save_dir: Path) -> Path:
    dirs = list((save_dir / "student").iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# A stand-in for `python train_student.py ...` whose second write of last.pth goes wrong: "slow" writes it in
# chunks with sleeps and touches FLAG once the temporary file holds a first chunk (the test then SIGKILLs it);
# "enospc" writes one chunk and then fails as a full disk does. The real atomic_write_bytes runs around it.
WRAPPER = '''\
import errno, os, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import core.checkpoint as checkpoint
import train_student
import train_teacher
from core.errors import run_main

MODE, FLAG = {mode!r}, Path({flag!r})
real_write_bytes, real_fdopen = checkpoint.atomic_write_bytes, os.fdopen
last_writes = 0


class FaultyFile:
    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def write(self, data):
        view = memoryview(data)
        chunk = max(len(view) // 50, 1)
        for start in range(0, len(view), chunk):
            self.handle.write(view[start:start + chunk])
            self.handle.flush()
            if MODE == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            FLAG.touch()
            time.sleep(0.5)
        return len(view)


def faulty_write_bytes(path, data):
    global last_writes
    if Path(path).name == "last.pth":
        last_writes += 1
        if last_writes == 2:
            os.fdopen = lambda fd, *args, **kwargs: FaultyFile(real_fdopen(fd, *args, **kwargs))
            try:
                return real_write_bytes(path, data)
            finally:
                os.fdopen = real_fdopen
    return real_write_bytes(path, data)


checkpoint.atomic_write_bytes = faulty_write_bytes
run_main(lambda: train_student.main(sys.argv[1:]))
'''


def write_wrapper(tmp_path: Path, mode: str) -> tuple[Path, Path]:
    flag = tmp_path / f"{mode}.flag"
    script = tmp_path / f"faulty_{mode}.py"
    script.write_text(WRAPPER.format(root=str(ROOT), mode=mode, flag=str(flag)))
    return script, flag


def assert_last_is_epoch(run_dir: Path, epoch: int) -> None:
    ckpt = safe_load(run_dir / "last.pth")
    assert ckpt["schedule"]["epoch"] == ckpt["epoch"] == epoch and ckpt["loop"]["step_in_epoch"] == 0


# ---------------------------------------------------------------- signals


def start_past_the_first_checkpoint(fake_cifar: Path, save_dir: Path) -> subprocess.Popen:
    """A long student run, returned once it is inside a pseudo-epoch after its first last.pth."""
    proc = subprocess.Popen([PY, "train_student.py", *student_args(fake_cifar, save_dir, "--epochs", "200")], cwd=ROOT,
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((save_dir / "student").glob("*/last.pth")):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint was written"
        time.sleep(0.02)
    time.sleep(0.3)  # inside a later pseudo-epoch
    return proc


def test_sigint_saves_last_and_says_how_to_resume(fake_cifar: Path, save_dir: Path) -> None:
    proc = start_past_the_first_checkpoint(fake_cifar, save_dir)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    assert "Traceback" not in err and "received SIGINT" in err
    run_dir = the_run_dir(save_dir)
    # inside the training steps the step in flight is finished and last.pth written again; inside the per-epoch
    # validation the run stops at once (helper.engine.StopRequest) and the last.pth already there is what resumes
    saved = f"stopped: saved {run_dir / 'last.pth'}; resume with the same command" in out
    assert saved or f"during evaluation: stopped; the same command resumes from {run_dir / 'last.pth'}" in err, (out, err)
    state = safe_load(run_dir / "last.pth")["loop"]
    assert state["global_step"] > 0 and not state["finished"]
    assert not (run_dir / "results.json").exists() and temp_files(run_dir) == []


def test_a_second_signal_exits_at_once_with_one_line(fake_cifar: Path, save_dir: Path) -> None:
    """SIGINT then SIGTERM while the first is still being honoured: exit 128 + SIGTERM, one line, no traceback."""
    proc = start_past_the_first_checkpoint(fake_cifar, save_dir)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)  # before the step in flight ends (a different signal: two handler calls)
    out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = err.strip().splitlines()
    if proc.returncode == 128 + signal.SIGINT:  # SIGINT found the per-epoch validation: that stops at once, alone
        assert lines[-1].startswith("received SIGINT during evaluation: stopped"), err
        return
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert lines[-2].startswith("received SIGINT") and lines[-1].startswith("received SIGTERM again: stopping now"), err
    assert "stopped: saved" not in out


def test_sigkill_inside_a_checkpoint_write_is_recovered(fake_cifar: Path, save_dir: Path, tmp_path: Path) -> None:
    script, flag = write_wrapper(tmp_path, "slow")
    args = student_args(fake_cifar, save_dir, "--keep_last")  # the finished run's last.pth is checked below
    proc = subprocess.Popen([PY, str(script), *args], cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "the run never reached its second write of last.pth"
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    run_dir = the_run_dir(save_dir)
    leftovers = temp_files(run_dir)
    assert [p.name.startswith(".last.pth.") for p in leftovers] == [True]  # killed inside the write, as intended
    assert_last_is_epoch(run_dir, 1)  # the previous complete last.pth, untouched
    assert not (run_dir / "results.json").exists()

    resumed = run(["train_student.py", *args])  # the same command, as a person would re-run it
    results = results_of(resumed)
    assert f"removed {leftovers[0].name}" in resumed.stdout and "resuming that run" in resumed.stdout
    assert "reusing the teacher cache" in resumed.stdout
    assert results["pseudo_epochs"] == 3 and results["teacher_calls"] == 160
    assert temp_files(run_dir) == []
    assert_last_is_epoch(run_dir, 3)


def test_leftover_temp_files_are_removed_when_a_run_starts(tmp_path: Path) -> None:
    (tmp_path / ".last.pth.abcd1234.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".results.json.x.tmp").write_bytes(b"{")
    for keep in ("last.pth", "notes.tmp", ".hidden"):
        (tmp_path / keep).write_bytes(b"keep")
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == [".last.pth.abcd1234.tmp", ".results.json.x.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "last.pth", "notes.tmp"]
    assert remove_stale_temp_files(tmp_path / "missing") == []


# ---------------------------------------------------------------- non-finite loss


def test_nan_loss_stops_at_once_from_the_command_line(fake_cifar: Path, save_dir: Path) -> None:
    diverging = ("--learning_rate", "10", "--momentum", "1", "--w_cls", "10000", "--w_rel_scale", "10000")  # range edges
    proc = run(["train_student.py", *student_args(fake_cifar, save_dir, *diverging)])
    line = one_error_line(proc)
    step = int(re.search(r"non-finite at step (\d+) \(pseudo-epoch 1;", line).group(1))
    assert step < 5, line  # stopped at the first bad step, not at the end of the 5-step pseudo-epoch
    assert "cls=" in line and "rel=" in line and "train_loss=" in line and "no checkpoint was written yet" in line
    run_dir = the_run_dir(save_dir)
    assert not (run_dir / "results.json").exists() and not (run_dir / "last.pth").exists()


def test_nan_loss_names_the_last_good_checkpoint(fake_cifar: Path, save_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_step = StudentRun.train_step

    def poisoned_step(self: StudentRun, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms = real_step(self, batch)
        if self.schedule.epoch >= 1 and self.loop.step_in_epoch == 2:  # third step of the second pseudo-epoch
            terms = {k: v * math.inf if k == "rel" else v * math.nan for k, v in terms.items()}
        return terms

    monkeypatch.setattr(StudentRun, "train_step", poisoned_step)
    with pytest.raises(UserError) as caught:
        train_student.main(student_args(fake_cifar, save_dir))
    message = str(caught.value)
    run_dir = the_run_dir(save_dir)
    assert "\n" not in message
    assert "non-finite at step 8 (pseudo-epoch 2;" in message  # 5 steps per pseudo-epoch, then the third
    assert "cls=nan" in message and "rel=inf" in message and "train_loss=nan" in message
    assert f"the last good checkpoint is {run_dir / 'last.pth'}" in message
    assert_last_is_epoch(run_dir, 1)
    assert not (run_dir / "results.json").exists()


def test_a_failed_run_is_marked_not_resumed_and_its_cause_named(fake_cifar: Path, save_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """What a failed run leaves (docs/runs.md): a run folder marked FAILED with its reason, which the same command
    refuses to resume; a teacher with non-finite outputs is named before anything is written; a teacher folder whose
    training diverged is marked the same way; the advice names the likely cause from what is non-finite."""
    real_step = StudentRun.train_step

    def poisoned_step(self: StudentRun, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        terms = real_step(self, batch)
        return {k: v * math.nan for k, v in terms.items()} if self.schedule.epoch >= 1 else terms

    monkeypatch.setattr(StudentRun, "train_step", poisoned_step)
    argv = student_args(fake_cifar, save_dir)
    with pytest.raises(UserError) as failed:
        train_student.main(argv)
    run_dir = the_run_dir(save_dir)
    marked = (run_dir / "FAILED").read_text(encoding="utf-8")
    assert marked.strip() == str(failed.value) and "lower --learning_rate" in marked
    assert not (run_dir / "teacher_cache.pth").exists() and not (run_dir / "results.json").exists()
    before = sorted(p.name for p in run_dir.iterdir())
    monkeypatch.setattr(StudentRun, "train_step", real_step)
    with pytest.raises(UserError, match=rf"^{re.escape(str(run_dir))} holds a run that failed \(the loss became non-finite.*"
                                        rf"delete {re.escape(str(run_dir))} to run it again$"):
        train_student.main(argv)  # the same command: not resumed into the same divergence
    assert sorted(p.name for p in run_dir.iterdir()) == before

    # a damaged teacher (NaN weights) is named when its cache is built, and nothing is written
    damaged = tmp_path / "damaged" / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    damaged.parent.mkdir(parents=True)
    state = torch.load(save_dir / TEACHER_REL, weights_only=True)["model"]
    state["conv1.weight"] = torch.full_like(state["conv1.weight"], math.nan)
    torch.save({"model": state}, damaged)
    other = tmp_path / "other"
    with pytest.raises(UserError, match=rf"^the teacher {re.escape(str(damaged))} gives non-finite logits for 160 of 160 "
                                        r"training items \(\d+ of its weights are NaN or infinite\); it is damaged"):
        train_student.main(student_args(fake_cifar, other, "--path_t", str(damaged), "--relational", "ckd"))
    assert not other.exists()

    # a teacher whose training diverges: its folder is marked too, and the same command does not resume it
    from helper.teacher_trainer import TeacherRun

    real_teacher_step = TeacherRun.train_step
    monkeypatch.setattr(TeacherRun, "train_step", lambda self, batch: {k: v * math.nan for k, v in
                                                                       real_teacher_step(self, batch).items()})
    teacher_argv = ["--dataset", "digits", "--model", "resnet8", "--epochs", "2", "--lr_decay_epochs", "1", "--device", "cpu",
                    "--save_dir", str(tmp_path / "tsave")]
    with pytest.raises(UserError, match="non-finite in epoch 1: the weights diverged at --learning_rate 0.05"):
        train_teacher.main(teacher_argv)
    with pytest.raises(UserError, match="holds a run that failed"):
        train_teacher.main(teacher_argv)


@pytest.mark.parametrize(("terms", "weights", "flags", "cause"), [
    ({"cls": math.nan, "rel": math.nan}, {"cls": 1.0, "rel": 1.0}, {}, "the student's weights diverged"),
    ({"cls": 2.0, "kd": math.inf}, {"cls": 1.0, "kd": 1.0}, {"w_kd": 1.0, "kd_T": 0.001}, "at the temperature --kd_T 0.001"),
    ({"cls": 2.0, "rel": math.inf}, {"cls": 1.0, "rel": 8e6}, {"relational": "ckd", "w_rel_scale": 1e4},
     "the weight of the rel term (8e+06, from --w_rel_scale) is extreme"),
    ({"cls": 2.0, "rel": math.inf}, {"cls": 1.0, "rel": 0.8}, {"relational": "crd", "nce_t": 0.001}, "--nce_t"),
    ({"cls": 2.0, "inter": math.nan}, {"cls": 1.0, "inter": 1.0}, {"distill": "hint"}, "the hint term overflowed"),
    ({"cls": 1e38, "rel": 1e38, "train_loss": math.inf}, {"cls": 1e4, "rel": 1e4}, {"relational": "ckd"},
     "every term is finite but their weighted sum is not"),
], ids=["student", "temperature", "weight", "crd", "white-box", "sum"])
def test_non_finite_advice_names_the_likely_cause(terms: dict, weights: dict, flags: dict, cause: str) -> None:
    from helper.config import StudentConfig
    from helper.student_trainer import non_finite_cause

    opt = StudentConfig(model_s="resnet8", model_t="resnet8", **flags)
    assert cause in non_finite_cause(opt, terms, weights, torch.zeros(4, 10))
    if cause.startswith("the student"):
        assert "--learning_rate" in non_finite_cause(opt, terms, weights, torch.zeros(4, 10))
    peaked = {"cls": 2.0, "kd": math.inf}
    assert "check the teacher" in non_finite_cause(StudentConfig(model_s="resnet8", model_t="resnet8", w_kd=1.0), peaked,
                                                   {"cls": 1.0, "kd": 1.0}, torch.full((4, 10), 1e6))


# ---------------------------------------------------------------- disk full


def test_disk_full_while_saving_keeps_the_previous_checkpoint(fake_cifar: Path, save_dir: Path, tmp_path: Path) -> None:
    script, _ = write_wrapper(tmp_path, "enospc")
    proc = run([str(script), *student_args(fake_cifar, save_dir)])
    line = one_error_line(proc)
    run_dir = the_run_dir(save_dir)
    assert f"could not write {run_dir / 'last.pth'} ({os.strerror(errno.ENOSPC)})" in line
    assert "the previous file there is unchanged" in line and "--save_dir" in line
    assert_last_is_epoch(run_dir, 1)
    assert temp_files(run_dir) == []
    assert not (run_dir / "results.json").exists()


# ---------------------------------------------------------------- W&B failing mid-run


WANDB_WRAPPER = '''\
import sys
sys.path.insert(0, {root!r})
import wandb
import train_student
import train_teacher
from core.errors import run_main

real_init = wandb.init


class FailingRun:
    """The real offline run, whose log() fails from its second call on (a W&B outage mid-run)."""

    def __init__(self, run):
        self.run, self.calls = run, 0

    def log(self, *args, **kwargs):
        self.calls += 1
        if self.calls > 1:
            raise ConnectionError("simulated W&B outage")
        return self.run.log(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.run, name)


wandb.init = lambda *args, **kwargs: FailingRun(real_init(*args, **kwargs))
run_main(lambda: train_student.main(sys.argv[1:]))
'''


def test_wandb_failing_mid_run_never_stops_training(fake_cifar: Path, save_dir: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    script = tmp_path / "wandb_fails.py"
    script.write_text(WANDB_WRAPPER.format(root=str(ROOT)))
    proc = run([str(script), *student_args(fake_cifar, save_dir)], WANDB_MODE="offline", WANDB_SILENT="true",
               WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"), WANDB_CACHE_DIR=str(tmp_path / "wandb_cache"))
    results = results_of(proc)
    assert results["pseudo_epochs"] == 3
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if "wandb: logging failed" in line]
    assert len(warnings) == 1 and "simulated W&B outage" in warnings[0] and "continuing without W&B" in warnings[0]
    run_dir = the_run_dir(save_dir)
    assert list((run_dir / "wandb").glob("offline-run-*")), "W&B was not on in offline mode"
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_acc")] == [1, 2, 3]


# ---------------------------------------------------------------- integrity


def test_results_record_what_produced_them(fake_cifar: Path, save_dir: Path) -> None:
    results = results_of(run(["train_student.py", *student_args(fake_cifar, save_dir, "--epochs", "1")]))
    assert results["teacher_sha256"] == file_sha256(save_dir / TEACHER_REL)
    assert len(results["teacher_sha256"]) == 64
    assert results["torch_version"] == torch.__version__ and results["device"] == "cpu"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if head:
        assert results["git_commit"] in (head, head + "-dirty")
    else:
        assert results["git_commit"] == "unknown"
