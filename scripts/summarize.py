#!/usr/bin/env python3
"""Tables and a plot of student accuracy over subset sizes, from finished runs.

    python scripts/summarize.py save/student [MORE_DIRS ...] [--out DIR] [--wandb wandb/]

Reads every ``results.json`` below the folders (written by train_student.py) and, with --wandb,
every W&B run folder below DIR (``offline-run-*`` or ``run-*``: ``files/wandb-summary.json`` and
``files/config.yaml`` when present, else the run's ``.wandb`` log, which is all that recent W&B
versions keep for an offline run). A run found both ways is counted once.

For each (data set, student, teacher) pair it prints a table of method x subset size with the
test accuracy mean ± sample std over seeds and the number of seeds n. For each (pair, method,
subset size) the learning rate is the one with the best MEAN BEST-VALIDATION accuracy over its
seeds (ties: more seeds, then the smaller rate); the test accuracy is never used to choose, and
only the chosen rate's runs are reported.

Method labels:
  ce                  relational None, distill kd, w_kd 0 (cross-entropy only)
  kd                  relational None, distill kd, w_kd > 0
  hint / vid / ...    relational None with that white-box loss (--distill value)
  R                   relational method R (ckd, mixup3, crd, dkd, ...); a white-box loss is appended
                      as R+loss (ckd_inter+hint)
  (P+N=k)             appended to the methods fed by CKD tuples (the method table's ckd_tuples
                      sampler: ckd, ckd_add, ckd_mixup, ckd_inter) when pos_and_neg is not 2, e.g. ckd(P+N=3)
  +kd                 appended to every method but kd itself when w_kd > 0 (a KL term on the
                      teacher's logits is added), e.g. crd+kd, hint+kd, so runs with and
                      without it never share a cell
  +ls                 appended when --logit_stand is set (logit standardization: kd+ls, dkd+ls, mlkd+ls)

``--metric test_acc_calibrated`` reports every run's ``test_acc_calibrated`` (the best weights with the
train-split logit shift of ``--calibrate train_mean``) in place of ``test_acc``; ``+cal`` is appended to the
label of runs that trained with ``--calibrate train_mean``.

Writes summary.md, summary.csv and accuracy_vs_teacher_calls.png (x: teacher calls, y: test
accuracy, one line per method with std error bars, one panel per pair) into --out (default:
the first RUNS_DIR).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core import fs
from core.errors import UserError, run_main
from helper.method_table import method_label, method_order
from helper.options import OneLineParser, PathKind

METHOD_ORDER = method_order()  # ce, kd, then the method table's order
# flags that do not change what a run computes: two runs differing only here are the same run
NOT_IDENTITY = ("save_dir", "resume", "data_folder", "device", "path_t", "wdb_project", "wdb_entity", "_tags",
                "compile", "channels_last")
PLOT_NAME = "accuracy_vs_teacher_calls.png"


@dataclass
class Record:
    """One finished run."""

    source: Path
    dataset: str
    model_s: str
    model_t: str
    method: str
    subset_size: int
    learning_rate: float
    seed: int
    test_acc: float
    best_val_acc: float
    teacher_calls: float | None = None
    teacher_acc: float | None = None
    test_acc_top5: float | None = None
    test_acc_calibrated: float | None = None
    identity: str = ""


@dataclass
class Cell:
    """The reported runs of one (pair, method, subset size): those of the learning rate chosen on validation."""

    method: str
    subset_size: int
    learning_rate: float
    runs: list[Record]
    val_by_lr: dict[float, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def test_mean(self) -> float:
        return statistics.fmean(r.test_acc for r in self.runs)

    @property
    def test_std(self) -> float | None:
        return statistics.stdev(r.test_acc for r in self.runs) if self.n > 1 else None

    @property
    def val_mean(self) -> float:
        return statistics.fmean(r.best_val_acc for r in self.runs)

    def mean_of(self, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        return statistics.fmean(values) if values else None


# ---------------------------------------------------------------- labels


def method_sort_key(label: str) -> tuple[int, str]:
    base = label.split("(")[0].split("+")[0]
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), label)


# ---------------------------------------------------------------- reading runs


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@functools.lru_cache(maxsize=1)
def _student_flags() -> frozenset[str]:
    """The flags of train_student.py (W&B configs add other keys, such as n_train)."""
    from helper.options import build_student_parser

    return frozenset(a.dest for a in build_student_parser()._actions if a.option_strings and a.dest != "help")


def make_record(source: Path, metrics: dict[str, Any], config: dict[str, Any]) -> Record:
    """A Record from a run's metrics and resolved flags (raises ValueError when something is missing)."""
    for key in ("model_s", "subset_size", "learning_rate", "seed"):
        if config.get(key) is None:
            raise ValueError(f"its config has no {key}")
    test_acc = _number(metrics.get("test_acc"))
    val_acc = _number(metrics.get("best_val_acc"))
    if test_acc is None:
        raise ValueError("it has no test_acc (unfinished run?)")
    if val_acc is None:
        raise ValueError("it has no best_val_acc, so its learning rate cannot be chosen on validation")
    flags = _student_flags()
    identity = json.dumps({k: v for k, v in sorted(config.items()) if k in flags and k not in NOT_IDENTITY},
                          sort_keys=True, default=str)
    return Record(
        source=source,
        dataset=str(config.get("dataset") or "cifar100"),
        model_s=str(config["model_s"]),
        model_t=str(config.get("model_t")),
        method=method_label(config),
        subset_size=int(float(config["subset_size"])),
        learning_rate=float(config["learning_rate"]),
        seed=int(float(config["seed"])),
        test_acc=test_acc,
        best_val_acc=val_acc,
        teacher_calls=_number(metrics.get("teacher_calls")),
        teacher_acc=_number(metrics.get("teacher_acc")),
        test_acc_top5=_number(metrics.get("test_acc_top5")),
        test_acc_calibrated=_number(metrics.get("test_acc_calibrated")),
        identity=identity,
    )


def read_results_json(path: Path) -> Record:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        raise ValueError("it has no 'config' mapping")
    return make_record(path, data, data["config"])


WANDB_BLOCK = 32768  # the .wandb transaction log is a LevelDB-style log: 32 KiB blocks of framed chunks
WANDB_HEADER = 7  # b":W&B", a 2-byte magic and a version byte
CHUNK_HEADER = 7  # crc32 (4 bytes), length (2, little-endian), kind (1: full, 2: first, 3: middle, 4: last)


def wandb_log_records(data: bytes) -> list[bytes]:
    """The serialized records of a ``run-*.wandb`` file (checksums are not verified)."""
    if data[:4] != b":W&B":
        raise ValueError("it is not a W&B transaction log")
    records: list[bytes] = []
    pending = b""
    pos = WANDB_HEADER
    while pos + CHUNK_HEADER <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        if left < CHUNK_HEADER:  # block trailer padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
            pending = b""
    return records


def read_wandb_log(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(summary, config) replayed from a .wandb transaction log (what offline runs of recent W&B versions keep)."""
    from wandb.proto import wandb_internal_pb2

    summary: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for raw in wandb_log_records(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        items: Any = ()
        target = config
        if kind == "run":
            items = record.run.config.update
        elif kind == "config":
            items = record.config.update
        elif kind == "summary":
            items, target = record.summary.update, summary
        for item in items:
            key = item.key or "/".join(item.nested_key)
            target[key] = json.loads(item.value_json)
    return summary, config


def read_wandb_run(folder: Path) -> Record:
    """A W&B run folder: files/wandb-summary.json + files/config.yaml when present (synced and older
    offline runs), else the run's .wandb transaction log."""
    import yaml

    files = folder / "files"
    if (files / "wandb-summary.json").is_file():
        summary = json.loads((files / "wandb-summary.json").read_text(encoding="utf-8"))
        raw = yaml.safe_load((files / "config.yaml").read_text(encoding="utf-8")) or {}
    else:
        logs = sorted(folder.glob("*.wandb"))
        if not logs:
            raise ValueError("it has neither files/wandb-summary.json nor a .wandb log (crashed before it started?)")
        summary, raw = read_wandb_log(logs[0])
    if not isinstance(summary, dict) or not isinstance(raw, dict):
        raise ValueError("its summary or config is not a mapping")
    # W&B writes each flag as {value: X} (older versions add desc: null)
    config = {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in raw.items() if not k.startswith("_wandb")}
    return make_record(folder, summary, config)


def collect(run_dirs: list[Path], wandb_dir: Path | None) -> tuple[list[Record], list[str]]:
    """Every readable run below the folders, duplicates dropped; and a note per skipped file."""
    records: list[Record] = []
    skipped: list[str] = []
    sources: list[tuple[Path, bool]] = []
    for folder in run_dirs:
        sources += [(p, False) for p in sorted(folder.rglob("results.json"))]
    if wandb_dir is not None:
        sources += [(p, True) for p in sorted(wandb_dir.rglob("*run-*"))
                    if p.name.startswith(("offline-run-", "run-")) and p.is_dir() and not p.is_symlink()
                    and ((p / "files").is_dir() or any(p.glob("*.wandb")))]
    seen: set[str] = set()
    duplicates = 0
    for path, is_wandb in sources:
        try:
            record = read_wandb_run(path) if is_wandb else read_results_json(path)
        except Exception as err:  # a malformed file (JSON, YAML, missing key) is reported, never fatal
            skipped.append(f"skipped {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
            continue
        if record.identity in seen:
            duplicates += 1
            continue
        seen.add(record.identity)
        records.append(record)
    if duplicates:
        skipped.append(f"{duplicates} run(s) found twice (e.g. as results.json and as a W&B run) were counted once")
    return records, skipped


# ---------------------------------------------------------------- aggregation

Pair = tuple[str, str, str]  # dataset, student, teacher


def build_cells(records: list[Record]) -> dict[Pair, list[Cell]]:
    """Per pair, one Cell per (method, subset size), at the learning rate chosen on validation."""
    groups: dict[tuple[Pair, str, int], dict[float, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        groups[((r.dataset, r.model_s, r.model_t), r.method, r.subset_size)][r.learning_rate].append(r)
    cells: dict[Pair, list[Cell]] = defaultdict(list)
    for (pair, method, size), by_lr in groups.items():
        val_by_lr = {lr: statistics.fmean(r.best_val_acc for r in runs) for lr, runs in by_lr.items()}
        best = max(by_lr, key=lambda lr: (val_by_lr[lr], len(by_lr[lr]), -lr))
        cells[pair].append(Cell(method, size, best, sorted(by_lr[best], key=lambda r: r.seed), val_by_lr))
    for pair in cells:
        cells[pair].sort(key=lambda c: (method_sort_key(c.method), c.subset_size))
    return dict(sorted(cells.items()))


def repeated_seeds(cells: dict[Pair, list[Cell]]) -> list[str]:
    """Cells where one seed appears twice: runs that differ in a flag the label does not show."""
    notes = []
    for pair, pair_cells in cells.items():
        for cell in pair_cells:
            seeds = [r.seed for r in cell.runs]
            if len(seeds) != len(set(seeds)):
                notes.append(f"{pair[1]}/{pair[2]} {cell.method} n={cell.subset_size}: seeds {seeds} repeat "
                             "(runs differing in another flag share this cell; summarize them from separate folders)")
    return notes


# ---------------------------------------------------------------- output


def fmt_cell(cell: Cell) -> str:
    std = f" ± {cell.test_std:.2f}" if cell.test_std is not None else ""
    return f"{cell.test_mean:.2f}{std} (n={cell.n})"


def pair_title(pair: Pair, pair_cells: list[Cell]) -> str:
    dataset, student, teacher = pair
    teacher_accs = [c.mean_of("teacher_acc") for c in pair_cells if c.mean_of("teacher_acc") is not None]
    acc = f", teacher test accuracy {statistics.fmean(teacher_accs):.2f}%" if teacher_accs else ""
    return f"student {student}, teacher {teacher} ({dataset}{acc})"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(cells: dict[Pair, list[Cell]], n_runs: int) -> str:
    lines = [f"# Student accuracy over subset sizes ({n_runs} runs)", "",
             "Test accuracy (%) as mean ± sample std over seeds (n = seeds), at the learning rate with the best mean "
             "validation accuracy for each method and subset size (the test accuracy is never used to choose).", ""]
    for pair, pair_cells in cells.items():
        sizes = sorted({c.subset_size for c in pair_cells})
        methods = sorted({c.method for c in pair_cells}, key=method_sort_key)
        by_key = {(c.method, c.subset_size): c for c in pair_cells}
        header = ["method"] + [str(s) for s in sizes]
        acc_rows = [[m] + [fmt_cell(by_key[(m, s)]) if (m, s) in by_key else "" for s in sizes] for m in methods]
        lr_rows = [[m] + [f"{by_key[(m, s)].learning_rate:g}" if (m, s) in by_key else "" for s in sizes] for m in methods]
        calls_rows = []
        for m in methods:
            row = [m]
            for s in sizes:
                calls = by_key[(m, s)].mean_of("teacher_calls") if (m, s) in by_key else None
                row.append(f"{calls:.0f}" if calls is not None else "")
            calls_rows.append(row)
        lines += [f"## {pair_title(pair, pair_cells)}", "", "Test accuracy (%) by subset size:", ""]
        lines += markdown_table(header, acc_rows)
        lines += ["", "Learning rate chosen on validation:", ""]
        lines += markdown_table(header, lr_rows)
        lines += ["", "Teacher calls (mean over the reported runs):", ""]
        lines += markdown_table(header, calls_rows)
        lines.append("")
    return "\n".join(lines)


CSV_COLUMNS = ("dataset", "model_s", "model_t", "method", "subset_size", "learning_rate", "n", "seeds", "test_acc_mean",
               "test_acc_std", "test_acc_top5_mean", "best_val_acc_mean", "teacher_calls_mean", "teacher_acc_mean",
               "val_acc_by_lr")


def write_csv(cells: dict[Pair, list[Cell]], path: Path) -> None:
    def num(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}"

    with fs.atomic_writer(path, location="--out") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for (dataset, student, teacher), pair_cells in cells.items():
            for c in pair_cells:
                writer.writerow([dataset, student, teacher, c.method, c.subset_size, f"{c.learning_rate:g}", c.n,
                                 " ".join(str(r.seed) for r in c.runs), num(c.test_mean), num(c.test_std),
                                 num(c.mean_of("test_acc_top5")), num(c.val_mean), num(c.mean_of("teacher_calls")),
                                 num(c.mean_of("teacher_acc")),
                                 " ".join(f"{lr:g}:{v:.2f}" for lr, v in sorted(c.val_by_lr.items()))])


def plot(cells: dict[Pair, list[Cell]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(cells)
    ncols = min(2, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(8.2 * ncols, 4.8 * nrows), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    markers = "osD^vP*Xhp<>"
    for ax, pair in zip(axes.flat, pairs):
        pair_cells = cells[pair]
        methods = sorted({c.method for c in pair_cells}, key=method_sort_key)
        drawn = 0
        for i, method in enumerate(methods):
            points = sorted(((c.mean_of("teacher_calls"), c) for c in pair_cells if c.method == method
                             and c.mean_of("teacher_calls") is not None), key=lambda p: (p[0], p[1].subset_size))
            if not points:
                continue
            xs = [p[0] for p in points]
            ys = [p[1].test_mean for p in points]
            errs = [p[1].test_std or 0.0 for p in points]
            no_teacher = all(x == 0 for x in xs)  # e.g. ce: every size sits at 0 calls, so no line
            ax.errorbar(xs, ys, yerr=errs, label=method + (" (no teacher calls)" if no_teacher else ""),
                        color=colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20], marker=markers[i % len(markers)],
                        markersize=5, capsize=3, linewidth=1.4, linestyle="none" if no_teacher else "-")
            if no_teacher:  # the points share x = 0: name their subset sizes
                for x, y, (_, cell) in zip(xs, ys, points):
                    ax.annotate(f"n={cell.subset_size}", (x, y), xytext=(6, -3), textcoords="offset points", fontsize=7)
            drawn += 1
        ax.set_title(pair_title(pair, pair_cells), fontsize=10)
        ax.set_xlabel("teacher calls per run (images sent to the teacher)")
        ax.set_ylabel("student test accuracy (%)")
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        else:
            ax.text(0.5, 0.5, "no teacher_calls recorded", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_visible(False)
    fig.suptitle("Student test accuracy vs. teacher calls (mean ± std over seeds, lr chosen on validation)", fontsize=11)
    fig.tight_layout()
    with fs.atomic_writer(path, binary=True, location="--out") as handle:
        fig.savefig(handle, dpi=120, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="summarize.py", description="Tables (Markdown, CSV) and a plot of finished student runs.")
    parser.add_argument("runs_dirs", nargs="+", type=Path, metavar="RUNS_DIR", help="folders searched for results.json (e.g. save/student)")
    parser.add_argument("--out", type=PathKind("output", "--out"), default=None, help="output folder (default: the first RUNS_DIR)")
    parser.add_argument("--wandb", type=PathKind("input_folder", "--wandb"), default=None,
                        help="also read W&B run folders (offline-run-*) below this folder")
    parser.add_argument("--metric", choices=("test_acc", "test_acc_calibrated"), default="test_acc",
                        help="the accuracy in the tables and plot: test_acc (as the run reported it) or test_acc_calibrated "
                             "(the best weights with the train-split logit shift of --calibrate train_mean)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """summarize.py's flags, every one checked before anything is read or written (raises UserError)."""
    opt = build_parser().parse_args(argv)
    for folder in [*opt.runs_dirs, *([opt.wandb] if opt.wandb else [])]:
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder; pass the folder holding your runs (e.g. save/student)")
    return opt


def main(argv: list[str] | None = None) -> int:
    opt = parse_args(argv)
    records, skipped = collect(opt.runs_dirs, opt.wandb)
    if opt.metric == "test_acc_calibrated":
        skipped += [f"{r.source}: it has no test_acc_calibrated (made before calibration was reported); left out"
                    for r in records if r.test_acc_calibrated is None]
        records = [replace(r, test_acc=r.test_acc_calibrated) for r in records if r.test_acc_calibrated is not None]
    for note in skipped:
        print(f"warning: {note}", file=sys.stderr)
    if not records:
        where = ", ".join(str(d) for d in opt.runs_dirs) + (f" or W&B runs below {opt.wandb}" if opt.wandb else "")
        raise UserError(f"found no finished run (results.json) below {where}; point summarize.py at the save/student folder "
                        "of finished runs")
    cells = build_cells(records)
    for note in repeated_seeds(cells):
        print(f"warning: {note}", file=sys.stderr)
    out = opt.out or opt.runs_dirs[0]
    fs.make_folder(out, location="--out")
    text = render_markdown(cells, len(records))
    fs.write_text(out / "summary.md", text, location="--out")
    write_csv(cells, out / "summary.csv")
    plot(cells, out / PLOT_NAME)
    try:
        print(text)
        print(f"table: {out / 'summary.md'}")
        print(f"csv: {out / 'summary.csv'}")
        print(f"plot: {out / PLOT_NAME}", flush=True)
    except BrokenPipeError:  # `| head`: the files are written all the same
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
