"""scripts/export_cifar_format.py and benchmarks/parity.py (+ parity_worker.py), without any training.

The export is read back by torchvision's CIFAR100 and by this project's reader; the parity harness is
checked through --dry-run, cached per-run JSONs and its table; the worker's stand-ins (wandb,
tensorboard_logger, .cuda(), torchvision's md5 check, get_data_folder) run a small stand-in of the
published train_student.py on an exported folder.
"""

from __future__ import annotations

import json
import os
import pickle
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import parity, parity_worker
from core.errors import UserError
from dataset import ImageSet, load_cifar100, load_digits_dataset
from scripts import export_cifar_format as export

ROOT = Path(__file__).resolve().parents[1]


def _subset(split: ImageSet, n: int) -> ImageSet:
    return ImageSet(images=split.images[:n].clone(), labels=split.labels[:n].clone(), num_classes=split.num_classes,
                    mean=split.mean, std=split.std)


@pytest.fixture(scope="module")
def digits_small() -> tuple[ImageSet, ImageSet]:
    train, test = load_digits_dataset()
    return _subset(train, 60), _subset(test, 30)


@pytest.fixture(scope="module")
def exported(digits_small, tmp_path_factory) -> Path:
    """A cifar-100-python export of 60 train / 30 test digits; returns the data folder."""
    out = tmp_path_factory.mktemp("export")
    export.export_cifar_format(*digits_small, out, source="digits")
    return out


def _torchvision_cifar(root: Path, train: bool):
    import torchvision.datasets.cifar as tv_cifar

    original = tv_cifar.check_integrity
    with pytest.MonkeyPatch.context() as mp:
        # the md5s are those of the official archive, which an export never matches: check existence only
        mp.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
        dataset = tv_cifar.CIFAR100(str(root), train=train, download=False)
    assert tv_cifar.check_integrity is original
    return dataset


@pytest.mark.parametrize("train", [True, False])
def test_export_reads_back_identically_in_torchvision(exported, digits_small, train):
    split = digits_small[0] if train else digits_small[1]
    dataset = _torchvision_cifar(exported, train)
    assert dataset.data.shape == (len(split), 32, 32, 3)  # torchvision keeps HWC
    assert np.array_equal(dataset.data, split.images.permute(0, 2, 3, 1).numpy())
    assert dataset.targets == split.labels.tolist()
    assert len(dataset.classes) == 100 and dataset.classes[0] == "class_00" and dataset.classes[10] == "unused_10"
    image, label = dataset[3]  # PIL image as the published transforms receive it
    assert np.array_equal(np.asarray(image), split.images[3].permute(1, 2, 0).numpy()) and label == int(split.labels[3])


def test_torchvision_refuses_the_export_without_skipping_the_md5_check(exported):
    import torchvision.datasets.cifar as tv_cifar

    with pytest.raises(RuntimeError, match="corrupted"):
        tv_cifar.CIFAR100(str(exported), train=True, download=False)


def test_export_reads_back_identically_in_this_projects_reader(exported, digits_small):
    train, test = load_cifar100(exported, download=False)
    for got, want in ((train, digits_small[0]), (test, digits_small[1])):
        assert got.images.dtype == torch.uint8
        assert torch.equal(got.images, want.images)
        assert torch.equal(got.labels, want.labels)
        assert got.num_classes == 100


def test_pickle_keys_are_py2_strings(exported):
    folder = exported / "cifar-100-python"
    for name, keys in (("train", ("data", "fine_labels", "coarse_labels", "filenames", "batch_label")),
                       ("test", ("data", "fine_labels", "coarse_labels", "filenames", "batch_label")),
                       ("meta", ("fine_label_names", "coarse_label_names"))):
        with open(folder / name, "rb") as handle:
            as_bytes = pickle.load(handle, encoding="bytes")
        with open(folder / name, "rb") as handle:
            as_latin1 = pickle.load(handle, encoding="latin1")
        assert sorted(as_bytes) == sorted(k.encode() for k in keys)
        assert sorted(as_latin1) == sorted(keys)
        assert all(type(k) is bytes for k in as_bytes) and all(type(k) is str for k in as_latin1)
        if name != "meta":
            data = as_bytes[b"data"]
            assert data.dtype == np.uint8 and data.shape[1] == 3072 and np.array_equal(data, as_latin1["data"])
            assert set(as_bytes[b"coarse_labels"]) == {0}
            assert isinstance(as_latin1["filenames"][0], str) and isinstance(as_bytes[b"filenames"][0], bytes)
    info = json.loads((folder / export.INFO_FILE).read_text())
    assert info["n_train"] == 60 and info["n_test"] == 30 and info["num_classes"] == 10


def test_data_rows_are_chw_row_major(tmp_path):
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).remainder(251).to(torch.uint8).reshape(2, 3, 32, 32)
    split = ImageSet(images=images, labels=torch.tensor([0, 99]), num_classes=100, mean=(0.5,) * 3, std=(0.25,) * 3)
    export.export_cifar_format(split, split, tmp_path, source="pattern")
    with open(tmp_path / "cifar-100-python" / "train", "rb") as handle:
        row = pickle.load(handle, encoding="bytes")[b"data"][1]
    assert row[0] == images[1, 0, 0, 0] and row[1] == images[1, 0, 0, 1] and row[32] == images[1, 0, 1, 0]
    assert row[1024] == images[1, 1, 0, 0] and row[2048 + 33] == images[1, 2, 1, 1]


def test_export_refuses_bad_labels_and_overwrites_only_with_force(tmp_path, digits_small, capsys):
    train, test = digits_small
    bad = ImageSet(images=train.images, labels=train.labels + 95, num_classes=105, mean=train.mean, std=train.std)
    with pytest.raises(UserError, match="0..99"):
        export.export_cifar_format(bad, test, tmp_path / "bad", source="bad")
    assert not (tmp_path / "bad" / "cifar-100-python").exists()

    target = export.main(["--dataset", "digits", "--out", str(tmp_path / "d")])
    assert target == tmp_path / "d" / "cifar-100-python" and "1437 train" in capsys.readouterr().out
    (target / "marker").write_text("old")
    with pytest.raises(UserError, match="--force"):
        export.main(["--dataset", "digits", "--out", str(tmp_path / "d")])
    assert (target / "marker").is_file()
    export.main(["--dataset", "digits", "--out", str(tmp_path / "d"), "--force"])
    assert not (target / "marker").exists()
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["cifar-100-python"]  # no temp folders left
    assert len(load_cifar100(tmp_path / "d", download=False)[0]) == 1437


# ---------------------------------------------------------------- parity.py


def _parity_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--data_folder", str(tmp_path / "no_data"), "--path_t", str(tmp_path / "t" / "resnet20_vanilla" / "ckpt_epoch_240.pth"),
            "--out", str(tmp_path / "out"), *extra]


def test_dry_run_lists_every_run_without_published_checkout(tmp_path):
    args = _parity_args(tmp_path, "--methods", "kd,ce,mixup,ckd", "--seeds", "1,2,3", "--dry-run")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "parity.py"), *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    headers = [line for line in proc.stdout.splitlines() if line.startswith("# ")]
    commands = [line for line in proc.stdout.splitlines() if line.startswith("cd ")]
    expected = [f"# {side} {method} seed {seed} -> " for side in ("published", "project") for method in ("kd", "ce", "mixup", "ckd")
                for seed in (1, 2, 3)]
    assert len(headers) == len(commands) == 24
    assert all(header.startswith(want) for header, want in zip(headers, expected))
    published = [c for c in commands if "parity_worker.py" in c]
    project = [c for c in commands if "train_student.py" in c]
    assert len(published) == len(project) == 12
    assert all(parity.PUBLISHED_PLACEHOLDER in c and "--model_t resnet20" in c and "--num_workers 0" in c for c in published)
    assert all("--device cpu" in c and "--dataset cifar100" in c and "--patience 10 --lr_decay_times 3 --epochs 200" in c
               for c in project)
    assert sum("--relational ckd --w_kd 0" in c for c in commands) == 6 and sum("--w_kd 1" in c for c in commands) == 6
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def _fake_result(job: parity.Job, test_acc: float, teacher_acc: float = 90.0) -> None:
    data = {"side": job.side, "method": job.method, "seed": job.seed, "test_acc": test_acc, "best_val_acc": test_acc + 1,
            "teacher_acc": teacher_acc, "flags": job.flags}
    job.result.parent.mkdir(parents=True, exist_ok=True)
    job.result.write_text(json.dumps(data))


def _jobs(tmp_path: Path, *extra: str) -> tuple[object, dict[tuple[str, str, int], parity.Job]]:
    opt = parity.build_parser().parse_args(_parity_args(tmp_path, *extra))
    parity.check_args(opt)
    opt.data_folder, opt.path_t, opt.out = opt.data_folder.resolve(), opt.path_t.resolve(), opt.out.resolve()
    return opt, {(s, m, seed): parity.make_job(opt, s, m, seed) for s in opt.sides for m in opt.methods for seed in opt.seeds}


def test_cached_results_are_reused_and_make_the_table(tmp_path, capsys):
    extra = ("--methods", "kd,ckd", "--seeds", "1,2,3")
    _, jobs = _jobs(tmp_path, *extra)
    published = {("kd", 1): 70.0, ("kd", 2): 72.0, ("kd", 3): 74.0, ("ckd", 1): 50.0, ("ckd", 2): 53.0}
    project = {("kd", 1): 71.0, ("kd", 2): 74.0, ("kd", 3): 77.0}
    for (method, seed), acc in published.items():
        _fake_result(jobs[("published", method, seed)], acc, teacher_acc=96.5)
    for (method, seed), acc in project.items():
        _fake_result(jobs[("project", method, seed)], acc, teacher_acc=96.25)

    assert parity.main(_parity_args(tmp_path, *extra, "--dry-run")) == 0
    out = capsys.readouterr().out
    assert out.count(": cached ") == 8 and "# published ckd seed 3 -> " in out and "# project ckd seed 1 -> " in out

    opt, _ = _jobs(tmp_path, *extra)
    results = {key: json.loads(job.result.read_text()) for key, job in jobs.items() if job.result.is_file()}
    table = parity.format_table(results, opt.methods).splitlines()
    kd_row = table[2].split(" | ")
    assert kd_row[0] == "| kd"
    assert kd_row[1] == f"72.00 ± {statistics.stdev([70, 72, 74]):.2f} (3)"
    assert kd_row[2] == f"74.00 ± {statistics.stdev([71, 74, 77]):.2f} (3)"
    assert kd_row[3] == "+2.00"
    assert kd_row[4] == "s1 70.00, s2 72.00, s3 74.00"
    ckd_row = table[3].split(" | ")
    assert ckd_row[1] == f"51.50 ± {statistics.stdev([50, 53]):.2f} (2)" and ckd_row[2] == "—" and ckd_row[3] == "—"
    report = parity.format_report(opt, results)
    assert "published 96.50" in report and "project 96.25" in report


def test_full_table_from_cache_runs_nothing(tmp_path, capsys):
    extra = ("--methods", "ce", "--seeds", "4", "--sides", "published,project")
    _, jobs = _jobs(tmp_path, *extra)
    _fake_result(jobs[("published", "ce", 4)], 61.0)
    _fake_result(jobs[("project", "ce", 4)], 60.5)
    assert parity.main(_parity_args(tmp_path, *extra)) == 0  # no data, no teacher, no checkout: all cached
    report = (tmp_path / "out" / "parity.md").read_text()
    assert "| ce | 61.00 (1) | 60.50 (1) | -0.50 | s4 61.00 | s4 60.50 |" in report
    assert report in capsys.readouterr().out


def test_table_only_runs_nothing_even_when_results_are_missing(tmp_path):
    extra = ("--methods", "kd,ce", "--seeds", "1,2", "--published", str(tmp_path / "absent"))
    _, jobs = _jobs(tmp_path, *extra)
    _fake_result(jobs[("published", "kd", 1)], 80.0)
    _fake_result(jobs[("published", "kd", 2)], 82.0)
    assert parity.main(_parity_args(tmp_path, *extra, "--table_only")) == 0
    report = (tmp_path / "out" / "parity.md").read_text()
    assert f"| kd | 81.00 ± {statistics.stdev([80, 82]):.2f} (2) | — | — | s1 80.00, s2 82.00 | — |" in report
    assert "| ce | — | — | — | — | — |" in report
    assert not (tmp_path / "out" / "logs").exists()


def test_a_result_made_with_other_flags_is_not_reused(tmp_path):
    _, jobs = _jobs(tmp_path, "--methods", "kd", "--seeds", "1", "--sides", "project")
    job = jobs[("project", "kd", 1)]
    _fake_result(job, 70.0)
    with pytest.raises(UserError, match="other flags"):
        parity.main(_parity_args(tmp_path, "--methods", "kd", "--seeds", "1", "--sides", "project", "--patience", "5", "--dry-run"))


def test_bad_parity_arguments_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="unknown --methods foo"):
        parity.main(_parity_args(tmp_path, "--methods", "kd,foo", "--dry-run"))
    with pytest.raises(UserError, match="ARCH_vanilla"):
        parity.main(["--data_folder", "d", "--path_t", str(tmp_path / "ckpt.pth"), "--out", "o", "--dry-run"])
    with pytest.raises(UserError, match="needs --published"):
        parity.main(_parity_args(tmp_path, "--methods", "kd", "--seeds", "1"))


def test_project_results_path_is_the_last_results_line():
    log = "results: /old/results.json\nstuff\nresults: /a b/results.json\n"
    assert parity.project_results_path(log) == Path("/a b/results.json")
    assert parity.project_results_path("error: no\n") is None


# ---------------------------------------------------------------- parity_worker.py


FAKE_PUBLISHED_TRAIN = '''
import sys
import torch
import wandb
import tensorboard_logger as tb_logger
from torchvision import datasets
from dataset.cifar100 import get_loader

def validate(loader, model, criterion, opt):
    images = loader
    return (images.float().mean() >= 0).float() * 100.0, None, None

def early_stopping_adjust_lr(times, opt, optimizer):
    optimizer.param_groups[0]["lr"] = 0.05 * 0.1 ** times

def main():
    seed = int(sys.argv[sys.argv.index("--seed") + 1])
    run = wandb.init(project="x", config={"seed": seed})
    logger = tb_logger.Logger(logdir="save/tb", flush_secs=2)
    train, test = get_loader()
    x = torch.as_tensor(train.data[:4]).float().cuda()
    module = torch.nn.Linear(3, 3).cuda()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    teacher_acc, _, _ = validate(x, module, None, None)
    for times in range(3):
        early_stopping_adjust_lr(times, None, optimizer)
        run.log({"val_acc": float(times + seed)}, step=times + 1)
        logger.log_value("train_loss", 0.5, times)
    run.log({"test_acc": torch.tensor(len(test) + 0.5), "test_acc_top5": 99.0, "test_loss": 0.25,
             "best_val_acc": torch.tensor(2.0 + seed)})
'''

FAKE_PUBLISHED_CIFAR = '''
import os
from torchvision import datasets

def get_data_folder():
    return "../data/"

def get_loader():
    root = get_data_folder()
    os.makedirs("temp", exist_ok=True)  # the published code writes here; the worker runs in a scratch folder
    return (datasets.CIFAR100(root=root, download=True, train=True),
            datasets.CIFAR100(root=root, download=True, train=False))
'''


def test_worker_runs_a_published_style_main_with_its_stand_ins(tmp_path, exported):
    published = tmp_path / "published"
    (published / "dataset").mkdir(parents=True)
    (published / "train_student.py").write_text(textwrap.dedent(FAKE_PUBLISHED_TRAIN))
    (published / "dataset" / "__init__.py").write_text("")
    (published / "dataset" / "cifar100.py").write_text(textwrap.dedent(FAKE_PUBLISHED_CIFAR))
    result = tmp_path / "out" / "published" / "kd_seed2.json"
    meta = json.dumps({"side": "published", "method": "kd", "seed": 2})
    command = [sys.executable, "-P", str(parity.WORKER), "--published", str(published), "--data_folder", str(exported),
               "--result", str(result), "--scratch_root", str(tmp_path / "work"), "--meta", meta, "--", "--seed", "2"]
    job = parity.Job("published", "kd", 2, ["--seed", "2"], command, ROOT, result, tmp_path / "log", pythonpath=str(published))
    env = parity.child_env(job)
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(result.read_text())
    assert data["test_acc"] == 30.5  # 30 test images in the export, read through torchvision
    assert data["best_val_acc"] == 4.0 and data["test_acc_top5"] == 99.0 and data["test_loss"] == 0.25
    assert data["teacher_acc"] == 100.0
    assert data["lr_phases"] == pytest.approx([0.05, 0.005, 0.0005])
    assert data["val_acc_curve"] == [[1, 2.0], [2, 3.0], [3, 4.0]] and data["pseudo_epochs"] == 3
    assert data["flags"] == ["--seed", "2"] and data["side"] == "published" and data["seed"] == 2
    assert list((tmp_path / "work").iterdir()) == []  # the scratch folder (temp/, save/) is removed


def test_worker_summarize_logs_needs_a_final_test_acc():
    logs = [{"_step": 1, "val_acc": 10.0}, {"_step": 1, "train_loss": 1.0}, {"_step": 2, "val_acc": 12.0},
            {"_step": None, "test_acc": 11.0, "best_val_acc": 12.0, "test_acc_top5": 50.0, "test_loss": 2.0}]
    summary = parity_worker.summarize_logs(logs)
    assert summary["test_acc"] == 11.0 and summary["best_val_acc"] == 12.0 and summary["pseudo_epochs"] == 2
    with pytest.raises(RuntimeError, match="no test_acc"):
        parity_worker.summarize_logs(logs[:3])
