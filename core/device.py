"""One place that decides which device a run uses; every tensor and module goes through it.

Bottom layer: imports nothing from the project but ``core.errors``.
"""

from __future__ import annotations

import contextlib

import torch

from core.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``--device auto|cpu|cuda|cuda:N|mps`` into a :class:`torch.device`.

    ``auto`` picks CUDA when available, else MPS, else the CPU. Asking for an accelerator
    that is not there is a user error rather than a crash deep inside a forward pass.
    """
    if name is not None and not name.strip():  # an empty --device is a mistake, not a request for auto
        raise UserError("--device is empty; pass auto, cpu, cuda, cuda:N or mps (or leave --device out: auto)")
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind not in DEVICE_CHOICES or kind == "auto" or (index and (kind != "cuda" or not index.isdigit())):
        raise UserError(f"unknown device '{name}' for --device; use one of auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} was requested but CUDA is not available; use --device cpu or auto")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UserError(f"--device {name} was requested but only {count} CUDA device{'s' if count != 1 else ''} "
                        f"{'are' if count != 1 else 'is'} visible (cuda:0 to cuda:{count - 1}); pick one of them or "
                        "use --device cuda")
    if kind == "mps" and not _mps_available():
        raise UserError(f"--device {name} was requested but MPS is not available; use --device cpu or auto")
    return torch.device(name)


def to_device(obj, device: torch.device, non_blocking: bool | None = None):
    """Move a tensor, module, or a (nested) list/tuple/dict of them to ``device``.

    Transfers are non-blocking on CUDA (pinned host memory makes them asynchronous).
    """
    if non_blocking is None:
        non_blocking = device.type == "cuda"
    if isinstance(obj, torch.nn.Module):
        return obj.to(device)
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA and CPU (where supported); a no-op context otherwise (and on MPS)."""
    if not enabled or device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def configure_backend(device: torch.device, deterministic: bool = False) -> None:
    """Speed settings for the device; deterministic mode trades speed for bit-exact reruns."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (used by timing code only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
