"""Reading back the files of a run folder: every file a run reads again (a student's last.pth, best.pth,
teacher_cache.pth and results.json; a teacher folder's config.json, last.pth and final checkpoint) is checked before
it is used — its structure, types, tensor shapes and dtypes against what this run would write — and a damaged one is
named in one sentence with what to do. Nothing is deleted or overwritten on the way: the run stops (exit 2) and the
files stay as they were.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from core import fs
from core.errors import UserError

# the problems a load of a checked structure can still raise (a value of the right type but not a usable one)
LOAD_ERRORS = (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError, OverflowError)


def _shape(tensor: Tensor) -> str:
    return "[" + ",".join(str(n) for n in tensor.shape) + "]"


def _kind(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor {_shape(value)}"
    return type(value).__name__


def tensors_mismatch(saved: Any, expected: Mapping[str, Tensor], where: str = "") -> str | None:
    """Why the state_dict ``saved`` does not fit ``expected`` (keys, shapes, dtypes), in words, or None."""
    prefix = f"{where}: " if where else ""
    if not isinstance(saved, Mapping):
        return f"{prefix}{_kind(saved)} where a state_dict belongs"
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:3])}{' and more' if len(missing) > 3 else ''}"] if missing else []) + \
                ([f"unexpected {', '.join(map(str, unexpected[:3]))}{' and more' if len(unexpected) > 3 else ''}"]
                 if unexpected else [])
        return f"{prefix}{'; '.join(parts)}"
    for key, tensor in expected.items():
        value = saved[key]
        if not isinstance(value, Tensor):
            return f"{prefix}{key} is {_kind(value)}, not a tensor"
        if value.shape != tensor.shape:
            return f"{prefix}{key}: checkpoint {_shape(value)}, model {_shape(tensor)}"
        if value.dtype != tensor.dtype:
            return f"{prefix}{key}: checkpoint {value.dtype}, model {tensor.dtype}"
    return None


def structure_mismatch(saved: Any, fresh: Any, where: str, strict_shapes: bool = False) -> str | None:
    """Why ``saved`` has another structure than ``fresh`` (what this run writes in its place): the same keys, the
    same kinds of values (numbers, booleans, strings, tensors of the same dtype, and shape with ``strict_shapes``), or
    None. A None on either side matches anything (optional values)."""
    if saved is None or fresh is None:
        return None
    if isinstance(fresh, Tensor):
        if not isinstance(saved, Tensor) or saved.dtype != fresh.dtype:
            return f"{where} is {_kind(saved)}, expected {_kind(fresh)}"
        if strict_shapes and saved.shape != fresh.shape:
            return f"{where}: checkpoint {_shape(saved)}, this run {_shape(fresh)}"
        return None
    if isinstance(fresh, Mapping):
        if not isinstance(saved, Mapping):
            return f"{where} is {_kind(saved)}, expected a dict"
        missing = [k for k in fresh if k not in saved]
        if missing:
            return f"{where} lacks {', '.join(map(str, missing[:3]))}"
        for key in fresh:
            problem = structure_mismatch(saved[key], fresh[key], f"{where}.{key}", strict_shapes)
            if problem:
                return problem
        return None
    if isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)):
            return f"{where} is {_kind(saved)}, expected a list"
        if fresh and saved:
            return next(filter(None, (structure_mismatch(item, fresh[0], f"{where}[{i}]", False)
                                      for i, item in enumerate(saved))), None)
        return None
    if isinstance(fresh, bool):
        return None if isinstance(saved, bool) else f"{where} is {_kind(saved)}, expected true or false"
    if isinstance(fresh, numbers.Number):
        ok = isinstance(saved, numbers.Number) and not isinstance(saved, bool)
        if ok and isinstance(fresh, numbers.Integral):
            ok = isinstance(saved, numbers.Integral)
        return None if ok else f"{where} is {_kind(saved)}, expected a {'whole ' if isinstance(fresh, numbers.Integral) else ''}number"
    if isinstance(fresh, str):
        return None if isinstance(saved, str) else f"{where} is {_kind(saved)}, expected a string"
    return None


def scalar_mismatch(value: Any, where: str, whole: bool = False) -> str | None:
    """Why ``value`` is not a (whole) number, or None; a one-element tensor counts (RepDistiller saves its accuracy as
    one)."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.dtype == torch.bool:
        value = value.item()
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if whole:
        ok = ok and math.isfinite(float(value)) and float(value) == int(value)
    return None if ok else f"{where} is {_kind(value)}, expected a {'whole ' if whole else ''}number"


def optimizer_mismatch(saved: Any, optimizer: torch.optim.Optimizer, where: str = "optimizer") -> str | None:
    """Why ``saved`` is not a state of ``optimizer``: its parameter groups and the shapes of its per-parameter buffers
    (SGD's momentum), or None."""
    if not isinstance(saved, Mapping) or not isinstance(saved.get("state"), Mapping) or \
            not isinstance(saved.get("param_groups"), list):
        return f"{where} is {_kind(saved)}, not an optimizer state"
    groups = optimizer.param_groups
    if len(saved["param_groups"]) != len(groups):
        return f"{where} has {len(saved['param_groups'])} parameter groups, this run {len(groups)}"
    params: dict[Any, Tensor] = {}
    for i, (stored, group) in enumerate(zip(saved["param_groups"], groups)):
        ids = stored.get("params") if isinstance(stored, Mapping) else None
        if not isinstance(ids, list) or len(ids) != len(group["params"]):
            return f"{where} group {i} holds {len(ids) if isinstance(ids, list) else 'no'} parameters, this run {len(group['params'])}"
        fresh = optimizer.state_dict()["param_groups"][i]  # the settings both know (torch versions add some)
        problem = structure_mismatch({k: v for k, v in stored.items() if k != "params"},
                                     {k: v for k, v in fresh.items() if k != "params" and k in stored}, f"{where} group {i}")
        if problem:
            return problem
        params.update(zip(ids, group["params"]))
    for index, state in saved["state"].items():
        if index not in params or not isinstance(state, Mapping):
            return f"{where} holds a state for parameter {index}, which this run does not have"
        for name, value in state.items():
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                return f"{where} {name} of parameter {index}: checkpoint {_shape(value)}, model {_shape(params[index])}"
            if isinstance(value, Tensor) and value.is_floating_point() != params[index].is_floating_point():
                return f"{where} {name} of parameter {index} is {_kind(value)}"
    return None


def damaged(path: Path, problem: str, advice: str) -> UserError:
    """The one sentence of a damaged run file: which file, what is wrong with it, what to do."""
    return UserError(f"{path} is damaged or from another run ({problem}); {advice}")


def load_run_file(path: Path, advice: str, map_location: Any = "cpu") -> Any:
    """``safe_load`` of a file of a run folder, a file that cannot be read named with ``advice`` (what to do with it)."""
    from core.checkpoint import safe_load

    try:
        return safe_load(path, map_location=map_location)
    except UserError as err:
        what = str(err).split("; ")[0]
        opening = what.find(" (")
        if opening > 0 and what.endswith(")"):  # torch's reason, to its first sentence
            what = f"{what[:opening]} ({what[opening + 2:-1].split('. ')[0].rstrip('.')})"
        raise UserError(f"{what}; {advice}") from err


def check(problems: list[str | None], path: Path, advice: str) -> None:
    """Raise :func:`damaged` with the first of ``problems`` that is not None."""
    problem = next(filter(None, problems), None)
    if problem:
        raise damaged(path, problem, advice)


def classes_of(arch: str, state: Mapping[str, Any]) -> int | None:
    """The number of classes a state_dict of architecture ``arch`` was saved with (read off its classifier), or None."""
    from models import model_dict

    with torch.random.fork_rng(devices=[]):
        ten, eleven = (model_dict[arch](num_classes=n).state_dict() for n in (10, 11))
    for key, tensor in ten.items():
        if tensor.shape != eleven[key].shape:
            value = state.get(key)
            if isinstance(value, Tensor) and value.dim() >= 1:
                return int(value.shape[0])
            return None
    return None


def model_mismatch(arch: str, state: Any, num_classes: int | None = None) -> str | None:
    """Why ``state`` is not a state_dict of ``arch`` (with ``num_classes`` classes; None: as many as it was saved
    with), or None."""
    from models import model_dict

    if not isinstance(state, Mapping):
        return f"{_kind(state)} where the {arch} weights belong"
    num_classes = num_classes or classes_of(arch, state) or 10
    with torch.random.fork_rng(devices=[]):
        expected = model_dict[arch](num_classes=num_classes).state_dict()
    problem = tensors_mismatch(state, expected)
    return f"does not fit {arch}: {problem}" if problem else None


RESULT_NUMBERS = ("test_acc", "best_val_acc")


def read_results(path: Path, run_dir: Path) -> dict[str, Any]:
    """A finished run's ``results.json``; a damaged one stops the run with one sentence (it never makes the run train
    again over its best.pth)."""
    advice = (f"the run's best.pth is kept and not trained over: restore results.json from a copy, or delete {run_dir} "
              "to train this run again")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:  # not damage: the operating system's reason, in core.fs's words
        raise UserError(fs.os_error_message(err, path, "read", note="the run's best.pth is kept and not trained over",
                                            location="--save_dir")) from err
    except (ValueError, UnicodeDecodeError) as err:
        raise damaged(path, f"not JSON: {str(err).splitlines()[0]}", advice) from err
    if not isinstance(results, dict):
        raise damaged(path, f"{_kind(results)} where an object of results belongs", advice)
    problems = [None if isinstance(results.get(key), numbers.Real) and not isinstance(results.get(key), bool)
                else f"{key} is {_kind(results.get(key))}, expected a number" for key in RESULT_NUMBERS]
    problems.append(None if isinstance(results.get("config"), dict) else f"config is {_kind(results.get('config'))}, expected an object")
    check(problems, path, advice)
    return results


def check_best(path: Path, arch: str, run_dir: Path) -> None:
    """A finished run's ``best.pth``: the RepDistiller format (``model`` weights of ``arch``, ``epoch``, ``accuracy``)."""
    advice = f"restore it from a copy, or delete {run_dir} to train this run again (results.json stays until then)"
    ckpt = load_run_file(path, advice)
    if not isinstance(ckpt, Mapping):
        raise damaged(path, f"{_kind(ckpt)} where a checkpoint belongs", advice)
    check([model_mismatch(arch, ckpt.get("model")), scalar_mismatch(ckpt.get("epoch"), "epoch", whole=True),
           scalar_mismatch(ckpt.get("accuracy"), "accuracy")], path, advice)

