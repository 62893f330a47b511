#!/usr/bin/env python3
"""Tables and a plot of student accuracy over subset sizes, from finished runs.

    python scripts/summarize.py save/student [MORE_DIRS ...] [--out DIR] [--wandb wandb/]

Reads every ``results.json`` below the folders (written by train_student.py) and, with --wandb,
every W&B run folder below DIR (``offline-run-*`` or ``run-*``: ``files/wandb-summary.json`` and
``files/config.yaml`` when present, else the run's ``.wandb`` log, which is all that recent W&B
versions keep for an offline run). A run found both ways is counted once.

What the numbers are. ``test_acc`` is the test accuracy of the weights with the best validation accuracy (the
trainer keeps them and goes back to them at every learning-rate decay; the published protocol), never of the last
weights. ``test_acc_calibrated`` (``--metric test_acc_calibrated``) is the same weights with the train-split logit shift
of ``--calibrate train_mean``; it is reported only for the methods whose loss leaves the per-class offset free (the
method table's ``offset_free``: ckd, ckd_inter) and for runs trained with ``--calibrate train_mean``
(docs/calibration.md).

For each (data set, student, teacher) pair it prints a table of method x subset size: per cell the number of seeds n,
the mean ± sample sd over seeds and the 95 % confidence interval of the mean (Student t, scipy). For each (pair,
method, subset size) ONE learning rate is reported for every seed: the one with the best MEAN BEST-VALIDATION accuracy
over its seeds (ties: more seeds, then the smaller rate); the test accuracy is never used to choose, and only the
chosen rate's runs are reported.

Paired comparisons (``--baseline METHOD``, default kd when present, else ce): for each method and subset size, the
differences method - baseline over the seeds both cells have, with their mean ± sd, 95 % interval (Student t), the
p-value of the paired t-test (scipy.stats.ttest_rel) and a verdict (better / worse at p < 0.05, else not
distinguishable with n seeds). Two runs are paired only when their results.json record the same
``subset_fingerprint`` (same images, same split); runs without one (older releases) are paired by seed when their
subset size and train fraction agree, with a note, since the subset is drawn from those and the seed alone
(dataset/subset.py). Each comparison that is not distinguishable gets one line with the number of seeds that would
resolve a difference of its observed size at its observed paired sd (two-sided alpha 0.05, power 0.8, t-based).

A run that cannot be read, an unreadable folder, a run folder without results.json and a run whose numbers are
impossible (an accuracy below 0, above 100 or not a number) are named on stderr, one line each, and left out.

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
  +cal                appended to runs that trained with --calibrate train_mean

Writes summary.md, summary.csv, summary_paired.csv and accuracy_vs_teacher_calls.png (x: teacher calls, y: the
metric, one line per method with 95 % confidence-interval error bars, one panel per pair) into --out (default: the
first RUNS_DIR).
"""

from __future__ import annotations

try:  # the project itself, installed by `make venv`: without it, one sentence instead of a traceback
    import core  # noqa: F401
except ModuleNotFoundError as err:
    import sys

    print(f"error: this Python cannot import the project ({err}); run `make venv` and use .venv/bin/python, or run "
          "`pip install --no-deps -e .` in the repository root", file=sys.stderr)
    raise SystemExit(2) from None

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
from helper.method_table import method_label, method_order, reports_calibrated
from helper.options import OneLineParser, PathKind
from helper.run_folder import NON_IDENTITY_FLAGS

METHOD_ORDER = method_order()  # ce, kd, then the method table's order
# flags that do not change what a run computes: two runs differing only here are the same run
NOT_IDENTITY = ("save_dir", "resume", "data_folder", "device", "path_t", "wdb_project", "wdb_entity", "_tags",
                "compile", "channels_last")
PLOT_NAME = "accuracy_vs_teacher_calls.png"
METRICS = ("test_acc", "test_acc_calibrated")
# what each metric is, in every table and the plot
METRIC_MEANING = {
    "test_acc": "test accuracy of the weights with the best validation accuracy (restored at each learning-rate decay; "
                "the published protocol)",
    "test_acc_calibrated": "test accuracy of the same best-validation weights with the train-split logit shift of "
                           "--calibrate train_mean (reported only for the offset-free methods ckd and ckd_inter and for "
                           "runs trained with --calibrate train_mean; docs/calibration.md)",
}
LR_RULE = ("one learning rate per method and subset size, the same for every seed: the one with the best mean "
           "validation accuracy over its seeds (the test accuracy is never used to choose)")
ALPHA = 0.05  # two-sided level of the paired test and of the seeds-needed calculation: 95 % intervals
POWER = 0.8
MAX_SEEDS = 1000  # the seeds-needed search stops here
# accuracies a results.json may hold, in percent; anything else (negative, above 100, NaN, inf) marks a damaged run
ACCURACY_KEYS = ("test_acc", "best_val_acc", "test_acc_calibrated", "test_acc_top5", "teacher_acc")
# a folder holding one of these but no results.json is a run that has not finished (or failed)
RUN_FOLDER_FILES = ("last.pth", "best.pth", "teacher_cache.pth")


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
    test_acc_calibrated: float | None = None  # None where it is not reported (helper.method_table.reports_calibrated)
    identity: str = ""
    subset_fingerprint: str | None = None  # None: written before results.json recorded it
    train_val_frac: float | None = None


def t_interval(values: list[float]) -> tuple[float, float] | None:
    """The 1 - ALPHA (95 %) confidence interval of the mean of ``values`` (Student t); None for fewer than two values."""
    if len(values) < 2:
        return None
    from scipy import stats

    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = float(stats.t.ppf(1 - ALPHA / 2, len(values) - 1)) * sd / math.sqrt(len(values))
    return mean - half, mean + half


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
    def test_ci(self) -> tuple[float, float] | None:
        """95 % confidence interval of the mean test accuracy (Student t); None for one seed."""
        return t_interval([r.test_acc for r in self.runs])

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
    """A finite number (None when missing, not a number, or NaN/inf)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _checked(metrics: dict[str, Any], key: str, low: float, high: float) -> float | None:
    """``metrics[key]`` as a number in [low, high]; None when absent (or null); ValueError naming the key and its value
    when it is present but not such a number (a damaged or hand-edited file: the run is left out, never tabled)."""
    value = metrics.get(key)
    if value is None:
        return None
    number = _number(value)
    if number is None or not low <= number <= high:
        where = f"outside {low:g}-{high:g}" if number is not None else "not a finite number"
        raise ValueError(f"its {key} is {value!r}, {where} (a damaged or hand-edited file); left out of every table")
    return number


def _config_number(config: dict[str, Any], key: str, kind: type, low: float) -> Any:
    """A positive setting of the run's config as ``kind`` (ValueError naming it otherwise)."""
    value = config.get(key)
    number = _number(value)
    if number is None or number < low or (kind is int and number != int(number)):
        raise ValueError(f"its config's {key} is {value!r}, not a {'whole ' if kind is int else ''}number of at least "
                         f"{low:g} (a damaged or hand-edited file); left out of every table")
    return kind(number)


@functools.lru_cache(maxsize=1)
def _student_flags() -> frozenset[str]:
    """The flags of train_student.py (W&B configs add other keys, such as n_train)."""
    from helper.options import build_student_parser

    return frozenset(a.dest for a in build_student_parser()._actions if a.option_strings and a.dest != "help")


def make_record(source: Path, metrics: dict[str, Any], config: dict[str, Any]) -> Record:
    """A Record from a run's metrics and resolved flags (raises ValueError, one sentence, when something is missing or
    impossible: an accuracy outside 0-100 or not a number, a negative teacher-call count, a subset size below 2)."""
    for key in ("model_s", "subset_size", "learning_rate", "seed"):
        if config.get(key) is None:
            raise ValueError(f"its config has no {key}")
    if metrics.get("test_acc") is None:
        raise ValueError("it has no test_acc (unfinished run?)")
    if metrics.get("best_val_acc") is None:
        raise ValueError("it has no best_val_acc, so its learning rate cannot be chosen on validation")
    accuracies = {key: _checked(metrics, key, 0.0, 100.0) for key in ACCURACY_KEYS}
    teacher_calls = _checked(metrics, "teacher_calls", 0.0, math.inf)
    subset_size = _config_number(config, "subset_size", int, 2)
    learning_rate = _config_number(config, "learning_rate", float, 0)
    if learning_rate <= 0:
        raise ValueError(f"its config's learning_rate is {config['learning_rate']!r}, not above 0 (a damaged or "
                         "hand-edited file); left out of every table")
    seed = _config_number(config, "seed", int, -math.inf)
    flags = _student_flags()
    identity = json.dumps({k: v for k, v in sorted(config.items()) if k in flags and k not in NOT_IDENTITY},
                          sort_keys=True, default=str)
    fingerprint = metrics.get("subset_fingerprint") or config.get("subset_fingerprint")  # results.json / W&B config
    return Record(
        source=source,
        dataset=str(config.get("dataset") or "cifar100"),
        model_s=str(config["model_s"]),
        model_t=str(config.get("model_t")),
        method=method_label(config),
        subset_size=subset_size,
        learning_rate=learning_rate,
        seed=seed,
        test_acc=accuracies["test_acc"],
        best_val_acc=accuracies["best_val_acc"],
        teacher_calls=teacher_calls,
        teacher_acc=accuracies["teacher_acc"],
        test_acc_top5=accuracies["test_acc_top5"],
        # older releases wrote it for every run: kept only where it is reported (docs/calibration.md)
        test_acc_calibrated=accuracies["test_acc_calibrated"] if reports_calibrated(config) else None,
        identity=identity,
        subset_fingerprint=str(fingerprint) if fingerprint else None,
        train_val_frac=_number(config.get("train_val_frac")),
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


def _oserror_reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def find_results(folder: Path) -> tuple[list[Path], list[str]]:
    """Every results.json below ``folder`` (symbolic links to folders are not followed), and one note per folder that
    could not be listed and per run folder that holds a run's files but no results.json."""
    found: list[Path] = []
    notes: list[str] = []

    def unreadable(err: OSError) -> None:
        notes.append(f"skipped {err.filename}: the folder cannot be read ({_oserror_reason(err)}); the runs below it are "
                     "not counted (fix its permissions, e.g. chmod u+rx, to include them)")

    for root, _dirs, files in os.walk(folder, onerror=unreadable):
        if "results.json" in files:
            found.append(Path(root) / "results.json")
        elif any(name in files for name in RUN_FOLDER_FILES):
            notes.append(f"skipped {root}: it holds a run's files but no results.json (the run has not finished, "
                         "stopped or failed); the same train_student.py command resumes it")
    return sorted(found), notes


def collect(run_dirs: list[Path], wandb_dir: Path | None) -> tuple[list[Record], list[str]]:
    """Every readable run below the folders, duplicates dropped; and a note per skipped file or folder."""
    records: list[Record] = []
    skipped: list[str] = []
    sources: list[tuple[Path, bool]] = []
    for folder in run_dirs:
        paths, notes = find_results(folder)
        sources += [(p, False) for p in paths]
        skipped += notes
    if wandb_dir is not None:
        sources += [(p, True) for p in sorted(wandb_dir.rglob("*run-*"))
                    if p.name.startswith(("offline-run-", "run-")) and p.is_dir() and not p.is_symlink()
                    and ((p / "files").is_dir() or any(p.glob("*.wandb")))]
    seen: set[str] = set()
    duplicates = 0
    for path, is_wandb in sources:
        try:
            record = read_wandb_run(path) if is_wandb else read_results_json(path)
        except OSError as err:
            skipped.append(f"skipped {path}: it cannot be read ({_oserror_reason(err)})")
            continue
        except Exception as err:  # a malformed file (JSON, YAML, missing key, impossible value) is reported, never fatal
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


# what may differ between the runs of one cell: the seed, the learning rate (chosen per cell) and the flags that never
# name a run (where files go, what is kept)
MAY_DIFFER = ("seed", "learning_rate", *NON_IDENTITY_FLAGS)


def mixed_settings(cells: dict[Pair, list[Cell]]) -> list[str]:
    """Cells whose runs differ in a flag other than the seed (and the learning rate, chosen per cell): their mean would
    average different experiments (e.g. runs with other --epochs in one save folder), so each is named with the flags
    that differ."""
    notes = []
    for pair, pair_cells in cells.items():
        for cell in pair_cells:
            configs = [{k: v for k, v in json.loads(r.identity or "{}").items() if k not in MAY_DIFFER} for r in cell.runs]
            differing = sorted({k for c in configs for k in c if any(o.get(k) != c.get(k) for o in configs)})
            if differing:
                shown = "; ".join(f"--{k}: {', '.join(sorted({str(c.get(k)) for c in configs}))}" for k in differing)
                notes.append(f"{pair[1]}/{pair[2]} {cell.method} n={cell.subset_size}: its runs differ in {shown}; their "
                             "mean mixes different experiments: summarize them from separate folders")
    return notes


# ---------------------------------------------------------------- paired comparisons


@dataclass
class Paired:
    """A method's paired differences to the baseline at one subset size (method - baseline, percentage points)."""

    pair: Pair
    method: str
    baseline: str
    subset_size: int
    seeds: list[int]
    diffs: list[float]
    by_seed_only: int = 0  # pairs made by seed alone (a run without subset_fingerprint)
    base_values: list[float] = field(default_factory=list)  # the baseline's accuracies, seed by seed

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.diffs)

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.diffs) if self.n > 1 else None

    @property
    def ci(self) -> tuple[float, float] | None:
        return t_interval(self.diffs)

    @property
    def p_value(self) -> float | None:
        """Two-sided p-value of the paired t-test (scipy.stats.ttest_rel); None for one pair. Identical differences
        (sd 0) give 0 when they are not 0 and 1 when they are, as the t statistic's limit."""
        if self.n < 2:
            return None
        if self.sd == 0:
            return 1.0 if self.mean == 0 else 0.0
        from scipy import stats

        return float(stats.ttest_rel([b + d for b, d in zip(self.base_values, self.diffs)], self.base_values).pvalue)

    @property
    def verdict(self) -> str:
        p = self.p_value
        if p is not None and p < ALPHA:
            return "better" if self.mean > 0 else "worse"
        return f"not distinguishable with {self.n} seed{'s' if self.n != 1 else ''}"

    @property
    def seeds_needed(self) -> int | None:
        """Seeds (pairs) a paired t-test needs to resolve this mean difference at this sd (None: not computable)."""
        if self.sd is None or self.sd == 0 or self.mean == 0:
            return None
        return seeds_needed(abs(self.mean) / self.sd)


def paired_power(effect: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs for a standardized mean difference ``effect``
    (mean / sd of the differences): the noncentral t with n - 1 degrees of freedom and noncentrality effect·sqrt(n)."""
    from scipy import stats

    df, nc = n - 1, effect * math.sqrt(n)
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def seeds_needed(effect: float, alpha: float = ALPHA, power: float = POWER, max_n: int = MAX_SEEDS) -> int | None:
    """The smallest number of pairs n >= 2 whose paired t-test reaches ``power`` for ``effect`` (standard
    t-based iteration, started at the normal approximation, which never needs more); None above ``max_n``."""
    from scipy import stats

    effect = abs(effect)
    if effect == 0:
        return None
    z = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))
    n = max(2, math.floor((z / effect) ** 2))
    while n <= max_n:
        if paired_power(effect, n, alpha) >= power:
            return n
        n += 1
    return None


def default_baseline(records: list[Record]) -> str | None:
    """kd when these runs have it, else ce, else None (no paired table)."""
    methods = {r.method for r in records}
    return next((m for m in ("kd", "ce") if m in methods), None)


def pair_runs(base: Cell, other: Cell) -> tuple[list[tuple[int, Record, Record]], int, list[str]]:
    """(seed, baseline run, method run) for the seeds both cells have, paired only when both record the same
    subset_fingerprint, or by seed alone (counted) when one of them has none and their train fractions agree; and a
    note per seed that could not be paired."""
    notes: list[str] = []
    pairs: list[tuple[int, Record, Record]] = []
    by_seed_only = 0
    base_by_seed = {r.seed: [x for x in base.runs if x.seed == r.seed] for r in base.runs}
    for seed in sorted({r.seed for r in other.runs} & set(base_by_seed)):
        mine = [r for r in other.runs if r.seed == seed]
        theirs = base_by_seed[seed]
        if len(mine) > 1 or len(theirs) > 1:
            continue  # repeated seeds: reported by repeated_seeds, never paired
        a, b = theirs[0], mine[0]
        where = f"{other.method} vs {base.method} at subset {other.subset_size}, seed {seed}"
        if a.subset_fingerprint and b.subset_fingerprint:
            if a.subset_fingerprint != b.subset_fingerprint:
                notes.append(f"{where}: not paired, the runs trained on different subsets (subset_fingerprint differs: "
                             f"{a.source} and {b.source})")
                continue
        elif a.train_val_frac != b.train_val_frac:
            notes.append(f"{where}: not paired, the runs have no subset_fingerprint and different --train_val_frac")
            continue
        else:
            by_seed_only += 1
        pairs.append((seed, a, b))
    return pairs, by_seed_only, notes


def paired_comparisons(cells: dict[Pair, list[Cell]], baseline: str) -> tuple[list[Paired], list[str]]:
    """Every method's paired differences to ``baseline`` per pair and subset size, and the pairing notes."""
    out: list[Paired] = []
    notes: list[str] = []
    for pair, pair_cells in cells.items():
        by_key = {(c.method, c.subset_size): c for c in pair_cells}
        for cell in pair_cells:
            base = by_key.get((baseline, cell.subset_size))
            if cell.method == baseline or base is None:
                continue
            pairs, by_seed_only, pair_notes = pair_runs(base, cell)
            notes += pair_notes
            if not pairs:
                continue
            out.append(Paired(pair, cell.method, baseline, cell.subset_size, [s for s, _, _ in pairs],
                              [b.test_acc - a.test_acc for _, a, b in pairs], by_seed_only, [a.test_acc for _, a, _ in pairs]))
    return out, notes


# ---------------------------------------------------------------- output


def fmt_cell(cell: Cell) -> str:
    if cell.n < 2:
        return f"{cell.test_mean:.2f} (n=1)"
    low, high = cell.test_ci  # type: ignore[misc]
    return f"{cell.test_mean:.2f} ± {cell.test_std:.2f} [{low:.2f}, {high:.2f}] (n={cell.n})"


def pair_title(pair: Pair, pair_cells: list[Cell]) -> str:
    dataset, student, teacher = pair
    teacher_accs = [c.mean_of("teacher_acc") for c in pair_cells if c.mean_of("teacher_acc") is not None]
    acc = f", teacher test accuracy {statistics.fmean(teacher_accs):.2f}%" if teacher_accs else ""
    return f"student {student}, teacher {teacher} ({dataset}{acc})"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def fmt_p(p: float | None) -> str:
    if p is None:
        return ""
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def paired_lines(paired: list[Paired], pair: Pair, baseline: str, metric: str) -> list[str]:
    """The paired table of one pair and its seeds-needed lines."""
    rows = [p for p in paired if p.pair == pair]
    if not rows:
        return []
    lines = ["", f"Paired difference to {baseline} ({metric}, method − {baseline}, percentage points, over the seeds "
                 f"both have, same subset):", ""]
    table = []
    for p in sorted(rows, key=lambda p: (method_sort_key(p.method), p.subset_size)):
        ci = f"[{p.ci[0]:+.2f}, {p.ci[1]:+.2f}]" if p.ci else ""
        sd = f" ± {p.sd:.2f}" if p.sd is not None else ""
        note = " (paired by seed)" if p.by_seed_only else ""
        table.append([p.method, str(p.subset_size), f"{p.n}{note}", f"{p.mean:+.2f}{sd}", ci, fmt_p(p.p_value), p.verdict])
    lines += markdown_table(["method", "subset", "n", "mean ± sd", "95% CI", "p (paired t)", "verdict"], table)
    needed = [p for p in sorted(rows, key=lambda p: (method_sort_key(p.method), p.subset_size))
              if p.verdict not in ("better", "worse")]
    if needed:
        lines.append("")
    for p in needed:
        head = f"- {p.method} vs {baseline} at subset {p.subset_size}: "
        if p.n < 2:
            lines.append(head + "one seed pair gives no spread; run at least one more seed")
        elif p.mean == 0:
            lines.append(head + f"no difference observed over {p.n} seeds; more seeds cannot resolve a difference of 0")
        elif p.sd == 0:  # identical non-zero differences are distinguishable (p 0): never here
            continue
        else:
            n = p.seeds_needed
            count = f"{n} seeds" if n is not None else f"more than {MAX_SEEDS} seeds"
            lines.append(head + f"{p.mean:+.2f} at paired sd {p.sd:.2f} would need {count} to be resolved "
                                f"(paired t-test, two-sided α {ALPHA:g}, power {POWER:g}; {p.n} so far)")
    return lines


def render_markdown(cells: dict[Pair, list[Cell]], n_runs: int, metric: str = "test_acc",
                    paired: list[Paired] | None = None, baseline: str | None = None,
                    calibrated: dict[Pair, list[Cell]] | None = None) -> str:
    lines = [f"# Student accuracy over subset sizes ({n_runs} runs)", "",
             f"{metric}: {METRIC_MEANING[metric]}. Each cell: mean ± sample sd over seeds, [95% confidence interval of "
             f"the mean, Student t] (n = seeds). Learning rate: {LR_RULE}.", ""]
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
        lines += [f"## {pair_title(pair, pair_cells)}", "", f"{metric} (%) by subset size:", ""]
        lines += markdown_table(header, acc_rows)
        if calibrated and calibrated.get(pair):
            cal_cells = calibrated[pair]
            cal_key = {(c.method, c.subset_size): c for c in cal_cells}
            cal_methods = sorted({c.method for c in cal_cells}, key=method_sort_key)
            lines += ["", "test_acc_calibrated (%), only for the methods whose loss leaves the per-class offset free and "
                          "runs trained with --calibrate train_mean (docs/calibration.md):", ""]
            lines += markdown_table(header, [[m] + [fmt_cell(cal_key[(m, s)]) if (m, s) in cal_key else "" for s in sizes]
                                             for m in cal_methods])
        if paired is not None and baseline is not None:
            lines += paired_lines(paired, pair, baseline, metric)
        lines += ["", "Learning rate chosen on validation:", ""]
        lines += markdown_table(header, lr_rows)
        lines += ["", "Teacher calls (mean over the reported runs):", ""]
        lines += markdown_table(header, calls_rows)
        lines.append("")
    return "\n".join(lines)


CSV_COLUMNS = ("dataset", "model_s", "model_t", "method", "subset_size", "learning_rate", "n", "seeds", "metric",
               "test_acc_mean", "test_acc_std", "test_acc_ci_low", "test_acc_ci_high", "test_acc_top5_mean",
               "best_val_acc_mean", "teacher_calls_mean", "teacher_acc_mean", "val_acc_by_lr")
PAIRED_COLUMNS = ("dataset", "model_s", "model_t", "method", "baseline", "subset_size", "metric", "n", "seeds",
                  "paired_by_seed_only", "diff_mean", "diff_sd", "diff_ci_low", "diff_ci_high", "p_value", "verdict",
                  "seeds_needed")


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def write_csv(cells: dict[Pair, list[Cell]], path: Path, metric: str = "test_acc") -> None:
    """One row per cell; the test_acc_* columns hold ``metric`` (named in the metric column)."""
    with fs.atomic_writer(path, location="--out") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for (dataset, student, teacher), pair_cells in cells.items():
            for c in pair_cells:
                ci = c.test_ci or (None, None)
                writer.writerow([dataset, student, teacher, c.method, c.subset_size, f"{c.learning_rate:g}", c.n,
                                 " ".join(str(r.seed) for r in c.runs), metric, _num(c.test_mean), _num(c.test_std),
                                 _num(ci[0]), _num(ci[1]), _num(c.mean_of("test_acc_top5")), _num(c.val_mean),
                                 _num(c.mean_of("teacher_calls")), _num(c.mean_of("teacher_acc")),
                                 " ".join(f"{lr:g}:{v:.2f}" for lr, v in sorted(c.val_by_lr.items()))])


def write_paired_csv(paired: list[Paired], path: Path, metric: str) -> None:
    with fs.atomic_writer(path, location="--out") as handle:
        writer = csv.writer(handle)
        writer.writerow(PAIRED_COLUMNS)
        for p in paired:
            ci = p.ci or (None, None)
            writer.writerow([*p.pair, p.method, p.baseline, p.subset_size, metric, p.n, " ".join(map(str, p.seeds)),
                             p.by_seed_only, _num(p.mean), _num(p.sd), _num(ci[0]), _num(ci[1]),
                             "" if p.p_value is None else f"{p.p_value:.6g}", p.verdict,
                             "" if p.seeds_needed is None or p.verdict in ("better", "worse") else p.seeds_needed])


def plot(cells: dict[Pair, list[Cell]], path: Path, metric: str = "test_acc") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = list(cells)
    ncols = min(2, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(8.2 * ncols, 4.8 * nrows + 0.6), squeeze=False)
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
            cis = [p[1].test_ci for p in points]  # 95 % interval of the mean; none for one seed
            errs = [[y - ci[0] if ci else 0.0 for y, ci in zip(ys, cis)], [ci[1] - y if ci else 0.0 for y, ci in zip(ys, cis)]]
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
        ax.set_ylabel(f"student {metric} (%)")
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
        else:
            ax.text(0.5, 0.5, "no teacher_calls recorded", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_visible(False)
    meaning = ("test accuracy of the best-validation weights\n(restored at each lr decay; published protocol)"
               if metric == "test_acc" else "best-validation weights with the train-split logit shift\n(offset-free "
               "methods and --calibrate runs only)")
    fig.suptitle(f"Student {metric} vs. teacher calls: mean over seeds, lr chosen on validation\n"
                 f"error bars: 95% confidence interval of the mean (Student t)\n{metric} = {meaning}", fontsize=9)
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
    parser.add_argument("--metric", choices=METRICS, default="test_acc",
                        help="the accuracy in the tables and plot: test_acc (the best-validation weights, the published "
                             "protocol) or test_acc_calibrated (the same weights with the train-split logit shift of "
                             "--calibrate train_mean; reported only for ckd, ckd_inter and --calibrate runs)")
    parser.add_argument("--baseline", default=None, metavar="METHOD",
                        help="the method label every other method is compared with, seed by seed (default: kd when "
                             "present, else ce)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """summarize.py's flags, every one checked before anything is read or written (raises UserError)."""
    opt = build_parser().parse_args(argv)
    for folder in [*opt.runs_dirs, *([opt.wandb] if opt.wandb else [])]:
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder; pass the folder holding your runs (e.g. save/student)")
    if opt.baseline is not None and not opt.baseline.strip():
        raise UserError("--baseline is empty; pass a method label of the table, e.g. --baseline kd")
    return opt


def calibrated_cells(records: list[Record]) -> dict[Pair, list[Cell]]:
    """The cells of test_acc_calibrated, for the runs that report it (the same learning rate rule)."""
    return build_cells([replace(r, test_acc=r.test_acc_calibrated) for r in records if r.test_acc_calibrated is not None])


def main(argv: list[str] | None = None) -> int:
    opt = parse_args(argv)
    records, skipped = collect(opt.runs_dirs, opt.wandb)
    if opt.metric == "test_acc_calibrated":
        left_out: dict[str, int] = defaultdict(int)
        for r in records:
            if r.test_acc_calibrated is None:
                left_out[r.method] += 1
        skipped += [f"{method}: {count} run(s) left out of --metric test_acc_calibrated: it is reported only for the "
                    "methods whose loss leaves the per-class offset free (ckd, ckd_inter) and for runs trained with "
                    "--calibrate train_mean (docs/calibration.md)" for method, count in sorted(left_out.items())]
        records = [replace(r, test_acc=r.test_acc_calibrated) for r in records if r.test_acc_calibrated is not None]
    for note in skipped:
        print(f"warning: {note}", file=sys.stderr)
    if not records:
        where = ", ".join(str(d) for d in opt.runs_dirs) + (f" or W&B runs below {opt.wandb}" if opt.wandb else "")
        what = "finished run (results.json)" if opt.metric == "test_acc" else "run reporting test_acc_calibrated"
        raise UserError(f"found no {what} below {where}; point summarize.py at the save/student folder of finished runs")
    baseline = opt.baseline or default_baseline(records)
    methods = {r.method for r in records}
    if opt.baseline is not None and baseline not in methods:
        raise UserError(f"--baseline {baseline} names no method of these runs; choose one of "
                        f"{', '.join(sorted(methods, key=method_sort_key))}")
    cells = build_cells(records)
    for note in [*repeated_seeds(cells), *mixed_settings(cells)]:
        print(f"warning: {note}", file=sys.stderr)
    paired, pair_notes = paired_comparisons(cells, baseline) if baseline else ([], [])
    if baseline is None:
        pair_notes.append("no paired table: these runs have neither kd nor ce; name the method to compare with, "
                          "--baseline METHOD")
    for note in pair_notes:
        print(f"warning: {note}", file=sys.stderr)
    by_seed = sum(p.by_seed_only for p in paired)
    if by_seed:
        print(f"note: {by_seed} pair(s) of runs were paired by seed alone: one of the runs has no subset_fingerprint "
              "(made before results.json recorded it); the seed, the subset size and --train_val_frac fix the subset "
              "(dataset/subset.py)", file=sys.stderr)
    calibrated = calibrated_cells(records) if opt.metric == "test_acc" else None
    out = opt.out or opt.runs_dirs[0]
    fs.make_folder(out, location="--out")
    text = render_markdown(cells, len(records), opt.metric, paired, baseline, calibrated)
    fs.write_text(out / "summary.md", text, location="--out")
    write_csv(cells, out / "summary.csv", opt.metric)
    write_paired_csv(paired, out / "summary_paired.csv", opt.metric)
    plot(cells, out / PLOT_NAME, opt.metric)
    try:
        print(text)
        print(f"table: {out / 'summary.md'}")
        print(f"csv: {out / 'summary.csv'} and {out / 'summary_paired.csv'}")
        print(f"plot: {out / PLOT_NAME}", flush=True)
    except BrokenPipeError:  # `| head`: the files are written all the same
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
