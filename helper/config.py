"""The typed configuration of a run: parsed once, validated on construction, frozen, handed down.

    cfg = parse_student_args(["--relational", "ckd", "--subset_size", "2000"])   # what train_student.py does
    results = run_student(dataclasses.replace(cfg, seed=2))                      # a notebook sweep (helper.run)

:class:`StudentConfig` and :class:`TeacherConfig` have one field per flag of ``train_student.py`` /
``train_teacher.py`` with the parser's default (``tests/test_config.py`` keeps them equal). Construction resolves the
defaults that depend on other fields (the teacher of a student, its checkpoint path, the learning rate of an
architecture) and checks every field with the command line's one-line errors (:class:`core.errors.UserError`), so
``StudentConfig(seed=-1)`` fails exactly as ``--seed -1`` does. The method's table rows are resolved once into
``cfg.method`` (a :class:`helper.method_table.MethodSpec`); nothing looks them up again from the flag strings.

A resolved default stays resolved: ``dataclasses.replace(cfg, model_s="vgg8")`` keeps ``cfg.model_t``; start from
``StudentConfig(model_s="vgg8")`` (or ``parse_student_args``) to get vgg8's published teacher. The one exception is
the teacher checkpoint: ``path_t`` stays None unless given, and ``cfg.teacher_path`` resolves it against the current
``save_dir``, so ``dataclasses.replace(cfg, save_dir=OTHER)`` reads OTHER's teacher.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import UserError
from helper import method_table
from helper.method_table import MethodSpec
from helper.options import (
    CONFIG_PATH_KINDS,
    DEFAULT_CIFAR_TEACHER,
    DEFAULT_DIGITS_TEACHER,
    DEFAULT_TEACHER,
    PUBLISHED_DECAY_EPOCHS,
    build_student_parser,
    build_teacher_parser,
    check_architecture,
    check_decay_epochs,
    check_path,
    check_teacher_path,
    default_learning_rate,
    number_type,
    parse_decay_epochs,
    parse_list,
    teacher_checkpoint_path,
    teacher_from_path,
)

# string flags whose empty value means something (--relational '': no relational method, as W&B agents write it; the
# path flags: check_path's own sentence); every other empty string is refused with one sentence
EMPTY_MEANS = ("relational", "save_dir", "data_folder")
EMPTY_ADVICE = {
    "device": "pass auto, cpu, cuda, cuda:N or mps (or leave --device out: auto)",
    "path_t": "pass the teacher checkpoint, or leave --path_t out to use the default one",
    "lr_decay_epochs": "pass comma-separated epochs such as 150,180,210 (--lr_decay_rate 1 keeps the learning rate constant)",
}


def np_bool() -> type:
    """numpy's bool type (imported only when a configuration is checked: numpy comes with torch anyway)."""
    import numpy

    return numpy.bool_


def np_floating() -> type:
    """numpy's floating types (float16, float32, float64)."""
    import numpy

    return numpy.floating


@functools.cache
def _actions(prog: str) -> dict[str, argparse.Action]:
    parser = build_student_parser() if prog == "student" else build_teacher_parser()
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}


class _Config:
    """What both configurations share: field coercion and checks against the parser, and the plain-dict view."""

    _PROG = ""

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _check_fields(self) -> None:
        """Types and choices, as the parser would check them (a Python caller skips the parser)."""
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            value, kind = getattr(self, f.name), f.type if isinstance(f.type, str) else f.type.__name__
            optional = "None" in kind
            if value is None:
                if not optional:
                    raise UserError(f"--{f.name} needs a value, got None")
                continue
            if kind.startswith("bool"):
                if isinstance(value, np_bool()):  # numpy.bool_, as a mask or a comparison gives it
                    self._set(f.name, bool(value))
                elif not isinstance(value, bool):
                    raise UserError(f"--{f.name} must be true or false, got {value!r}")
            elif kind.startswith("int"):
                if isinstance(value, bool) or not isinstance(value, numbers.Real):
                    raise UserError(f"--{f.name} must be a whole number, got {value!r}")
                if isinstance(value, numbers.Integral):  # int, numpy.int64, ...
                    self._set(f.name, int(value))
                elif math.isfinite(value) and value == int(value):
                    self._set(f.name, int(value))
                else:
                    raise UserError(f"--{f.name} must be a whole number, got {value!r}")
            elif kind.startswith("float"):
                if isinstance(value, bool) or not isinstance(value, numbers.Real):
                    raise UserError(f"--{f.name} must be a number, got {value!r}")
                # 1 and 1.0 name the same run; a float32 0.1 is the 0.1 it prints as, not 0.10000000149
                self._set(f.name, float(str(value)) if isinstance(value, np_floating()) else float(value))
            elif kind.startswith("str"):
                if isinstance(value, str) and not value.strip() and f.name not in EMPTY_MEANS:
                    raise UserError(f"--{f.name} is empty; {EMPTY_ADVICE.get(f.name, f'pass a value or leave --{f.name} out')}")
                if f.name in CONFIG_PATH_KINDS and isinstance(value, os.PathLike):
                    self._set(f.name, os.fspath(value))  # a pathlib.Path save folder is the same folder as its text
                elif not isinstance(value, str):
                    raise UserError(f"--{f.name} must be a string, got {value!r}")
                elif value != str(value):
                    self._set(f.name, str(value))
            action = _actions(self._PROG).get(f.name) if f.name not in ("relational", "distill") else None  # method_spec
            if action is not None and action.choices is not None and getattr(self, f.name) not in action.choices:
                choices = ", ".join(str(c) for c in action.choices)
                raise UserError(f"--{f.name} must be one of {choices}, got {getattr(self, f.name)!r}")
            number = number_type(action) if action is not None else None
            if number is not None:  # the flag's range, as its parser type checks it (helper.options.Number)
                number.check(f.name, getattr(self, f.name))
        for name, kind in CONFIG_PATH_KINDS.items():
            if name != "path_t" and hasattr(self, name):
                check_path(f"--{name}", getattr(self, name), kind)
        if self._tags is not None:
            parse_list("--_tags", self._tags, "baseline,seed-sweep", str, "tags")

    def to_dict(self) -> dict[str, Any]:
        """The flags as a plain dict (what results.json, the logs and the run-folder name record)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}


@dataclass(frozen=True)
class _CommonFlags(_Config):
    """The flags both scripts share (helper.options.add_common_flags)."""

    dataset: str = "cifar100"
    data_folder: str = "./data"
    device: str = "auto"
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 42
    trial: int = 1
    save_dir: str = "./save"
    resume: bool = False
    keep_last: bool = False
    wdb_project: str | None = None
    wdb_entity: str | None = None
    _tags: str | None = None
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    deterministic: bool = False


@dataclass(frozen=True)
class StudentConfig(_CommonFlags):
    """The flags of ``train_student.py`` (see ``--help`` or docs/flags.md for each one's meaning)."""

    model_s: str = "resnet32"
    model_t: str | None = None
    path_t: str | None = None
    distill: str = method_table.NO_DISTILL
    relational: str | None = method_table.NO_RELATIONAL
    subset_size: int | None = None
    train_val_frac: float = 0.8
    use_DA: int = 2
    learning_rate: float | None = None
    epochs: int = 1000
    patience: int = 50
    lr_decay_rate: float = 0.1
    lr_decay_times: int = 3
    w_cls: float = 1.0
    w_kd: float = 0.0
    w_rel_scale: float = 1.0
    w_inter_scale: float = 1.0
    kd_T: float = 4.0
    logit_stand: bool = False
    ttm_l: float | None = None
    loss_fn: int = 0
    pos_and_neg: int = 2
    max_rel_samples: int = 100000
    feat_dim: int = 128
    mode: str = "exact"
    nce_k: int = 16384
    nce_t: float = 0.07
    nce_m: float = 0.5
    hint_layer: int = 2
    init_epochs: int = 30
    teacher_views: int = 1
    teacher_view: str = "augmented"
    cache_dtype: str = "float16"
    keep_cache: bool = False
    calibrate: str = "none"
    method: MethodSpec = field(init=False, repr=False, compare=False)

    _PROG = "student"

    def __post_init__(self) -> None:
        self._set("relational", method_table.none_or_str(self.relational))
        self._check_fields()
        check_architecture(self.model_s, "model_s")
        check_architecture(self.model_t, "model_t")
        # a --path_t given by hand is checked now, a mistyped one named before its folder name is read as an architecture;
        # the default checkpoint (also when given by hand as the default path) when it is loaded, with how to get it
        if self.path_t is not None and (self.model_t is None or
                                        Path(self.path_t) != teacher_checkpoint_path(self.save_dir, self.dataset, self.model_t)):
            check_teacher_path(self.path_t, self.model_t, self.dataset)
        if self.model_t is None:
            if self.path_t:
                model_t = teacher_from_path(self.path_t)
            elif self.dataset == "digits":
                model_t = DEFAULT_DIGITS_TEACHER
            else:
                model_t = DEFAULT_TEACHER.get(self.model_s)
            if model_t is None:
                raise UserError(f"no published teacher for student '{self.model_s}'; pass --model_t (and --path_t)")
            self._set("model_t", model_t)
        if self.learning_rate is None:
            self._set("learning_rate", default_learning_rate(self.model_s))
        self._set("method", method_table.method_spec(self.relational, self.distill))
        pair_scales = {r.weight_flag: getattr(self, r.weight_flag) for r in method_table.rows(kind=method_table.LOGIT_PAIR)}
        method_table.check_modifiers(self.method, logit_stand=self.logit_stand, teacher_views=self.teacher_views,
                                     pair_scales=pair_scales)
        method_table.check_weights(self.method, {flag: getattr(self, flag) for flag in method_table.active_weight_flags(self.method)})
        if self.calibrate != "none" and not method_table.queries_teacher(self.method, pair_scales):
            raise UserError(f"--calibrate {self.calibrate} shifts the student's logits by the teacher's mean logits, but this "
                            "run (no --relational, no --distill, --w_kd 0) never queries the teacher; drop --calibrate, or "
                            "pick a method that distils (--calibrate is meant for --relational ckd and ckd_inter)")

    @property
    def teacher_path(self) -> str:
        """The teacher checkpoint the run reads: ``--path_t`` when given, else the default of ``--save_dir``
        (:func:`helper.options.teacher_checkpoint_path`), resolved when asked, so ``dataclasses.replace(cfg,
        save_dir=OTHER)`` reads OTHER's teacher."""
        return self.path_t if self.path_t is not None else str(teacher_checkpoint_path(self.save_dir, self.dataset, self.model_t))


@dataclass(frozen=True)
class TeacherConfig(_CommonFlags):
    """The flags of ``train_teacher.py``."""

    model: str | None = None
    epochs: int = 240
    learning_rate: float | None = None
    lr_decay_epochs: str = PUBLISHED_DECAY_EPOCHS
    lr_decay_rate: float = 0.1
    save_freq: int = 40

    _PROG = "teacher"

    def __post_init__(self) -> None:
        self._check_fields()
        if self.model is None:
            self._set("model", DEFAULT_DIGITS_TEACHER if self.dataset == "digits" else DEFAULT_CIFAR_TEACHER)
        check_architecture(self.model, "model")
        if self.learning_rate is None:
            self._set("learning_rate", default_learning_rate(self.model))
        check_decay_epochs(self.decay_epochs, self.epochs, self.lr_decay_epochs)

    @property
    def decay_epochs(self) -> list[int]:
        """``lr_decay_epochs`` as a sorted list of epochs."""
        return parse_decay_epochs(self.lr_decay_epochs)


def student_config_from(namespace: argparse.Namespace) -> StudentConfig:
    """The configuration of parsed ``train_student.py`` flags (raises UserError)."""
    return StudentConfig(**vars(namespace))


def parse_student_args(argv: list[str] | None = None) -> StudentConfig:
    """Parse and check train_student.py's flags (a bad flag: one line and exit 2; a bad combination: UserError)."""
    return student_config_from(build_student_parser().parse_args(argv))


def parse_teacher_args(argv: list[str] | None = None) -> TeacherConfig:
    """Parse and check train_teacher.py's flags (a bad flag: one line and exit 2; a bad value: UserError)."""
    return TeacherConfig(**vars(build_teacher_parser().parse_args(argv)))


def check_subset_against_data(opt: StudentConfig, n_total: int, subset_size: int | None = None) -> None:
    """``--subset_size`` (``subset_size`` when the flag's default was resolved against the data) against a training
    set of ``n_total`` images and ``--batch_size`` (raises UserError).

    Called once the data is loaded, before the subset is drawn and before the teacher is touched.
    """
    from dataset.subset import min_subset_size, split_sizes  # deferred: the data package imports torch

    subset_size = opt.subset_size if subset_size is None else subset_size
    if subset_size > n_total:
        raise UserError(f"--subset_size {subset_size} is larger than the {n_total}-image training set; "
                        f"pass --subset_size {n_total} or less")
    n_train, _ = split_sizes(subset_size, opt.train_val_frac)
    if n_train < opt.batch_size:
        need = min_subset_size(opt.batch_size, opt.train_val_frac)
        if need <= n_total:
            fix = f"pass --subset_size {need} or more, or lower --batch_size to {n_train} or less"
        else:
            fix = f"lower --batch_size to {n_train} or less"
        raise UserError(f"--subset_size {subset_size} with --train_val_frac {opt.train_val_frac} leaves {n_train} "
                        f"training images, fewer than one batch of --batch_size {opt.batch_size}; {fix}")


def check_split_against_data(opt: StudentConfig, n_train: int, n_train_classes: int) -> None:
    """The method's sampler against the training split: ``n_train`` images of ``n_train_classes`` classes (raises
    UserError). Tuple samplers (CKD, mixup) need as many distinct images as a tuple holds; CRD needs two classes.

    Called before the teacher is touched.
    """
    sampler = opt.method.sampler
    k = method_table.images_per_item(sampler, opt.pos_and_neg)
    if n_train < k:
        fix = "raise --subset_size" + (" or lower --pos_and_neg" if sampler == "ckd_tuples" else "")
        raise UserError(f"--relational {opt.relational} draws tuples of {k} distinct training images, but only {n_train} "
                        f"are in the training split; {fix}")
    if sampler == "crd" and n_train_classes < 2:
        raise UserError(f"--relational {opt.relational} needs negatives from other classes, but every training image "
                        "has the same class; raise --subset_size so that several classes are present")
