"""scripts/summarize.py on synthetic runs: labels, learning rate chosen on validation (never test),
mean/std/n per cell, Markdown/CSV/PNG outputs, W&B offline runs, and the empty-folder error."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.errors import UserError
from helper.options import build_student_parser
from scripts import summarize

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {"resnet32": "resnet110", "wrn_16_2": "wrn_40_2"}
# label -> (flags, base test accuracy)
METHODS = {
    "ce": ({"relational": None, "distill": "kd", "w_kd": 0.0}, 40.0),
    "kd": ({"relational": None, "distill": "kd", "w_kd": 1.0}, 44.0),
    "ckd": ({"relational": "ckd", "distill": "kd", "w_kd": 0.0}, 48.0),
    "ckd(P+N=3)": ({"relational": "ckd", "distill": "kd", "w_kd": 0.0, "pos_and_neg": 3}, 49.0),
    "crd+kd": ({"relational": "crd", "distill": "kd", "w_kd": 1.0}, 45.0),
    "ckd_inter+hint": ({"relational": "ckd_inter", "distill": "hint", "w_kd": 0.0}, 47.0),
}
SIZES = (2000, 4000)
SEEDS = (1, 2, 3)
LRS = (0.05, 0.1)


def accuracies(base: float, size: int, seed: int, lr: float) -> tuple[float, float]:
    """(test, best val): lr 0.1 validates 5 points better but tests 3 points worse than lr 0.05."""
    test = base + size / 1000 + seed * 0.1 + (-3.0 if lr == 0.1 else 0.0)
    val = base + size / 1000 + seed * 0.2 + (5.0 if lr == 0.1 else 0.0)
    return test, val


def config_of(student: str, flags: dict, size: int, seed: int, lr: float, save_dir: Path) -> dict:
    config = vars(build_student_parser().parse_args([]))
    config.update(flags, model_s=student, model_t=PAIRS[student], subset_size=size, seed=seed, learning_rate=lr,
                  save_dir=str(save_dir))
    return config


def write_runs(folder: Path) -> int:
    count = 0
    for student in PAIRS:
        for label, (flags, base) in METHODS.items():
            for size in SIZES:
                for seed in SEEDS:
                    for lr in LRS:
                        test, val = accuracies(base, size, seed, lr)
                        calls = 0 if label == "ce" else int(size * 0.8) * (2 if label.startswith("ckd_inter") else 1)
                        run = folder / "student" / f"{student}_{label}_{size}_{seed}_{lr}"
                        run.mkdir(parents=True)
                        results = {"test_acc": test, "test_acc_top5": test + 20, "test_loss": 2.0, "best_val_acc": val,
                                   "teacher_acc": 74.3 if student == "resnet32" else 75.6, "teacher_calls": calls,
                                   "teacher_eval_calls": 0, "n_train": int(size * 0.8), "n_val": size // 5,
                                   "pseudo_epochs": 10, "steps": 100, "wall_time_s": 1.0,
                                   "config": config_of(student, flags, size, seed, lr, folder)}
                        (run / "results.json").write_text(json.dumps(results))
                        count += 1
    return count


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("runs")
    write_runs(folder)
    return folder


@pytest.mark.parametrize("flags, label", [
    ({"relational": None, "distill": "kd", "w_kd": 0}, "ce"),
    ({"relational": "None", "distill": "kd", "w_kd": 0.5}, "kd"),
    ({"relational": "ckd", "distill": "kd", "w_kd": 0, "pos_and_neg": 2}, "ckd"),
    ({"relational": "ckd_add", "distill": "kd", "w_kd": 0, "pos_and_neg": 4}, "ckd_add(P+N=4)"),
    ({"relational": "mixup3", "distill": "kd", "w_kd": 0}, "mixup3"),
    ({"relational": "ckd", "distill": "kd", "w_kd": 1}, "ckd+kd"),
    ({"relational": "crd", "distill": "kd", "w_kd": 1}, "crd+kd"),
    ({"relational": None, "distill": "hint", "w_kd": 1}, "hint+kd"),
    ({"relational": None, "distill": "vid", "w_kd": 0}, "vid"),
    ({"relational": "ckd_inter", "distill": "correlation", "w_kd": 0, "pos_and_neg": 3}, "ckd_inter(P+N=3)+correlation"),
    ({"relational": "dkd", "distill": "kd", "w_kd": 0, "pos_and_neg": 3}, "dkd"),
    ({"relational": "ckd_inter", "distill": "attention", "w_kd": 0, "pos_and_neg": 2}, "ckd_inter+attention"),
    ({"relational": None, "distill": "abound", "w_kd": 1}, "abound+kd"),
])
def test_method_labels(flags: dict, label: str) -> None:
    assert summarize.method_label(flags) == label


def test_learning_rate_is_chosen_on_validation(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    assert summarize.main([str(runs), "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert f"plot: {out_dir / summarize.PLOT_NAME}" in printed.splitlines()[-1]

    with open(out_dir / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(PAIRS) * len(METHODS) * len(SIZES)
    for row in rows:
        base = METHODS[row["method"]][1]
        size = int(row["subset_size"])
        # lr 0.1 has the better validation accuracy, so it is reported although its test accuracy is lower
        assert row["learning_rate"] == "0.1"
        tests = [accuracies(base, size, seed, 0.1)[0] for seed in SEEDS]
        assert float(row["test_acc_mean"]) == pytest.approx(statistics.fmean(tests), abs=1e-4)
        assert float(row["test_acc_std"]) == pytest.approx(statistics.stdev(tests), abs=1e-4)
        assert row["n"] == "3" and row["seeds"] == "1 2 3"
        assert float(row["test_acc_mean"]) < statistics.fmean(accuracies(base, size, s, 0.05)[0] for s in SEEDS)

    md = (out_dir / "summary.md").read_text()
    assert md.count("## student ") == 2
    assert "## student resnet32, teacher resnet110 (cifar100, teacher test accuracy 74.30%)" in md
    ckd_row = next(line for line in md.splitlines() if line.startswith("| ckd |"))
    # ckd at 2000 with lr 0.1: 48 + 2 - 3 + (0.1, 0.2, 0.3) -> 47.20 ± 0.10 over 3 seeds, 95% CI 47.20 ± t(0.975, 2)·0.10/√3
    assert ckd_row.split("|")[2].strip() == "47.20 ± 0.10 [46.95, 47.45] (n=3)"
    assert md.index("| ce |") < md.index("| kd |") < md.index("| ckd |") < md.index("| ckd(P+N=3) |")
    assert printed.startswith("# Student accuracy")

    png = out_dir / summarize.PLOT_NAME
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ties_in_validation_prefer_more_seeds(tmp_path: Path) -> None:
    def record(lr: float, seed: int, val: float, test: float) -> summarize.Record:
        return summarize.Record(tmp_path, "cifar100", "resnet32", "resnet110", "ckd", 2000, lr, seed, test, val)

    records = [record(0.1, 1, 50.0, 40.0), record(0.05, 1, 50.0, 45.0), record(0.05, 2, 50.0, 46.0)]
    (cell,) = summarize.build_cells(records)[("cifar100", "resnet32", "resnet110")]
    assert cell.learning_rate == 0.05 and cell.n == 2


def test_wandb_offline_runs_are_read_and_deduplicated(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wandb_dir = tmp_path / "wandb"
    flags, base = METHODS["ckd"]

    def offline_run(name: str, seed: int, test: float, val: float) -> None:
        files = wandb_dir / name / "files"
        files.mkdir(parents=True)
        config = config_of("resnet32", flags, 2000, seed, 0.1, runs)
        config.update(n_train=1600, n_val=400)  # train_student.py's W&B config has these too
        raw = {k: {"desc": None, "value": v} for k, v in config.items()}
        raw["_wandb"] = {"desc": None, "value": {"cli_version": "0.31.0"}}
        (files / "config.yaml").write_text(yaml.safe_dump(raw))
        (files / "wandb-summary.json").write_text(json.dumps({"test_acc": test, "best_val_acc": val, "teacher_calls": 1600,
                                                              "_runtime": 3}))

    test, val = accuracies(base, 2000, 1, 0.1)
    offline_run("offline-run-20250101_000000-aaaa", 1, test, val)  # the same run as a results.json: counted once
    offline_run("offline-run-20250101_000001-bbbb", 4, 60.0, val)  # a fourth seed
    (wandb_dir / "offline-run-20250101_000002-cccc" / "files").mkdir(parents=True)  # crashed: no summary at all
    more = tmp_path / "more"
    (more / "broken").mkdir(parents=True)
    (more / "broken" / "results.json").write_text("{not json")  # reported and skipped, never fatal

    out_dir = tmp_path / "out"
    assert summarize.main([str(runs), str(more), "--wandb", str(wandb_dir), "--out", str(out_dir)]) == 0
    err = capsys.readouterr().err
    assert "broken/results.json" in err and "found twice" in err and "cccc: it has neither" in err
    with open(out_dir / "summary.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["model_s"] == "resnet32" and r["method"] == "ckd"
                   and r["subset_size"] == "2000")
    assert row["n"] == "4" and row["seeds"] == "1 2 3 4"
    tests = [accuracies(base, 2000, seed, 0.1)[0] for seed in SEEDS] + [60.0]
    assert float(row["test_acc_mean"]) == pytest.approx(statistics.fmean(tests), abs=1e-4)


def _write_wandb_log(path: Path, records: list[bytes]) -> None:
    """A .wandb transaction log as W&B writes it: header, then 32 KiB blocks of framed chunks."""
    block, out = 32768, bytearray(b":W&B\xe1\xbe\x00")
    for data in records:
        first = True
        while True:
            left = block - len(out) % block
            if left < 7:
                out += b"\x00" * left
                continue
            size = min(len(data), left - 7)
            last = size == len(data)
            kind = 1 if first and last else 2 if first else 4 if last else 3
            out += b"\x00\x00\x00\x00" + size.to_bytes(2, "little") + bytes([kind]) + data[:size]
            data, first = data[size:], False
            if last:
                break
    path.write_bytes(bytes(out))


def test_wandb_transaction_log_of_recent_offline_runs(runs: Path, tmp_path: Path) -> None:
    """Recent W&B versions keep offline runs only in run-*.wandb: config and summary are replayed from it."""
    from wandb.proto import wandb_internal_pb2

    config = config_of("wrn_16_2", METHODS["kd"][0], 4000, 7, 0.05, runs)
    config["subset_fingerprint"] = "ab" * 32  # train_student.py's W&B config carries it (summarize pairs on it)
    run = wandb_internal_pb2.Record()
    for key, value in config.items():
        run.run.config.update.add(key=key, value_json=json.dumps(value))
    early, late, big = wandb_internal_pb2.Record(), wandb_internal_pb2.Record(), wandb_internal_pb2.Record()
    early.summary.update.add(key="best_val_acc", value_json="10.0")
    big.summary.update.add(key="notes", value_json=json.dumps("x" * 70_000))  # spans three blocks
    late.summary.update.add(key="best_val_acc", value_json="51.5")  # later updates win
    late.summary.update.add(key="test_acc", value_json="50.25")
    late.summary.update.add(key="teacher_calls", value_json="3200")
    folder = tmp_path / "wandb" / "offline-run-20250101_000000-dddd"
    (folder / "files").mkdir(parents=True)
    _write_wandb_log(folder / "run-dddd.wandb", [r.SerializeToString() for r in (run, early, big, late)])

    record = summarize.read_wandb_run(folder)
    assert (record.model_s, record.method, record.subset_size, record.seed) == ("wrn_16_2", "kd", 4000, 7)
    assert (record.test_acc, record.best_val_acc, record.teacher_calls) == (50.25, 51.5, 3200)
    assert record.subset_fingerprint == "ab" * 32


def test_empty_folder_is_one_clear_sentence(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "summarize.py"), str(tmp_path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "found no finished run" in result.stderr
    with pytest.raises(UserError, match="is not a folder"):
        summarize.main([str(tmp_path / "missing")])


# ---------------------------------------------------------------- paired comparisons (issue 29)

# the issue's held-out measurement: resnet8 students, 1,000 images, seeds 1-3
ISSUE_ACCS = {"kd": (86.50, 81.80, 78.95), "ce": (81.65, 77.65, 75.75), "ckd": (78.70, 60.60, 73.95)}


def fingerprint_of(seed: int) -> str:
    return f"{seed:064x}"


def write_run(folder: Path, label: str, seed: int, test: float, *, size: int = 1000, fingerprint: str | None = "auto",
              calibrated: float | None = None, extra: dict | None = None, config_extra: dict | None = None) -> Path:
    """One generated results.json of the resnet32/resnet110 pair at lr 0.05 (best_val_acc = test_acc)."""
    flags = METHODS.get(label, ({"relational": label, "distill": "kd", "w_kd": 0.0}, 0.0))[0]
    run = folder / f"{label}_{size}_{seed}_{len(list(folder.glob('*'))) if folder.is_dir() else 0}"
    run.mkdir(parents=True)
    results = {"test_acc": test, "best_val_acc": test, "teacher_calls": 800, "teacher_acc": 74.3,
               "config": {**config_of("resnet32", flags, size, seed, 0.05, folder), **(config_extra or {})}, **(extra or {})}
    if fingerprint is not None:
        results["subset_fingerprint"] = fingerprint_of(seed) if fingerprint == "auto" else fingerprint
    if calibrated is not None:
        results["test_acc_calibrated"] = calibrated
    (run / "results.json").write_text(json.dumps(results))
    return run


def paired_rows(out_dir: Path) -> dict[tuple[str, int], dict]:
    with open(out_dir / "summary_paired.csv", newline="") as handle:
        return {(r["method"], int(r["subset_size"])): r for r in csv.DictReader(handle)}


def test_paired_table_equals_scipy_and_different_subsets_are_not_paired(tmp_path: Path, capsys) -> None:
    from scipy import stats

    runs = tmp_path / "runs"
    for label, accs in ISSUE_ACCS.items():
        for seed, acc in enumerate(accs, 1):
            # ckd's seed-3 run drew another subset (another --train_val_frac, say): never paired with kd's seed 3
            fingerprint = "f" * 64 if (label, seed) == ("ckd", 3) else "auto"
            write_run(runs, label, seed, acc, fingerprint=fingerprint)
    out_dir = tmp_path / "out"
    assert summarize.main([str(runs), "--baseline", "kd", "--out", str(out_dir)]) == 0
    captured = capsys.readouterr()
    assert "ckd vs kd at subset 1000, seed 3: not paired, the runs trained on different subsets" in captured.err

    # each cell: n, mean ± sd and the Student-t interval, as scipy computes them
    with open(out_dir / "summary.csv", newline="") as handle:
        cells = {r["method"]: r for r in csv.DictReader(handle)}
    for label, accs in ISSUE_ACCS.items():
        low, high = stats.t.interval(0.95, len(accs) - 1, loc=statistics.fmean(accs), scale=stats.sem(accs))
        row = cells[label]
        assert row["n"] == "3" and row["metric"] == "test_acc"
        assert float(row["test_acc_mean"]) == pytest.approx(statistics.fmean(accs), abs=1e-4)
        assert float(row["test_acc_ci_low"]) == pytest.approx(low, abs=1e-4)
        assert float(row["test_acc_ci_high"]) == pytest.approx(high, abs=1e-4)

    paired = paired_rows(out_dir)
    assert set(paired) == {("ce", 1000), ("ckd", 1000)}
    kd = ISSUE_ACCS["kd"]
    for label, n in (("ce", 3), ("ckd", 2)):
        mine, base = ISSUE_ACCS[label][:n], kd[:n]
        diffs = [a - b for a, b in zip(mine, base)]
        test = stats.ttest_rel(mine, base)
        low, high = stats.t.interval(0.95, n - 1, loc=statistics.fmean(diffs), scale=stats.sem(diffs))
        row = paired[(label, 1000)]
        assert int(row["n"]) == n and row["seeds"] == " ".join(str(s) for s in range(1, n + 1))
        assert float(row["diff_mean"]) == pytest.approx(statistics.fmean(diffs), abs=1e-4)
        assert float(row["diff_sd"]) == pytest.approx(statistics.stdev(diffs), abs=1e-4)
        assert float(row["diff_ci_low"]) == pytest.approx(low, abs=1e-4)
        assert float(row["diff_ci_high"]) == pytest.approx(high, abs=1e-4)
        assert float(row["p_value"]) == pytest.approx(test.pvalue, rel=1e-5)
    # CE - KD = -4.07 ± 0.83 over the three seeds (the issue's numbers): a clear loss even at n = 3
    assert paired[("ce", 1000)]["verdict"] == "worse"
    assert paired[("ckd", 1000)]["verdict"] == "not distinguishable with 2 seeds"
    md = captured.out
    assert "Paired difference to kd (test_acc" in md
    assert "| ce | 1000 | 3 | -4.07 ± 0.83 |" in md
    needed = int(paired[("ckd", 1000)]["seeds_needed"])
    assert f"- ckd vs kd at subset 1000: -14.50 at paired sd 9.48 would need {needed} seeds to be resolved (paired t-test" in md
    assert "test accuracy of the weights with the best validation accuracy (restored at each learning-rate decay" in md


def test_default_baseline_is_kd_else_ce_and_an_unknown_baseline_is_refused(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    for seed in (1, 2):
        write_run(runs, "ce", seed, 70.0 + seed)
        write_run(runs, "ckd", seed, 72.0 + 2 * seed)
    assert summarize.main([str(runs), "--out", str(tmp_path / "a")]) == 0
    assert set(paired_rows(tmp_path / "a")) == {("ckd", 1000)} and "Paired difference to ce" in capsys.readouterr().out
    with pytest.raises(UserError, match="--baseline mixup names no method of these runs; choose one of ce, ckd"):
        summarize.main([str(runs), "--baseline", "mixup", "--out", str(tmp_path / "b")])


def test_runs_without_a_fingerprint_are_paired_by_seed_with_a_note(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    for seed in (1, 2, 3):
        write_run(runs, "kd", seed, 80.0 + seed, fingerprint=None)  # an older release's results.json
        write_run(runs, "ce", seed, 78.0 + seed * 1.5, fingerprint=None)
        # another --train_val_frac and no fingerprint: another subset, so not paired
        write_run(runs, "ckd", seed, 70.0, fingerprint=None, config_extra={"train_val_frac": 0.5})
    assert summarize.main([str(runs), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "3 pair(s) of runs were paired by seed alone" in err
    assert err.count("not paired, the runs have no subset_fingerprint and different --train_val_frac") == 3
    paired = paired_rows(tmp_path / "out")
    assert set(paired) == {("ce", 1000)} and paired[("ce", 1000)]["paired_by_seed_only"] == "3"


@pytest.mark.parametrize("effect", [0.2, 0.5, 0.8, 1.2, 2.0])
def test_seeds_needed_matches_an_independent_power_calculation(effect: float) -> None:
    from scipy import stats

    n = summarize.seeds_needed(effect)
    z_a, z_b = stats.norm.ppf(0.975), stats.norm.ppf(0.8)
    normal = (z_a + z_b) ** 2 / effect**2 + z_a**2 / 2  # normal approximation with Guenther's small-sample correction
    assert abs(n - math.ceil(normal)) <= 1  # seeds come whole: the approximation rounds up

    def power(k: int) -> float:  # the paired t-test's power from the noncentral t, written out here
        crit = stats.t.isf(0.025, k - 1)
        dist = stats.nct(k - 1, effect * k**0.5)
        return 1 - dist.cdf(crit) + dist.cdf(-crit)

    assert power(n) >= 0.8 and (n == 2 or power(n - 1) < 0.8)


# ---------------------------------------------------------------- what summarize refuses (issue 28, class 10)

BAD_VALUES = [-1.0, 100.5, float("nan"), float("inf"), "abc", True]


def test_every_impossible_number_and_unreadable_folder_is_named_and_left_out(tmp_path: Path, capsys, monkeypatch) -> None:
    runs = tmp_path / "runs"
    good = [write_run(runs, "kd", seed, 80.0 + seed) for seed in (1, 2)]
    bad: dict[Path, str] = {}
    cases = [(key, value) for key in summarize.ACCURACY_KEYS for value in BAD_VALUES]
    cases += [("teacher_calls", -5), ("teacher_calls", float("nan"))]
    for i, (key, value) in enumerate(cases):
        bad[write_run(runs, "ckd", 10 + i, 70.0, extra={key: value})] = key
    for key, value in (("seed", "x"), ("subset_size", 0), ("learning_rate", -0.1), ("seed", 1.5)):
        bad[write_run(runs, "ckd", 99, 70.0, config_extra={key: value})] = key
    unfinished = runs / "unfinished"
    unfinished.mkdir()
    (unfinished / "last.pth").write_bytes(b"")
    locked = runs / "locked"
    (locked / "run").mkdir(parents=True)
    real_scandir = os.scandir

    def scandir(path="."):  # as root a chmod does not stop reading: deny the folder the way the OS would
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    assert summarize.main([str(runs), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err.splitlines()
    for run, key in bad.items():
        lines = [line for line in err if str(run / "results.json") in line]
        assert len(lines) == 1 and (f"its {key} is" in lines[0] or f"config's {key} is" in lines[0]), (key, lines)
        assert "left out of every table" in lines[0]
    assert sum(f"skipped {unfinished}: it holds a run's files but no results.json" in line for line in err) == 1
    assert sum(f"skipped {locked}: the folder cannot be read (Permission denied)" in line for line in err) == 1
    with open(tmp_path / "out" / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == ["kd"] and rows[0]["n"] == str(len(good))


def test_calibrated_accuracy_is_shown_only_for_offset_free_rows_over_the_whole_table(tmp_path: Path, capsys) -> None:
    """Every method-table combination, as an older release wrote it (test_acc_calibrated for every run), plus kd with
    --calibrate train_mean: the calibrated numbers reach the tables only for the offset-free rows and the --calibrate run."""
    from helper.method_table import combinations, offset_free

    runs = tmp_path / "runs"
    expected = set()
    for relational, distill in combinations():
        for seed in (1, 2):
            flags = {"relational": relational, "distill": distill, "w_kd": 0.0}
            run = write_run(runs, "x", seed, 60.0 + seed, calibrated=65.0 + seed, config_extra=flags)
            label = json.loads((run / "results.json").read_text())["config"]
            if offset_free(label):
                expected.add(summarize.method_label(label))
    for seed in (1, 2):
        write_run(runs, "kd", seed, 80.0, calibrated=80.0, config_extra={"calibrate": "train_mean"})
    expected.add("kd+cal")
    assert {"ckd", "ckd_inter+hint"} <= expected
    out = tmp_path / "out"
    assert summarize.main([str(runs), "--metric", "test_acc_calibrated", "--baseline", "ckd", "--out", str(out)]) == 0
    with open(out / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["method"] for r in rows} == expected and {r["metric"] for r in rows} == {"test_acc_calibrated"}
    assert all(float(r["test_acc_mean"]) in (66.5, 80.0) for r in rows)
    err = capsys.readouterr().err
    assert "ce: 2 run(s) left out of --metric test_acc_calibrated" in err
    # by default test_acc is reported, and beside it a calibrated table of the same methods only
    assert summarize.main([str(runs), "--out", str(tmp_path / "default")]) == 0
    md = (tmp_path / "default" / "summary.md").read_text()
    cal = md.split("test_acc_calibrated (%), only for")[1].split("\n\n")[1]
    assert {line.split("|")[1].strip() for line in cal.splitlines()[2:]} == expected


def test_subset_fingerprint_names_the_images_and_split() -> None:
    import numpy as np

    from dataset import make_subset_split, subset_fingerprint

    labels = np.arange(500) % 10
    a = subset_fingerprint(make_subset_split(500, 100, 0.8, 1, 32), "digits", labels)
    assert a == subset_fingerprint(make_subset_split(500, 100, 0.8, 1, 32), "digits", labels)
    others = [subset_fingerprint(make_subset_split(500, 100, 0.8, 2, 32), "digits", labels),  # another seed
              subset_fingerprint(make_subset_split(500, 100, 0.7, 1, 32), "digits", labels),  # another split
              subset_fingerprint(make_subset_split(500, 100, 0.8, 1, 32), "cifar100", labels),  # another data set
              subset_fingerprint(make_subset_split(500, 100, 0.8, 1, 32), "digits", (labels + 1) % 10)]  # other labels
    assert len({a, *others}) == 5 and len(a) == 64


def test_a_cell_of_runs_with_other_settings_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Runs of one method and subset size that differ in a flag besides the seed (here --epochs) are named, with the
    flag and its values; runs that differ only in the seed are not."""
    for seed, epochs in ((1, 240), (2, 240), (3, 5)):
        run = tmp_path / "student" / f"kd_{seed}"
        run.mkdir(parents=True)
        config = {**config_of("resnet32", {"relational": None, "distill": "kd", "w_kd": 1}, 2000, seed, 0.05, tmp_path),
                  "epochs": epochs}
        (run / "results.json").write_text(json.dumps({"test_acc": 60.0 + seed, "best_val_acc": 50.0, "teacher_calls": 1600,
                                                      "teacher_acc": 74.3, "config": config}))
    assert summarize.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "differ in" in line]
    assert len(warnings) == 1 and "--epochs: 240, 5" in warnings[0] and "kd n=2000" in warnings[0], warnings
    (tmp_path / "student" / "kd_3").rename(tmp_path / "kd_3_elsewhere")
    assert summarize.main([str(tmp_path / "student"), "--out", str(tmp_path / "out2")]) == 0
    assert "differ in" not in capsys.readouterr().err
