"""Teacher training (the RepDistiller recipe): the full training set, SGD with step decays.

The final checkpoint goes straight to where train_student.py looks for it
(``save/models/{model}_vanilla/ckpt_epoch_240.pth`` for CIFAR-100, ``save/models_{dataset}/...``
otherwise) in the RepDistiller format ``{'model', 'epoch', 'accuracy', 'optimizer'}``, so no renaming
is needed; the file name keeps ``240`` whatever ``--epochs`` is, because that is the name the
student script and the published teachers use.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dataset import load_dataset
from dataset.augment import DeviceAugment
from helper.checkpoint import atomic_save, remove_stale_temp_files, safe_load
from helper.device import configure_backend, resolve_device
from helper.errors import UserError
from helper.logger import RunLogger
from helper.loops import Progress, StopRequest, Stopwatch, autocast, evaluate, provenance, set_lr
from helper.options import default_learning_rate, teacher_checkpoint_path
from helper.student_trainer import ensure_writable
from models import model_dict


def parse_decay_epochs(text: str) -> list[int]:
    try:
        epochs = sorted(int(x) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise UserError(f"--lr_decay_epochs must be comma-separated whole numbers such as 150,180,210, got '{text}'") from err
    return epochs


class TeacherRun:
    """One ``train_teacher.py`` run."""

    def __init__(self, opt: argparse.Namespace) -> None:
        if opt.model not in model_dict:
            raise UserError(f"unknown architecture '{opt.model}' for --model; choose one of {', '.join(model_dict)}")
        if opt.learning_rate is None:
            opt.learning_rate = default_learning_rate(opt.model)
        if opt.epochs < 1 or opt.batch_size < 2:
            raise UserError("--epochs must be at least 1 and --batch_size at least 2")
        self.decay_epochs = parse_decay_epochs(opt.lr_decay_epochs)
        self.opt = opt
        self.device = resolve_device(opt.device)
        configure_backend(self.device, deterministic=opt.deterministic)
        self.final_path = teacher_checkpoint_path(opt.save_dir, opt.dataset, opt.model)
        self.run_dir = self.final_path.parent
        self.last_path = self.run_dir / "last.pth"
        self.stop = StopRequest()

    def lr_at(self, epoch: int) -> float:
        """Learning rate of (1-based) ``epoch``: decayed once per passed decay epoch."""
        passed = sum(1 for e in self.decay_epochs if epoch > e)
        return self.opt.learning_rate * self.opt.lr_decay_rate ** passed

    def run(self) -> Path:
        opt, device = self.opt, self.device
        ensure_writable(self.run_dir)
        for leftover in remove_stale_temp_files(self.run_dir):
            print(f"removed {leftover.name}, left by a checkpoint write that was killed", flush=True)
        if opt.resume and not self.last_path.is_file():
            raise UserError(f"--resume was given but {self.last_path} does not exist; drop --resume to train from scratch")
        train_set, test_set = load_dataset(opt.dataset, opt.data_folder)
        augment = DeviceAugment(train_set.mean, train_set.std, 2, device)
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
        logger = RunLogger(self.run_dir, dict(vars(opt)), opt, job_type="teacher", wandb_id=wandb_id)
        clock = Stopwatch()
        n = images.shape[0]
        exit_code = 1
        try:
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
                        exit_code = self.stop.exit_code()
                        raise SystemExit(exit_code)
                    train_loss = loss_sum.item() / max(n_batches, 1)
                    if not torch.isfinite(torch.tensor(train_loss)):
                        raise UserError(f"the training loss became non-finite in epoch {epoch}; lower --learning_rate "
                                        f"(the last good checkpoint is {self.last_path})")
                    test = evaluate(model, test_images, test_labels, augment.normalize, amp=opt.amp,
                                    channels_last=opt.channels_last)
                    best_acc = max(best_acc, test["acc"])
                    logger.log({"train_loss": train_loss, "test_acc": test["acc"], "test_acc_top5": test["acc_top5"],
                                "test_loss": test["loss"], "lr": lr}, step=epoch)
                    print(f"epoch {epoch:4d} | lr {lr:.4g} | train_loss {train_loss:.4f} | test_acc {test['acc']:6.2f} | "
                          f"{elapsed_before + clock.elapsed():.1f}s", flush=True)
                    state = self._checkpoint(model, optimizer, epoch, test["acc"])
                    if epoch % opt.save_freq == 0 and epoch != opt.epochs:
                        atomic_save(state, self.run_dir / f"ckpt_epoch_{epoch}.pth")
                    atomic_save({**state, "best_acc": best_acc, "shuffle_rng": shuffle.get_state(),
                                 "aug_rng": aug_generator.get_state(), "wandb_id": logger.wandb_id,
                                 "elapsed_s": elapsed_before + clock.elapsed()}, self.last_path)
            atomic_save(self._checkpoint(model, optimizer, opt.epochs, test["acc"]), self.final_path)
            logger.summary({"test_acc": test["acc"], "best_test_acc": best_acc})
            exit_code = 0
        finally:
            logger.close(exit_code)
        print(f"teacher {opt.model}: test acc {test['acc']:.2f}% after {opt.epochs} epochs", flush=True)
        print(f"checkpoint: {self.final_path}", flush=True)
        return self.final_path

    def _checkpoint(self, model, optimizer, epoch: int, accuracy: float) -> dict[str, Any]:
        return {"model": model.state_dict(), "epoch": epoch, "accuracy": accuracy, "optimizer": optimizer.state_dict(),
                "model_name": self.opt.model, "dataset": self.opt.dataset, **provenance(self.device)}
