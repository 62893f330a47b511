"""Checkpoints: atomic writes and safe reads.

Every file is written to a temporary name in the same folder, flushed and fsync'ed, then
renamed over the target, so a crash (even SIGKILL) never leaves a half-written checkpoint.
Every file is read with ``weights_only=True``: a checkpoint whose pickle would run code is
refused instead of executed.

Bottom layer: imports nothing from the project but ``core.errors`` and ``core.fs`` (where the atomic write lives).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import UserError
from core.fs import (  # noqa: F401 - atomic_write_bytes re-exported
    PathError,
    atomic_write_bytes,
    checked,
    is_local_error,
    kind_of,
    os_error_message,
    require_regular_file,
    show_path,
)


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.{name}.XXXX.tmp`` files that writes killed mid-way (SIGKILL, power loss) left in ``folder``.

    Called when a run starts in its folder; the complete files next to them are never touched.
    Returns the removed paths.
    """
    removed = []
    for leftover in sorted(Path(folder).glob(".*.tmp")):
        try:
            if leftover.is_file():
                leftover.unlink()
                removed.append(leftover)
        except OSError:  # another process removed it first, or no permission: harmless either way
            pass
    return removed


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically; raise :class:`UserError` on an OS failure."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with checked(path, "write", note="the previous file there is unchanged", location="--save_dir"):
        atomic_write_bytes(path, buffer.getvalue())


def atomic_write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    with checked(path, "write", note="the previous file there is unchanged", location="--save_dir"):
        atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def _looks_like_checkpoint(path: Path) -> bool:
    """True for what torch.save writes: a zip archive (``PK``) or, in the legacy format, a pickle (protocol 2+: 0x80).

    Anything else (a text file, an HTML error page) is not a checkpoint, whatever torch.load would say about it.
    """
    with checked(path, "read"), open(path, "rb") as handle:
        head = handle.read(2)
    return head[:2] == b"PK" or head[:1] == b"\x80"


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True`` and explain every way it can fail.

    Raises :class:`UserError` for a missing, truncated, non-checkpoint or code-carrying file.
    """
    path = Path(path)
    if kind_of(path) is None:
        raise UserError(f"checkpoint {show_path(path)} does not exist")
    require_regular_file(path, "checkpoint")
    if not _looks_like_checkpoint(path):
        raise UserError(f"{path} is not a PyTorch checkpoint (not a zip/pickle file); pass a file written by torch.save, "
                        "or re-download or re-train it")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except OSError as err:
        if is_local_error(err):  # the file system's refusal (permissions, an I/O error): its own sentence
            raise PathError(os_error_message(err, path, "read")) from err
        first = str(err).splitlines()[0] if str(err) else type(err).__name__  # torch's EINVAL of a cut-off zip
        raise UserError(
            f"{path} is truncated or not a PyTorch checkpoint ({first}); delete it and re-download or re-train it"
        ) from err
    except pickle.UnpicklingError as err:
        text = str(err)
        if "weights_only" in text.lower() or "unsupported global" in text.lower():
            raise UserError(
                f"refused to load {path}: its pickle asks to import or call code "
                "(refused by weights_only=True, so nothing was run); only use checkpoints from a source you trust "
                "and re-save them as plain state_dicts"
            ) from err
        raise UserError(f"{path} is not a readable checkpoint ({text.splitlines()[0]}); re-download or re-train it") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, struct.error, UnicodeDecodeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"{path} is truncated or not a PyTorch checkpoint ({first}); delete it and re-download or re-train it"
        ) from err


def extract_state_dict(checkpoint: Any, path: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the model weights from a RepDistiller-format file (``{'model': state_dict, ...}``)
    or from a bare state_dict."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise UserError(
            f"{path} holds no model weights (expected a dict with a 'model' state_dict); "
            "use a RepDistiller-format checkpoint"
        )
    # checkpoints saved from nn.DataParallel prefix every key with 'module.'
    if checkpoint and all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
    return checkpoint


def load_weights_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], arch: str, path: str | os.PathLike) -> None:
    """``load_state_dict(strict=True)`` with a one-sentence error naming missing/unexpected keys
    or the first mismatched shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_preview(unexpected)}")
        raise UserError(
            f"{path} does not hold a {arch} model ({'; '.join(parts)}); pass the checkpoint of the right "
            "architecture or set --model_t to match it"
        )
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise UserError(
                f"{path} does not hold a {arch} model ({key} has shape {tuple(state_dict[key].shape)}, "
                f"expected {tuple(tensor.shape)}); pass the checkpoint of the right architecture"
            )
        if state_dict[key].is_floating_point() != tensor.is_floating_point():
            raise UserError(
                f"{path} does not hold a {arch} model ({key} is {state_dict[key].dtype}, expected {tensor.dtype}); "
                "pass the checkpoint of the right architecture"
            )
    model.load_state_dict(state_dict, strict=True)


def _preview(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"[{shown}{more}]"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    require_regular_file(path)
    digest = hashlib.sha256()
    with checked(path, "read"), open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
