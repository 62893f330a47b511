"""Command-line flags of train_student.py and train_teacher.py.

Names and defaults follow the published CKD code, so sweep files and shell history port over.
Values parse the way W&B agents pass them (``--relational=None``, ``--w_kd=1.0``, ``--amp=True``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from core import fs
from core.errors import EXIT_USER_ERROR, UserError
from core.numbers import INT64_MAX, Number  # noqa: F401 - the type of every numeric flag; INT64_MAX re-exported
from helper import method_table
from helper.method_table import none_or_str

T = TypeVar("T")

DATASET_CHOICES = ("cifar100", "digits", "stanfordcars")
# data sets whose teachers live in SAVE_DIR/models/ (RepDistiller's folder); the others get SAVE_DIR/models_{dataset}/
CIFAR_LAYOUT_DATASETS = ("cifar100", "stanfordcars")
SMALL_LR_MODELS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")

# student -> teacher pairs of the CKD paper and of RepDistiller
DEFAULT_TEACHER = {
    "resnet32": "resnet110",
    "wrn_16_2": "wrn_40_2",
    "vgg8": "vgg13",
    "resnet8x4": "resnet32x4",
    "resnet20": "resnet56",
    "resnet8": "resnet56",
    "resnet14": "resnet56",
    "resnet44": "resnet110",
    "wrn_40_1": "wrn_40_2",
    "wrn_16_1": "wrn_40_2",
    "vgg11": "vgg13",
    "MobileNetV2": "ResNet50",
    "ShuffleV1": "resnet32x4",
    "ShuffleV2": "resnet32x4",
}

# the digits teacher `make demo` and docs/runs.md train first, and the default --model_t / --model of --dataset digits
DEFAULT_DIGITS_TEACHER = "resnet14"
DEFAULT_CIFAR_TEACHER = "resnet110"

PUBLISHED_DECAY_EPOCHS = "150,180,210"  # train_teacher.py --lr_decay_epochs, as RepDistiller
MODEL_NAMES_MARK = "<model names>"  # replaced by the names of models.model_dict when --help is printed


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` with every default shown and the architecture names listed (imported only to print help)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if MODEL_NAMES_MARK in text:
            from models import model_dict

            text = text.replace(MODEL_NAMES_MARK, ", ".join(model_dict))
        if action.option_strings and action.default is not argparse.SUPPRESS and "(default" not in text \
                and action.nargs != 0:
            text += " (default: %(default)s)"
        return text


class RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """:class:`HelpFormatter` (every default shown) with the description printed as written (a script's docstring)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one sentence on stderr (exit code 2).

    Flags must be spelt out in full (``allow_abbrev=False``): ``--lr`` is an error, not ``--lr_decay_rate``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {one_line_message(message)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def flag_value_message(message: str) -> str | None:
    """argparse's message of a value refused by a flag's type (``argument --x: must be ...``) as the configuration's
    check of it reads (``--x must be ...``); None for other messages."""
    flag, sep, rest = message.partition(": ")
    if sep and flag.startswith("argument "):
        name = flag.removeprefix("argument ").split("/")[0]
        if name in rest:  # a whole sentence of a path kind (PathKind): it names the flag itself
            return rest
        if rest.startswith("must "):
            return f"{name} {rest}"
    return None


def one_line_message(message: str) -> str:
    """argparse's message as one sentence: a value refused by a flag's type as :func:`flag_value_message` words it;
    other mistakes point at --help."""
    return flag_value_message(message) or f"{message}; run with --help to see every flag and its values"


def str2bool(value: str | bool) -> bool:
    """Parse booleans as W&B and shells write them: true/false, 1/0, yes/no."""
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in ("1", "true", "t", "yes", "y", "on"):
        return True
    if text in ("0", "false", "f", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got '{value}'")


def int_like(value: str) -> int:
    """Accept ``2`` and ``2.0`` (W&B writes grid integers either way) but not ``2.5``."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number != int(number):
        raise argparse.ArgumentTypeError(f"must be a whole number, got '{value}'")
    return int(number)


def number_type(action: argparse.Action) -> Number | None:
    """The :class:`Number` of a flag, when it is numeric."""
    return action.type if isinstance(action.type, Number) else None


SEED = Number(int, low=0)  # every seed of every script: torch.manual_seed takes 0 .. 2**63 - 1
POSITIVE_INT = Number(int, low=1)
NON_NEGATIVE_INT = Number(int, low=0)
POSITIVE_FLOAT = Number(float, low=0, low_open=True)
NON_NEGATIVE_FLOAT = Number(float, low=0)
FINITE_FLOAT = Number(float)
FRACTION = Number(float, low=0, high=1, low_open=True, high_open=True)

# The ranges of the run flags: what a real run can use. Counts that only size memory (images, tuples, negatives,
# embedding widths, views) stop at COUNT_MAX and are then weighed by the resource estimate (helper/resources.py);
# rates, factors, weights and temperatures stop where training can only diverge or overflow.
COUNT_MAX = 10**9
EPOCHS_MAX = 10**6
EPOCHS = Number(int, low=1, high=EPOCHS_MAX)
EPOCHS_OR_NONE = Number(int, low=0, high=EPOCHS_MAX)
COUNT = Number(int, low=1, high=COUNT_MAX)
SUBSET_SIZE = Number(int, low=2, high=COUNT_MAX)
PAIR_SIZE = Number(int, low=2, high=COUNT_MAX, why=" (one positive and one negative image)")
TRIAL = Number(int, low=1, high=10**6)
LEARNING_RATE = Number(float, low=0, high=10, low_open=True)  # above 10 SGD only diverges (1e308 overflows it)
DECAY_RATE = Number(float, low=0, high=1, low_open=True)  # a decay never raises the rate; 1 keeps it constant
LOSS_WEIGHT = Number(float, low=0, high=1e4)
TEMPERATURE = Number(float, low=0, high=1e3, low_open=True)
EXPONENT = Number(float, low=0, high=10, low_open=True)
UNIT_INTERVAL = Number(float, low=0, high=1)  # momentum, weight decay, CRD memory momentum

def check_path(flag: str, value: str | Path | None, kind: str) -> None:
    """The kind of a path flag ``flag`` (``--save_dir``, or a positional's metavar) (raises UserError): ``file`` (an
    existing file), ``maybe_file`` (a file when it exists, checked again before it is read), ``folder`` (a folder,
    existing or not, never a file or below one), ``input_folder`` (an existing folder), ``output`` (a folder this run
    may create: as ``folder``, and writable). A path the operating system refuses to examine (a name over 255 bytes, no
    permission to search a folder above it, a symbolic-link loop) is named with its reason (``core.fs``), and a FIFO or
    device is never taken for a file or a folder."""
    if value is None or value == "":
        if value == "":
            raise UserError(f"{flag} is empty; pass a path")
        return
    try:
        _check_path(flag, Path(value), kind)
    except fs.PathError as err:  # from core.fs: the OSError is its cause
        raise UserError(f"{flag} {fs.os_error_message(err.__cause__, value, None, location=flag)}") from err
    except OSError as err:
        raise UserError(f"{flag} {fs.os_error_message(err, value, None, location=flag)}") from err


def _check_path(flag: str, path: Path, kind: str) -> None:
    shown = fs.show_path(path)
    what = fs.kind_of(path)
    if kind in ("file", "maybe_file"):
        if what == "a folder":
            raise UserError(f"{flag} {shown} is a directory, not a file; pass the file inside it")
        if what is None and kind == "file":
            raise UserError(f"{flag} {shown} does not exist; check the path")
        if what not in (None, "a regular file"):
            raise UserError(f"{flag} {shown} is {what}, not a regular file; pass a regular file")
        return
    if what == "a regular file":
        raise UserError(f"{flag} {shown} is a file, not a folder; pass a folder")
    if what not in (None, "a folder"):
        raise UserError(f"{flag} {shown} is {what}, not a folder; pass a folder")
    if kind == "input_folder" and what is None:
        raise UserError(f"{flag} {shown} does not exist; pass an existing folder")
    base = fs.existing_ancestor(path)
    if not base.is_dir():
        raise UserError(f"cannot write to {shown} ({fs.show_path(base)} is a file: Not a directory); choose a writable {flag}"
                        if kind == "output" else f"{flag} {shown} lies below the file {fs.show_path(base)}, not a folder; pass a folder")
    if kind == "output" and what is None:
        fs.check_name_lengths(path)  # a folder to create: a name the file system cannot hold is refused now, not at mkdir
    if kind == "output" and not os.access(base, os.W_OK | os.X_OK):
        reason = "read-only file system" if fs.read_only_mount(base) else "Permission denied"
        raise UserError(f"cannot write to {shown} ({fs.show_path(base)} is read-only: {reason}); choose a writable {flag}")


# the kind of each path flag of train_student.py / train_teacher.py (str fields of the configuration, checked when it
# is built; --path_t by check_teacher_path, with the teacher's words)
CONFIG_PATH_KINDS = {"save_dir": "output", "data_folder": "folder", "path_t": "file"}


class PathKind:
    """The ``type=`` of a path flag: :func:`check_path` of its kind at parse time; the value becomes a Path."""

    def __init__(self, kind: str, flag: str) -> None:
        self.kind, self.flag, self.__name__ = kind, flag, "path"

    def __call__(self, text: str) -> Path:
        try:
            check_path(self.flag, text, self.kind)
        except UserError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return Path(text)


def _flag(parser: argparse.ArgumentParser, name: str, help: str, **kwargs: Any) -> None:
    parser.add_argument(f"--{name}", help=help, **kwargs)


COMMON_HELP = {
    "dataset": "data set: cifar100 (downloaded to --data_folder), digits (scikit-learn's bundled real 8x8 digits, "
               "offline) or stanfordcars (196 classes, never downloaded: put the devkit files in --data_folder, see docs/data.md)",
    "data_folder": "folder holding cifar-100-python/ (downloaded there when missing), or for stanfordcars "
                   "stanford_cars/ (or the files themselves): devkit/cars_meta.mat, devkit/cars_train_annos.mat, "
                   "cars_test_annos_withlabels.mat, cars_train/, cars_test/",
    "device": "auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps",
    "batch_size": "mini-batch size (CKD: tuples per batch)",
    "momentum": "SGD momentum (0 or more)",
    "weight_decay": "SGD weight decay (0 or more)",
    "seed": "seed of the subset draw, the split, the samplers and the initialisation",
    "trial": "trial number, only to tell repeated runs apart (it is part of the run-folder name)",
    "save_dir": "root folder: runs go to SAVE_DIR/student/, teachers are read from SAVE_DIR/models*/",
    "resume": "continue the run from its last.pth (re-running the same command resumes too)",
    "keep_last": "keep last.pth (the resumable checkpoint, about 3x best.pth) after the run finishes (deleted by default; "
                 "results.json and best.pth stay)",
    "wdb_project": "W&B project (default: $WANDB_PROJECT, else W&B's default project)",
    "wdb_entity": "W&B entity (default: $WANDB_ENTITY)",
    "_tags": "comma-separated W&B tags",
    "amp": "bf16 autocast on CUDA and CPU where supported",
    "channels_last": "channels-last memory format for the models and inputs",
    "compile": "torch.compile the student",
    "deterministic": "deterministic kernels (bit-identical reruns on CPU; slower on CUDA)",
}

TEACHER_HELP = {
    **COMMON_HELP,
    "batch_size": "mini-batch size",
    "seed": "seed of the initialisation and data order",
    "trial": "trial number: trial 1 writes {model}_vanilla/ (where students look by default), trial k > 1 writes "
             "{model}_vanilla_trial{k}/ (pass it to students with --path_t)",
    "save_dir": "root folder: the teacher goes to SAVE_DIR/models/{model}_vanilla/ (SAVE_DIR/models_digits/... for "
                "digits, SAVE_DIR/models/{model}_stanfordcars_vanilla/ for stanfordcars)",
    "resume": "continue the teacher from its last.pth (re-running the same command resumes too; a finished teacher "
              "is not trained again)",
    "keep_last": "keep last.pth (the resumable checkpoint) after the teacher finishes (deleted by default; the final "
                 "ckpt_epoch_240.pth stays)",
    "compile": "torch.compile the model being trained",
    "channels_last": "channels-last memory format for the model and inputs",
}


def add_common_flags(parser: argparse.ArgumentParser, helps: dict[str, str] = COMMON_HELP,
                     batch_size_type: Number = COUNT) -> None:
    """Flags shared by the teacher and the student scripts; ``helps`` words them for the script at hand."""
    _flag(parser, "dataset", helps["dataset"], type=str, default="cifar100", choices=DATASET_CHOICES)
    _flag(parser, "data_folder", helps["data_folder"], type=str, default="./data")
    _flag(parser, "device", helps["device"], type=str, default="auto")
    _flag(parser, "batch_size", helps["batch_size"], type=batch_size_type, default=64)
    _flag(parser, "momentum", helps["momentum"], type=UNIT_INTERVAL, default=0.9)
    _flag(parser, "weight_decay", helps["weight_decay"], type=UNIT_INTERVAL, default=5e-4)
    _flag(parser, "seed", helps["seed"], type=SEED, default=42)
    _flag(parser, "trial", helps["trial"], type=TRIAL, default=1)
    _flag(parser, "save_dir", helps["save_dir"], type=str, default="./save")
    _flag(parser, "resume", helps["resume"], type=str2bool, nargs="?", const=True, default=False)
    _flag(parser, "keep_last", helps["keep_last"], type=str2bool, nargs="?", const=True, default=False)
    _flag(parser, "wdb_project", helps["wdb_project"], type=str, default=None)
    _flag(parser, "wdb_entity", helps["wdb_entity"], type=str, default=None)
    _flag(parser, "_tags", helps["_tags"], type=str, default=None)
    _flag(parser, "amp", helps["amp"], type=str2bool, nargs="?", const=True, default=False)
    _flag(parser, "channels_last", helps["channels_last"], type=str2bool, nargs="?", const=True, default=False)
    _flag(parser, "compile", helps["compile"], type=str2bool, nargs="?", const=True, default=False)
    _flag(parser, "deterministic", helps["deterministic"], type=str2bool, nargs="?", const=True, default=False)


def build_student_parser() -> OneLineParser:
    """The parser of train_student.py (also used to validate sweep files)."""
    parser = OneLineParser(
        prog="train_student.py",
        description="Train a student with few teacher inferences (CKD and baselines).",
    )
    _flag(parser, "model_s", f"student architecture, one of: {MODEL_NAMES_MARK}", type=str, default="resnet32")
    _flag(parser, "model_t", f"teacher architecture, one of the same names (default: parsed from --path_t when given, else "
          f"{DEFAULT_DIGITS_TEACHER} for --dataset digits, else the published pair of --model_s, e.g. resnet32 -> resnet110)",
          type=str, default=None)
    _flag(parser, "path_t", "teacher checkpoint (default: SAVE_DIR/models/{model_t}_vanilla/ckpt_epoch_240.pth, "
          "SAVE_DIR/models_digits/... for --dataset digits, SAVE_DIR/models/{model_t}_stanfordcars_vanilla/... for "
          "--dataset stanfordcars)", type=str, default=None)
    _flag(parser, "distill", method_table.help_of("distill"), type=str, default="kd",
          choices=method_table.choices_of("distill"))
    _flag(parser, "relational", method_table.help_of("relational"), type=none_or_str, default=None,
          choices=method_table.choices_of("relational"))
    _flag(parser, "subset_size", "number of training images drawn from the training set, train + validation (default: "
          "the whole training set: 50000 for cifar100, 1437 for digits, 8144 for stanfordcars)", type=SUBSET_SIZE, default=None)
    _flag(parser, "train_val_frac", "fraction of the subset used for training; the rest validates", type=FRACTION, default=0.8)
    _flag(parser, "use_DA", "data augmentation: 0 none, 1 random crop, 2 random crop + horizontal flip",
          type=int_like, default=2, choices=(0, 1, 2))
    _flag(parser, "learning_rate", "SGD learning rate (default 0.05; 0.01 for MobileNetV2/ShuffleV1/ShuffleV2)",
          type=LEARNING_RATE, default=None)
    _flag(parser, "epochs", "maximum number of pseudo-epochs (ceil(n_train / batch_size) steps each)", type=EPOCHS, default=1000)
    _flag(parser, "patience", "pseudo-epochs without validation improvement before the learning rate decays",
          type=EPOCHS_OR_NONE, default=50)
    _flag(parser, "lr_decay_rate", "factor applied to the learning rate at each decay", type=DECAY_RATE, default=0.1)
    _flag(parser, "lr_decay_times", "number of learning-rate phases, as published (3: the initial rate and two decays); "
          "the plateau that ends the last phase ends the run", type=Number(int, low=1, high=100), default=3)
    _flag(parser, "w_cls", "weight of the classification (cross-entropy) term", type=LOSS_WEIGHT, default=1.0)
    _flag(parser, "w_kd", "weight of the KL distillation term (Hinton KD at --kd_T); 0, as published, leaves it off: with "
          "--relational None the student then trains on labels only", type=LOSS_WEIGHT, default=0.0)
    _flag(parser, "w_rel_scale", "scale of the relational method's default weight", type=LOSS_WEIGHT, default=1.0)
    _flag(parser, "w_inter_scale", "scale of the white-box method's default weight", type=LOSS_WEIGHT, default=1.0)
    _flag(parser, "kd_T", "distillation temperature", type=TEMPERATURE, default=4.0)
    _flag(parser, "logit_stand", "logit standardization (Sun et al., CVPR 2024): z-score the student and teacher logits "
          "inside KD (--w_kd), --relational dkd (then at T = --kd_T) and mlkd; official recipe --kd_T 2 with KD weight 9 "
          "(see docs/logit_methods.md)", type=str2bool, nargs="?", const=True, default=False)
    _flag(parser, "ttm_l", "exponent l of the teacher power transform of --relational ttm and wttm (default: the official "
          "0.1 for ttm, 0.2 for wttm)", type=EXPONENT, default=None)
    _flag(parser, "loss_fn", "mixup teacher term: 0 soft cross-entropy, 1 KL(T)", type=int_like, default=0, choices=(0, 1))
    _flag(parser, "pos_and_neg", "CKD group size P+N (N = pos_and_neg // 2)", type=PAIR_SIZE, default=2)
    _flag(parser, "max_rel_samples", "distinct tuples per sampler pass", type=COUNT, default=100000)
    _flag(parser, "feat_dim", "embedding size of CRD and CC", type=COUNT, default=128)
    _flag(parser, "mode", "CRD positive: exact or relax", type=str, default="exact", choices=("exact", "relax"))
    _flag(parser, "nce_k", "CRD negatives per sample", type=COUNT, default=16384)
    _flag(parser, "nce_t", "CRD temperature", type=TEMPERATURE, default=0.07)
    _flag(parser, "nce_m", "CRD memory momentum", type=UNIT_INTERVAL, default=0.5)
    _flag(parser, "hint_layer", "feature index used by FitNet (hint)", type=Number(int, low=-1000, high=1000), default=2)
    _flag(parser, "init_epochs", "pseudo-epochs of the init stage of two-stage white-box methods (abound, factor, fsp), "
          "trained from the teacher cache before the main schedule", type=EPOCHS_OR_NONE, default=30)
    _flag(parser, "teacher_views", "teacher queries per training image (random views drawn once; teacher calls = "
          "n_train x this)", type=COUNT, default=1)
    _flag(parser, "teacher_view", "what the teacher sees: augmented (as published: one random crop/flip view per image "
          "and --teacher_views, drawn with --seed) or clean (the clean image, plus --teacher_views - 1 random views)",
          type=str, default="augmented", choices=("augmented", "clean"))
    _flag(parser, "cache_dtype", "storage type of cached teacher feature maps (logits stay float32)", type=str,
          default="float16", choices=("float32", "float16"))
    _flag(parser, "keep_cache", "keep teacher_cache.pth in the run folder after the run finishes (deleted by default)",
          type=str2bool, nargs="?", const=True, default=False)
    _flag(parser, "calibrate", "none (published) or train_mean: fold mean(cached teacher logits) - mean(student logits) "
          "over the training split into the classifier bias of the validated/saved model; meant for ckd and ckd_inter, "
          "whose loss leaves the per-class logit offset free (see docs/calibration.md)", type=str, default="none",
          choices=("none", "train_mean"))
    add_common_flags(parser, COMMON_HELP)
    return parser


def build_teacher_parser() -> OneLineParser:
    """The parser of train_teacher.py."""
    parser = OneLineParser(prog="train_teacher.py", description="Train a teacher from scratch (RepDistiller recipe).")
    _flag(parser, "model", f"architecture, one of: {MODEL_NAMES_MARK} (default: {DEFAULT_CIFAR_TEACHER} for cifar100, "
          f"{DEFAULT_DIGITS_TEACHER} for digits)", type=str, default=None)
    _flag(parser, "epochs", "training epochs", type=EPOCHS, default=240)
    _flag(parser, "learning_rate", "SGD learning rate (default 0.05; 0.01 for MobileNetV2/ShuffleV1/ShuffleV2)",
          type=LEARNING_RATE, default=None)
    _flag(parser, "lr_decay_epochs", "comma-separated epochs after which the learning rate decays, each below --epochs "
          "(the published default is kept with a shorter --epochs: it then never decays)", type=str, default=PUBLISHED_DECAY_EPOCHS)
    _flag(parser, "lr_decay_rate", "factor applied at each decay epoch", type=DECAY_RATE, default=0.1)
    _flag(parser, "save_freq", "save a periodic checkpoint ckpt_epoch_N.pth every this many epochs", type=EPOCHS, default=40)
    add_common_flags(parser, TEACHER_HELP, Number(int, low=2, high=COUNT_MAX, why=" (BatchNorm cannot train on one image)"))
    return parser


def default_learning_rate(model: str) -> float:
    """The published default learning rate of an architecture."""
    return 0.01 if model in SMALL_LR_MODELS else 0.05


def check_architecture(name: str | None, flag: str) -> None:
    from models import model_dict  # deferred: importing torch models is not needed for --help

    if name is not None and name not in model_dict:
        raise UserError(f"unknown architecture '{name}' for --{flag}; choose one of {', '.join(model_dict)}")






def data_not_found_message(err: Exception) -> str:
    """The message of a data set that is not in ``--data_folder``, with how to point the run elsewhere."""
    return f"{err}, or pass --data_folder with the folder that holds it"


def parse_list(flag: str, text: str, example: str, item: Callable[[str], T], what: str = "values") -> list[T]:
    """A comma-separated flag value (``--lr_decay_epochs 150,180,210``, ``--_tags a,b``) as a list, in the given order
    (raises UserError): an empty value, an empty item (``1,,2``), an item ``item`` refuses (ValueError) and an item
    given twice are each refused in one sentence."""
    if not text.strip():
        raise UserError(f"{flag} is empty; pass comma-separated values such as {example}, or leave {flag} out")
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise UserError(f"{flag} '{text}' has an empty item; pass comma-separated values such as {example}")
    try:
        values = [item(part) for part in parts]
    except ValueError as err:
        raise UserError(f"{flag} must be comma-separated {what} such as {example}, got '{text}'") from err
    repeated = sorted({str(v) for i, v in enumerate(values) if v in values[:i]})
    if repeated:
        raise UserError(f"{flag} '{text}' gives {', '.join(repeated)} more than once; give each value once")
    return values


def parse_decay_epochs(text: str) -> list[int]:
    """``--lr_decay_epochs 150,180,210`` as a sorted list (raises UserError)."""
    epochs = sorted(parse_list("--lr_decay_epochs", text, "150,180,210", int, "whole numbers"))
    if any(e < 1 for e in epochs):
        raise UserError(f"--lr_decay_epochs must hold epochs of 1 or more, got '{text}'")
    return epochs


def check_decay_epochs(decay_epochs: list[int], epochs: int, text: str) -> None:
    """Refuse ``--lr_decay_epochs`` that ``--epochs`` never reaches (the learning rate decays after epoch e, so a decay
    epoch of --epochs or more does nothing). The published default is kept for any --epochs: a short run with it is a
    smoke test of the published schedule, not a schedule of its own."""
    if text == PUBLISHED_DECAY_EPOCHS:
        return
    past = [e for e in decay_epochs if e >= epochs]
    if past:
        listed = ",".join(str(e) for e in past)
        raise UserError(f"--lr_decay_epochs {text} decays after epoch{'s' if len(past) > 1 else ''} {listed}, which "
                        f"--epochs {epochs} never {'reach' if len(past) > 1 else 'reaches'}; pass decay epochs below "
                        f"{epochs} or raise --epochs")


def check_teacher_path(path_t: str, model_t: str | None, dataset: str) -> None:
    """``--path_t`` given by hand is an existing checkpoint file (raises UserError). Checked when the configuration is
    built, before the folder name is read as an architecture: a mistyped path is named as missing, not as a folder
    whose name is no architecture."""
    path = Path(path_t)
    try:
        what = fs.kind_of(path)
    except fs.PathError as err:
        raise UserError(f"--path_t {fs.os_error_message(err.__cause__, path, None, location='--path_t')}") from err
    if what == "a folder":
        raise UserError(f"--path_t {path} is a directory, not a checkpoint; pass the checkpoint file inside it "
                        f"(e.g. {path / 'ckpt_epoch_240.pth'})")
    if what is not None:
        if what != "a regular file":
            raise UserError(f"--path_t {path} is {what}, not a checkpoint file; pass the checkpoint file")
        return
    if model_t is None:
        try:
            model_t = teacher_from_path(path_t)
        except UserError:
            model_t = None
    where = "check --path_t" + ("" if path.parent.is_dir() else f" (there is no folder {path.parent} either)")
    if model_t is None:
        raise UserError(f"teacher checkpoint {path} does not exist; {where}")
    raise UserError(f"teacher checkpoint {path} does not exist; {where}, or train it with "
                    f"`python train_teacher.py --model {model_t} --dataset {dataset}`")








def teacher_checkpoint_path(save_dir: str | Path, dataset: str, model: str, trial: int = 1) -> Path:
    """Where train_teacher.py writes, and train_student.py looks for, a teacher.

    CIFAR-100 uses RepDistiller's layout ``save/models/{model}_vanilla/ckpt_epoch_240.pth``; Stanford Cars sits beside
    it as ``save/models/{model}_stanfordcars_vanilla/`` (the published code also keeps its Cars teachers in
    ``save/models/``, with the data set in the folder name); other data sets get their own folder
    (``save/models_digits/{model}_vanilla/``) so they never mix. Trial k > 1 appends ``_trial{k}`` to the folder name
    (students pass it with ``--path_t``).
    """
    if dataset in CIFAR_LAYOUT_DATASETS:
        folder, name = "models", f"{model}_vanilla" if dataset == "cifar100" else f"{model}_{dataset}_vanilla"
    else:
        folder, name = f"models_{dataset}", f"{model}_vanilla"
    if trial != 1:
        name += f"_trial{trial}"
    return Path(save_dir) / folder / name / "ckpt_epoch_240.pth"




def teacher_from_path(path_t: str) -> str:
    """The architecture named by a checkpoint's folder (``.../wrn_40_2_vanilla/ckpt.pth`` -> ``wrn_40_2``),
    as the published code parses it."""
    from models import model_dict

    folder = Path(path_t).parent.name
    candidates = [name for name in model_dict if folder == name or folder.startswith(name + "_")]
    if not candidates:
        raise UserError(
            f"cannot tell the teacher architecture from the folder name '{folder}' of --path_t; pass --model_t too"
        )
    return max(candidates, key=len)




def markdown_flag_table(parser: argparse.ArgumentParser) -> str:
    """The docs/flags.md table of a parser's flags (flag, default, meaning), generated so it cannot drift from ``--help``."""
    lines = ["| flag | default | meaning |", "|---|---|---|"]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        text = (action.help or "").replace(MODEL_NAMES_MARK, "the 22 names of models.model_dict (`--help` lists them)")
        lines.append(f"| `{action.option_strings[0]}` | `{action.default}` | {text.replace('|', '/')} |")
    return "\n".join(lines)
