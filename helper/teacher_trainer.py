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
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.checkpoint import atomic_save, atomic_write_json, safe_load
from core.device import autocast, configure_backend, resolve_device
from core.errors import UserError
from dataset.augment import DeviceAugment
from helper.engine import Progress, StopRequest, Stopwatch, evaluate, provenance, set_lr
from helper.options import parse_decay_epochs, teacher_checkpoint_path, teacher_identity_config
from helper.run_setup import clean_leftovers, ensure_writable, load_data, open_logger, refuse_resume_without_checkpoint
from models import model_dict


def _flag_value(value: Any) -> str:
    return "None" if value is None else str(value)


class TeacherRun:
    """One ``train_teacher.py`` run (``opt`` comes from :func:`helper.options.parse_teacher_args`)."""

    def __init__(self, opt: argparse.Namespace) -> None:
        self.decay_epochs = parse_decay_epochs(opt.lr_decay_epochs)
        self.opt = opt
        self.device = resolve_device(opt.device)
        configure_backend(self.device, deterministic=opt.deterministic)
        self.final_path = teacher_checkpoint_path(opt.save_dir, opt.dataset, opt.model, opt.trial)
        self.run_dir = self.final_path.parent
        self.last_path = self.run_dir / "last.pth"
        self.config_path = self.run_dir / "config.json"
        # what the folder is bound to, as JSON would give it back (so a stored and a requested config compare equal)
        self.config: dict[str, Any] = json.loads(json.dumps(teacher_identity_config(opt)))
        self.stop = StopRequest()

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
                stored = json.loads(self.config_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise UserError(f"{self.config_path} is unreadable ({err}); {self._how_to_proceed()}") from err
            if isinstance(stored, dict):
                return stored
        for path in (self.last_path, self.final_path):
            if path.is_file():
                ckpt = safe_load(path, map_location="cpu")
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
        ckpt = safe_load(self.final_path, map_location="cpu")
        print(f"teacher {self.opt.model} is already trained with these flags: {self.final_path} holds epoch {ckpt['epoch']} "
              f"(test acc {float(ckpt['accuracy']):.2f}%); nothing to do (delete {self.run_dir} to train it again)", flush=True)
        print(f"checkpoint: {self.final_path}", flush=True)
        return self.final_path

    def _create_folder(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot write to {self.run_dir} ({err.strerror or err}); choose a writable --save_dir") from err
        if not self.config_path.is_file():
            atomic_write_json(self.config, self.config_path)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of (1-based) ``epoch``: decayed once per passed decay epoch."""
        passed = sum(1 for e in self.decay_epochs if epoch > e)
        return self.opt.learning_rate * self.opt.lr_decay_rate ** passed

    # ------------------------------------------------------------------ the run
    def run(self) -> Path:
        opt, device = self.opt, self.device
        if self.check_folder():
            return self._report_finished()
        refuse_resume_without_checkpoint(opt, self.last_path, "train from scratch")
        ensure_writable(self.run_dir)
        train_set, test_set = load_data(opt)
        augment = DeviceAugment.for_images(train_set, 2, device)  # crop + flip; Cars: 56x56 crops of 64x64
        images, labels = train_set.images.to(device), train_set.labels.to(device)
        test_images, test_labels = test_set.images.to(device), test_set.labels.to(device)
        torch.manual_seed(opt.seed)
        model = model_dict[opt.model](num_classes=train_set.num_classes).to(device)
        if opt.channels_last:
            model = model.to(memory_format=torch.channels_last)
        forward = torch.compile(model) if opt.compile else model
        optimizer = torch.optim.SGD(model.parameters(), lr=opt.learning_rate, momentum=opt.momentum, weight_decay=opt.weight_decay)
        shuffle = torch.Generator().manual_seed(opt.seed)
        aug_generator = torch.Generator(device=device).manual_seed(opt.seed + 1)
        self._create_folder()  # only now that the run can start: an early failure leaves no folder behind
        clean_leftovers(self.run_dir)
        start_epoch, best_acc, wandb_id, elapsed_before = 1, 0.0, None, 0.0
        test = {"acc": 0.0, "acc_top5": 0.0, "loss": 0.0}
        if self.last_path.is_file():
            print(f"found {self.last_path}: resuming teacher training (delete it to start over)", flush=True)
            ckpt = safe_load(self.last_path, map_location=device)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            shuffle.set_state(ckpt["shuffle_rng"])
            aug_generator.set_state(ckpt["aug_rng"].cpu())
            start_epoch, best_acc, wandb_id = ckpt["epoch"] + 1, ckpt["best_acc"], ckpt["wandb_id"]
            elapsed_before = ckpt["elapsed_s"]
            test["acc"] = float(ckpt["accuracy"])
        with open_logger(self.run_dir, dict(vars(opt)), opt, "teacher", wandb_id) as logger:
            clock = Stopwatch()
            n = images.shape[0]
            with self.stop.installed():
                for epoch in range(start_epoch, opt.epochs + 1):
                    lr = self.lr_at(epoch)
                    set_lr(optimizer, lr)
                    model.train()
                    order = torch.randperm(n, generator=shuffle).to(device)
                    loss_sum = torch.zeros((), device=device)
                    n_batches = 0
                    progress = Progress((n + opt.batch_size - 1) // opt.batch_size, f"epoch {epoch}")
                    for start in range(0, n, opt.batch_size):
                        idx = order[start:start + opt.batch_size]
                        if idx.shape[0] < 2:  # BatchNorm cannot train on a single image
                            continue
                        x = augment(images[idx], aug_generator)
                        if opt.channels_last:
                            x = x.contiguous(memory_format=torch.channels_last)
                        with autocast(device, opt.amp):
                            logits = forward(x)
                        loss = F.cross_entropy(logits.float(), labels[idx])
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        loss_sum += loss.detach()
                        n_batches += 1
                        progress.update()
                    progress.close()
                    if self.stop.requested:
                        print(f"stopped during epoch {epoch}: {self.last_path} holds epoch {epoch - 1}; "
                              "re-run the same command to resume", flush=True)
                        raise SystemExit(self.stop.exit_code())
                    train_loss = loss_sum.item() / max(n_batches, 1)
                    if not torch.isfinite(torch.tensor(train_loss)):
                        raise UserError(f"the training loss became non-finite in epoch {epoch}; lower --learning_rate "
                                        f"(the last good checkpoint is {self.last_path})")
                    test = evaluate(model, test_images, test_labels, augment.normalize_eval, amp=opt.amp,
                                    channels_last=opt.channels_last)
                    best_acc = max(best_acc, test["acc"])
                    logger.log({"train_loss": train_loss, "test_acc": test["acc"], "test_acc_top5": test["acc_top5"],
                                "test_loss": test["loss"], "lr": lr}, step=epoch)
                    print(f"epoch {epoch:4d} | lr {lr:.4g} | train_loss {train_loss:.4f} | test_acc {test['acc']:6.2f} | "
                          f"{elapsed_before + clock.elapsed():.1f}s", flush=True)
                    state = self._checkpoint(model, optimizer, epoch, test["acc"])
                    periodic = self.run_dir / f"ckpt_epoch_{epoch}.pth"
                    if epoch % opt.save_freq == 0 and epoch != opt.epochs and periodic != self.final_path:
                        atomic_save(state, periodic)
                    atomic_save({**state, "best_acc": best_acc, "shuffle_rng": shuffle.get_state(),
                                 "aug_rng": aug_generator.get_state(), "wandb_id": logger.wandb_id,
                                 "elapsed_s": elapsed_before + clock.elapsed()}, self.last_path)
            atomic_save(self._checkpoint(model, optimizer, opt.epochs, test["acc"]), self.final_path)
            logger.summary({"test_acc": test["acc"], "best_test_acc": best_acc})
        print(f"teacher {opt.model}: test acc {test['acc']:.2f}% after {opt.epochs} epochs", flush=True)
        print(f"checkpoint: {self.final_path}", flush=True)
        return self.final_path

    def _checkpoint(self, model, optimizer, epoch: int, accuracy: float) -> dict[str, Any]:
        return {"model": model.state_dict(), "epoch": epoch, "accuracy": accuracy, "optimizer": optimizer.state_dict(),
                "model_name": self.opt.model, "dataset": self.opt.dataset, "config": self.config, **provenance(self.device)}
