"""The student run: data, cached teacher, method, schedule, checkpoints, exact resume, results.

Schedule (as published, see helper/schedule.py): validate after every pseudo-epoch (ceil(n_train /
batch_size) steps) and keep the best-validation weights; after ``--patience`` pseudo-epochs without
improvement, reload the best weights of the trained modules (not the optimizer momentum, not the CRD
memory: as published) and start the next learning-rate phase; ``--lr_decay_times`` phases in all, or
``--epochs`` pseudo-epochs. The reported test accuracy is that of the best-validation weights.

A run is its built-once data (split, images, teacher cache: :meth:`StudentRun._prepare_data` and
:meth:`StudentRun._prepare_teacher_cache`), its resumable state (:meth:`StudentRun.state_dict` /
:meth:`StudentRun.load_state_dict`: every checkpoint key written in one place) and the one training loop of
:func:`helper.engine.train_epochs`, which it shares with teacher training.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from core import env
from core.checkpoint import (
    atomic_save,
    atomic_write_json,
    extract_state_dict,
    file_sha256,
    load_weights_strict,
    safe_load,
)
from core.device import configure_backend, resolve_device
from core.errors import UserError
from dataset import TrainPool, build_train_pool, make_subset_split, subset_fingerprint
from dataset.augment import DeviceAugment
from dataset.samplers import steps_per_epoch
from dataset.teacher_cache import CountingModule, load_or_build_cache
from helper import method_table
from helper.calibration import fold_shift, shifted, train_mean_shift, validation_sample
from helper.config import StudentConfig, check_split_against_data, check_subset_against_data
from helper.engine import (
    LoopState,
    NonFiniteLoss,
    StopRequest,
    Stopwatch,
    draw_batch,
    eval_batch_size,
    evaluate,
    provenance,
    require_resumable,
    set_lr,
    train_epochs,
    train_step,
)
from helper.logger import report_finished_run
from helper.method_table import reports_calibrated, resolve
from helper.methods import (
    Method,
    MethodContext,
    build_method,
    check_white_box,
    check_white_box_early,
    feature_shapes,
    teacher_feature_layers,
    teacher_needs_preact,
    uses_teacher_outputs,
    white_box_class,
)
from helper.resources import LOG_BYTES, Estimate, check_fits, model_footprint
from helper.run_files import (
    LOAD_ERRORS,
    check,
    check_best,
    damaged,
    load_run_file,
    optimizer_mismatch,
    read_results,
    structure_mismatch,
    tensors_mismatch,
)
from helper.run_folder import (
    adopt_earlier_run_folder,
    folder_lock,
    missing_teacher_message,
    run_name,
    teacher_digest,
)
from helper.run_setup import (
    clean_leftovers,
    ensure_writable,
    load_data,
    mark_failed,
    open_logger,
    refuse_failed_run,
    refuse_resume_without_checkpoint,
    remove_if_empty,
)
from helper.schedule import DECAY, STOP, PlateauSchedule
from models import model_dict
from models.published import PUBLISHED_CIFAR100_ACCURACY, low_accuracy_problem

# last.pth is written after the first pseudo-epoch, then at most this often (seconds), on every learning-rate
# decay, on SIGINT/SIGTERM and at the end; a resumed run replays deterministically from it.
# ($CKD_CHECKPOINT_EVERY_S, read through core.env when the run starts)
CHECKPOINT_EVERY_S = env.REGISTRY["CKD_CHECKPOINT_EVERY_S"].default


# a loss weight above this is named as the cause of an overflowing term before the term's temperature
EXTREME_WEIGHT = 1e6


def non_finite_cause(opt: StudentConfig, terms: dict[str, float], weights: dict[str, float], teacher_logits: Tensor) -> str:
    """What most likely made the loss non-finite, from which weighted terms are (``terms``: the step's or the epoch's
    means; ``weights``: each term's weight): the student's cross-entropy means the student's weights diverged (the
    learning rate); another term alone means its weight, its temperature or the teacher's logits; every term finite
    but their sum not means the weights."""
    bad = [k for k, v in terms.items() if k != "train_loss" and not math.isfinite(v)]
    if "cls" in bad:
        return (f"the student's weights diverged (its cross-entropy is {terms['cls']:.4g}): lower --learning_rate "
                f"(now {opt.learning_rate:g})")
    if not bad:
        big = {k: w for k, w in weights.items() if w}
        shown = ", ".join(f"{k} {w:g}" for k, w in big.items())
        return f"every term is finite but their weighted sum is not: lower the loss weights (the terms' weights are {shown})"
    causes = []
    teacher_peak = float(teacher_logits.abs().max()) if teacher_logits.numel() else 0.0
    for term in bad:
        weight = weights.get(term, 1.0)
        flag = {"cls": "--w_cls", "rel": "--w_rel_scale", "inter": "--w_inter_scale"}.get(term, f"--w_{term}")
        if abs(weight) > EXTREME_WEIGHT:
            causes.append(f"the weight of the {term} term ({weight:g}, from {flag}) is extreme: lower {flag}")
        elif term == "rel" and opt.relational == "crd":
            causes.append(f"the crd term overflowed: raise its temperature --nce_t (now {opt.nce_t:g})")
        elif term == "inter":
            causes.append(f"the {opt.distill} term overflowed: lower --w_inter_scale (now {opt.w_inter_scale:g}) or "
                          f"--learning_rate (now {opt.learning_rate:g})")
        elif teacher_peak > 1e4:
            causes.append(f"the teacher's cached logits are extreme (up to {teacher_peak:.4g}): check the teacher {opt.teacher_path}")
        else:
            causes.append(f"the {term} term overflowed at the temperature --kd_T {opt.kd_T:g}: raise --kd_T or lower {flag}")
    return "; ".join(causes)


def load_teacher(opt: StudentConfig, num_classes: int, device: torch.device) -> nn.Module:
    """Build ``opt.model_t`` and load ``opt.teacher_path`` into it (weights_only, strict keys and shapes)."""
    path = Path(opt.teacher_path)
    if not path.is_file():
        raise UserError(missing_teacher_message(opt))
    teacher = model_dict[opt.model_t](num_classes=num_classes)
    state = extract_state_dict(safe_load(path, map_location="cpu"), path)
    load_weights_strict(teacher, state, opt.model_t, path)
    return teacher.to(device).eval()


def check_finite_teacher(opt: StudentConfig, teacher: nn.Module, pool: TrainPool) -> None:
    """Refuse a teacher whose cached outputs (logits, feature maps) hold NaN or infinity, naming its file: a teacher
    with damaged weights would otherwise show up later as a non-finite loss blamed on the learning rate."""
    outputs = {"logits": pool.teacher_logits, **{f"feature map {i}": f for i, f in pool.teacher_feats.items()}}
    for what, values in outputs.items():
        finite = torch.isfinite(values.float()).flatten(1).all(dim=1) if values.dim() > 1 else torch.isfinite(values)
        n_bad = int((~finite).sum())
        if n_bad:
            damaged = sum(int((~torch.isfinite(p)).sum()) for p in teacher.state_dict().values() if p.is_floating_point())
            if not damaged and what != "logits" and values.dtype == torch.float16:
                raise UserError(f"the teacher {opt.teacher_path} gives {what} beyond the float16 range for {n_bad} of "
                                f"{finite.numel()} training items; pass --cache_dtype float32, nothing was written")
            why = f"{damaged} of its weights are NaN or infinite" if damaged else "its weights are finite but its outputs overflow"
            raise UserError(f"the teacher {opt.teacher_path} gives non-finite {what} for {n_bad} of {finite.numel()} training "
                            f"items ({why}); it is damaged: re-download it (sh scripts/fetch_pretrained_teachers.sh) or "
                            f"train it again, nothing was written")


def cache_teacher(opt: StudentConfig, teacher: nn.Module, images: Tensor, labels: Tensor, augment: DeviceAugment,
                  device: torch.device, num_classes: int) -> tuple[TrainPool, list[tuple[int, ...]]]:
    """The teacher cache of a run (its one teacher call per training image and view) and the teacher's feature shapes."""
    feat_shapes = feature_shapes(teacher, device, (3, augment.crop, augment.crop))
    feat_layers = teacher_feature_layers(opt, len(feat_shapes))
    feat_dtype = torch.float16 if opt.cache_dtype == "float16" else torch.float32
    pool = build_train_pool(teacher, images.to(device), labels.to(device), augment, device, views=opt.teacher_views,
                            seed=opt.seed, feat_layers=feat_layers, feat_dtype=feat_dtype, amp=opt.amp,
                            query_teacher=uses_teacher_outputs(opt), num_classes=num_classes,
                            teacher_view=opt.teacher_view, preact=teacher_needs_preact(opt))
    return pool, feat_shapes


def teacher_accuracy_warning(opt: StudentConfig, teacher_acc: float) -> str | None:
    """One warning line when a CIFAR-100 teacher of a published architecture scores far below RepDistiller's table
    (models/published.py: near chance, or more than 3 points below), else None."""
    if opt.dataset != "cifar100" or opt.model_t not in PUBLISHED_CIFAR100_ACCURACY:
        return None
    problem = low_accuracy_problem(opt.model_t, teacher_acc)
    if problem is None:
        return None
    return (f"warning: the teacher {opt.teacher_path} scores {problem}; it is damaged or not a trained {opt.model_t}, so "
            f"this run distils from a weak teacher (check it with python scripts/verify_teacher.py {opt.model_t} "
            f"{opt.teacher_path} --data_folder {opt.data_folder})")


def build_student(opt: StudentConfig, num_classes: int, device: torch.device) -> nn.Module:
    """``opt.model_s`` initialised from ``opt.seed`` on ``device`` (channels-last when asked)."""
    torch.manual_seed(opt.seed)
    student = model_dict[opt.model_s](num_classes=num_classes).to(device)
    if opt.channels_last:
        student = student.to(memory_format=torch.channels_last)
    return student


def uses_feat_dim(opt: StudentConfig) -> bool:
    """Whether a term of the method builds ``--feat_dim`` embedding heads (its class reads ``feat_dim``, ``ARGS``:
    CRD, CC)."""
    terms = [resolve(row.builder) for row in (opt.method.relational, opt.method.distill) if row is not None]
    return uses_teacher_outputs(opt) and any("feat_dim" in getattr(term, "ARGS", ()) for term in terms)


def estimate_student_run(opt: StudentConfig, n_train: int, n_val: int, n_test: int, stored_size: int,
                         input_shape: Sequence[int], num_classes: int, device: torch.device) -> Estimate:
    """What a student run will hold, before its teacher is queried (see :mod:`helper.resources`): the teacher cache
    (``n_train x --teacher_views`` items: images, logits, feature maps of the white-box term at ``--cache_dtype``), the
    images on the device, the largest batch's activations, CRD's memory banks and negatives, and the files it writes
    (the cache file, last.pth and best.pth, each beside its temporary copy while it is written)."""
    with torch.random.fork_rng(devices=[]):  # fresh CPU copies of both architectures; the run's RNG is untouched
        student = model_dict[opt.model_s](num_classes=num_classes)
        teacher = model_dict[opt.model_t](num_classes=num_classes)
        s_fp, t_fp = model_footprint(student, input_shape), model_footprint(teacher, input_shape)
        t_shapes: list[tuple[int, ...]] = []
        feat_layers: tuple[int, ...] = ()
        if uses_teacher_outputs(opt) and white_box_class(opt) is not None:
            t_shapes = feature_shapes(teacher, torch.device("cpu"), tuple(input_shape))
            feat_layers = tuple(teacher_feature_layers(opt, len(t_shapes)))
        embeds = uses_feat_dim(opt)
        if embeds:  # the --feat_dim linear heads embed the last (pooled) feature of each model
            s_last = math.prod(feature_shapes(student, torch.device("cpu"), tuple(input_shape))[-1])
            t_last = math.prod(feature_shapes(teacher, torch.device("cpu"), tuple(input_shape))[-1])
    del student, teacher
    items = n_train * opt.teacher_views
    image_bytes = 3 * stored_size * stored_size
    feat_bytes = 2 if opt.cache_dtype == "float16" else 4
    per_item_feats = sum(math.prod(t_shapes[i]) for i in feat_layers) * feat_bytes
    views_flag = "--teacher_views (or --subset_size)"
    cache_parts = [("teacher-cache images", items * (2 * image_bytes + 16), views_flag),  # pool + teacher views, labels
                   ("teacher logits", items * num_classes * 4, views_flag)]
    if per_item_feats:
        cache_parts.append(("cached feature maps", items * per_item_feats,
                            "--teacher_views or --subset_size" if opt.cache_dtype == "float16" else "--cache_dtype float16"))
    images_per_step = opt.batch_size * max(opt.pos_and_neg, 2)
    eval_batch = eval_batch_size(device)
    activations = max(2 * images_per_step * s_fp.activations,  # kept for the backward, and their gradients
                      4 * eval_batch * max(s_fp.largest, t_fp.largest),  # no-grad evaluation (teacher and student)
                      4 * 512 * t_fp.largest)  # the teacher's cache batches
    device_parts = [*cache_parts,
                    ("validation and test images", (n_val + n_test) * image_bytes, "--subset_size"),
                    ("activations", activations, "--batch_size"),
                    ("weights", 6 * s_fp.parameters + t_fp.parameters, "--model_s")]
    bank = 0
    if opt.method.relational is not None and opt.method.relational.name == "crd":
        bank = 2 * items * opt.feat_dim * 4
        candidates = opt.batch_size * (opt.nce_k + 1)
        rows = candidates * opt.feat_dim * 4 * 2 if items > candidates else 2 * (opt.batch_size * items * 4) + bank
        device_parts += [("CRD memory banks", bank, "--feat_dim (or --subset_size)"),
                         ("CRD negatives", candidates * (6 * 8 + 8 * 4) + rows, "--nce_k")]
    embed_params = 0
    if embeds:
        embed_params = 4 * opt.feat_dim * (s_last + t_last + 2)
        device_parts += [("--feat_dim embedding heads", 6 * embed_params, "--feat_dim"),  # weights, grads, momentum, copies
                         ("embedding activations", 4 * images_per_step * opt.feat_dim * 4, "--feat_dim")]
    tuple_images = method_table.images_per_item(opt.method.sampler, opt.pos_and_neg)
    if tuple_images > 1:  # a pass of up to --max_rel_samples tuples, and the draw's copies of it (rows, sort, de-dup)
        pass_bytes = opt.max_rel_samples * tuple_images * 8
        device_parts.append(("sampler pass of tuples", pass_bytes * (5 if device.type == "cpu" else 1), "--max_rel_samples"))
    cache_file = Estimate.total(cache_parts) - items * image_bytes  # the file holds the pool, not the teacher views
    last = 6 * s_fp.parameters + bank + 3 * embed_params  # student, momentum, best snapshot, the method's modules
    disk = [("teacher cache file", cache_file, views_flag), ("last.pth and best.pth", 2 * (last + 2 * s_fp.parameters),
                                                             "--model_s"), ("logs", LOG_BYTES, "--save_dir")]
    host = [("teacher cache file", cache_file, views_flag)] if device.type == "cuda" else []  # saved from a CPU copy
    if tuple_images > 1 and device.type != "cpu":  # the draw runs on the CPU
        host.append(("sampler draw", 4 * opt.max_rel_samples * tuple_images * 8, "--max_rel_samples"))
    return Estimate(device=device_parts, host=host, disk=disk)


@dataclass
class TrainingSetup:
    """What a training step needs: the method (with its student), its sampler and the optimiser."""

    method: Method
    extras: nn.ModuleDict
    sampler: Any
    optimizer: torch.optim.Optimizer
    aug_generator: torch.Generator


def build_training(opt: StudentConfig, student: nn.Module, pool: TrainPool, augment: DeviceAugment, num_classes: int,
                   teacher_feat_shapes: Sequence[tuple[int, ...]], device: torch.device,
                   image_shape: Sequence[int]) -> TrainingSetup:
    """The method of ``opt`` around ``student``, its sampler, and SGD over the student and the method's trainable modules.

    With ``opt.compile`` the method runs a compiled student; ``student`` itself stays uncompiled, so its state_dict keys
    (checkpoints) do not change.
    """
    student_shapes = feature_shapes(student, device, tuple(image_shape))
    check_white_box(opt, student_shapes, teacher_feat_shapes)
    aug_generator = torch.Generator(device=device).manual_seed(opt.seed + 104729)
    ctx = MethodContext(opt=opt, student=student, pool=pool, augment=augment, num_classes=num_classes,
                        student_feat_shapes=student_shapes, teacher_feat_shapes=list(teacher_feat_shapes), device=device)
    method = build_method(ctx, aug_generator)
    extras = method.trainable_modules()
    sampler = method.make_sampler(opt, device)
    params = list(student.parameters()) + [p for p in extras.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=opt.learning_rate, momentum=opt.momentum, weight_decay=opt.weight_decay)
    if opt.compile:
        method.student = torch.compile(student)
    return TrainingSetup(method=method, extras=extras, sampler=sampler, optimizer=optimizer, aug_generator=aug_generator)


@dataclass(frozen=True)
class StudentData:
    """A student run's data, built once: the subset split of the training set (train part on the host, where the
    teacher cache is built from it; validation on the device) and the test set on the device."""

    subset_size: int  # --subset_size, the default resolved to the whole training set
    num_classes: int
    split: Any  # dataset.SubsetSplit
    augment: DeviceAugment
    input_shape: tuple[int, int, int]  # what the models see (Cars: 56x56 crops of the stored 64x64 images)
    train_images: Tensor
    train_labels: Tensor
    val_images: Tensor
    val_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    fingerprint: str = ""  # dataset.subset_fingerprint of the split: results.json's subset_fingerprint


def load_student_data(opt: StudentConfig, device: torch.device) -> StudentData:
    """The data of a student run (raises UserError when the data or the split cannot serve ``opt``), before any
    teacher call."""
    train_set, test_set = load_data(opt)
    subset_size = len(train_set.labels) if opt.subset_size is None else opt.subset_size
    check_subset_against_data(opt, len(train_set.labels), subset_size)
    split = make_subset_split(len(train_set.labels), subset_size, opt.train_val_frac, opt.seed, opt.batch_size)
    augment = DeviceAugment.for_images(train_set, opt.use_DA, device)
    train_idx = torch.as_tensor(split.train_idx, dtype=torch.long)
    val_idx = torch.as_tensor(split.val_idx, dtype=torch.long)
    train_labels = train_set.labels[train_idx]
    check_split_against_data(opt, split.n_train, int(train_labels.unique().numel()))
    return StudentData(subset_size=subset_size, num_classes=train_set.num_classes, split=split, augment=augment,
                       input_shape=(3, augment.crop, augment.crop), train_images=train_set.images[train_idx],
                       train_labels=train_labels, val_images=train_set.images[val_idx].to(device),
                       val_labels=train_set.labels[val_idx].to(device), test_images=test_set.images.to(device),
                       test_labels=test_set.labels.to(device),
                       fingerprint=subset_fingerprint(split, opt.dataset, train_set.labels.numpy()))


@dataclass
class StudentState:
    """What a student run resumes from besides its modules: the loop counters, the best weights and their validation
    numbers, whether the init stage is done, and the per-epoch loss sums."""

    loop: LoopState = field(default_factory=LoopState)
    best: dict[str, Any] | None = None  # the weights the schedule returns to (see StudentRun._snapshot)
    best_val_acc_top5: float = 0.0
    best_val_loss: float = math.inf
    init_done: bool = False
    accum: dict[str, Tensor] = field(default_factory=dict)


class StudentRun:
    """One ``train_student.py`` run, from its configuration to ``results.json``."""

    def __init__(self, opt: StudentConfig) -> None:
        self.opt = opt
        self.device = resolve_device(opt.device)
        configure_backend(self.device, deterministic=opt.deterministic)
        self.teacher_sha256 = teacher_digest(opt.teacher_path)
        self.run_dir = Path(opt.save_dir) / "student" / run_name(opt, self.teacher_sha256)
        self.last_path = self.run_dir / "last.pth"
        self.best_path = self.run_dir / "best.pth"
        self.results_path = self.run_dir / "results.json"
        self.cache_path = self.run_dir / "teacher_cache.pth"
        self.stop = StopRequest()
        self.state = StudentState()
        self.checkpoint_every_s: float = env.get("CKD_CHECKPOINT_EVERY_S")

    # ----------------------------------------------------------------------------------- the data, built once
    def _decide_resume(self) -> bool:
        refuse_resume_without_checkpoint(self.opt, self.last_path, "start this run fresh")
        if self.last_path.is_file() and not self.opt.resume:
            print(f"found {self.last_path}: resuming that run (delete {self.run_dir} to start over)", flush=True)
        return self.last_path.is_file()

    def _prepare_data(self) -> None:
        self.data = load_student_data(self.opt, self.device)

    def _check_fits(self) -> None:
        """Refuse, before the teacher is read or queried and before anything is written, a run that cannot fit."""
        estimate = estimate_student_run(self.opt, self.data.split.n_train, int(self.data.val_labels.shape[0]),
                                        int(self.data.test_labels.shape[0]), int(self.data.train_images.shape[-1]), self.data.input_shape,
                                        self.data.num_classes, self.device)
        if self.cache_path.is_file():  # reused: no new cache file
            estimate.disk = [part for part in estimate.disk if part[0] != "teacher cache file"]
        check_fits(estimate, self.device, self.run_dir)

    def _prepare_teacher_cache(self) -> None:
        """Query the teacher once per training image (and view), or reload the cache of this run."""
        opt, device = self.opt, self.device
        teacher_sha256 = teacher_digest(opt.teacher_path)

        def build() -> tuple[TrainPool, dict[str, Any]]:
            teacher = load_teacher(opt, self.data.num_classes, device)
            counted = CountingModule(teacher)
            test_stats = evaluate(counted, self.data.test_images, self.data.test_labels, self.data.augment.normalize_eval, amp=opt.amp)
            pool, feat_shapes = cache_teacher(opt, teacher, self.data.train_images, self.data.train_labels, self.data.augment, device,
                                              self.data.num_classes)
            check_finite_teacher(opt, teacher, pool)  # before the cache is written: a damaged teacher leaves nothing
            meta = {"teacher_acc": test_stats["acc"], "teacher_acc_top5": test_stats["acc_top5"],
                    "teacher_calls": int(pool.teacher_calls), "teacher_eval_calls": int(counted.calls),
                    "teacher_sha256": teacher_sha256 or file_sha256(opt.teacher_path),
                    "teacher_feat_shapes": [list(shape) for shape in feat_shapes]}
            del teacher, counted
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return pool, meta

        self.pool, self.teacher_meta, reused = load_or_build_cache(self.cache_path, teacher_sha256, build, device,
                                                                   read=self._read_cache)
        self.teacher_feat_shapes = [tuple(shape) for shape in self.teacher_meta["teacher_feat_shapes"]]
        if reused:
            print(f"reusing the teacher cache {self.cache_path} ({self.teacher_meta['teacher_calls']} teacher calls, "
                  "no new ones)", flush=True)
        else:
            print(f"teacher {opt.model_t}: test acc {self.teacher_meta['teacher_acc']:.2f}%, "
                  f"{self.teacher_meta['teacher_calls']} teacher calls for {self.pool.n_images} training images "
                  f"(+{self.teacher_meta['teacher_eval_calls']} for its test evaluation)", flush=True)
        warning = teacher_accuracy_warning(opt, float(self.teacher_meta["teacher_acc"]))
        if warning:
            print(warning, file=sys.stderr, flush=True)

    def _read_cache(self, path: Path) -> Any:
        """A saved ``teacher_cache.pth``, checked against this run's data and flags (raises UserError when damaged)."""
        advice = "delete it and the run queries the teacher again (its calls are counted again)"
        saved = load_run_file(path, advice)
        if not isinstance(saved, dict) or not isinstance(saved.get("pool"), dict) or not isinstance(saved.get("meta"), dict):
            raise damaged(self.cache_path, "not a teacher cache (a pool and its meta)", advice)
        pool, meta = saved["pool"], saved["meta"]
        check([structure_mismatch(meta, {"teacher_sha256": "", "teacher_acc": 0.0, "teacher_acc_top5": 0.0, "teacher_calls": 0,
                                         "teacher_eval_calls": 0, "teacher_feat_shapes": [[0]]}, "meta"),
               structure_mismatch(pool, {"images": self.data.train_images[:0], "labels": self.data.train_labels[:0],
                                         "image_ids": self.data.train_labels[:0], "n_images": 0, "views": 0,
                                         "teacher_logits": torch.zeros(0), "teacher_feats": {}, "teacher_calls": 0}, "pool")],
              self.cache_path, advice)
        n, views, images = self.data.split.n_train, self.opt.teacher_views, self.data.train_images
        items = n * views
        feat_layers = teacher_feature_layers(self.opt, len(meta["teacher_feat_shapes"])) if \
            uses_teacher_outputs(self.opt) and white_box_class(self.opt) is not None else []
        feat_dtype = torch.float16 if self.opt.cache_dtype == "float16" else torch.float32
        expected = {"images": (items, *images.shape[1:]), "labels": (items,), "image_ids": (items,),
                    "teacher_logits": (items, self.data.num_classes)}
        problems: list[str | None] = [
            None if (pool["n_images"], pool["views"]) == (n, views) else
            f"{pool['n_images']} images x {pool['views']} views, this run {n} x {views}",
            *(None if tuple(pool[k].shape) == shape else f"pool.{k}: file {list(pool[k].shape)}, this run {list(shape)}"
              for k, shape in expected.items()),
            None if pool["teacher_logits"].dtype == torch.float32 else f"pool.teacher_logits is {pool['teacher_logits'].dtype}",
        ]
        shapes = meta["teacher_feat_shapes"]
        for key, value in pool["teacher_feats"].items():
            fits = isinstance(key, int) and -len(shapes) <= key < len(shapes) and isinstance(value, Tensor) \
                and value.dtype == feat_dtype and tuple(value.shape) == (items, *shapes[key])
            problems.append(None if fits else f"pool.teacher_feats[{key!r}] does not fit the teacher's feature maps")
        problems.append(None if sorted(pool["teacher_feats"]) == sorted(int(i) for i in feat_layers) or any(problems) else
                        f"feature maps of layers {sorted(pool['teacher_feats'])}, this run {sorted(feat_layers)}")
        if not problems[0] and not any(problems[1:4]):
            labels = pool["labels"][:n].to(self.data.train_labels.device)
            problems.append(None if torch.equal(labels, self.data.train_labels.to(labels.dtype)) else
                            "its labels are not those of this run's training split")
        check(problems, self.cache_path, advice)
        return saved

    def _prepare_student(self) -> None:
        opt, device = self.opt, self.device
        self.student = build_student(opt, self.data.num_classes, device)
        setup = build_training(opt, self.student, self.pool, self.data.augment, self.data.num_classes, self.teacher_feat_shapes, device,
                               self.data.input_shape)
        self.method, self.extras, self.sampler = setup.method, setup.extras, setup.sampler
        self.optimizer, self.aug_generator = setup.optimizer, setup.aug_generator
        self.steps_per_epoch = steps_per_epoch(self.pool.n_images, opt.batch_size)
        self.schedule = PlateauSchedule(opt.learning_rate, opt.patience, opt.lr_decay_rate, opt.lr_decay_times, opt.epochs)
        self.calibration_sample = validation_sample(self.pool.n_images, opt.seed)  # --calibrate's per-validation sample

    # ------------------------------------------------------------------------------ the resumable state
    def state_dict(self) -> dict[str, Any]:
        """``last.pth``: everything the run resumes from, each key written here only."""
        state = self.state
        state.loop.elapsed_s = self.elapsed_before + self.clock.elapsed()
        return {"model": self.student.state_dict(), "extras": self.extras.state_dict(),
                "optimizer": self.optimizer.state_dict(), "loop": state.loop.state_dict(),
                "schedule": self.schedule.state_dict(), "best": state.best,
                "best_val": {"acc_top5": state.best_val_acc_top5, "loss": state.best_val_loss},
                "init_done": state.init_done, "sampler": self.sampler.state_dict(), "method_rng": self.method.extra_state(),
                "aug_rng": self.aug_generator.get_state(), "torch_rng": torch.get_rng_state(),
                "accum": {k: v.detach().cpu() for k, v in state.accum.items()}, "wandb_id": self.logger.wandb_id,
                "epoch": self.schedule.epoch, "accuracy": self.schedule.best_acc}

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Restore a ``last.pth`` written by :meth:`state_dict`."""
        require_resumable(ckpt, self.last_path, ("loop", "best_val", "init_done", "sampler", "method_rng", "accum", "model",
                                                 "extras", "optimizer", "schedule", "best", "aug_rng", "torch_rng"))
        advice = "delete it to start this run again (the teacher cache is kept: no teacher call is repeated)"
        check(self._last_mismatches(ckpt), self.last_path, advice)
        try:
            self._load_checked_state(ckpt)
        except LOAD_ERRORS as err:
            raise damaged(self.last_path, str(err).splitlines()[0] if str(err) else type(err).__name__, advice) from err

    def _last_mismatches(self, ckpt: dict[str, Any]) -> list[str | None]:
        """How ``last.pth`` differs from what this run writes in its place (each part against this run's own state)."""
        arch = self.opt.model_s
        best = ckpt["best"]
        best_ok = isinstance(best, dict) and all(k in best for k in ("model", "extras", "shift"))
        shift = best.get("shift") if best_ok else None
        return [
            tensors_mismatch(ckpt["model"], self.student.state_dict(), f"model ({arch})"),
            tensors_mismatch(ckpt["extras"], self.extras.state_dict(), "the method's modules"),
            optimizer_mismatch(ckpt["optimizer"], self.optimizer),
            None if best_ok else f"best is {type(best).__name__}, expected the best weights",
            tensors_mismatch(best["model"], self.student.state_dict(), f"best model ({arch})") if best_ok else None,
            tensors_mismatch(best["extras"], restorable_state(self.extras), "best method's modules") if best_ok else None,
            structure_mismatch(shift, torch.zeros(self.data.num_classes), "best calibration shift", strict_shapes=True),
            structure_mismatch(ckpt["loop"], self.loop.state_dict(), "loop"),
            structure_mismatch(ckpt["schedule"], self.schedule.state_dict(), "schedule"),
            structure_mismatch(ckpt["best_val"], {"acc_top5": 0.0, "loss": 0.0}, "best_val"),
            structure_mismatch(ckpt["init_done"], True, "init_done"),
            structure_mismatch(ckpt["sampler"], self.sampler.state_dict(), "sampler"),
            structure_mismatch(ckpt["method_rng"], self.method.extra_state(), "method_rng", strict_shapes=True),
            structure_mismatch(ckpt["aug_rng"], self.aug_generator.get_state(), "aug_rng", strict_shapes=True),
            structure_mismatch(ckpt["torch_rng"], torch.get_rng_state(), "torch_rng", strict_shapes=True),
            None if isinstance(ckpt["accum"], dict) and all(isinstance(v, Tensor) and v.dim() == 0 for v in ckpt["accum"].values())
            else "accum is not a dict of loss sums",
            None if isinstance(ckpt.get("wandb_id"), (str, type(None))) else "wandb_id is not a string",
        ]

    def _load_checked_state(self, ckpt: dict[str, Any]) -> None:
        self.student.load_state_dict(ckpt["model"])
        self.extras.load_state_dict(ckpt["extras"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = StudentState(best=ckpt["best"], best_val_acc_top5=ckpt["best_val"]["acc_top5"],
                                  best_val_loss=ckpt["best_val"]["loss"], init_done=ckpt["init_done"],
                                  accum={k: v.to(self.device) for k, v in ckpt["accum"].items()})
        self.state.loop.load_state_dict(ckpt["loop"])
        self.schedule.load_state_dict(ckpt["schedule"])
        self.sampler.load_state_dict(ckpt["sampler"])
        self.method.load_extra_state(ckpt["method_rng"])
        self.aug_generator.set_state(ckpt["aug_rng"].cpu() if hasattr(ckpt["aug_rng"], "cpu") else ckpt["aug_rng"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        set_lr(self.optimizer, self.schedule.lr)

    def save_last(self) -> None:
        atomic_save(self.state_dict(), self.last_path)
        self.last_saved_at = time.perf_counter()

    def _save_best(self) -> None:
        best = self.state.best
        model = fold_shift(best["model"], self.student, best["shift"], self.data.num_classes)
        atomic_save({"model": model, "extras": best["extras"], "epoch": self.schedule.best_epoch,
                     "accuracy": self.schedule.best_acc, "model_s": self.opt.model_s}, self.best_path)

    def _snapshot(self, shift: Tensor | None = None) -> dict[str, Any]:
        """The weights the schedule returns to (the student and the method's trained modules, as published: not the
        optimizer momentum, not the CRD memory), with the calibration shift they were validated with."""
        return copy.deepcopy({"model": self.student.state_dict(), "extras": restorable_state(self.extras),
                              "shift": None if shift is None else shift.detach()})

    def _restore(self, snapshot: dict[str, Any]) -> None:
        self.student.load_state_dict(snapshot["model"])
        self.extras.load_state_dict(snapshot["extras"], strict=False)
        set_lr(self.optimizer, self.schedule.lr)

    def _calibration_shift(self, sample: Tensor | None = None) -> Tensor:
        """The train-split shift of the current student weights (no teacher call: cached logits only), measured on the
        clean training images ``sample`` (None: all of them)."""
        clean = self.pool.images[: self.pool.n_images]  # the first n_images items are the clean images in every mode
        return train_mean_shift(self.student, clean, self.pool.teacher_logits, self.data.augment.normalize_eval, amp=self.opt.amp,
                                channels_last=self.opt.channels_last, sample=sample)

    # ------------------------------------------------------------------------------ the loop's side (engine.EpochRun)
    @property
    def loop(self) -> LoopState:
        return self.state.loop

    @property
    def accum(self) -> dict[str, Tensor]:
        return self.state.accum

    def begin_epoch(self) -> None:
        self.student.train()
        self.extras.train()
        self.method.set_epoch(self.schedule.epoch + 1)

    def next_batch(self) -> dict[str, Tensor]:
        return draw_batch(self.sampler, self.stop)

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return train_step(self.method, self.optimizer, batch, self.device, self.opt.amp)

    def non_finite(self, terms: dict[str, Tensor]) -> Exception:
        values = {k: float(v.item()) for k, v in terms.items()}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        where = f"the last good checkpoint is {self.last_path}" if self.last_path.is_file() else "no checkpoint was written yet"
        return NonFiniteLoss(
            f"the loss became non-finite at step {self.loop.global_step} (pseudo-epoch {self.schedule.epoch + 1}; "
            f"{shown}); nothing was reported as a result, {where}; likely cause: "
            f"{non_finite_cause(self.opt, values, self.method.weights, self.pool.teacher_logits)}, then start a new run"
        )

    def end_epoch(self, train_terms: dict[str, float]) -> bool:
        """Validate, log, apply the schedule, checkpoint; return True when training is over."""
        opt, state, schedule = self.opt, self.state, self.schedule
        lr = schedule.lr
        shift = self._calibration_shift(self.calibration_sample) if opt.calibrate == "train_mean" else None
        with shifted(self.student, shift, self.data.num_classes):
            val = evaluate(self.student, self.data.val_images, self.data.val_labels, self.data.augment.normalize_eval, amp=opt.amp,
                           channels_last=opt.channels_last)
        step = schedule.update(val["acc"])
        if step.improved:
            state.best_val_acc_top5, state.best_val_loss = val["acc_top5"], val["loss"]
            state.best = self._snapshot(shift)
        metrics = {"val_acc": val["acc"], "val_acc_top5": val["acc_top5"], "val_loss": val["loss"], "lr": lr,
                   "teacher_calls": self.teacher_meta["teacher_calls"], "best_val_acc": schedule.best_acc,
                   "pseudo_epoch": schedule.epoch}
        if shift is not None:
            metrics["calibration_shift_norm"] = float(shift.norm())
        metrics.update({("train_loss" if k == "train_loss" else f"loss_{k}"): v for k, v in train_terms.items()})
        self.logger.log(metrics, step=schedule.epoch)
        print(f"epoch {schedule.epoch:4d} | lr {lr:.4g} | train_loss {train_terms.get('train_loss', 0.0):.4f} | "
              f"val_acc {val['acc']:6.2f} (best {schedule.best_acc:.2f} @ {schedule.best_epoch}) | "
              f"{self.clock.elapsed() + self.elapsed_before:.1f}s", flush=True)
        if step.action == DECAY:
            self._restore(state.best)
            print(f"no improvement for {opt.patience} pseudo-epochs: back to the best weights (epoch "
                  f"{schedule.best_epoch}), learning rate -> {schedule.lr:.4g} (phase {schedule.phase + 1} of "
                  f"{schedule.phases})", flush=True)
            with self.stop.deferred():
                self.save_last()
        done = step.action == STOP
        if done or schedule.epoch == 1 or time.perf_counter() - self.last_saved_at >= self.checkpoint_every_s:
            with self.stop.deferred():  # last.pth and best.pth together: a resumed run never finishes on a stale best.pth
                state.loop.finished = done
                self.save_last()
                self._save_best()
        return done

    # ------------------------------------------------------------------------------ the run
    def _init_stage(self) -> None:
        """The method's init stage, if it has one (from the cache, no teacher call), then a checkpoint: a resumed run
        continues after it. Stopped during the stage, the run keeps nothing of it."""
        stage = self.method.init_stage(self.opt)
        if stage is not None:
            if not stage.run(self.device, self.opt.amp, lambda: self.stop.requested):
                print("stopped during the init stage: nothing saved; the same command starts the run again", flush=True)
                raise SystemExit(self.stop.exit_code())
            self.state.best = self._snapshot()
        self.state.init_done = True
        if stage is not None:
            self.save_last()

    def run(self) -> dict[str, Any]:
        """Train (or resume, or report the finished run) and return the results (also in ``results.json``).

        The run folder is locked while this process uses it (a second process is refused, see
        :func:`helper.run_folder.folder_lock`); a folder an earlier release named for this run is adopted first.
        SIGINT/SIGTERM are honoured in every phase (see :class:`helper.engine.StopRequest`); a run whose loss became
        non-finite is marked failed (:data:`FAILED_NAME`) and not resumed by the same command."""
        with self.stop.installed():
            try:
                self.stop.phase = "the checks of the run folder"
                ensure_writable(self.run_dir)
                adopt_earlier_run_folder(self.opt, self.run_dir, self.teacher_sha256)
                with folder_lock(self.run_dir):
                    return self._run()
            except SystemExit:
                remove_if_empty(self.run_dir)  # stopped before its first file: no empty run folder
                raise

    def _run(self) -> dict[str, Any]:
        opt, stop = self.opt, self.stop
        clean_leftovers(self.run_dir)
        if self.results_path.is_file():
            results = read_results(self.results_path, self.run_dir)  # damaged: one sentence, never trained over
            if self.best_path.is_file():  # deleted to save space it is not needed: results.json is the outcome
                check_best(self.best_path, opt.model_s, self.run_dir)
            print(f"this configuration already finished; delete {self.run_dir} to run it again", flush=True)
            report_finished_run(self.run_dir, self.results_path, opt)  # a W&B agent's run still gets the results
            print(f"results: {self.results_path}", flush=True)
            return results
        refuse_failed_run(self.run_dir)
        if self.best_path.is_file() and not self.last_path.is_file():
            raise UserError(f"{self.run_dir} holds best.pth but neither results.json nor last.pth, so this run finished and "
                            f"lost its results.json; it is not trained over: restore results.json from a copy, or delete "
                            f"{self.run_dir} to train this run again")
        resuming = self._decide_resume()
        if resuming:
            stop.after_stop = f"the same command resumes from {self.last_path}"
        stop.phase = "data preparation"
        self._prepare_data()
        check_white_box_early(self.opt, self.data.num_classes, self.data.input_shape)
        self._check_fits()
        stop.phase = "the teacher cache"
        self._prepare_teacher_cache()
        stop.phase = "the student set-up"
        self._prepare_student()
        wandb_id = None
        if resuming:
            ckpt = load_run_file(self.last_path, "delete it to start this run again (the teacher cache is kept: no teacher "
                                 "call is repeated)", map_location=self.device)
            self.load_state_dict(ckpt)
            wandb_id = ckpt["wandb_id"]
            print(f"resumed at pseudo-epoch {self.schedule.epoch} step {self.loop.step_in_epoch} "
                  f"(global step {self.loop.global_step})", flush=True)
        else:
            self.state.best = self._snapshot()
        config = {**self._resolved_config(), "n_train": self.pool.n_images, "n_val": int(self.data.val_labels.shape[0]),
                  "subset_fingerprint": self.data.fingerprint}  # W&B runs carry it too, for summarize's pairing
        with open_logger(self.run_dir, config, opt, "student", wandb_id) as self.logger:
            self.clock, self.elapsed_before = Stopwatch(), float(self.loop.elapsed_s)
            self.last_saved_at = -math.inf
            try:
                if not self.loop.finished and not self.state.init_done:
                    stop.phase = "the init stage"
                    self._init_stage()
                train_epochs(self, stop, self.device)
            except NonFiniteLoss as err:
                with stop.deferred():
                    mark_failed(self.run_dir, str(err))
                    if not opt.keep_cache:
                        self.cache_path.unlink(missing_ok=True)
                raise
            stop.phase, stop.after_stop = "the final test", f"the same command resumes from {self.last_path}"
            results = self._finish()
        print(f"results: {self.results_path}", flush=True)
        return results

    def _resolved_config(self) -> dict[str, Any]:
        """The run's flags with the defaults resolved against the data (what results.json and the logs record)."""
        return {**self.opt.to_dict(), "subset_size": self.data.subset_size}

    def _finish(self) -> dict[str, Any]:
        opt, state, schedule = self.opt, self.state, self.schedule
        self.student.load_state_dict(state.best["model"])
        test_kwargs = {"amp": opt.amp, "channels_last": opt.channels_last}
        with shifted(self.student, state.best["shift"], self.data.num_classes):
            test = evaluate(self.student, self.data.test_images, self.data.test_labels, self.data.augment.normalize_eval, **test_kwargs)
        calibrated: dict[str, float] = {}
        if reports_calibrated(opt.to_dict()):  # the offset-free methods, or --calibrate train_mean (docs/calibration.md)
            shift = state.best["shift"] if state.best["shift"] is not None else self._calibration_shift()
            with shifted(self.student, shift, self.data.num_classes):
                test_cal = evaluate(self.student, self.data.test_images, self.data.test_labels,
                                    self.data.augment.normalize_eval, **test_kwargs)
            calibrated = {"test_acc_calibrated": test_cal["acc"], "calibration_shift_norm": float(shift.norm())}
        results = {
            "test_acc": test["acc"], "test_acc_top5": test["acc_top5"], "test_loss": test["loss"], **calibrated,
            "subset_fingerprint": self.data.fingerprint,
            "best_val_acc": schedule.best_acc, "best_val_acc_top5": state.best_val_acc_top5,
            "best_val_loss": state.best_val_loss, "best_epoch": schedule.best_epoch,
            "teacher_acc": self.teacher_meta["teacher_acc"], "teacher_calls": self.teacher_meta["teacher_calls"],
            "teacher_eval_calls": self.teacher_meta["teacher_eval_calls"], "teacher_sha256": self.teacher_meta["teacher_sha256"],
            "n_train": self.pool.n_images, "n_val": int(self.data.val_labels.shape[0]), "n_test": int(self.data.test_labels.shape[0]),
            "pseudo_epochs": schedule.epoch, "steps": state.loop.global_step, "lr_decays": schedule.decays,
            "cache_bytes": self.pool.nbytes,
            "wall_time_s": self.elapsed_before + self.clock.elapsed(), "config": self._resolved_config(),
            **provenance(self.device),
        }
        with self.stop.deferred():
            atomic_write_json(results, self.results_path)
            if not opt.keep_cache:
                self.cache_path.unlink(missing_ok=True)
            if not opt.keep_last:  # a finished run is reported from results.json and best.pth; nothing resumes from last.pth
                self.last_path.unlink(missing_ok=True)
        summary = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.logger.summary(summary)
        cal = f"; calibrated {results['test_acc_calibrated']:.2f}" if "test_acc_calibrated" in results else ""
        print(f"test_acc {results['test_acc']:.2f} (top-5 {results['test_acc_top5']:.2f}) with the best-validation weights "
              f"of pseudo-epoch {schedule.best_epoch}{cal}; teacher calls {results['teacher_calls']}", flush=True)
        return results


def restorable_state(modules: nn.Module) -> dict[str, Tensor]:
    """The state of ``modules`` that the schedule restores: everything but the buffers of parameter-free submodules
    (the CRD memory banks, which the published code keeps when it returns to the best weights)."""
    skip = {f"{name}.{buf}" if name else buf
            for name, module in modules.named_modules() if not any(True for _ in module.parameters())
            for buf, _ in module.named_buffers(recurse=False)}
    return {k: v for k, v in modules.state_dict().items() if k not in skip}
