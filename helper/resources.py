"""Refuse, before the teacher is queried, a run that cannot fit: its memory on the device and its files on disk.

An estimate is a list of named parts (bytes), each with the flag that shrinks it. The estimates are deliberately
conservative (every transient copy counted, no-grad forwards sized by their largest layer output times four), but
small against what the published runs need: the digits demo, CIFAR-100 subsets of 2000-6000 images and the full
CIFAR-100 training set fit a 24 GB machine (``tests/test_resources.py``).

What a device has: the CPU's ``MemAvailable`` (``/proc/meminfo``, else ``psutil`` when installed), a CUDA device's
free memory (``torch.cuda.mem_get_info``); unknown (no check) elsewhere. The disk: ``shutil.disk_usage`` of the run
folder's nearest existing parent.

Imports no distillation code (teacher training uses it too).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from core.errors import UserError

GIB = 1024**3
LOG_BYTES = 64 * 1024**2  # TensorBoard / W&B files, results.json, config.json: a generous bound


@dataclass
class Estimate:
    """Bytes a run needs, by part: ``device`` (memory of the run device), ``host`` (CPU memory besides, CUDA runs
    only), ``disk`` (new files in the run folder). Each part is ``(what, bytes, flag to change)``."""

    device: list[tuple[str, int, str]] = field(default_factory=list)
    host: list[tuple[str, int, str]] = field(default_factory=list)
    disk: list[tuple[str, int, str]] = field(default_factory=list)

    @staticmethod
    def total(parts: Sequence[tuple[str, int, str]]) -> int:
        return int(sum(size for _, size, _ in parts))


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def available_memory(device: torch.device) -> int | None:
    """Bytes the run may still allocate on ``device`` (None: unknown, no check)."""
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(free)
        except (RuntimeError, AssertionError):
            return None
    if device.type == "cpu":
        return available_host_memory()
    return None


def available_host_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # type: ignore[import-untyped]

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def free_disk(folder: Path) -> int | None:
    """Free bytes on the file system that ``folder`` (or its nearest existing parent) lives on."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        return int(shutil.disk_usage(existing).free)
    except OSError:
        return None


def _describe(parts: Sequence[tuple[str, int, str]]) -> tuple[str, str]:
    ranked = sorted(parts, key=lambda p: -p[1])
    shown = ", ".join(f"{what} {human(size)}" for what, size, _ in ranked[:3] if size > 0)
    return shown, ranked[0][2]


def check_fits(estimate: Estimate, device: torch.device, run_dir: Path) -> None:
    """Raise UserError (one sentence: the estimate, what is there, the flag to change) when a part does not fit."""
    checks = [(estimate.device, available_memory(device), f"{device.type.upper()} memory", "available")]
    if estimate.host:
        checks.append((estimate.host, available_host_memory(), "CPU memory", "available"))
    checks.append((estimate.disk, free_disk(run_dir), f"disk under {run_dir}", "free"))
    for parts, have, where, adjective in checks:
        need = Estimate.total(parts)
        if have is None or not parts or need <= have:
            continue
        shown, flag = _describe(parts)
        raise UserError(f"this run needs about {human(need)} of {where} ({shown}) but only {human(have)} is {adjective}; "
                        f"change {flag}, nothing was run")


@dataclass
class ModelFootprint:
    """Per-image activation bytes of a model (float32): all leaf-module outputs (what a training step keeps for the
    backward) and the largest one (what bounds a no-grad forward), plus its parameter bytes."""

    activations: int
    largest: int
    parameters: int


def model_footprint(model: nn.Module, image_shape: Sequence[int]) -> ModelFootprint:
    """Measured with one eval-mode, no-grad forward of one blank image on the CPU (``model`` must be on the CPU)."""
    sizes: list[int] = []

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *image_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return ModelFootprint(activations=4 * sum(sizes), largest=4 * max(sizes, default=0), parameters=4 * params)
