"""The engine both trainers run on: the one training loop (:func:`train_epochs`), one optimiser step
(``train_step``), evaluation, the learning-rate setter, signal handling (``StopRequest``), provenance, progress
output and the wall clock.

What differs between teacher and student training (the data order, the loss, what happens after an epoch, what a
checkpoint holds) is handed to the loop as an :class:`EpochRun`; the loop itself (steps, per-step stop requests,
the progress bar, the per-epoch loss means, the non-finite check, the stop message) exists once.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.device import autocast
from core.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
# Evaluation sums the cross-entropy of chunks of EVAL_BATCH_SIZE images (the order of the float sums, whatever the
# forward batch); the forward batch is eval_batch_size(device): the whole chunk on accelerators, CPU_EVAL_BATCH_SIZE
# on the CPU, where convolutions run 2-3x faster on small batches (benchmarks/bench.py measures it, see
# docs/performance.md). 128, not the slightly faster 64: below 128 images the CPU's matrix products of the linear
# heads (vgg8, MobileNetV2, ShuffleV2) change the logits in the last bit, at 128 they are those of a 1024 batch.
EVAL_BATCH_SIZE = 1024
CPU_EVAL_BATCH_SIZE = 128


def eval_batch_size(device: torch.device | str) -> int:
    """The forward batch of no-grad evaluation passes on ``device``."""
    return CPU_EVAL_BATCH_SIZE if torch.device(device).type == "cpu" else EVAL_BATCH_SIZE


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_step(method: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Tensor], device: torch.device,
               amp: bool = False) -> dict[str, Tensor]:
    """One optimiser step: the method's weighted loss terms, their sum, backward, SGD.

    Returns the detached terms plus ``train_loss``, still on the device (no host sync).
    """
    with autocast(device, amp):
        terms = method(batch)
    loss = torch.stack([t.float() for t in terms.values()]).sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {**{k: v.detach() for k, v in terms.items()}, "train_loss": loss.detach()}


@torch.no_grad()
def evaluate(model: nn.Module, images: Tensor, labels: Tensor, normalize: Callable[[Tensor], Tensor],
             batch_size: int | None = None, amp: bool = False, channels_last: bool = False) -> dict[str, float]:
    """Top-1/top-5 accuracy (%) and mean cross-entropy of ``model`` in eval mode.

    ``images`` are uint8 on the model's device; evaluation runs under no-grad in forward batches of ``batch_size``
    (default :func:`eval_batch_size` of the device), sums the loss per chunk of ``EVAL_BATCH_SIZE`` images whatever
    the forward batch, and synchronises with the host once, at the end.
    """
    was_training = model.training
    model.eval()
    device = images.device
    forward_batch = min(int(batch_size or eval_batch_size(device)), EVAL_BATCH_SIZE)
    correct1 = torch.zeros((), device=device)
    correct5 = torch.zeros((), device=device)
    loss_sum = torch.zeros((), device=device)
    for start in range(0, images.shape[0], EVAL_BATCH_SIZE):
        chunk = images[start:start + EVAL_BATCH_SIZE]
        parts = []
        for sub in range(0, chunk.shape[0], forward_batch):
            x = normalize(chunk[sub:sub + forward_batch])
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                parts.append(model(x).float())
        logits = parts[0] if len(parts) == 1 else torch.cat(parts)
        y = labels[start:start + EVAL_BATCH_SIZE]
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top.eq(y[:, None])
        correct1 += hits[:, 0].sum()
        correct5 += hits.any(dim=1).sum()
    model.train(was_training)
    n = max(int(images.shape[0]), 1)
    stats = torch.stack([correct1, correct5, loss_sum]).tolist()
    return {"acc": 100.0 * stats[0] / n, "acc_top5": 100.0 * stats[1] / n, "loss": stats[2] / n}


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite: nothing is reported as a result, and the run (or teacher) folder is marked failed
    (``helper.run_setup.mark_failed``), since the same flags diverge the same way."""


class StepInterrupted(BaseException):
    """A stop request that arrived while the next batch was drawn (:meth:`StopRequest.interruptible`): the run's state
    is that of the last finished step, so the loop saves it and exits."""


class StopRequest:
    """SIGINT/SIGTERM for a whole run, honoured within seconds wherever the run is, and never by cutting a write in half.

    Installed (:meth:`installed`) for the whole run, from before its data is loaded to its results. Where the run
    only computes (loading and preparing data, building the teacher cache, the init stage, evaluating), a signal stops
    the process at once: one line on stderr naming the phase (:attr:`phase`), exit code 128 + the signal number, no
    traceback (a ``SystemExit``). Inside :meth:`deferred` blocks (the training steps, checkpoint and result writes) the
    signal only sets :attr:`signum`: the training loop finishes the step in flight, saves ``last.pth`` and exits; any
    other deferred block exits as soon as it ends. A second signal while stopping ends the process at once with one line
    and exit code 128 + its number (a checkpoint write in flight leaves only a temporary file, removed next time)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.phase = "start-up"
        self.after_stop = "the same command starts the run again"  # what a stop outside the training steps leaves
        self._previous: dict[int, Any] = {}
        self._deferred = 0
        self._interruptible = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # a second signal: give up waiting for the step to finish, in one line
            print(f"received {signal.Signals(signum).name} again: stopping now without saving; the same command resumes "
                  "from the last checkpoint written", file=sys.stderr, flush=True)
            raise SystemExit(128 + int(signum))
        self.signum = signum
        if self._interruptible:
            print(f"\nreceived {signal.Signals(signum).name}: saving a checkpoint", file=sys.stderr, flush=True)
            raise StepInterrupted
        if self._deferred:
            print(f"\nreceived {signal.Signals(signum).name}: finishing this step, then saving a checkpoint",
                  file=sys.stderr, flush=True)
            return
        self.stop_now()

    def stop_now(self) -> None:
        """Exit at once for the signal received (one line, exit code 128 + its number)."""
        print(f"received {signal.Signals(self.signum or signal.SIGINT).name} during {self.phase}: stopped; "
              f"{self.after_stop}", file=sys.stderr, flush=True)
        raise SystemExit(self.exit_code())

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextlib.contextmanager
    def deferred(self, stop_after: bool = True) -> Iterator[None]:
        """A block a signal never interrupts (a write, a training step): the signal is noted and, with ``stop_after``,
        honoured when the block ends; without it the caller checks :attr:`requested` itself (the training loop)."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1
        if stop_after and self._deferred == 0 and self.requested:
            self.stop_now()

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Inside a deferred block, a stretch a signal may cut short with :class:`StepInterrupted` (drawing the next
        batch, which may build a whole sampler pass: the draw undoes itself, see :meth:`EpochRun.next_batch`)."""
        self._interruptible = True
        try:
            if self.requested:
                raise StepInterrupted
            yield
        finally:
            self._interruptible = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopRequest]:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous.clear()

    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGINT)


def draw_batch(sampler: Any, stop: StopRequest) -> dict[str, Tensor]:
    """``sampler.next_batch()`` under :meth:`StopRequest.interruptible` (a whole sampler pass may be drawn there): a stop
    request that arrives meanwhile restores the sampler's state, so the data order stays where the last step left it
    (the loop saves that), and raises :class:`StepInterrupted`."""
    state = sampler.state_dict()
    try:
        with stop.interruptible():
            return sampler.next_batch()
    except StepInterrupted:
        sampler.load_state_dict(state)
        raise


def git_commit() -> str:
    """The commit of the code that ran (``-dirty`` when the work tree has uncommitted changes)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        if not commit:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(device: torch.device) -> dict[str, str]:
    """What produced a number: code commit, torch version, device name."""
    name = str(device)
    if device.type == "cuda":
        name = f"{device} ({torch.cuda.get_device_name(device)})"
    return {"git_commit": git_commit(), "torch_version": str(torch.__version__), "device": name}


class Progress:
    """A tqdm bar per pseudo-epoch on a terminal; nothing per step otherwise (the loop prints a line per epoch)."""

    def __init__(self, total: int, desc: str, initial: int = 0) -> None:
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


@dataclass
class LoopState:
    """Where the loop stands: the resumable counters every checkpoint holds (``epochs_done`` full epochs, then
    ``step_in_epoch`` steps of the next one)."""

    epochs_done: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    finished: bool = False
    elapsed_s: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if key in self.__dataclass_fields__:
                setattr(self, key, value)


class EpochRun(Protocol):
    """What a trainer hands to :func:`train_epochs`."""

    loop: LoopState
    steps_per_epoch: int
    accum: dict[str, Tensor]

    def begin_epoch(self) -> None:
        """Set up the coming (or resumed) epoch: train mode, learning rate, the 1-based epoch of the method."""

    def next_batch(self) -> dict[str, Tensor]:
        """The next batch of the data order (resumable), drawn inside ``StopRequest.interruptible``: a draw cut short
        by a stop request raises :class:`StepInterrupted` with the data order where it was (the loop then saves it)."""

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One optimiser step; the detached loss terms and ``train_loss``, on the device."""

    def non_finite(self, terms: dict[str, Tensor]) -> Exception:
        """The error to raise when the loss became non-finite (``terms``: the step's, or the epoch's means)."""

    def end_epoch(self, train_terms: dict[str, float]) -> bool:
        """Evaluate, log, checkpoint after a full epoch (``loop.epochs_done`` already counts it); True when done."""

    def save_last(self) -> None:
        """Write the resumable checkpoint (``last.pth``)."""

    @property
    def last_path(self) -> Path: ...


def require_resumable(ckpt: Any, path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """``ckpt`` if it holds every key a resume reads; otherwise one sentence saying the file cannot be resumed (a
    ``last.pth`` written by an earlier version of this code, or not by a trainer at all)."""
    missing = [k for k in keys if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f"{path} cannot be resumed: it lacks {', '.join(missing)} (written by an earlier version of this "
                        f"code?); delete it to train from the start")
    return ckpt


def accumulate(accum: dict[str, Tensor], step_terms: dict[str, Tensor], device: torch.device) -> None:
    """Add one step's loss terms to the per-epoch sums, on the device (no host sync)."""
    for key, value in step_terms.items():
        accum[key] = accum.get(key, torch.zeros((), device=device)) + value.float()


def train_epochs(run: EpochRun, stop: StopRequest, device: torch.device) -> None:
    """The training loop of every run: epochs of ``run.steps_per_epoch`` steps until ``run.end_epoch`` says done.

    A stop request (SIGINT/SIGTERM) is honoured after the step in flight: the run's resumable checkpoint is written
    and the process exits with 128 + the signal number; the same command resumes at that step, bit for bit. Off CUDA
    the loss is checked after every step, on CUDA once per epoch (a per-step check would sync the host every step).
    """
    loop = run.loop
    check_every_step = device.type != "cuda"
    while not loop.finished:
        stop.phase = "training"
        run.begin_epoch()
        progress = Progress(run.steps_per_epoch, f"epoch {loop.epochs_done + 1}", loop.step_in_epoch)
        try:
            with stop.deferred(stop_after=False):
                while loop.step_in_epoch < run.steps_per_epoch and not stop.requested:
                    try:
                        batch = run.next_batch()
                    except StepInterrupted:
                        break  # the sampler is back where the last step left it
                    terms = run.train_step(batch)
                    loop.global_step += 1
                    loop.step_in_epoch += 1
                    accumulate(run.accum, terms, device)
                    if check_every_step and not bool(torch.isfinite(terms["train_loss"]).item()):
                        raise run.non_finite(terms)
                    progress.update()
                if stop.requested:  # after the step in flight (or at the epoch's end: resumed, it evaluates first)
                    run.save_last()
                    print(f"stopped: saved {run.last_path}; resume with the same command (or add --resume)", flush=True)
                    raise SystemExit(stop.exit_code())
        finally:
            progress.close()
        n_steps = max(loop.step_in_epoch, 1)
        if not check_every_step and not bool(torch.isfinite(run.accum["train_loss"]).item()):
            raise run.non_finite({k: v / n_steps for k, v in run.accum.items()})
        train_terms = {k: v.item() / n_steps for k, v in run.accum.items()}
        run.accum.clear()
        loop.step_in_epoch = 0
        loop.epochs_done += 1
        stop.phase, stop.after_stop = "evaluation", f"the same command resumes from {run.last_path}" \
            if run.last_path.is_file() else "the same command starts the run again"
        loop.finished = run.end_epoch(train_terms)
