"""A run's identity is its flags and its teacher's content, never where the save folder lives: a moved save folder,
``--save_dir save`` against its absolute path and a folder named by the previous release all keep every run finished
or resumable. A run folder and a teacher folder are trained by one process at a time, also after a crash."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

import train_student
import train_teacher
from helper.config import parse_student_args
from helper.options import teacher_checkpoint_path
from helper.run_folder import LOCK_NAME, find_earlier_run_folder, folder_lock, student_run_dir, teacher_digest
from helper.student_trainer import StudentRun
from tests.conftest import ROOT

ARGS = ["--dataset", "digits", "--model_s", "resnet8", "--model_t", "resnet8", "--subset_size", "200", "--epochs", "2",
        "--batch_size", "32", "--device", "cpu"]


def argv(save: Path | str, *extra: str) -> list[str]:
    return [*ARGS, "--save_dir", str(save), *extra]


def interrupted_after_first_epoch(args: list[str]) -> None:
    """Run ``args`` and stop it as a signal would, once the first pseudo-epoch is checkpointed."""
    end_epoch = StudentRun.end_epoch

    def stop_after_first(self: StudentRun, terms: dict[str, float]) -> bool:
        end_epoch(self, terms)
        raise SystemExit(143)

    with mock.patch.object(StudentRun, "end_epoch", stop_after_first), pytest.raises(SystemExit):
        train_student.main(args)


@pytest.fixture(scope="module")
def runs(digits_save: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A save folder with a finished run (seed 1) and an interrupted one (seed 2, last.pth after its first epoch)."""
    save = tmp_path_factory.mktemp("runs") / "save"
    shutil.copytree(digits_save, save)
    train_student.main(argv(save, "--seed", "1"))
    interrupted_after_first_epoch(argv(save, "--seed", "2"))
    assert (student_run_dir(parse_student_args(argv(save, "--seed", "2"))) / "last.pth").is_file()
    return save


def release_run_name(args: list[str], path_t: str) -> str:
    """The folder name the previous release gave a run (its formula, written out here): a sha1 of every flag but the
    paths, logging and resume, with ``--path_t`` resolved as spelt."""
    opt = parse_student_args(args)
    ignored = ("resume", "save_dir", "keep_cache", "keep_last", "data_folder", "wdb_project", "wdb_entity", "_tags")
    config = {k: v for k, v in sorted({**opt.to_dict(), "path_t": path_t}.items()) if k not in ignored}
    digest = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return (f"S-{opt.model_s}_T-{opt.model_t}_{opt.dataset}_r-none_d-{opt.distill}_n{opt.subset_size}"
            f"_lr{opt.learning_rate:g}_seed{opt.seed}_trial{opt.trial}_{digest}")


def rerun(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    train_student.main(args)
    return capsys.readouterr().out


def test_moved_save_folder_keeps_every_run_finished_or_resumable(runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    moved = tmp_path / "elsewhere" / "save"
    shutil.copytree(runs, moved)
    before = sorted(p.name for p in (moved / "student").iterdir())
    monkeypatch.chdir(moved.parent)  # and spelt relative to the working folder, not as it was trained
    out = rerun(argv("save", "--seed", "1"), capsys)
    assert "already finished" in out and "epoch    1" not in out
    out = rerun(argv("save", "--seed", "2"), capsys)
    assert "resuming that run" in out and "resumed at pseudo-epoch 1" in out and "epoch    1 |" not in out
    assert sorted(p.name for p in (moved / "student").iterdir()) == before
    assert not list((moved / "student").rglob(LOCK_NAME))  # the lock goes with the process that held it


def test_relative_and_absolute_save_dir_name_the_same_run(digits_save: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(digits_save.parent)
    relative = student_run_dir(parse_student_args(argv(digits_save.name)))
    absolute = student_run_dir(parse_student_args(argv(digits_save)))
    dotted = student_run_dir(parse_student_args(argv(f"./{digits_save.name}/", "--path_t",
                                                     str(teacher_checkpoint_path(digits_save, "digits", "resnet8")))))
    assert relative.name == absolute.name == dotted.name and relative.resolve() == absolute


def test_replaced_save_dir_reads_that_folders_teacher(digits_save: Path, tmp_path: Path) -> None:
    cfg = parse_student_args(argv(digits_save))
    other = tmp_path / "other"
    moved = dataclasses.replace(cfg, save_dir=str(other))
    assert moved.teacher_path == str(teacher_checkpoint_path(other, "digits", "resnet8"))
    shutil.copytree(digits_save / "models_digits", other / "models_digits")  # the same teacher file: the same run
    assert student_run_dir(moved).name == student_run_dir(cfg).name
    teacher = Path(moved.teacher_path)
    torch.manual_seed(1)  # another teacher under the same path: another run
    from models import model_dict

    torch.save({"model": model_dict["resnet8"](num_classes=10).state_dict(), "epoch": 240, "accuracy": 1.0}, teacher)
    os.utime(teacher, ns=(1, 1))
    assert student_run_dir(moved).name != student_run_dir(cfg).name


def test_folders_of_the_previous_release_are_renamed_once(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save = tmp_path / "save"
    shutil.copytree(runs, save)
    finished, interrupted = (student_run_dir(parse_student_args(argv(save, "--seed", s))) for s in ("1", "2"))
    # the interrupted run as the release named it in this save folder; the finished one as it named it in a save folder
    # that was moved here since (its name hashed the old location)
    old_teacher = str(teacher_checkpoint_path(tmp_path / "old_place" / "save", "digits", "resnet8"))
    legacy_finished = finished.with_name(release_run_name(argv(save, "--seed", "1"), old_teacher))
    legacy_interrupted = interrupted.with_name(release_run_name(
        argv(save, "--seed", "2"), str(teacher_checkpoint_path(save, "digits", "resnet8"))))
    finished.rename(legacy_finished)
    interrupted.rename(legacy_interrupted)
    for other in (["--seed", "1", "--kd_T", "3"], ["--seed", "2", "--w_kd", "0.5"]):  # never a run of other flags
        opt = parse_student_args(argv(save, *other))
        assert find_earlier_run_folder(opt, student_run_dir(opt), teacher_digest(opt.teacher_path)) is None
    out = rerun(argv(save, "--seed", "1"), capsys)
    assert f"renamed the run folder {legacy_finished.name} to {finished.name}" in out and "already finished" in out
    out = rerun(argv(save, "--seed", "2"), capsys)
    assert f"renamed the run folder {legacy_interrupted.name} to {interrupted.name}" in out and "resumed at pseudo-epoch 1" in out
    assert sorted((save / "student").iterdir()) == sorted([finished, interrupted])
    assert "renamed" not in rerun(argv(save, "--seed", "1"), capsys)  # once


HOLD = ("import sys, time\nfrom pathlib import Path\nfrom helper.run_folder import folder_lock\n"
        "with folder_lock(Path(sys.argv[1])), folder_lock(Path(sys.argv[2])):\n"
        "    print('locked', flush=True)\n    time.sleep(600)\n")


def test_one_process_per_run_folder_and_teacher_folder_also_after_a_crash(digits_save: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    save = tmp_path / "save"
    shutil.copytree(digits_save, save)
    student_args = argv(save, "--seed", "3")
    teacher_args = ["--model", "resnet8", "--dataset", "digits", "--epochs", "1", "--device", "cpu", "--save_dir", str(save / "t")]
    run_dir = student_run_dir(parse_student_args(student_args))
    teacher_dir = teacher_checkpoint_path(save / "t", "digits", "resnet8").parent
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(teacher_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        for main, args, folder in ((train_student.main, student_args, run_dir), (train_teacher.main, teacher_args, teacher_dir)):
            with pytest.raises(SystemExit) as stop:
                from core.errors import run_main

                run_main(lambda main=main, args=args: main(args))
            err = capsys.readouterr().err.strip().splitlines()
            assert stop.value.code == 2 and len(err) == 1 and "Traceback" not in err[0], err
            assert err[0].startswith(f"error: {folder} is being trained by another process (pid {holder.pid} on host ")
            assert "started" in err[0] and "run the same command again" in err[0]
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # the refused run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the lock files stay, their locks do not
        holder.wait(timeout=60)
    assert (run_dir / LOCK_NAME).is_file() and (teacher_dir / LOCK_NAME).is_file()
    train_student.main(student_args)
    assert (run_dir / "results.json").is_file() and not (run_dir / LOCK_NAME).exists()
    with folder_lock(teacher_dir):  # the teacher folder's stale lock is taken over too (training it: the tests above)
        assert f"pid {os.getpid()} on host " in (teacher_dir / LOCK_NAME).read_text()
    assert not (teacher_dir / LOCK_NAME).exists()


# ---------------------------------------------------------------------------------------------- damaged run files


def _first_tensor_key(state: dict) -> str:
    return next(k for k, v in state.items() if isinstance(v, torch.Tensor) and v.dim() >= 1)


def _reshaped(tensor: torch.Tensor) -> torch.Tensor:
    return torch.zeros((tensor.shape[0] + 1, *tensor.shape[1:]), dtype=tensor.dtype)


def _edit_pth(path: Path, edit) -> bytes:
    """The bytes of ``path``'s checkpoint after ``edit(obj)`` changed it in place."""
    import io

    obj = torch.load(path, map_location="cpu", weights_only=True)
    edit(obj)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _set(obj: dict, keys: tuple, value) -> None:
    for key in keys[:-1]:
        obj = obj[key]
    obj[keys[-1]] = value


def _reshape_at(obj: dict, keys: tuple) -> None:
    for key in keys:
        obj = obj[key]
    key = _first_tensor_key(obj)
    obj[key] = _reshaped(obj[key])


def _damages(path: Path, structure: tuple, shapes: tuple | None) -> dict[str, bytes]:
    """Three ways a file of a run folder comes back damaged: truncated, the wrong structure or types, the wrong shapes."""
    data = path.read_bytes()
    out = {"truncated": data[: len(data) // 2]}
    if path.suffix == ".json":
        out["structure"] = json.dumps(structure[0]).encode()
        out["types"] = json.dumps({**json.loads(data), **structure[1]}).encode()
        return out
    out["structure"] = _edit_pth(path, lambda obj: _set(obj, structure[:-1], structure[-1]))
    if shapes is not None:
        out["shapes"] = _edit_pth(path, lambda obj: _reshape_at(obj, shapes))
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(folder.rglob("*"))}


def test_every_damaged_run_file_is_named_in_one_sentence_and_nothing_is_lost(runs: Path, tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Every file a run reads back — a student's last.pth, teacher_cache.pth, results.json and best.pth, a teacher
    folder's config.json, final checkpoint and last.pth, and the teacher checkpoint a student reads — damaged three
    ways: one sentence naming the file, exit 2, no traceback, and every file of the folder as it was."""
    from core.errors import run_main

    save = tmp_path / "save"
    shutil.copytree(runs, save)
    finished, interrupted = (student_run_dir(parse_student_args(argv(save, "--seed", s))) for s in ("1", "2"))
    teacher_save = tmp_path / "teachers"
    teacher_args = ["--model", "resnet8", "--dataset", "digits", "--epochs", "1", "--device", "cpu", "--keep_last",
                    "--save_dir", str(teacher_save)]
    train_teacher.main(teacher_args)
    teacher_final = teacher_checkpoint_path(teacher_save, "digits", "resnet8")
    teacher_dir = teacher_final.parent
    resumable_teacher = tmp_path / "resumable"  # a teacher interrupted after its last epoch: last.pth, no final file
    shutil.copytree(teacher_save, resumable_teacher)
    teacher_checkpoint_path(resumable_teacher, "digits", "resnet8").unlink()
    fresh_student = argv(save, "--seed", "3", "--path_t", str(teacher_final))

    student = train_student.main
    cases = [  # (file, damages, entry point, its flags, the folder that must stay as it was)
        (interrupted / "last.pth", _damages(interrupted / "last.pth", ("loop", "garbage"), ("model",)),
         student, argv(save, "--seed", "2"), interrupted),
        (interrupted / "teacher_cache.pth", _damages(interrupted / "teacher_cache.pth", ("meta", "teacher_sha256", 5),
                                                     ("pool",)), student, argv(save, "--seed", "2"), interrupted),
        (finished / "results.json", _damages(finished / "results.json", ([1, 2], {"test_acc": "high"}), None),
         student, argv(save, "--seed", "1"), finished),
        (finished / "best.pth", _damages(finished / "best.pth", ("epoch", "x"), ("model",)),
         student, argv(save, "--seed", "1"), finished),
        (teacher_dir / "config.json", _damages(teacher_dir / "config.json", (["resnet8"], {"epochs": [1]}), None),
         train_teacher.main, teacher_args, teacher_dir),
        (teacher_final, _damages(teacher_final, ("epoch", "x"), ("model",)), train_teacher.main, teacher_args, teacher_dir),
        (resumable_teacher / teacher_dir.relative_to(teacher_save) / "last.pth",
         _damages(resumable_teacher / teacher_dir.relative_to(teacher_save) / "last.pth", ("sampler", "position", "x"),
                  ("model",)),
         train_teacher.main, [*teacher_args[:-1], str(resumable_teacher)], resumable_teacher),
        (teacher_final, _damages(teacher_final, ("model", "x"), ("model",)), student, fresh_student, save / "student"),
    ]
    seen = set()
    for path, damages, main, args, folder in cases:
        original = path.read_bytes()
        assert set(damages) >= {"truncated", "structure"} and len(damages) == 3, (path, list(damages))
        for how, data in damages.items():
            path.write_bytes(data)
            before = _files(folder)
            with pytest.raises(SystemExit) as stop:
                run_main(lambda main=main, args=args: main(args))
            err = capsys.readouterr().err.strip().splitlines()
            assert stop.value.code == 2 and len(err) == 1 and "Traceback" not in err[0], (path, how, err)
            assert str(path) in err[0] and "; " in err[0], (how, err[0])  # the file, then what to do
            assert _files(folder) == before, (path, how)  # nothing lost, nothing new
            seen.add((str(path), main.__module__, how))
        path.write_bytes(original)
    assert not (finished / "results.json").with_name("gone").exists()
    # a finished run that lost its results.json is not trained over its best.pth either
    (finished / "results.json").unlink()
    before = _files(finished)
    with pytest.raises(SystemExit) as stop:
        run_main(lambda: train_student.main(argv(save, "--seed", "1")))
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "lost its results.json" in err[0] and _files(finished) == before
    assert len(seen) == 3 * len(cases)  # the JSON files have no shapes: their third way is a value of the wrong type
