"""What a run is and where it lives: the flags that make its identity, the run-folder name, the student's run folder
and the sentence for a missing teacher.

Imports :mod:`helper.config` (the configurations whose identity it computes); :mod:`helper.options` (flags, defaults,
parsers, path checks) imports nothing of either, so the modules of ``helper/`` form no import circle
(``tests/test_layers.py`` checks the graph).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from helper.config import StudentConfig, TeacherConfig

# flags that never change what a run computes (paths, resume, logging), so they do not enter the run-folder name
NON_IDENTITY_FLAGS = ("resume", "save_dir", "keep_cache", "keep_last", "data_folder", "wdb_project", "wdb_entity", "_tags")
# a teacher folder also ignores where it trains and how often it keeps a periodic checkpoint
TEACHER_NON_IDENTITY_FLAGS = (*NON_IDENTITY_FLAGS, "device", "save_freq")


def identity_config(cfg: StudentConfig | TeacherConfig, ignored: tuple[str, ...] = NON_IDENTITY_FLAGS) -> dict[str, Any]:
    """The flags that define what a run computes (everything but paths, logging and resume)."""
    return {k: v for k, v in sorted(cfg.to_dict().items()) if k not in ignored and not k.startswith("__")}


def teacher_identity_config(opt: TeacherConfig) -> dict[str, Any]:
    """The flags a teacher folder is bound to (a rerun resumes only when they are equal)."""
    return identity_config(opt, TEACHER_NON_IDENTITY_FLAGS)


def run_name(opt: StudentConfig) -> str:
    """A readable, unique folder name: two configurations that differ in any flag get different names."""
    config = identity_config(opt)
    digest = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]
    method = opt.relational or "none"
    return (f"S-{opt.model_s}_T-{opt.model_t}_{opt.dataset}_r-{method}_d-{opt.distill}"
            f"_n{'all' if opt.subset_size is None else opt.subset_size}_lr{opt.learning_rate:g}_seed{opt.seed}_trial{opt.trial}_{digest}")


def missing_teacher_message(opt: StudentConfig) -> str:
    """One sentence for a teacher checkpoint that is not there, with the command that makes it for this data set."""
    train = f"python train_teacher.py --model {opt.model_t} --dataset {opt.dataset}"
    if opt.dataset == "stanfordcars":
        train += f" --data_folder {opt.data_folder}"
    if opt.dataset != "cifar100":
        return f"teacher checkpoint {opt.path_t} does not exist; train it with `{train}` (then pass the same --save_dir)"
    return (f"teacher checkpoint {opt.path_t} does not exist; get it with `sh scripts/fetch_pretrained_teachers.sh` "
            f"or train it with `{train}`")


def student_run_dir(opt: StudentConfig) -> Path:
    """The folder of a student run: ``{save_dir}/student/{run_name}``."""
    return Path(opt.save_dir) / "student" / run_name(opt)
