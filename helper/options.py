"""Command-line flags of train_student.py and train_teacher.py.

Names and defaults follow the published CKD code, so sweep files and shell history port over.
Values parse the way W&B agents pass them (``--relational=None``, ``--w_kd=1.0``, ``--amp=True``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

from helper import method_table
from helper.errors import EXIT_USER_ERROR, UserError

DATASET_CHOICES = ("cifar100", "digits")
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

# flags that never change what a run computes, so they do not enter the run-folder name
NON_IDENTITY_FLAGS = ("resume", "save_dir", "keep_cache")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one sentence on stderr (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}; run with --help to see every flag and its values", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)


def none_or_str(value: str) -> str | None:
    """Parse ``None``/``none``/``null``/empty as ``None`` (how W&B agents pass a missing method)."""
    return None if value.strip().lower() in ("none", "null", "") else value


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
    number = float(value)
    if not math.isfinite(number) or number != int(number):
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{value}'")
    return int(number)


def _flag(parser: argparse.ArgumentParser, name: str, help: str, **kwargs: Any) -> None:
    parser.add_argument(f"--{name}", help=help, **kwargs)


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by the teacher and the student scripts."""
    _flag(parser, "dataset", "data set: cifar100 (downloaded to --data_folder) or digits (scikit-learn's bundled "
          "real 8x8 digits, offline)", type=str, default="cifar100", choices=DATASET_CHOICES)
    _flag(parser, "data_folder", "folder holding cifar-100-python/ (downloaded there when missing)", type=str, default="./data")
    _flag(parser, "device", "auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps", type=str, default="auto")
    _flag(parser, "batch_size", "mini-batch size (CKD: tuples per batch)", type=int_like, default=64)
    _flag(parser, "momentum", "SGD momentum", type=float, default=0.9)
    _flag(parser, "weight_decay", "SGD weight decay", type=float, default=5e-4)
    _flag(parser, "seed", "seed of the subset draw, the split, the samplers and the initialisation", type=int_like, default=42)
    _flag(parser, "trial", "trial number, only to tell repeated runs apart", type=int_like, default=1)
    _flag(parser, "save_dir", "root folder for runs and teacher checkpoints", type=str, default="./save")
    _flag(parser, "resume", "continue the run from its last.pth (re-running the same command resumes too)",
          type=str2bool, nargs="?", const=True, default=False)
    _flag(parser, "wdb_project", "W&B project (default: $WANDB_PROJECT, else W&B's default project)", type=str, default=None)
    _flag(parser, "wdb_entity", "W&B entity (default: $WANDB_ENTITY)", type=str, default=None)
    _flag(parser, "_tags", "comma-separated W&B tags", type=str, default=None)
    _flag(parser, "amp", "bf16 autocast on CUDA and CPU where supported", type=str2bool, nargs="?", const=True, default=False)
    _flag(parser, "channels_last", "channels-last memory format for the models and inputs", type=str2bool, nargs="?",
          const=True, default=False)
    _flag(parser, "compile", "torch.compile the student (off by default)", type=str2bool, nargs="?", const=True, default=False)
    _flag(parser, "deterministic", "deterministic kernels (bit-identical reruns on CPU; slower on CUDA)", type=str2bool,
          nargs="?", const=True, default=False)


def build_student_parser() -> OneLineParser:
    """The parser of train_student.py (also used to validate sweep files)."""
    parser = OneLineParser(
        prog="train_student.py",
        description="Train a student with few teacher inferences (CKD and baselines).",
    )
    _flag(parser, "model_s", "student architecture (one of models.model_dict)", type=str, default="resnet32")
    _flag(parser, "model_t", "teacher architecture (default: the published pair of --model_s, or parsed from --path_t)",
          type=str, default=None)
    _flag(parser, "path_t", "teacher checkpoint (default: save/models/{model_t}_vanilla/ckpt_epoch_240.pth)",
          type=str, default=None)
    _flag(parser, "distill", method_table.help_of("distill"), type=str, default="kd",
          choices=method_table.choices_of("distill"))
    _flag(parser, "relational", method_table.help_of("relational"), type=none_or_str, default=None,
          choices=method_table.choices_of("relational"))
    _flag(parser, "subset_size", "number of training images drawn from the training set (train + validation)",
          type=int_like, default=50000)
    _flag(parser, "train_val_frac", "fraction of the subset used for training; the rest validates", type=float, default=0.8)
    _flag(parser, "use_DA", "data augmentation: 0 none, 1 random crop, 2 random crop + horizontal flip",
          type=int_like, default=2, choices=(0, 1, 2))
    _flag(parser, "learning_rate", "SGD learning rate (default 0.05; 0.01 for MobileNetV2/ShuffleV1/ShuffleV2)",
          type=float, default=None)
    _flag(parser, "epochs", "maximum number of pseudo-epochs (ceil(n_train / batch_size) steps each)", type=int_like, default=1000)
    _flag(parser, "patience", "pseudo-epochs without validation improvement before the learning rate decays",
          type=int_like, default=50)
    _flag(parser, "lr_decay_rate", "factor applied to the learning rate at each decay", type=float, default=0.1)
    _flag(parser, "lr_decay_times", "number of learning-rate phases, as published (3: the initial rate and two decays); "
          "the plateau that ends the last phase ends the run", type=int_like, default=3)
    _flag(parser, "w_cls", "weight of the classification (cross-entropy) term", type=float, default=1.0)
    _flag(parser, "w_kd", "weight of the KL distillation term", type=float, default=0.0)
    _flag(parser, "w_rel_scale", "scale of the relational method's default weight", type=float, default=1.0)
    _flag(parser, "w_inter_scale", "scale of the white-box method's default weight", type=float, default=1.0)
    _flag(parser, "kd_T", "distillation temperature", type=float, default=4.0)
    _flag(parser, "loss_fn", "mixup teacher term: 0 soft cross-entropy, 1 KL(T)", type=int_like, default=0, choices=(0, 1))
    _flag(parser, "pos_and_neg", "CKD group size P+N (N = pos_and_neg // 2)", type=int_like, default=2)
    _flag(parser, "max_rel_samples", "distinct tuples per sampler pass", type=int_like, default=100000)
    _flag(parser, "feat_dim", "embedding size of CRD and CC", type=int_like, default=128)
    _flag(parser, "mode", "CRD positive: exact or relax", type=str, default="exact", choices=("exact", "relax"))
    _flag(parser, "nce_k", "CRD negatives per sample", type=int_like, default=16384)
    _flag(parser, "nce_t", "CRD temperature", type=float, default=0.07)
    _flag(parser, "nce_m", "CRD memory momentum", type=float, default=0.5)
    _flag(parser, "hint_layer", "feature index used by FitNet (hint)", type=int_like, default=2)
    _flag(parser, "init_epochs", "pseudo-epochs of the init stage of two-stage white-box methods (abound, factor, fsp), "
          "trained from the teacher cache before the main schedule", type=int_like, default=30)
    _flag(parser, "teacher_views", "teacher queries per training image (random views drawn once; teacher calls = "
          "n_train x this)", type=int_like, default=1)
    _flag(parser, "teacher_view", "what the teacher sees: augmented (as published: one random crop/flip view per image "
          "and --teacher_views, drawn with --seed) or clean (the clean image, plus --teacher_views - 1 random views)",
          type=str, default="augmented", choices=("augmented", "clean"))
    _flag(parser, "cache_dtype", "storage type of cached teacher feature maps (logits stay float32)", type=str,
          default="float16", choices=("float32", "float16"))
    _flag(parser, "keep_cache", "keep teacher_cache.pth in the run folder after the run finishes (deleted by default)",
          type=str2bool, nargs="?", const=True, default=False)
    _flag(parser, "calibrate", "none (published) or train_mean: fold mean(cached teacher logits) - mean(student logits) "
          "over the training split into the classifier bias of the validated/saved model; meant for ckd and ckd_inter, "
          "whose loss leaves the per-class logit offset free (see README)", type=str, default="none",
          choices=("none", "train_mean"))
    add_common_flags(parser)
    return parser


def build_teacher_parser() -> OneLineParser:
    """The parser of train_teacher.py."""
    parser = OneLineParser(prog="train_teacher.py", description="Train a teacher from scratch (RepDistiller recipe).")
    _flag(parser, "model", "architecture (one of models.model_dict)", type=str, default="resnet110")
    _flag(parser, "epochs", "training epochs", type=int_like, default=240)
    _flag(parser, "learning_rate", "SGD learning rate (default 0.05; 0.01 for MobileNetV2/ShuffleV1/ShuffleV2)",
          type=float, default=None)
    _flag(parser, "lr_decay_epochs", "comma-separated epochs where the learning rate decays", type=str, default="150,180,210")
    _flag(parser, "lr_decay_rate", "factor applied at each decay epoch", type=float, default=0.1)
    _flag(parser, "save_freq", "save a periodic checkpoint every this many epochs", type=int_like, default=40)
    add_common_flags(parser)
    return parser


def default_learning_rate(model: str) -> float:
    """The published default learning rate of an architecture."""
    return 0.01 if model in SMALL_LR_MODELS else 0.05


def finalize_student_args(opt: argparse.Namespace) -> argparse.Namespace:
    """Resolve defaults that depend on other flags and check ranges (raises UserError)."""
    from models import model_dict  # deferred: importing torch models is not needed for --help

    for flag in ("model_s", "model_t"):
        name = getattr(opt, flag)
        if name is not None and name not in model_dict:
            raise UserError(f"unknown architecture '{name}' for --{flag}; choose one of {', '.join(model_dict)}")
    if opt.model_t is None:
        opt.model_t = teacher_from_path(opt.path_t) if opt.path_t else DEFAULT_TEACHER.get(opt.model_s)
        if opt.model_t is None:
            raise UserError(f"no published teacher for student '{opt.model_s}'; pass --model_t (and --path_t)")
    if opt.path_t is None:
        opt.path_t = str(teacher_checkpoint_path(opt.save_dir, opt.dataset, opt.model_t))
    if opt.learning_rate is None:
        opt.learning_rate = default_learning_rate(opt.model_s)
    if not 0.0 < opt.train_val_frac < 1.0:
        raise UserError(f"--train_val_frac must be strictly between 0 and 1, got {opt.train_val_frac}")
    if opt.subset_size < 2:
        raise UserError(f"--subset_size must be at least 2, got {opt.subset_size}")
    if opt.pos_and_neg < 2:
        raise UserError(f"--pos_and_neg must be at least 2 (one positive and one negative image), got {opt.pos_and_neg}")
    if opt.nce_k < 1:
        raise UserError(f"--nce_k must be at least 1, got {opt.nce_k}")
    if opt.teacher_views < 1:
        raise UserError(f"--teacher_views must be at least 1, got {opt.teacher_views}")
    for flag in ("batch_size", "epochs", "max_rel_samples", "feat_dim"):
        if getattr(opt, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(opt, flag)}")
    if opt.init_epochs < 0:
        raise UserError(f"--init_epochs must not be negative, got {opt.init_epochs}")
    if opt.patience < 0:
        raise UserError(f"--patience must not be negative, got {opt.patience}")
    if opt.lr_decay_times < 1:
        raise UserError(f"--lr_decay_times counts learning-rate phases and must be at least 1, got {opt.lr_decay_times}")
    if opt.learning_rate <= 0:
        raise UserError(f"--learning_rate must be positive, got {opt.learning_rate}")
    for flag in ("w_cls", "w_kd", "w_rel_scale", "w_inter_scale", "kd_T", "nce_t"):
        value = getattr(opt, flag)
        if not math.isfinite(value) or value < 0 or (flag in ("kd_T", "nce_t") and value == 0):
            raise UserError(f"--{flag} must be a finite {'positive' if flag in ('kd_T', 'nce_t') else 'non-negative'} "
                            f"number, got {value}")
    return opt


def identity_config(opt: argparse.Namespace) -> dict[str, Any]:
    """The flags that define what a run computes (everything but paths, logging and resume)."""
    return {k: v for k, v in sorted(vars(opt).items()) if k not in NON_IDENTITY_FLAGS and not k.startswith("__")}


def run_name(opt: argparse.Namespace) -> str:
    """A readable, unique folder name: two configurations that differ in any flag get different names."""
    config = identity_config(opt)
    digest = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:10]
    method = opt.relational or "none"
    return (f"S-{opt.model_s}_T-{opt.model_t}_{opt.dataset}_r-{method}_d-{opt.distill}"
            f"_n{opt.subset_size}_lr{opt.learning_rate:g}_seed{opt.seed}_trial{opt.trial}_{digest}")


def teacher_checkpoint_path(save_dir: str | Path, dataset: str, model: str) -> Path:
    """Where train_teacher.py writes, and train_student.py looks for, a teacher.

    CIFAR-100 uses RepDistiller's layout ``save/models/{model}_vanilla/ckpt_epoch_240.pth``;
    other data sets get their own folder (``save/models_digits/...``) so they never mix.
    """
    folder = "models" if dataset == "cifar100" else f"models_{dataset}"
    return Path(save_dir) / folder / f"{model}_vanilla" / "ckpt_epoch_240.pth"


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


def student_run_dir(opt: argparse.Namespace) -> Path:
    """The folder of a student run: ``{save_dir}/student/{run_name}``."""
    return Path(opt.save_dir) / "student" / run_name(opt)


def parse_student_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and finalize train_student.py's flags (raises UserError on a bad combination)."""
    return finalize_student_args(build_student_parser().parse_args(argv))
