"""Throughput benchmark of one student configuration, offline, on synthetic data.

    python benchmarks/bench.py --model_s resnet32 --model_t resnet110 --relational ckd --device cpu

Builds a run exactly as ``train_student.py`` does (the same option parser, teacher cache, method, sampler and SGD
set-up, through the functions of :mod:`helper.student_trainer`), but on random uint8 images of the shape of
``--dataset`` (cifar100: 100 classes, 32x32 images, random 32x32 crops of 4-pixel padding; stanfordcars: 196 classes,
64x64 images, random 56x56 crops), ``--subset_size`` of them split train/validation as a run splits them, and a
randomly initialised ``--model_t`` teacher. After a warm-up it measures, in one process:

* ``bound``: the student's forward + backward + SGD step on the student inputs of one real step of the method
  (``Method.inputs`` then ``Method.student_inputs``: CKD a P-group and an N-group forward of batch*P and batch*N
  images; white-box methods feature forwards), staged once on the device, with cross-entropy against fixed labels:
  no sampling, no augmentation, no method loss;
* ``step``: ``train_step(method, optimizer, sampler.next_batch(), device, amp)`` plus the trainer's on-device
  accumulation (and, off CUDA, its per-step finiteness check), i.e. the training step of ``train_student.py``;
* ``data``: sampling + augmentation + cached-teacher look-ups alone (the method's ``inputs``, no student);
* ``cache`` vs ``forward``: building the teacher cache over the training split against a plain batched no-grad
  teacher forward over the same, already normalised, tensors (interleaved, best of ``--cache_repeats``);
* ``calibrate_overhead``: the extra time of ``--calibrate train_mean`` per pseudo-epoch (one eval-mode pass over the
  trainer's fixed sample of the clean training images, ``helper.calibration.validation_sample``) as a fraction of the
  pseudo-epoch's training steps;
* ``eval_images_per_s``: ``evaluate`` over the clean training images at forward batches of 32 to 1024, and
  ``eval_batch``, the one ``helper.engine.eval_batch_size`` uses on this device;
* the peak memory (CPU: the RSS high-water mark; CUDA: ``torch.cuda.max_memory_allocated``).

Throughputs are student input images per second (CKD: batch * pos_and_neg per step), best of ``--repeats`` rounds.
The measurements are interleaved so that a change of the machine's load cannot fall between the two sides of a ratio:
each round times a block of ``--steps`` calls of step, bound and data, then the shift of ``--calibrate``, in that
order (cache build and plain forward alternate the same way). Each ratio (``step_vs_bound``, ``data_vs_step``,
``cache_vs_forward``, ``calibrate_overhead``) is the **median of its per-round ratios**, reported with their interquartile range and
min-max (``*_spread``, ``*_rounds``). A step cannot be faster than its bound, nor a cache build than the plain forward
in it: a median above 1.05 there is reported as a measurement error (``*_error``, the value ``null``), not as a
result. It prints a table and, as its last line, one JSON object. Extra ``train_student.py`` flags (``--w_kd 1``,
``--hint_layer 1``, ...) are passed through.
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
import inspect
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.device import autocast, configure_backend, resolve_device, synchronize
from core.errors import UserError, run_main
from dataset import CARS_CLASSES, CARS_MEAN, CARS_STD, CIFAR100_MEAN, CIFAR100_STD, ImageSet, TrainPool, make_subset_split
from dataset.augment import DeviceAugment
from dataset.samplers import steps_per_epoch
from dataset.stanfordcars import CROP_SIZE as CARS_CROP
from dataset.stanfordcars import STORED_SIZE as CARS_STORED
from dataset.teacher_cache import build_train_pool
from helper import method_table
from helper.calibration import train_mean_shift, validation_sample
from helper.config import StudentConfig, check_subset_against_data, student_config_from
from helper.engine import EVAL_BATCH_SIZE, accumulate, eval_batch_size, evaluate, train_step
from helper.method_table import none_or_str
from helper.methods import (
    Method,
    feature_shapes,
    teacher_feature_layers,
    teacher_needs_preact,
)
from helper.options import (
    COUNT,
    EPOCHS,
    EPOCHS_OR_NONE,
    PAIR_SIZE,
    SEED,
    SUBSET_SIZE,
    Number,
    OneLineParser,
    RawDescriptionHelpFormatter,
    build_student_parser,
    str2bool,
)
from helper.resources import check_fits
from helper.student_trainer import build_student, build_training, cache_teacher, estimate_student_run
from models import model_dict

# --dataset -> (classes, stored image size, model input crop, crop padding, mean, std) of the synthetic images
SYNTHETIC_SHAPES = {
    "cifar100": (100, 32, 32, 4, CIFAR100_MEAN, CIFAR100_STD),
    "stanfordcars": (CARS_CLASSES, CARS_STORED, CARS_CROP, 0, CARS_MEAN, CARS_STD),  # as dataset/stanfordcars.py
}
EVAL_BATCH_SIZES = (32, 64, 128, 256, EVAL_BATCH_SIZE)  # the forward batches of evaluate that are measured
THREADS = Number(int, low=1, high=4096)
REPEATS = Number(int, low=1, high=1000)  # measurement blocks and cache builds: each one takes the whole measurement again
CALIBRATION_IMAGES = 128  # images of the BatchNorm calibration of the random teacher
# the teacher batch of build_train_pool; the plain forward uses the same one
CACHE_BATCH = int(inspect.signature(build_train_pool).parameters["batch_size"].default)
# a ratio whose true value cannot exceed 1 (step / its own bound, cache build / the plain forward inside it) is a
# measurement error above this: the machine's load changed inside a round
BOUNDED_RATIO_LIMIT = 1.05
Clock = Callable[[], float]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="bench.py", description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    flag = parser.add_argument
    flag("--model_s", type=str, default="resnet32", help="student architecture")
    flag("--model_t", type=str, default="resnet110", help="teacher architecture (randomly initialised)")
    flag("--relational", type=none_or_str, default=None, choices=method_table.choices_of("relational"),
         help="relational or logit method, as train_student.py's --relational")
    flag("--distill", type=str, default="kd", choices=method_table.choices_of("distill"),
         help="white-box method, as train_student.py's --distill")
    flag("--dataset", type=str, default="cifar100", choices=tuple(SYNTHETIC_SHAPES),
         help="shape of the synthetic images: cifar100 (32x32) or stanfordcars (64x64 stored, 56x56 crops)")
    flag("--pos_and_neg", type=PAIR_SIZE, default=2, help="CKD group size P+N")
    flag("--batch_size", type=COUNT, default=64, help="batch size (CKD: tuples per batch)")
    flag("--device", type=str, default="auto", help="auto, cpu, cuda, cuda:N, mps")
    flag("--steps", type=EPOCHS, default=10, help="timed steps per measurement block")
    flag("--warmup", type=EPOCHS_OR_NONE, default=5, help="untimed steps before the measurements (bound, step and data path each)")
    flag("--repeats", type=REPEATS, default=9,
         help="rounds of interleaved blocks (step, bound, data, calibrate shift); rates: the best round, ratios: the "
              "median of the per-round ratios")
    flag("--cache_repeats", type=REPEATS, default=2,
         help="rounds of an interleaved plain forward and cache build; rates: the best, cache_vs_forward: the median ratio")
    flag("--subset_size", type=SUBSET_SIZE, default=2000, help="synthetic images (train + validation)")
    flag("--nce_k", type=COUNT, default=None, help="CRD negatives (default: train_student.py's)")
    flag("--amp", type=str2bool, nargs="?", const=True, default=False, help="bf16 autocast")
    flag("--channels_last", type=str2bool, nargs="?", const=True, default=False, help="channels-last student and inputs")
    flag("--compile", type=str2bool, nargs="?", const=True, default=False, help="torch.compile the student")
    flag("--threads", type=THREADS, default=None, help="torch.set_num_threads (default: all cores this process may use)")
    flag("--seed", type=SEED, default=0, help="seed of the synthetic data, the models and the samplers")
    return parser


def check_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, StudentConfig]:
    """bench.py's flags and the train_student.py configuration they make, every check done (before any work)."""
    args, extra = build_parser().parse_known_args(argv)
    return args, student_options(args, extra)  # checked as train_student.py checks its flags


def student_options(args: argparse.Namespace, extra: list[str]) -> StudentConfig:
    """A train_student.py option namespace for this benchmark (parsed and finalised by train_student's own functions)."""
    argv = ["--dataset", args.dataset, "--model_s", args.model_s, "--model_t", args.model_t,
            f"--relational={args.relational}", "--distill", args.distill,
            "--pos_and_neg", str(args.pos_and_neg), "--batch_size", str(args.batch_size), "--device", args.device,
            "--subset_size", str(args.subset_size), "--seed", str(args.seed), f"--amp={args.amp}",
            f"--channels_last={args.channels_last}", f"--compile={args.compile}"]  # no --path_t: the teacher is random
    if args.nce_k is not None:
        argv += ["--nce_k", str(args.nce_k)]
    return student_config_from(build_student_parser().parse_args(argv + extra))


def synthetic_training_set(opt: StudentConfig) -> ImageSet:
    """Random uint8 images and labels of ``opt.dataset``'s shape: the training part of the run's subset split."""
    if opt.dataset not in SYNTHETIC_SHAPES:
        raise UserError(f"bench.py has no synthetic shape for --dataset {opt.dataset}; use one of "
                        f"{', '.join(SYNTHETIC_SHAPES)}")
    num_classes, size, crop, padding, mean, std = SYNTHETIC_SHAPES[opt.dataset]
    check_subset_against_data(opt, opt.subset_size)
    g = torch.Generator().manual_seed(opt.seed)
    images = torch.randint(0, 256, (opt.subset_size, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, num_classes, (opt.subset_size,), generator=g)
    split = make_subset_split(opt.subset_size, opt.subset_size, opt.train_val_frac, opt.seed, opt.batch_size)
    train_idx = torch.as_tensor(split.train_idx, dtype=torch.long)
    return ImageSet(images=images[train_idx], labels=labels[train_idx], num_classes=num_classes, mean=mean, std=std,
                    crop_size=crop, crop_padding=padding)


def check_bench_fits(opt: StudentConfig, train_set: ImageSet, augment: DeviceAugment, device: torch.device) -> None:
    """Refuse, before the teacher is built, a benchmark that cannot fit in memory: the run's own estimate
    (:func:`helper.student_trainer.estimate_student_run`, without validation and test images and without files) plus
    the normalised copy of the training images that the plain teacher forward reads."""
    n_train, crop = len(train_set.labels), augment.crop
    estimate = estimate_student_run(opt, n_train, 0, 0, int(train_set.images.shape[-1]), (3, crop, crop),
                                    train_set.num_classes, device)
    estimate.device.append(("normalised images of the plain forward", n_train * 3 * crop * crop * 4, "--subset_size"))
    estimate.host, estimate.disk = [], []  # the benchmark writes no file
    check_fits(estimate, device, Path.cwd())


def timed(fn: Callable[[], Any], device: torch.device, clock: Clock = time.perf_counter) -> float:
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


@dataclass(frozen=True)
class Ratio:
    """The median of per-round ratios, with their spread; ``error`` says why the median is not a result."""

    median: float
    q1: float
    q3: float
    low: float
    high: float
    rounds: list[float]
    error: str | None = None

    @property
    def value(self) -> float | None:
        return None if self.error else self.median

    def spread(self) -> dict[str, float]:
        return {"q1": self.q1, "q3": self.q3, "min": self.low, "max": self.high, "n": len(self.rounds)}

    def describe(self) -> str:
        where = f"median of {len(self.rounds)} rounds, IQR {self.q1:.3f}-{self.q3:.3f}, min-max {self.low:.3f}-{self.high:.3f}"
        return f"measurement error: {self.error} ({where})" if self.error else f"{self.median:.3f}  ({where})"


def ratio_of(numerators: list[float], denominators: list[float], name: str, limit: float | None = None) -> Ratio:
    """The per-round ratios ``numerators[i] / denominators[i]`` (each pair timed in the same round), their median,
    quartiles (inclusive method) and range; with ``limit`` a median above it is a measurement error."""
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError(f"{name}: {len(numerators)} numerators for {len(denominators)} denominators")
    rounds = [n / d for n, d in zip(numerators, denominators)]
    median = statistics.median(rounds)
    q1, _, q3 = statistics.quantiles(rounds, n=4, method="inclusive") if len(rounds) > 1 else (median,) * 3
    error = None
    if limit is not None and not median <= limit:
        error = (f"{name} {median:.3f} is above {limit:g}, which the code cannot reach; the machine's load changed "
                 "during the measurement: rerun on an idle machine or with more --repeats")
    return Ratio(median, q1, q3, min(rounds), max(rounds), rounds, error)


def interleaved_times(fns: dict[str, Callable[[], None]], calls: dict[str, int], rounds: int, device: torch.device,
                      clock: Clock = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of each function in each round. A round times a block of ``calls[name]`` calls of every
    function, in the order of ``fns``, so the functions of one round see the same load of the machine."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            def block(fn: Callable[[], None] = fn, count: int = calls[name]) -> None:
                for _ in range(count):
                    fn()
            times[name].append(timed(block, device, clock) / calls[name])
    return times


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return rss_peak_mb()


def rss_peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 1024  # bytes on macOS, KiB on Linux


# ------------------------------------------------------------------------------------------ the measured pieces
def plain_forward(teacher: nn.Module, normalised: Tensor, is_feat: bool, device: torch.device, amp: bool,
                  preact: bool = False) -> None:
    """The reference for the cache: a batched no-grad teacher forward over already normalised tensors."""
    kwargs = {"is_feat": True, "preact": True} if preact else {"is_feat": is_feat}
    with torch.no_grad(), autocast(device, amp):
        for start in range(0, normalised.shape[0], CACHE_BATCH):
            teacher(normalised[start:start + CACHE_BATCH], **kwargs)


def measure_cache(opt: StudentConfig, teacher: nn.Module, images: Tensor, labels: Tensor, augment: DeviceAugment,
                  device: torch.device, repeats: int, num_classes: int,
                  clock: Clock = time.perf_counter) -> tuple[TrainPool, list[tuple[int, ...]], list[float], list[float]]:
    """(pool, teacher feature shapes, cache-build times, plain-forward times), one of each per round (a plain forward
    then a cache build), after one warm-up."""
    images, labels = images.to(device), labels.to(device)
    normalised = augment.normalize_eval(images)
    input_shape = (3, augment.crop, augment.crop)
    is_feat = bool(teacher_feature_layers(opt, len(feature_shapes(teacher, device, input_shape))))
    preact = teacher_needs_preact(opt)
    plain_forward(teacher, normalised[:CACHE_BATCH], is_feat, device, opt.amp, preact)  # warm-up
    built: list[tuple[TrainPool, list[tuple[int, ...]]]] = []

    def build() -> None:
        built[:] = []  # the previous round's pool is freed before the next build
        built.append(cache_teacher(opt, teacher, images, labels, augment, device, num_classes))

    times = interleaved_times({"forward": lambda: plain_forward(teacher, normalised, is_feat, device, opt.amp, preact),
                               "cache": build}, {"forward": 1, "cache": 1}, repeats, device, clock)
    pool, feat_shapes = built[0]
    return pool, feat_shapes, times["cache"], times["forward"]


def calibrate_batchnorm(model: nn.Module, images: Tensor, augment: DeviceAugment) -> None:
    """Give a randomly initialised model the BatchNorm statistics of the data (one train-mode no-grad forward).

    Without it, the eval-mode outputs of a deep random ResNet grow without bound (logits ~1e8 for resnet110) and
    the distillation losses overflow; with it the cached teacher outputs have the scale of a trained teacher's.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: exactly this batch's statistics
    model.train()
    with torch.no_grad():
        model(augment.normalize_eval(images))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def staged_forwards(method: Method, opt: StudentConfig, device: torch.device) -> list[tuple[Tensor, bool]]:
    """(images, with feature maps) of each student forward of one real step of ``method``: its own data path
    (:meth:`Method.inputs`) on a batch of a fresh sampler of its own, staged once on the device."""
    with torch.no_grad():
        inputs = method.inputs(method.make_sampler(opt, device).next_batch())
        return [(x.detach(), want_feats) for x, want_feats in method.student_inputs(inputs)]


def make_bound_step(method: Method, staged: list[tuple[Tensor, bool]], opt: StudentConfig,
                    device: torch.device, num_classes: int) -> Callable[[], None]:
    """Forward + backward + SGD of the student alone on the staged inputs, with cross-entropy on fixed labels."""
    g = torch.Generator().manual_seed(opt.seed + 1)
    inputs = [(x, torch.randint(0, num_classes, (x.shape[0],), generator=g).to(device), want_feats)
              for x, want_feats in staged]
    student = method.student  # the compiled one with --compile
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=opt.learning_rate, momentum=opt.momentum, weight_decay=opt.weight_decay)

    def step() -> None:
        with autocast(device, opt.amp):
            outputs = [method.student_feats(x)[1] if want_feats else student(x) for x, _, want_feats in inputs]
        loss = torch.stack([F.cross_entropy(out.float(), y) for out, (_, y, _) in zip(outputs, inputs)]).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def make_full_step(setup: Any, device: torch.device, amp: bool) -> Callable[[], None]:
    """The training step of train_student.py (StudentRun._train_epoch's loop body without progress output)."""
    accum: dict[str, Tensor] = {}
    check_every_step = device.type != "cuda"

    def step() -> None:
        terms = train_step(setup.method, setup.optimizer, setup.sampler.next_batch(), device, amp)
        accumulate(accum, terms, device)
        if check_every_step and not bool(torch.isfinite(terms["train_loss"]).item()):
            raise RuntimeError("the benchmark loss became non-finite")

    return step


def make_data_step(method: Method, sampler: Any) -> Callable[[], None]:
    """Sampling + augmentation + cached-teacher look-ups of one step (the method's own :meth:`Method.inputs`),
    without the student or the loss."""
    sink: list[Any] = []

    def step() -> None:
        with torch.no_grad():
            sink[:] = [method.inputs(sampler.next_batch())]

    return step


def step_ratios(times: dict[str, list[float]], steps_per_epoch: int) -> dict[str, Ratio]:
    """The ratios of the training-step rounds, each pair from the same round: ``step_vs_bound`` (bound time / step
    time: the step's share of its compute bound, at most 1), ``data_vs_step`` (step time / data-path time: how many
    times faster the data path feeds images than the step consumes them) and ``calibrate_overhead`` (the calibration
    shift / a pseudo-epoch of steps)."""
    return {
        "step_vs_bound": ratio_of(times["bound"], times["step"], "step_vs_bound", BOUNDED_RATIO_LIMIT),
        "data_vs_step": ratio_of(times["step"], times["data"], "data_vs_step"),
        "calibrate_overhead": ratio_of(times["calibrate"], [steps_per_epoch * t for t in times["step"]], "calibrate_overhead"),
    }


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args, opt = check_args(argv)
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    torch.set_num_threads(int(threads))
    device = resolve_device(opt.device)
    configure_backend(device, deterministic=opt.deterministic)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    train_set = synthetic_training_set(opt)
    train_images, train_labels, num_classes = train_set.images, train_set.labels, train_set.num_classes
    augment = DeviceAugment.for_images(train_set, opt.use_DA, device)
    check_bench_fits(opt, train_set, augment, device)
    torch.manual_seed(opt.seed)
    teacher = model_dict[opt.model_t](num_classes=num_classes).to(device)
    calibrate_batchnorm(teacher, train_images[:CALIBRATION_IMAGES].to(device), augment)

    pool, teacher_feat_shapes, t_cache, t_forward = measure_cache(opt, teacher, train_images, train_labels, augment, device,
                                                                  args.cache_repeats, num_classes)
    n_cache = pool.n_items
    del teacher
    if device.type == "cuda":
        torch.cuda.empty_cache()

    student = build_student(opt, num_classes, device)
    setup = build_training(opt, student, pool, augment, num_classes, teacher_feat_shapes, device,
                           (3, augment.crop, augment.crop))
    setup.method.train()
    staged = staged_forwards(setup.method, opt, device)
    images_per_step = sum(int(x.shape[0]) for x, _ in staged)
    # --calibrate train_mean: one eval-mode pass over the trainer's sample of the clean training images before each
    # validation, against the pseudo-epoch of training steps it is added to
    clean = pool.images[: pool.n_images]
    sample = validation_sample(pool.n_images, opt.seed)  # the trainer's per-validation sample
    fns = {"step": make_full_step(setup, device, opt.amp), "bound": make_bound_step(setup.method, staged, opt, device, num_classes),
           "data": make_data_step(setup.method, setup.sampler),
           "calibrate": lambda: train_mean_shift(student, clean, pool.teacher_logits, augment.normalize_eval, amp=opt.amp,
                                                 channels_last=opt.channels_last, sample=sample)}
    for name, fn in fns.items():
        for _ in range(min(args.warmup, 1) if name == "calibrate" else args.warmup):
            fn()
    synchronize(device)
    times = interleaved_times(fns, {"step": args.steps, "bound": args.steps, "data": args.steps, "calibrate": 1},
                              args.repeats, device)
    per_step = {name: min(times[name]) for name in ("bound", "step", "data")}
    rates = {name: images_per_step / t for name, t in per_step.items()}
    ratios = {**step_ratios(times, steps_per_epoch(pool.n_images, opt.batch_size)),
              "cache_vs_forward": ratio_of(t_forward, t_cache, "cache_vs_forward", BOUNDED_RATIO_LIMIT)}
    t_cache, t_forward = min(t_cache), min(t_forward)
    eval_rates = measure_eval(student, clean, pool.labels[: pool.n_images], augment, opt, device, args.repeats)

    result: dict[str, Any] = {
        **ratio_fields(ratios),
        "eval_batch": eval_batch_size(device),
        "eval_images_per_s": eval_rates,
        "images_per_s": rates["step"],
        "bound_images_per_s": rates["bound"],
        "data_images_per_s": rates["data"],
        "cache_images_per_s": n_cache / t_cache,
        "forward_images_per_s": n_cache / t_forward,
        "step_ms": 1000 * per_step["step"],
        "bound_ms": 1000 * per_step["bound"],
        "data_ms": 1000 * per_step["data"],
        "cache_s": t_cache,
        "forward_s": t_forward,
        "peak_mem_mb": peak_memory_mb(device),
        "peak_rss_mb": rss_peak_mb(),
        "images_per_step": images_per_step,
        "model_s": opt.model_s, "model_t": opt.model_t, "relational": opt.relational, "distill": opt.distill,
        "pos_and_neg": opt.pos_and_neg, "batch_size": opt.batch_size, "nce_k": opt.nce_k, "subset_size": opt.subset_size,
        "n_train": pool.n_images, "w_kd": opt.w_kd, "dataset": opt.dataset,
        "input_size": augment.crop, "device": str(device), "amp": opt.amp,
        "channels_last": opt.channels_last, "compile": opt.compile, "threads": torch.get_num_threads(),
        "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats, "torch_version": str(torch.__version__),
    }
    if device.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name(device)
    print_table(result, ratios)
    print(json.dumps(result), flush=True)
    return result


def measure_eval(model: nn.Module, images: Tensor, labels: Tensor, augment: DeviceAugment, opt: StudentConfig,
                 device: torch.device, repeats: int) -> dict[str, float]:
    """Images per second of ``evaluate`` (validation / test) at forward batches EVAL_BATCH_SIZES, interleaved, best of
    ``repeats`` (the evidence for ``helper.engine.eval_batch_size``)."""
    best = dict.fromkeys(EVAL_BATCH_SIZES, float("inf"))
    for _ in range(repeats):
        for size in EVAL_BATCH_SIZES:
            best[size] = min(best[size], timed(lambda size=size: evaluate(model, images, labels, augment.normalize_eval,
                                                                          batch_size=size, amp=opt.amp,
                                                                          channels_last=opt.channels_last), device))
    return {str(size): images.shape[0] / t for size, t in best.items()}


def ratio_fields(ratios: dict[str, Ratio]) -> dict[str, Any]:
    """The JSON fields of each ratio: NAME (the median, null when it is a measurement error), NAME_spread (quartiles,
    min, max, number of rounds), NAME_rounds (the per-round ratios) and NAME_error (null or why)."""
    fields: dict[str, Any] = {}
    for name, ratio in ratios.items():
        fields.update({name: ratio.value, f"{name}_spread": ratio.spread(), f"{name}_rounds": ratio.rounds,
                       f"{name}_error": ratio.error})
    return fields


def print_table(r: dict[str, Any], ratios: dict[str, Ratio]) -> None:
    method = r["relational"] or "none"
    print(f"bench: student {r['model_s']}, teacher {r['model_t']}, relational {method}, distill {r['distill']}, "
          f"batch {r['batch_size']} ({r['images_per_step']} student images/step), device {r['device']}, amp {r['amp']}, "
          f"channels_last {r['channels_last']}, compile {r['compile']}, threads {r['threads']}, torch {r['torch_version']}")
    rows = [
        ("bound (student fwd+bwd+SGD)", r["bound_images_per_s"], f"{r['bound_ms']:.1f} ms/step"),
        ("step (train_step as trained)", r["images_per_s"], f"{r['step_ms']:.1f} ms/step"),
        ("data path (no student)", r["data_images_per_s"], f"{r['data_ms']:.2f} ms/step"),
        ("teacher cache build", r["cache_images_per_s"], f"{r['cache_s']:.2f} s for {r['n_train']} images"),
        ("plain teacher forward", r["forward_images_per_s"], f"{r['forward_s']:.2f} s"),
    ]
    print(f"{'measurement':<30} {'images/s':>12}  detail")
    for name, rate, detail in rows:
        print(f"{name:<30} {rate:>12,.0f}  {detail}")
    for name, what in (("step_vs_bound", "bound time / step time"), ("data_vs_step", "step time / data-path time"),
                       ("cache_vs_forward", "plain forward / cache build"),
                       ("calibrate_overhead", "calibration shift / pseudo-epoch")):
        print(f"{name:<30} {ratios[name].describe()}; {what}")
    for size, rate in r["eval_images_per_s"].items():
        chosen = "  <- eval_batch_size of this device" if int(size) == r["eval_batch"] else ""
        print(f"{'evaluate, forward batch ' + size:<30} {rate:>12,.0f}{chosen}")
    print(f"{'peak memory (MB)':<30} {r['peak_mem_mb']:>12,.0f}")


if __name__ == "__main__":
    run_main(main)
