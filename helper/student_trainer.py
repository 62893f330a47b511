"""The student run: data, cached teacher, method, schedule, checkpoints, exact resume, results.

Schedule (as published, see helper/schedule.py): validate after every pseudo-epoch (ceil(n_train /
batch_size) steps) and keep the best-validation weights; after ``--patience`` pseudo-epochs without
improvement, reload the best weights of the trained modules (not the optimizer momentum, not the CRD
memory: as published) and start the next learning-rate phase; ``--lr_decay_times`` phases in all, or
``--epochs`` pseudo-epochs. The reported test accuracy is that of the best-validation weights.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

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
from dataset import TrainPool, build_train_pool, make_subset_split
from dataset.augment import DeviceAugment
from dataset.samplers import steps_per_epoch
from dataset.teacher_cache import CountingModule, load_or_build_cache
from helper.calibration import fold_shift, shifted, train_mean_shift
from helper.engine import Progress, StopRequest, Stopwatch, evaluate, provenance, set_lr, train_step
from helper.logger import report_finished_run
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
    validate_combination,
)
from helper.options import check_split_against_data, check_subset_against_data, missing_teacher_message, student_run_dir
from helper.run_setup import clean_leftovers, ensure_writable, load_data, open_logger, refuse_resume_without_checkpoint
from helper.schedule import DECAY, STOP, PlateauSchedule
from models import model_dict

# last.pth is written after the first pseudo-epoch, then at most this often (seconds), on every learning-rate
# decay, on SIGINT/SIGTERM and at the end; a resumed run replays deterministically from it.
CHECKPOINT_EVERY_S = float(os.environ.get("CKD_CHECKPOINT_EVERY_S", "60"))


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite; nothing is reported as a result."""


def load_teacher(opt: argparse.Namespace, num_classes: int, device: torch.device) -> nn.Module:
    """Build ``opt.model_t`` and load ``opt.path_t`` into it (weights_only, strict keys and shapes)."""
    path = Path(opt.path_t)
    if not path.is_file():
        raise UserError(missing_teacher_message(opt))
    teacher = model_dict[opt.model_t](num_classes=num_classes)
    state = extract_state_dict(safe_load(path, map_location="cpu"), path)
    load_weights_strict(teacher, state, opt.model_t, path)
    return teacher.to(device).eval()


def cache_teacher(opt: argparse.Namespace, teacher: nn.Module, images: Tensor, labels: Tensor, augment: DeviceAugment,
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


def build_student(opt: argparse.Namespace, num_classes: int, device: torch.device) -> nn.Module:
    """``opt.model_s`` initialised from ``opt.seed`` on ``device`` (channels-last when asked)."""
    torch.manual_seed(opt.seed)
    student = model_dict[opt.model_s](num_classes=num_classes).to(device)
    if opt.channels_last:
        student = student.to(memory_format=torch.channels_last)
    return student


@dataclass
class TrainingSetup:
    """What a training step needs: the method (with its student), its sampler and the optimiser."""

    method: Method
    extras: nn.ModuleDict
    sampler: Any
    optimizer: torch.optim.Optimizer
    aug_generator: torch.Generator


def build_training(opt: argparse.Namespace, student: nn.Module, pool: TrainPool, augment: DeviceAugment, num_classes: int,
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


def accumulate(accum: dict[str, Tensor], step_terms: dict[str, Tensor], device: torch.device) -> None:
    """Add one step's loss terms to the per-epoch sums, on the device (no host sync)."""
    for key, value in step_terms.items():
        accum[key] = accum.get(key, torch.zeros((), device=device)) + value.float()


class StudentRun:
    """One ``train_student.py`` run, from flags to ``results.json``."""

    def __init__(self, opt: argparse.Namespace) -> None:
        validate_combination(opt.relational, opt.distill)
        self.opt = opt
        self.device = resolve_device(opt.device)
        configure_backend(self.device, deterministic=opt.deterministic)
        self.run_dir = student_run_dir(opt)
        self.last_path = self.run_dir / "last.pth"
        self.best_path = self.run_dir / "best.pth"
        self.results_path = self.run_dir / "results.json"
        self.cache_path = self.run_dir / "teacher_cache.pth"
        self.stop = StopRequest()

    # ----------------------------------------------------------------------------------- setup
    def _decide_resume(self) -> bool:
        refuse_resume_without_checkpoint(self.opt, self.last_path, "start this run fresh")
        if self.last_path.is_file() and not self.opt.resume:
            print(f"found {self.last_path}: resuming that run (delete {self.run_dir} to start over)", flush=True)
        return self.last_path.is_file()

    def _prepare_data(self) -> None:
        opt, device = self.opt, self.device
        train_set, test_set = load_data(opt)
        if opt.subset_size is None:  # the default: the whole training set
            opt.subset_size = len(train_set.labels)
        check_subset_against_data(opt, len(train_set.labels))
        self.num_classes = train_set.num_classes
        self.split = make_subset_split(len(train_set.labels), opt.subset_size, opt.train_val_frac, opt.seed, opt.batch_size)
        self.augment = DeviceAugment.for_images(train_set, opt.use_DA, device)
        self.input_shape = (3, self.augment.crop, self.augment.crop)  # what the models see (Cars: 56x56 crops of 64x64)
        train_idx = torch.as_tensor(self.split.train_idx, dtype=torch.long)
        val_idx = torch.as_tensor(self.split.val_idx, dtype=torch.long)
        self.train_images = train_set.images[train_idx]
        self.train_labels = train_set.labels[train_idx]
        check_split_against_data(opt, self.split.n_train, int(self.train_labels.unique().numel()))
        self.val_images = train_set.images[val_idx].to(device)
        self.val_labels = train_set.labels[val_idx].to(device)
        self.test_images = test_set.images.to(device)
        self.test_labels = test_set.labels.to(device)

    def _prepare_teacher_cache(self) -> None:
        """Query the teacher once per training image (and view), or reload the cache of this run."""
        opt, device = self.opt, self.device
        teacher_sha256 = file_sha256(opt.path_t) if Path(opt.path_t).is_file() else None

        def build() -> tuple[TrainPool, dict[str, Any]]:
            teacher = load_teacher(opt, self.num_classes, device)
            counted = CountingModule(teacher)
            test_stats = evaluate(counted, self.test_images, self.test_labels, self.augment.normalize_eval, amp=opt.amp)
            pool, feat_shapes = cache_teacher(opt, teacher, self.train_images, self.train_labels, self.augment, device,
                                              self.num_classes)
            meta = {"teacher_acc": test_stats["acc"], "teacher_acc_top5": test_stats["acc_top5"],
                    "teacher_calls": int(pool.teacher_calls), "teacher_eval_calls": int(counted.calls),
                    "teacher_sha256": teacher_sha256 or file_sha256(opt.path_t),
                    "teacher_feat_shapes": [list(shape) for shape in feat_shapes]}
            del teacher, counted
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return pool, meta

        self.pool, self.teacher_meta, reused = load_or_build_cache(self.cache_path, teacher_sha256, build, device)
        self.teacher_feat_shapes = [tuple(shape) for shape in self.teacher_meta["teacher_feat_shapes"]]
        if reused:
            print(f"reusing the teacher cache {self.cache_path} ({self.teacher_meta['teacher_calls']} teacher calls, "
                  "no new ones)", flush=True)
        else:
            print(f"teacher {opt.model_t}: test acc {self.teacher_meta['teacher_acc']:.2f}%, "
                  f"{self.teacher_meta['teacher_calls']} teacher calls for {self.pool.n_images} training images "
                  f"(+{self.teacher_meta['teacher_eval_calls']} for its test evaluation)", flush=True)

    def _prepare_student(self) -> None:
        opt, device = self.opt, self.device
        self.student = build_student(opt, self.num_classes, device)
        setup = build_training(opt, self.student, self.pool, self.augment, self.num_classes, self.teacher_feat_shapes, device,
                               self.input_shape)
        self.method, self.extras, self.sampler = setup.method, setup.extras, setup.sampler
        self.optimizer, self.aug_generator = setup.optimizer, setup.aug_generator
        self.steps_per_epoch = steps_per_epoch(self.pool.n_images, opt.batch_size)

    # ------------------------------------------------------------------------------ state
    def _fresh_state(self) -> dict[str, Any]:
        return {"step_in_epoch": 0, "global_step": 0, "best_val_acc_top5": 0.0, "best_val_loss": math.inf,
                "finished": False, "elapsed_s": 0.0}

    def _new_schedule(self) -> PlateauSchedule:
        opt = self.opt
        return PlateauSchedule(opt.learning_rate, opt.patience, opt.lr_decay_rate, opt.lr_decay_times, opt.epochs)

    def _snapshot(self, shift: Tensor | None = None) -> dict[str, Any]:
        """The weights the schedule returns to (the student and the method's trained modules, as published: not the
        optimizer momentum, not the CRD memory), with the calibration shift they were validated with."""
        return copy.deepcopy({"model": self.student.state_dict(), "extras": restorable_state(self.extras),
                              "shift": None if shift is None else shift.detach()})

    def _restore(self, snapshot: dict[str, Any]) -> None:
        self.student.load_state_dict(snapshot["model"])
        self.extras.load_state_dict(snapshot["extras"], strict=False)
        self._set_lr(self.schedule.lr)

    def _calibration_shift(self) -> Tensor:
        """The train-split shift of the current student weights (no teacher call: cached logits only)."""
        clean = self.pool.images[: self.pool.n_images]  # the first n_images items are the clean images in every mode
        return train_mean_shift(self.student, clean, self.pool.teacher_logits, self.augment.normalize_eval, amp=self.opt.amp,
                                channels_last=self.opt.channels_last)

    def _set_lr(self, lr: float) -> None:
        set_lr(self.optimizer, lr)

    def _checkpoint(self) -> dict[str, Any]:
        return {"model": self.student.state_dict(), "extras": self.extras.state_dict(),
                "optimizer": self.optimizer.state_dict(), "state": dict(self.state), "schedule": self.schedule.state_dict(),
                "best": self.best,
                "sampler": self.sampler.state_dict(), "method_rng": self.method.extra_state(),
                "aug_rng": self.aug_generator.get_state(), "torch_rng": torch.get_rng_state(),
                "accum": {k: v.detach().cpu() for k, v in self.accum.items()}, "wandb_id": self.logger.wandb_id,
                "epoch": self.schedule.epoch, "accuracy": self.schedule.best_acc}

    def _save_last(self) -> None:
        self.state["elapsed_s"] = self.elapsed_before + self.clock.elapsed()
        atomic_save(self._checkpoint(), self.last_path)
        self.last_saved_at = time.perf_counter()

    def _save_best(self) -> None:
        model = fold_shift(self.best["model"], self.student, self.best["shift"], self.num_classes)
        atomic_save({"model": model, "extras": self.best["extras"], "epoch": self.schedule.best_epoch,
                     "accuracy": self.schedule.best_acc, "model_s": self.opt.model_s}, self.best_path)

    def _load_last(self) -> dict[str, Any]:
        ckpt = safe_load(self.last_path, map_location=self.device)
        self.student.load_state_dict(ckpt["model"])
        self.extras.load_state_dict(ckpt["extras"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = dict(ckpt["state"])
        self.schedule.load_state_dict(ckpt["schedule"])
        self.best = ckpt["best"]
        self.sampler.load_state_dict(ckpt["sampler"])
        self.method.load_extra_state(ckpt["method_rng"])
        self.aug_generator.set_state(ckpt["aug_rng"].cpu() if hasattr(ckpt["aug_rng"], "cpu") else ckpt["aug_rng"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        self.accum = {k: v.to(self.device) for k, v in ckpt["accum"].items()}
        self._set_lr(self.schedule.lr)
        return ckpt

    # ------------------------------------------------------------------------------ training
    def _init_stage(self) -> None:
        """The method's init stage, if it has one (from the cache, no teacher call), then a checkpoint: a resumed run
        continues after it. Stopped during the stage, the run keeps nothing of it."""
        stage = self.method.init_stage(self.opt)
        if stage is not None:
            if not stage.run(self.device, self.opt.amp, lambda: self.stop.requested):
                print("stopped during the init stage: nothing saved; the same command starts the run again", flush=True)
                raise SystemExit(self.stop.exit_code())
            self.best = self._snapshot()
        self.state["init_done"] = True
        if stage is not None:
            self._save_last()

    def _train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return train_step(self.method, self.optimizer, batch, self.device, self.opt.amp)

    def _check_finite(self, step_terms: dict[str, Tensor]) -> None:
        if bool(torch.isfinite(step_terms["train_loss"]).item()):
            return
        values = ", ".join(f"{k}={v.item():.4g}" for k, v in step_terms.items())
        where = f"the last good checkpoint is {self.last_path}" if self.last_path.is_file() else "no checkpoint was written yet"
        raise NonFiniteLoss(
            f"the loss became non-finite at step {self.state['global_step']} (pseudo-epoch {self.schedule.epoch + 1}; "
            f"{values}); nothing was reported as a result, {where}: lower --learning_rate "
            "or the loss weights and start a new run"
        )

    def _train_epoch(self) -> bool:
        """Run the rest of the current pseudo-epoch; return False when stopped by a signal."""
        self.student.train()
        self.extras.train()
        self.method.set_epoch(self.schedule.epoch + 1)
        check_every_step = self.device.type != "cuda"  # on CUDA a per-step check would sync the host every step
        progress = Progress(self.steps_per_epoch, f"epoch {self.schedule.epoch + 1}", self.state["step_in_epoch"])
        try:
            while self.state["step_in_epoch"] < self.steps_per_epoch:
                step_terms = self._train_step(self.sampler.next_batch())
                self.state["global_step"] += 1
                self.state["step_in_epoch"] += 1
                accumulate(self.accum, step_terms, self.device)
                if check_every_step:
                    self._check_finite(step_terms)
                progress.update()
                if self.stop.requested:
                    return False
        finally:
            progress.close()
        if not check_every_step and not bool(torch.isfinite(self.accum["train_loss"]).item()):
            self._check_finite({k: v / self.steps_per_epoch for k, v in self.accum.items()})
        return True

    def _end_epoch(self) -> bool:
        """Validate, log, apply the schedule; return True when training is over."""
        opt, state, schedule = self.opt, self.state, self.schedule
        n_steps = max(state["step_in_epoch"], 1)
        train_terms = {k: v.item() / n_steps for k, v in self.accum.items()}
        self.accum = {}
        state["step_in_epoch"] = 0
        lr = schedule.lr
        shift = self._calibration_shift() if opt.calibrate == "train_mean" else None
        with shifted(self.student, shift, self.num_classes):
            val = evaluate(self.student, self.val_images, self.val_labels, self.augment.normalize_eval, amp=opt.amp,
                           channels_last=opt.channels_last)
        step = schedule.update(val["acc"])
        if step.improved:
            state.update(best_val_acc_top5=val["acc_top5"], best_val_loss=val["loss"])
            self.best = self._snapshot(shift)
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
            self._restore(self.best)
            print(f"no improvement for {opt.patience} pseudo-epochs: back to the best weights (epoch "
                  f"{schedule.best_epoch}), learning rate -> {schedule.lr:.4g} (phase {schedule.phase + 1} of "
                  f"{schedule.phases})", flush=True)
            self._save_last()
        return step.action == STOP

    # ------------------------------------------------------------------------------ the run
    def run(self) -> Path:
        opt = self.opt
        ensure_writable(self.run_dir)
        clean_leftovers(self.run_dir)
        if self.results_path.is_file():
            print(f"this configuration already finished; delete {self.run_dir} to run it again", flush=True)
            report_finished_run(self.run_dir, self.results_path, opt)  # a W&B agent's run still gets the results
            print(f"results: {self.results_path}", flush=True)
            return self.results_path
        resuming = self._decide_resume()
        self._prepare_data()
        check_white_box_early(self.opt, self.num_classes, self.input_shape)
        self._prepare_teacher_cache()
        self._prepare_student()
        self.state, self.accum, self.best = self._fresh_state(), {}, None
        self.schedule = self._new_schedule()
        wandb_id = None
        if resuming:
            wandb_id = self._load_last()["wandb_id"]
            print(f"resumed at pseudo-epoch {self.schedule.epoch} step {self.state['step_in_epoch']} "
                  f"(global step {self.state['global_step']})", flush=True)
        else:
            self.best = self._snapshot()
        config = {**vars(opt), "n_train": self.pool.n_images, "n_val": int(self.val_labels.shape[0])}
        with open_logger(self.run_dir, config, opt, "student", wandb_id) as self.logger:
            self.clock, self.elapsed_before = Stopwatch(), float(self.state["elapsed_s"])
            self.last_saved_at = -math.inf
            with self.stop.installed():
                done = self.state["finished"]
                if not done and not self.state.get("init_done", False):
                    self._init_stage()
                while not done:
                    if not self._train_epoch():
                        self._save_last()
                        print(f"stopped: saved {self.last_path}; resume with the same command (or add --resume)", flush=True)
                        raise SystemExit(self.stop.exit_code())
                    done = self._end_epoch()
                    if done or self.schedule.epoch == 1 or time.perf_counter() - self.last_saved_at >= CHECKPOINT_EVERY_S:
                        self.state["finished"] = done
                        self._save_last()
                        self._save_best()
            results = self._finish()
        print(f"results: {self.results_path}", flush=True)
        return results

    def _finish(self) -> Path:
        opt, state, schedule = self.opt, self.state, self.schedule
        self.student.load_state_dict(self.best["model"])
        test_kwargs = {"amp": opt.amp, "channels_last": opt.channels_last}
        with shifted(self.student, self.best["shift"], self.num_classes):
            test = evaluate(self.student, self.test_images, self.test_labels, self.augment.normalize_eval, **test_kwargs)
        shift = self.best["shift"] if self.best["shift"] is not None else self._calibration_shift()
        with shifted(self.student, shift, self.num_classes):
            test_cal = evaluate(self.student, self.test_images, self.test_labels, self.augment.normalize_eval, **test_kwargs)
        results = {
            "test_acc": test["acc"], "test_acc_top5": test["acc_top5"], "test_loss": test["loss"],
            "test_acc_calibrated": test_cal["acc"], "calibration_shift_norm": float(shift.norm()),
            "best_val_acc": schedule.best_acc, "best_val_acc_top5": state["best_val_acc_top5"],
            "best_val_loss": state["best_val_loss"], "best_epoch": schedule.best_epoch,
            "teacher_acc": self.teacher_meta["teacher_acc"], "teacher_calls": self.teacher_meta["teacher_calls"],
            "teacher_eval_calls": self.teacher_meta["teacher_eval_calls"], "teacher_sha256": self.teacher_meta["teacher_sha256"],
            "n_train": self.pool.n_images, "n_val": int(self.val_labels.shape[0]), "n_test": int(self.test_labels.shape[0]),
            "pseudo_epochs": schedule.epoch, "steps": state["global_step"], "lr_decays": schedule.decays,
            "cache_bytes": self.pool.nbytes,
            "wall_time_s": self.elapsed_before + self.clock.elapsed(), "config": dict(vars(opt)),
            **provenance(self.device),
        }
        atomic_write_json(results, self.results_path)
        if not opt.keep_cache:
            self.cache_path.unlink(missing_ok=True)
        summary = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.logger.summary(summary)
        print(f"test_acc {results['test_acc']:.2f} (top-5 {results['test_acc_top5']:.2f}) with the best-validation weights "
              f"of pseudo-epoch {schedule.best_epoch}; calibrated {results['test_acc_calibrated']:.2f}; "
              f"teacher calls {results['teacher_calls']}", flush=True)
        return self.results_path


def restorable_state(modules: nn.Module) -> dict[str, Tensor]:
    """The state of ``modules`` that the schedule restores: everything but the buffers of parameter-free submodules
    (the CRD memory banks, which the published code keeps when it returns to the best weights)."""
    skip = {f"{name}.{buf}" if name else buf
            for name, module in modules.named_modules() if not any(True for _ in module.parameters())
            for buf, _ in module.named_buffers(recurse=False)}
    return {k: v for k, v in modules.state_dict().items() if k not in skip}
