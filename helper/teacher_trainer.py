"""Teacher training (the RepDistiller recipe): the full training set, SGD with step decays.

The final checkpoint goes straight to where train_student.py looks for it
(``save/models/{model}_vanilla/ckpt_epoch_240.pth`` for CIFAR-100,
``save/models/{model}_stanfordcars_vanilla/...`` for Stanford Cars, ``save/models_{dataset}/...`` otherwise) in the
RepDistiller format ``{'model', 'epoch', 'accuracy', 'optimizer'}``, so no renaming is needed; the file name
keeps ``240`` whatever ``--epochs`` is, because that is the name the student script and the published teachers
use. That file always holds the final weights and the epoch they come from (a periodic checkpoint never takes its
name). Images are cropped (and flipped) to the model input of the data set (Cars: random 56x56 crops of the stored
64x64 images for training, the centre crop for testing), as the students see them.

A teacher folder holds one configuration, recorded in ``config.json`` and in every checkpoint: a rerun
resumes (or, once finished, says so and writes nothing) only when the requested flags are the same;
otherwise it stops and names the flags that differ. ``--trial k`` (k > 1) trains into
``{model}_vanilla_trial{k}/`` beside it.

Training runs in the one loop of :func:`helper.engine.train_epochs`: a stop request is honoured after the step in
flight, and ``last.pth`` then holds that step (the data order of the epoch, the augmentation generator, the
optimizer), so the same command resumes mid-epoch, bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core import fs
from core.checkpoint import atomic_save, atomic_write_json
from core.device import configure_backend, resolve_device
from core.errors import UserError
from dataset.augment import DeviceAugment
from helper.config import TeacherConfig
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
from helper.options import teacher_checkpoint_path
from helper.resources import LOG_BYTES, Estimate, check_fits, model_footprint
from helper.run_files import (
    LOAD_ERRORS,
    check,
    damaged,
    load_run_file,
    model_mismatch,
    optimizer_mismatch,
    scalar_mismatch,
    structure_mismatch,
    tensors_mismatch,
)
from helper.run_folder import folder_lock, teacher_identity_config
from helper.run_setup import (
    clean_leftovers,
    ensure_writable,
    load_data,
    mark_failed,
    open_logger,
    refuse_failed_run,
    refuse_resume_without_checkpoint,
)
from models import model_dict


def _flag_value(value: Any) -> str:
    return "None" if value is None else str(value)


class EpochShuffle:
    """The teacher's data order: a fresh ``torch.randperm`` of the training set every epoch, cut into batches of
    ``batch_size`` (a last batch of a single image is dropped: BatchNorm cannot train on it).

    Resumable mid-epoch: the state is the generator's state before the epoch's permutation and the batches taken.
    """

    def __init__(self, n_images: int, batch_size: int, seed: int, device: torch.device) -> None:
        self.n_images, self.batch_size, self.device = int(n_images), int(batch_size), device
        full, rest = divmod(self.n_images, self.batch_size)
        self.steps_per_epoch = full + (1 if rest >= 2 else 0)
        self.generator = torch.Generator().manual_seed(seed)
        self.position = 0
        self.epoch_start_state = self.generator.get_state()
        self.order: Tensor | None = None

    def next_batch(self) -> dict[str, Tensor]:
        if self.order is None:
            self.epoch_start_state = self.generator.get_state()
            self.order = torch.randperm(self.n_images, generator=self.generator).to(self.device)
        start = self.position * self.batch_size
        idx = self.order[start:start + self.batch_size]
        self.position += 1
        if self.position == self.steps_per_epoch:
            self.order, self.position = None, 0
        return {"idx": idx}

    def state_dict(self) -> dict[str, Any]:
        start = self.epoch_start_state if self.order is not None else self.generator.get_state()
        return {"epoch_start_rng": start, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["epoch_start_rng"].cpu())  # read onto CUDA with the checkpoint
        self.position, self.order = int(state["position"]), None
        if self.position:
            self.epoch_start_state = self.generator.get_state()
            self.order = torch.randperm(self.n_images, generator=self.generator).to(self.device)


class Classifier(nn.Module):
    """The teacher's loss: cross-entropy of the model on augmented crops of the batch ('cls', unweighted)."""

    def __init__(self, model: nn.Module, forward: nn.Module, images: Tensor, labels: Tensor, augment: DeviceAugment,
                 aug_generator: torch.Generator, channels_last: bool) -> None:
        super().__init__()
        self.model, self.forward_model = model, forward
        self.images, self.labels, self.augment = images, labels, augment
        self.aug_generator, self.channels_last = aug_generator, channels_last

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        idx = batch["idx"]
        x = self.augment(self.images[idx], self.aug_generator)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return {"cls": F.cross_entropy(self.forward_model(x).float(), self.labels[idx])}


class TeacherRun:
    """One ``train_teacher.py`` run (``cfg`` comes from :func:`helper.config.parse_teacher_args`)."""

    def __init__(self, cfg: TeacherConfig) -> None:
        self.decay_epochs = cfg.decay_epochs
        self.opt = cfg
        self.device = resolve_device(cfg.device)
        configure_backend(self.device, deterministic=cfg.deterministic)
        self.final_path = teacher_checkpoint_path(cfg.save_dir, cfg.dataset, cfg.model, cfg.trial)
        self.run_dir = self.final_path.parent
        self.last_path = self.run_dir / "last.pth"
        self.config_path = self.run_dir / "config.json"
        # what the folder is bound to, as JSON would give it back (so a stored and a requested config compare equal)
        self.config: dict[str, Any] = json.loads(json.dumps(teacher_identity_config(cfg)))
        self.stop = StopRequest()
        self.loop = LoopState()
        self.accum: dict[str, Tensor] = {}
        self.best_acc = 0.0
        self.test = {"acc": 0.0, "acc_top5": 0.0, "loss": 0.0}

    # ------------------------------------------------------------------ the folder's configuration
    def _next_free_trial(self) -> int:
        trial = self.opt.trial + 1
        while teacher_checkpoint_path(self.opt.save_dir, self.opt.dataset, self.opt.model, trial).parent.exists():
            trial += 1
        return trial

    def _how_to_proceed(self) -> str:
        return (f"pass --trial {self._next_free_trial()} (or another --save_dir) to train this configuration beside it, "
                f"or delete {self.run_dir} to replace it")

    def stored_config(self) -> dict[str, Any] | None:
        """The configuration the teacher folder holds (None when there is no folder or it holds nothing).

        Raises UserError for a folder with checkpoints whose flags are not recorded (a downloaded teacher,
        or one trained by an older version): it is never trained over.
        """
        if self.config_path.is_file():
            try:
                stored = json.loads(fs.read_text(self.config_path))  # an OSError: its own sentence (core.fs)
            except (OSError, ValueError) as err:
                raise UserError(f"{self.config_path} is unreadable ({err}); {self._how_to_proceed()}") from err
            problem = f"{type(stored).__name__} where the teacher's flags belong" if not isinstance(stored, dict) else \
                structure_mismatch(stored, {k: v for k, v in self.config.items() if k in stored}, "flags")
            if problem:
                raise damaged(self.config_path, problem, f"restore it from a copy; {self._how_to_proceed()}")
            return stored
        for path in (self.last_path, self.final_path):
            if path.is_file():
                ckpt = load_run_file(path, self._last_advice() if path == self.last_path else
                                     f"restore it from a copy, or delete {self.run_dir} to train the teacher again")
                if isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict):
                    return ckpt["config"]
        if self.run_dir.is_dir() and any(self.run_dir.glob("*.pth")):
            raise UserError(f"{self.run_dir} already holds a teacher whose flags are not recorded (no config.json), so it "
                            f"is not trained over; {self._how_to_proceed()}")
        return None

    def check_folder(self) -> bool:
        """True when this exact configuration already finished; raises UserError when the folder holds another one."""
        stored = self.stored_config()
        if stored is None:
            return False
        missing = object()
        differ = sorted(k for k in set(stored) | set(self.config) if stored.get(k, missing) != self.config.get(k, missing))
        if differ:
            shown = ", ".join(f"--{k} {_flag_value(stored.get(k))} there, {_flag_value(self.config.get(k))} now" for k in differ)
            raise UserError(f"{self.run_dir} holds a teacher trained with other flags ({shown}); {self._how_to_proceed()}")
        return self.final_path.is_file()

    def _report_finished(self) -> Path:
        advice = f"restore it from a copy, or delete {self.run_dir} to train the teacher again"
        ckpt = load_run_file(self.final_path, advice)
        if not isinstance(ckpt, dict):
            raise damaged(self.final_path, f"{type(ckpt).__name__} where a checkpoint belongs", advice)
        check([model_mismatch(self.opt.model, ckpt.get("model")), scalar_mismatch(ckpt.get("epoch"), "epoch", whole=True),
               scalar_mismatch(ckpt.get("accuracy"), "accuracy")], self.final_path, advice)
        print(f"teacher {self.opt.model} is already trained with these flags: {self.final_path} holds epoch {ckpt['epoch']} "
              f"(test acc {float(ckpt['accuracy']):.2f}%); nothing to do (delete {self.run_dir} to train it again)", flush=True)
        print(f"checkpoint: {self.final_path}", flush=True)
        return self.final_path

    def _create_folder(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(fs.os_error_message(err, self.run_dir, "create the folder", location="--save_dir")) from err
        if not self.config_path.is_file():
            atomic_write_json(self.config, self.config_path)

    def estimate(self, n_train: int, n_test: int, stored_size: int, num_classes: int) -> Estimate:
        """Memory and disk of this run (see :mod:`helper.resources`): the images on the device, the largest batch's
        activations, the weights; the periodic, final and last checkpoints (model and momentum each) and the logs."""
        cfg = self.opt
        with torch.random.fork_rng(devices=[]):  # a fresh CPU copy; the run's RNG is untouched
            footprint = model_footprint(model_dict[cfg.model](num_classes=num_classes), (3, self.augment.crop,
                                                                                          self.augment.crop))
        activations = max(2 * cfg.batch_size * footprint.activations, 4 * eval_batch_size(self.device) * footprint.largest)
        device_parts = [("images", (n_train + n_test) * 3 * stored_size * stored_size, "--dataset"),
                        ("activations", activations, "--batch_size"), ("weights", 4 * footprint.parameters, "--model")]
        periodic = len(range(cfg.save_freq, cfg.epochs, cfg.save_freq))
        checkpoint = 2 * footprint.parameters  # the weights and the SGD momentum
        disk = [("periodic checkpoints", periodic * checkpoint, "--save_freq"),
                ("last and final checkpoints", 3 * checkpoint, "--save_dir"), ("logs", LOG_BYTES, "--save_dir")]
        return Estimate(device=device_parts, disk=disk)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of (1-based) ``epoch``: decayed once per passed decay epoch."""
        passed = sum(1 for e in self.decay_epochs if epoch > e)
        return self.opt.learning_rate * self.opt.lr_decay_rate ** passed

    # ------------------------------------------------------------------ the run
    def run(self) -> Path:
        """Train (or resume, or report the finished teacher); returns the final checkpoint. The teacher folder is
        locked while this process trains it (a second process is refused, see :func:`helper.run_folder.folder_lock`);
        SIGINT/SIGTERM are honoured in every phase (see :class:`helper.engine.StopRequest`), a non-finite loss marks the
        folder failed (``FAILED``)."""
        with self.stop.installed():
            self.stop.phase = "the checks of the teacher folder"
            if self.check_folder():
                return self._report_finished()
            refuse_failed_run(self.run_dir)
            refuse_resume_without_checkpoint(self.opt, self.last_path, "train from scratch")
            ensure_writable(self.run_dir)
            with folder_lock(self.run_dir):
                if self.check_folder():  # finished by the process that held the lock before
                    return self._report_finished()
                refuse_failed_run(self.run_dir)
                return self._run()

    def _run(self) -> Path:
        cfg, device, stop = self.opt, self.device, self.stop
        if self.last_path.is_file():
            stop.after_stop = f"the same command resumes from {self.last_path}"
        stop.phase = "data preparation"
        train_set, test_set = load_data(cfg)
        if cfg.batch_size > len(train_set.labels):  # as a student's --subset_size check: a batch never exceeds the data
            raise UserError(f"--batch_size {cfg.batch_size} is larger than the {len(train_set.labels)}-image training set of "
                            f"--dataset {cfg.dataset}; pass --batch_size {len(train_set.labels)} or less")
        self.augment = DeviceAugment.for_images(train_set, 2, device)  # crop + flip; Cars: 56x56 crops of 64x64
        check_fits(self.estimate(len(train_set.labels), len(test_set.labels), int(train_set.images.shape[-1]),
                                 train_set.num_classes), device, self.run_dir)
        images, labels = train_set.images.to(device), train_set.labels.to(device)
        self.test_images, self.test_labels = test_set.images.to(device), test_set.labels.to(device)
        torch.manual_seed(cfg.seed)
        self.model = model_dict[cfg.model](num_classes=train_set.num_classes).to(device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        forward = torch.compile(self.model) if cfg.compile else self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.sampler = EpochShuffle(images.shape[0], cfg.batch_size, cfg.seed, device)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.aug_generator = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        self.loss = Classifier(self.model, forward, images, labels, self.augment, self.aug_generator, cfg.channels_last)
        with stop.deferred():
            self._create_folder()  # only now that the run can start: an early failure leaves no folder behind
        clean_leftovers(self.run_dir)
        wandb_id = None
        if self.last_path.is_file():
            print(f"found {self.last_path}: resuming teacher training (delete it to start over)", flush=True)
            wandb_id = self.load_state_dict(load_run_file(self.last_path, self._last_advice(), map_location=device))
        with open_logger(self.run_dir, cfg.to_dict(), cfg, "teacher", wandb_id) as self.logger:
            self.clock, self.elapsed_before = Stopwatch(), self.loop.elapsed_s
            if self.loop.epochs_done < cfg.epochs:
                try:
                    train_epochs(self, stop, device)
                except NonFiniteLoss as err:
                    with stop.deferred():
                        mark_failed(self.run_dir, str(err))
                    raise
            with stop.deferred():
                atomic_save(self._checkpoint(cfg.epochs), self.final_path)
                if not cfg.keep_last:  # the final checkpoint says the teacher finished (check_folder); nothing resumes
                    self.last_path.unlink(missing_ok=True)
            self.logger.summary({"test_acc": self.test["acc"], "best_test_acc": self.best_acc})
        print(f"teacher {cfg.model}: test acc {self.test['acc']:.2f}% after {cfg.epochs} epochs", flush=True)
        print(f"checkpoint: {self.final_path}", flush=True)
        return self.final_path

    # ------------------------------------------------------------------ the loop's side (helper.engine.EpochRun)
    def begin_epoch(self) -> None:
        set_lr(self.optimizer, self.lr_at(self.loop.epochs_done + 1))
        self.model.train()

    def next_batch(self) -> dict[str, Tensor]:
        return draw_batch(self.sampler, self.stop)

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return train_step(self.loss, self.optimizer, batch, self.device, self.opt.amp)

    def non_finite(self, terms: dict[str, Tensor]) -> Exception:
        where = f"the last good checkpoint is {self.last_path}" if self.last_path.is_file() else "no checkpoint was written yet"
        return NonFiniteLoss(f"the training loss became non-finite in epoch {self.loop.epochs_done + 1}: the weights "
                                    f"diverged at --learning_rate {self.opt.learning_rate:g}; lower --learning_rate "
                                    f"(that is a new teacher folder with --trial, or the same after deleting this one; "
                                    f"{where})")

    def end_epoch(self, train_terms: dict[str, float]) -> bool:
        cfg, epoch = self.opt, self.loop.epochs_done
        lr = self.lr_at(epoch)
        self.test = evaluate(self.model, self.test_images, self.test_labels, self.augment.normalize_eval, amp=cfg.amp,
                             channels_last=cfg.channels_last)
        self.best_acc = max(self.best_acc, self.test["acc"])
        self.logger.log({"train_loss": train_terms["train_loss"], "test_acc": self.test["acc"],
                         "test_acc_top5": self.test["acc_top5"], "test_loss": self.test["loss"], "lr": lr}, step=epoch)
        print(f"epoch {epoch:4d} | lr {lr:.4g} | train_loss {train_terms['train_loss']:.4f} | test_acc "
              f"{self.test['acc']:6.2f} | {self.elapsed_before + self.clock.elapsed():.1f}s", flush=True)
        done = epoch >= cfg.epochs
        self.loop.finished = done
        periodic = self.run_dir / f"ckpt_epoch_{epoch}.pth"
        with self.stop.deferred():
            if epoch % cfg.save_freq == 0 and epoch != cfg.epochs and periodic != self.final_path:
                atomic_save(self._checkpoint(epoch), periodic)
            self.save_last()
        return done

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """``last.pth``: the RepDistiller checkpoint of the last finished epoch plus everything the loop resumes from."""
        self.loop.elapsed_s = self.elapsed_before + self.clock.elapsed()
        return {**self._checkpoint(self.loop.epochs_done), "best_acc": self.best_acc, "loop": self.loop.state_dict(),
                "sampler": self.sampler.state_dict(), "aug_rng": self.aug_generator.get_state(),
                "accum": {k: v.detach().cpu() for k, v in self.accum.items()}, "wandb_id": self.logger.wandb_id}

    def load_state_dict(self, ckpt: dict[str, Any]) -> str | None:
        """Restore a ``last.pth`` (returns the W&B run id to continue)."""
        require_resumable(ckpt, self.last_path, ("loop", "sampler", "aug_rng", "accum", "best_acc", "model", "optimizer",
                                                 "accuracy"))
        accum = ckpt["accum"]
        check([tensors_mismatch(ckpt["model"], self.model.state_dict(), f"model ({self.opt.model})"),
               optimizer_mismatch(ckpt["optimizer"], self.optimizer),
               structure_mismatch(ckpt["loop"], self.loop.state_dict(), "loop"),
               structure_mismatch(ckpt["sampler"], self.sampler.state_dict(), "sampler", strict_shapes=True),
               structure_mismatch(ckpt["aug_rng"], self.aug_generator.get_state(), "aug_rng", strict_shapes=True),
               scalar_mismatch(ckpt["best_acc"], "best_acc"), scalar_mismatch(ckpt["accuracy"], "accuracy"),
               None if isinstance(accum, dict) and all(isinstance(v, Tensor) and v.dim() == 0 for v in accum.values())
               else "accum is not a dict of loss sums",
               None if isinstance(ckpt.get("wandb_id"), (str, type(None))) else "wandb_id is not a string"],
              self.last_path, self._last_advice())
        try:
            return self._load_checked_state(ckpt)
        except LOAD_ERRORS as err:
            raise damaged(self.last_path, str(err).splitlines()[0] if str(err) else type(err).__name__,
                          self._last_advice()) from err

    def _last_advice(self) -> str:
        return f"delete it to train this teacher from the start (the other files of {self.run_dir} stay)"

    def _load_checked_state(self, ckpt: dict[str, Any]) -> str | None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.loop.load_state_dict(ckpt["loop"])
        self.sampler.load_state_dict(ckpt["sampler"])
        self.aug_generator.set_state(ckpt["aug_rng"].cpu())
        self.accum = {k: v.to(self.device) for k, v in ckpt["accum"].items()}
        self.best_acc, self.test["acc"] = float(ckpt["best_acc"]), float(ckpt["accuracy"])
        return ckpt["wandb_id"]

    def save_last(self) -> None:
        atomic_save(self.state_dict(), self.last_path)

    def _checkpoint(self, epoch: int) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "epoch": epoch, "accuracy": self.test["acc"],
                "optimizer": self.optimizer.state_dict(), "model_name": self.opt.model, "dataset": self.opt.dataset,
                "config": self.config, **provenance(self.device)}
