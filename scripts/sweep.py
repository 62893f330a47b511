#!/usr/bin/env python3
"""Run a W&B sweep file on this machine, without a W&B server.

    python scripts/sweep.py ckd.yml --dry-run | wc -l        # 432 commands, nothing launched
    python scripts/sweep.py ckd.yml                           # one run after another, default device
    python scripts/sweep.py ckd.yml --gpus 0,1                # one run per GPU at a time
    python scripts/sweep.py ckd.yml --gpus 0,0,1,1            # two runs per GPU at a time
    python scripts/sweep.py ckd.yml -- --epochs 5 --wdb_project test   # flags appended to every run

The grid is expanded in the order a W&B agent receives it: parameters sorted by name, the
Cartesian product over their ``values`` with the last name varying fastest, duplicate values
dropped. ``method: random`` draws ``--count`` runs (seeded by ``--seed``). Every run becomes
``PYTHON PROGRAM --name=value ...`` (W&B agent style; ``None`` written as ``None``).

Flags after ``--`` are appended to every run (after the sweep's, so they win). Before anything
is launched every run is checked with train_student.py's own parser, so a
misspelt flag or a value outside a flag's choices stops the sweep with one sentence (exit 2).
A run whose ``results.json`` already exists in its run folder is skipped (``--dry-run`` marks
it ``# finished``), so an interrupted sweep restarts where it stopped. A failing run does not stop the sweep; the exit code is 1
when any run failed.
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
import concurrent.futures
import json
import math
import os
import queue
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from core import fs
from core.errors import UserError, run_main
from helper.config import student_config_from
from helper.options import build_student_parser, flag_value_message
from helper.run_folder import student_run_dir

ROOT = Path(__file__).resolve().parents[1]

SUPPORTED_METHODS = ("grid", "random")
# flags that sweep.py sets itself from its own options. --gpus does not add --device: each child sees one GPU
# through CUDA_VISIBLE_DEVICES and the default --device auto picks it, so a run's folder (and its
# results.json, which restarts look for) is the same whether a local sweep or a W&B agent started it.
OWN_FLAGS = ("save_dir",)


if TYPE_CHECKING:
    from helper.config import StudentConfig


@dataclass
class Run:
    """One expanded run of the sweep."""

    index: int  # 1-based position in the sweep
    config: dict[str, Any]  # parameter name -> value, names sorted
    args: list[str]  # --name=value, as an agent passes them, then the extra flags given after --
    run_dir: Path  # where train_student.py writes results.json
    opt: StudentConfig  # the run's configuration, as train_student.py builds it from args

    @property
    def finished(self) -> bool:
        return (self.run_dir / "results.json").is_file()


# ---------------------------------------------------------------- sweep file

# the keys of a sweep file (W&B's sweep configuration schema: additional keys are refused there too)
TOP_LEVEL_KEYS = ("apiVersion", "command", "controller", "description", "early_terminate", "entity", "image_uri", "job",
                  "kind", "method", "metric", "metrics", "name", "parameters", "program", "project", "run_cap", "scheduler")
# the keys each distribution takes besides `distribution` (W&B's schema), the required ones first
DISTRIBUTION_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "constant": (("value",), ()),
    "categorical": (("values",), ()),
    "categorical_w_probabilities": (("values", "probabilities"), ()),
    "int_uniform": (("min", "max"), ()),
    "uniform": (("min", "max"), ()),
    "q_uniform": (("min", "max"), ("q",)),
    "log_uniform": (("min", "max"), ()),
    "q_log_uniform": (("min", "max"), ("q",)),
    "log_uniform_values": (("min", "max"), ()),
    "q_log_uniform_values": (("min", "max"), ("q",)),
    "inv_log_uniform": (("min", "max"), ()),
    "inv_log_uniform_values": (("min", "max"), ()),
    "normal": ((), ("mu", "sigma")),
    "q_normal": ((), ("mu", "sigma", "q")),
    "log_normal": ((), ("mu", "sigma")),
    "q_log_normal": ((), ("mu", "sigma", "q")),
    "beta": ((), ("a", "b")),
    "q_beta": ((), ("a", "b", "q")),
}
RANDOM_DISTRIBUTIONS = tuple(DISTRIBUTION_KEYS)
MAX_RUNS = 100_000  # the most runs a local sweep expands (the published files hold at most 1,080)
MAX_SWEEP_BYTES = 1 << 20  # the file is read whole before it is parsed
MAX_YAML_NODES = 100_000  # YAML nodes a sweep file may hold once its aliases are expanded (the published files: < 200)
MAX_EXP = 709.0  # math.exp overflows a float above this (log_uniform's min and max are natural logs)
PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


class _SweepLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden, as YAML intends
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise UserError(f"line {key_node.start_mark.line + 1}: key '{key}' appears twice in one mapping "
                                    f"(first on line {seen[key]}); YAML would keep only the last, so remove one")
                seen[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: the constructor below names it
                pass
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, memo: dict[int, float], active: set[int]) -> float:
    """Nodes in ``node`` with every alias written out (an alias shares its anchor's node: counted each time it is used)."""
    if id(node) in memo:
        return memo[id(node)]
    if id(node) in active:
        return math.inf  # an alias inside its own anchor: expands without end
    active.add(id(node))
    size = 1.0
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo, active) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo, active) + _expanded_size(v, memo, active) for k, v in node.value)
    active.discard(id(node))
    memo[id(node)] = size
    return size


def _parse_yaml(text: str, path: Path) -> Any:
    """The YAML document of a sweep file: one document, no key twice, aliases that expand to a bounded size."""
    loader = _SweepLoader(text)
    try:
        try:
            node = loader.get_single_node()
            if node is not None:
                size = _expanded_size(node, {}, set())
                if size > MAX_YAML_NODES:
                    raise UserError(f"{path} expands to {'endless' if math.isinf(size) else f'{size:,.0f}'} YAML nodes "
                                    f"through its aliases (*name), more than the {MAX_YAML_NODES:,} a sweep file may hold; "
                                    "write the values out without aliases")
            return None if node is None else loader.construct_document(node)
        except UserError as err:
            if str(err).startswith("line "):
                raise UserError(f"{path} {err}") from None
            raise
        except RecursionError:
            raise UserError(f"{path} is nested too deeply to be a sweep file; fix the file") from None
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as err:  # a date such as 2020-13-45: ValueError
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise UserError(f"{path} is not valid YAML ({first}{where}); fix the file") from err
    finally:
        loader.dispose()


def load_sweep(path: Path) -> dict[str, Any]:
    """Read a sweep file and check everything but its parameters (raises UserError); see check_parameters."""
    if path.is_dir():
        raise UserError(f"sweep file {path} is a directory, not a file; pass one of the *.yml files at the repository root")
    if not path.exists():
        raise UserError(f"sweep file {path} does not exist; pass one of the *.yml files at the repository root")
    if not path.is_file():  # a FIFO or a device would be read without end
        raise UserError(f"sweep file {path} is not a regular file; pass one of the *.yml files at the repository root")
    try:
        if path.stat().st_size > MAX_SWEEP_BYTES:
            raise UserError(f"sweep file {path} holds {path.stat().st_size:,} bytes, more than the {MAX_SWEEP_BYTES:,} a "
                            "sweep file may (the published ones hold about 1,500); pass the sweep file itself")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8 YAML") from err
    except OSError as err:
        raise UserError(fs.os_error_message(err, path, "read the sweep file")) from err
    sweep = _parse_yaml(text, path)
    if not isinstance(sweep, dict):
        raise UserError(f"{path} is not a W&B sweep configuration (expected a mapping with 'method' and 'parameters')")
    unknown = [str(key) for key in sweep if key not in TOP_LEVEL_KEYS]
    if unknown:
        raise UserError(f"{path} has the key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}, which W&B sweep files "
                        f"do not have; remove or rename {'them' if len(unknown) > 1 else 'it'} (the keys are "
                        f"{', '.join(TOP_LEVEL_KEYS)})")
    method = sweep.get("method")
    if method not in SUPPORTED_METHODS:
        raise UserError(f"{path} has method '{method}', but local sweeps support only grid and random; "
                        "use `wandb sweep` and `wandb agent` for other methods")
    parameters = sweep.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise UserError(f"{path} has no 'parameters' mapping; list the flags of train_student.py to sweep under 'parameters'")
    _check_top_level(sweep, path.name)
    return sweep


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_top_level(sweep: dict[str, Any], source: str) -> None:
    """The keys besides method and parameters, as W&B's schema has them (a local sweep uses program and run_cap)."""
    for key in ("apiVersion", "description", "entity", "image_uri", "job", "name", "program", "project"):
        if key in sweep and not isinstance(sweep[key], str):
            raise UserError(f"{source}: '{key}' must be a string, got {sweep[key]!r}; fix it")
    if "kind" in sweep and sweep["kind"] != "sweep":
        raise UserError(f"{source}: 'kind' can only be sweep, got {sweep['kind']!r}; fix or remove it")
    command = sweep.get("command", [])
    if not isinstance(command, list) or not all(isinstance(part, str) for part in command):
        raise UserError(f"{source}: 'command' must be a list of strings such as [\"${{env}}\", \"${{interpreter}}\", "
                        "\"${program}\", \"${args}\"]; fix it")
    run_cap = sweep.get("run_cap", 1)
    if not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap < 1:
        raise UserError(f"{source}: 'run_cap' must be a whole number of 1 or more, got {run_cap!r}; fix it")
    if "metric" in sweep:
        _check_metric(sweep["metric"], f"{source}: 'metric'")
    if "metrics" in sweep:
        raise UserError(f"{source}: 'metrics' (several metrics) needs method: custom, which local sweeps do not run; "
                        "give one 'metric'")
    for key, allowed in (("controller", {"type": ("local", "cloud")}), ("scheduler", {"engine": ("optuna", "ax", "wandb")})):
        if key in sweep:
            value = sweep[key]
            (field_name, choices), = allowed.items()
            if not isinstance(value, dict) or value.get(field_name) not in choices:
                raise UserError(f"{source}: '{key}' must be a mapping with {field_name}: one of {', '.join(choices)}; fix it")
    if "early_terminate" in sweep:
        _check_early_terminate(sweep["early_terminate"], source)


def _check_metric(metric: Any, where: str) -> None:
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        raise UserError(f"{where} must be a mapping with a 'name', such as {{name: best_val_acc, goal: maximize}}; fix it")
    extra = [str(k) for k in metric if k not in ("name", "goal", "target", "impute", "impute_while_running")]
    if extra:
        raise UserError(f"{where} has the unknown key {extra[0]}; its keys are name, goal, target, impute, impute_while_running")
    for key, choices in (("goal", ("minimize", "maximize")), ("impute", ("latest", "best", "worst")),
                         ("impute_while_running", ("latest", "best", "worst", "false"))):
        if key in metric and metric[key] not in choices:
            raise UserError(f"{where} has {key} {metric[key]!r}; use one of {', '.join(choices)}")
    if "target" in metric and not (_is_number(metric["target"]) and math.isfinite(metric["target"])):
        raise UserError(f"{where} has target {metric['target']!r}; give a finite number")


def _check_early_terminate(rule: Any, source: str) -> None:
    where = f"{source}: 'early_terminate'"
    if not isinstance(rule, dict) or rule.get("type") != "hyperband":
        raise UserError(f"{where} must be a mapping with type: hyperband; fix it")
    extra = [str(k) for k in rule if k not in ("type", "max_iter", "min_iter", "s", "eta", "strict")]
    if extra:
        raise UserError(f"{where} has the unknown key {extra[0]}; its keys are type, max_iter, min_iter, s, eta, strict")
    whole = {k: rule[k] for k in ("max_iter", "min_iter") if k in rule}
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in whole.values()):
        raise UserError(f"{where}: max_iter and min_iter must be whole numbers of 1 or more; fix them")
    if "min_iter" not in rule and not ("max_iter" in rule and "s" in rule):
        raise UserError(f"{where} needs min_iter, or max_iter and s; add them")
    if "s" in rule and not (_is_number(rule["s"]) and math.isfinite(rule["s"])):
        raise UserError(f"{where}: s must be a finite number, got {rule['s']!r}")
    if "eta" in rule and not (_is_number(rule["eta"]) and math.isfinite(rule["eta"]) and rule["eta"] > 1):
        raise UserError(f"{where}: eta must be a number above 1, got {rule['eta']!r}")
    if "strict" in rule and not isinstance(rule["strict"], bool):
        raise UserError(f"{where}: strict must be true or false, got {rule['strict']!r}")


def _distribution(name: str, spec: Any, source: str) -> str:
    """The distribution of one parameter, inferred the way W&B does when not given, with every key checked."""
    where = f"{source}: parameter '{name}'"
    if not isinstance(spec, dict):
        raise UserError(f"{where} must be a mapping such as {{value: X}} or {{values: [X, Y]}}")
    if "parameters" in spec:
        raise UserError(f"{where} is nested, which train_student.py flags never are; give it value or values")
    if "distribution" in spec:
        dist = spec["distribution"]
    elif "value" in spec:
        dist = "constant"
    elif "values" in spec:
        dist = "categorical_w_probabilities" if "probabilities" in spec else "categorical"
    elif "min" in spec and "max" in spec:
        dist = "int_uniform" if all(isinstance(spec[k], int) and not isinstance(spec[k], bool) for k in ("min", "max")) \
            else "uniform"
    else:
        raise UserError(f"{where} has neither value, values nor min/max; give it one of them")
    if not isinstance(dist, str) or dist not in DISTRIBUTION_KEYS:
        raise UserError(f"{where} has unknown distribution '{dist}'; use one of {', '.join(RANDOM_DISTRIBUTIONS)}")
    required, optional = DISTRIBUTION_KEYS[dist]
    missing = [key for key in required if key not in spec]
    if missing:
        raise UserError(f"{where} ({dist}) needs {' and '.join(missing)}; add {'them' if len(missing) > 1 else 'it'}")
    extra = [str(key) for key in spec if key not in (*required, *optional, "distribution")]
    if extra:
        takes = ", ".join((*required, *optional)) or "no other key"
        hint = " (probabilities go with distribution: categorical_w_probabilities)" if extra == ["probabilities"] else ""
        raise UserError(f"{where} ({dist}) does not take {', '.join(extra)}{hint}; it takes {takes}")
    if dist == "constant":
        _check_flag_value(spec["value"], where)
    if dist.startswith("categorical"):
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise UserError(f"{where} needs a non-empty list under 'values' (an empty one makes a sweep of zero runs)")
        for value in values:
            _check_flag_value(value, where)
    if dist == "categorical_w_probabilities":
        _check_probabilities(spec["probabilities"], len(spec["values"]), where)
    for key in ("min", "max", "q", "mu", "sigma", "a", "b"):
        if key in spec and not (_is_number(spec[key]) and math.isfinite(spec[key])):
            raise UserError(f"{where} ({dist}) needs a finite number as '{key}', got {spec[key]!r}")
    if "min" in spec and not spec["min"] < spec["max"]:
        raise UserError(f"{where} has min {spec['min']} not below max {spec['max']}; swap or fix them")
    if dist == "int_uniform" and not all(isinstance(spec[k], int) for k in ("min", "max")):
        raise UserError(f"{where} (int_uniform) needs whole numbers as min and max, got {spec['min']} and {spec['max']}")
    if dist.endswith("_values") and spec["min"] <= 0:
        raise UserError(f"{where} ({dist}) needs min above 0 (its logarithm is taken), got {spec['min']}")
    if dist in ("log_uniform", "q_log_uniform") and spec["max"] > MAX_EXP:
        raise UserError(f"{where} ({dist}) takes natural logarithms as min and max, and exp({spec['max']}) is too large "
                        f"for a number; pass max {MAX_EXP:g} or less, or use {dist}_values with the values themselves")
    if dist == "inv_log_uniform" and spec["min"] < -MAX_EXP:
        raise UserError(f"{where} (inv_log_uniform) takes natural logarithms as min and max, and exp({-spec['min']}) is too "
                        f"large for a number; pass min {-MAX_EXP:g} or more, or use inv_log_uniform_values")
    if "q" in spec and spec["q"] <= 0:
        raise UserError(f"{where} ({dist}) needs a quantisation step q above 0, got {spec['q']}")
    if "sigma" in spec and spec["sigma"] < 0:
        raise UserError(f"{where} ({dist}) needs sigma of 0 or more, got {spec['sigma']}")
    for key in ("a", "b"):
        if key in spec and spec[key] <= 0:
            raise UserError(f"{where} ({dist}) needs a shape '{key}' above 0, got {spec[key]}")
    return dist


def _check_flag_value(value: Any, where: str) -> None:
    """A value a flag can take on the command line: a number, a word, true/false or null (never a list or mapping)."""
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise UserError(f"{where} has the value {value!r}, a {type(value).__name__}; a train_student.py flag takes one "
                        "number or word, so list the values one by one")


def _check_probabilities(probabilities: Any, n_values: int, where: str) -> None:
    if not isinstance(probabilities, list) or len(probabilities) != n_values:
        raise UserError(f"{where} needs a list of {n_values} probabilities, one per value; fix 'probabilities'")
    if not all(_is_number(p) and math.isfinite(p) and p >= 0 for p in probabilities):
        raise UserError(f"{where} has probabilities {probabilities}; each must be a number of 0 or more")
    if abs(math.fsum(probabilities) - 1.0) > 1e-6:
        raise UserError(f"{where} has probabilities that sum to {math.fsum(probabilities):g}, not 1; fix them")


def check_parameters(parameters: dict[str, Any], source: str) -> dict[str, str]:
    """Every parameter's name and distribution, fully checked (raises UserError): name -> distribution."""
    for name in parameters:
        if not isinstance(name, str) or not PARAMETER_NAME.fullmatch(name):
            raise UserError(f"{source}: parameter name {name!r} is not a flag name (letters, digits and _ . -, "
                            "starting with a letter or _); rename it")
    return {name: _distribution(name, parameters[name], source) for name in sorted(parameters)}


def _value_key(value: Any) -> str:
    """Identity of a grid value as W&B compares them (2.0 == 2, True != 1, dict key order ignored)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, sort_keys=True, default=repr)  # true vs 1 and "1" vs 1 stay distinct


def _unique(values: list[Any]) -> list[Any]:
    seen: set[str] = set()
    kept = []
    for value in values:
        key = _value_key(value)
        if key not in seen:
            seen.add(key)
            kept.append(value)
    return kept


def _clean_float(value: float) -> float:
    """Drop binary noise from quantised values (0.30000000000000004 -> 0.3)."""
    return float(f"{value:.12g}")


def _grid_size(name: str, spec: dict[str, Any], dist: str, source: str) -> int:
    """How many values a grid takes from one parameter, counted without listing them."""
    if dist == "constant":
        return 1
    if dist == "categorical":
        return len(_unique(spec["values"]))
    if dist == "categorical_w_probabilities":
        raise UserError(f"{source}: parameter '{name}' has probabilities, which grid search does not use; remove them")
    if dist == "int_uniform":
        return spec["max"] - spec["min"] + 1
    if dist == "q_uniform":
        steps = (spec["max"] - spec["min"]) / spec.get("q", 1.0)
        if not math.isfinite(steps):
            raise UserError(f"{source}: parameter '{name}' (q_uniform) has more values than a number can count (from "
                            f"{spec['min']} to {spec['max']} in steps of {spec.get('q', 1.0)}); raise q or narrow min and max")
        return math.ceil(steps)  # like numpy.arange: max excluded
    raise UserError(f"{source}: grid search cannot enumerate parameter '{name}' ({dist}); give it 'values' "
                    "or use method: random with --count")


def _grid_values(spec: dict[str, Any], dist: str, size: int) -> list[Any]:
    if dist == "constant":
        return [spec["value"]]
    if dist == "categorical":
        return _unique(spec["values"])
    if dist == "int_uniform":
        return list(range(spec["min"], spec["max"] + 1))
    q = spec.get("q", 1.0)  # q_uniform
    values = [spec["min"] + i * q for i in range(size)]
    return [int(v) if isinstance(q, int) and isinstance(spec["min"], int) else _clean_float(v) for v in values]


def expand_grid(parameters: dict[str, Any], source: str = "sweep") -> list[dict[str, Any]]:
    """Every run of a grid sweep, in W&B's order: names sorted, last name varying fastest. The size is counted before
    anything is listed, so a grid too large to hold is refused, not run out of memory."""
    dists = check_parameters(parameters, source)
    names = sorted(parameters)
    sizes = [_grid_size(n, parameters[n], dists[n], source) for n in names]
    total = math.prod(sizes)
    if total > MAX_RUNS:
        shape = " x ".join(f"{size:,} {name}" for name, size in zip(names, sizes) if size > 1)
        raise UserError(f"{source} is a grid of {total:,} runs ({shape}), more than the {MAX_RUNS:,} a local sweep "
                        "expands; narrow the ranges, or use method: random with --count")
    runs: list[dict[str, Any]] = [{}]
    for name, size in zip(names, sizes):
        values = _grid_values(parameters[name], dists[name], size)
        runs = [{**run, name: value} for run in runs for value in values]
    return runs


def _quantise(value: float, q: float) -> float | int:
    result = round(value / q) * q
    return int(result) if isinstance(q, int) else _clean_float(result)


def _sample(spec: dict[str, Any], dist: str, rng: random.Random) -> Any:
    q = spec.get("q", 1)
    lo, hi = spec.get("min"), spec.get("max")
    mu, sigma = spec.get("mu", 0.0), spec.get("sigma", 1.0)
    if dist == "constant":
        return spec["value"]
    if dist in ("categorical", "categorical_w_probabilities"):
        return rng.choices(spec["values"], weights=spec.get("probabilities"))[0]
    if dist == "int_uniform":
        return rng.randint(int(lo), int(hi))
    if dist in ("uniform", "q_uniform"):
        value = rng.uniform(lo, hi)
        return _quantise(value, q) if dist == "q_uniform" else value
    if dist in ("log_uniform", "q_log_uniform"):  # min and max are natural logs
        value = math.exp(rng.uniform(lo, hi))
        return _quantise(value, q) if dist.startswith("q_") else value
    if dist in ("log_uniform_values", "q_log_uniform_values"):  # min and max are the values themselves
        value = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        return _quantise(value, q) if dist.startswith("q_") else value
    if dist == "inv_log_uniform":
        return math.exp(-rng.uniform(lo, hi))
    if dist == "inv_log_uniform_values":
        return 1.0 / math.exp(rng.uniform(math.log(1.0 / hi), math.log(1.0 / lo)))
    if dist in ("normal", "q_normal"):
        value = rng.gauss(mu, sigma)
        return _quantise(value, q) if dist == "q_normal" else value
    if dist in ("log_normal", "q_log_normal"):
        value = math.exp(rng.gauss(mu, sigma))
        return _quantise(value, q) if dist == "q_log_normal" else value
    if dist in ("beta", "q_beta"):
        value = rng.betavariate(spec.get("a", 1.0), spec.get("b", 1.0))
        return _quantise(value, q) if dist == "q_beta" else value
    raise AssertionError(dist)


def sample_random(parameters: dict[str, Any], count: int, seed: int, source: str = "sweep") -> list[dict[str, Any]]:
    """``count`` runs drawn independently from each parameter's distribution (seeded)."""
    if count > MAX_RUNS:
        raise UserError(f"{source}: {count:,} runs (--count or run_cap) is more than the {MAX_RUNS:,} a local sweep draws; "
                        "pass a smaller --count")
    dists = check_parameters(parameters, source)
    rng = random.Random(seed)
    configs = []
    for _ in range(count):
        config = {}
        for name, dist in dists.items():
            try:
                config[name] = _sample(parameters[name], dist, rng)
            except (OverflowError, ValueError) as err:  # e.g. exp() of a large log_normal draw
                raise UserError(f"{source}: parameter '{name}' ({dist}) drew a value no number can hold ({err}); "
                                "narrow its range (mu, sigma, min, max or q)") from err
        configs.append(config)
    return configs


def format_value(value: Any) -> str:
    """A value as a W&B agent writes it on the command line (Python's str: None, True, 0.05)."""
    return str(value)


def to_args(config: dict[str, Any]) -> list[str]:
    return [f"--{name}={format_value(value)}" for name, value in config.items()]


# ---------------------------------------------------------------- validation


def _raising_parser() -> argparse.ArgumentParser:
    parser = build_student_parser()

    def error(message: str) -> Any:
        raise UserError(flag_value_message(message) or message)

    parser.error = error  # type: ignore[method-assign]
    return parser


def check_flag_names(parameters: dict[str, Any], source: str) -> None:
    """Every parameter must be a train_student.py flag, spelt out in full."""
    known = {action.dest for action in build_student_parser()._actions if action.option_strings and action.dest != "help"}
    for name in parameters:
        if name not in known:
            raise UserError(f"{source}: parameter '{name}' is not a flag of train_student.py; rename or remove it "
                            "(`python train_student.py --help` lists the flags, spelt out in full)")


def build_runs(configs: list[dict[str, Any]], source: str, extra: list[str] | None = None) -> list[Run]:
    """Parse every run (its flags, then ``extra``) with train_student.py's parser (raises UserError before anything runs)."""
    parser = _raising_parser()
    runs = []
    for index, config in enumerate(configs, start=1):
        args = to_args(config) + list(extra or [])
        try:
            opt = student_config_from(parser.parse_args(args))  # every check of train_student.py, pairs included
        except UserError as err:
            raise UserError(f"{source}, run {index} of {len(configs)}: {err}; fix that value in the sweep file") from err
        runs.append(Run(index=index, config=config, args=args, run_dir=student_run_dir(opt), opt=opt))
    return runs


# ---------------------------------------------------------------- preflight

# the CIFAR-100 teachers scripts/fetch_pretrained_teachers.sh fetches (RepDistiller's published six)
FETCHABLE_TEACHERS = ("wrn_40_2", "resnet56", "resnet110", "resnet32x4", "vgg13", "ResNet50")


@dataclass
class Preflight:
    """What a sweep checked before its first run: problems (one sentence per kind), what was found good, and the
    CIFAR-100 folders to download once before any run starts."""

    problems: list[str]
    checked: list[str]
    downloads: list[str]


def _num_classes(dataset: str) -> int:
    from dataset.cifar100 import CIFAR100_CLASSES
    from dataset.digits import DIGITS_CLASSES
    from dataset.stanfordcars import CARS_CLASSES

    return {"cifar100": CIFAR100_CLASSES, "digits": DIGITS_CLASSES, "stanfordcars": CARS_CLASSES}[dataset]


def _teacher_path(opt: StudentConfig) -> str:
    """The checkpoint a run reads (its resolved ``--path_t``; a configuration that resolves it on demand has
    ``teacher_path``)."""
    return str(getattr(opt, "teacher_path", None) or opt.path_t)


def _names(items: list[str], limit: int = 6) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _check_teachers(runs: list[Run], report: Preflight) -> None:
    """Every run's teacher exists and loads as train_student.py loads it (weights only, strict keys and shapes, the
    architecture and the data set's number of classes), each distinct checkpoint once."""
    import torch

    from helper.student_trainer import load_teacher

    teachers: dict[tuple[str, str, str], StudentConfig] = {}
    for run in runs:
        teachers.setdefault((_teacher_path(run.opt), run.opt.model_t, run.opt.dataset), run.opt)
    missing: list[StudentConfig] = []
    loaded: list[str] = []
    for opt in teachers.values():
        if not Path(_teacher_path(opt)).is_file():
            missing.append(opt)
            continue
        try:
            load_teacher(opt, _num_classes(opt.dataset), torch.device("cpu"))
        except UserError as err:
            report.problems.append(f"the {opt.model_t} teacher does not load: {err}")
        else:
            loaded.append(opt.model_t)
    if loaded:
        report.checked.append(f"{len(loaded)} teacher{'s load' if len(loaded) > 1 else ' loads'} ({_names(loaded)})")
    if not missing:
        return
    listed = _names([f"{opt.model_t} ({_teacher_path(opt)})" for opt in missing])
    fetchable = [opt for opt in missing if opt.dataset == "cifar100" and opt.model_t in FETCHABLE_TEACHERS]
    trained = [opt for opt in missing if opt not in fetchable]
    ways = []
    if fetchable:
        save_dirs = sorted({str(opt.save_dir) for opt in fetchable})
        where = f" --save_dir {save_dirs[0]}" if len(save_dirs) == 1 and Path(save_dirs[0]) != Path("save") else ""
        names = ",".join(sorted({opt.model_t for opt in fetchable}))
        ways.append(f"fetch {'them' if len(fetchable) > 1 else 'it'} with `sh scripts/fetch_pretrained_teachers.sh "
                    f"--only {names}{where}`")
    for opt in trained:
        ways.append(f"train {opt.model_t} with `python train_teacher.py --model {opt.model_t} --dataset {opt.dataset}` "
                    "(and the same --save_dir)")
    count = f"{len(missing)} teacher{'s' if len(missing) > 1 else ''}"
    report.problems.append(f"{count} missing: {listed}; {'; '.join(ways)}")


def _check_data(runs: list[Run], report: Preflight) -> None:
    """Every data set is present; a missing CIFAR-100 is listed for one download before the first run (its folder
    must be one this user can create)."""
    from dataset.cifar100 import CIFAR100_FOLDER, cifar100_present
    from dataset.stanfordcars import META_MAT, TEST_MAT, TRAIN_MAT, cars_root
    from helper.options import check_path

    folders = sorted({(run.opt.dataset, str(run.opt.data_folder)) for run in runs})
    for dataset, folder in folders:
        if dataset == "cifar100":
            if cifar100_present(folder):
                report.checked.append(f"CIFAR-100 is in {Path(folder) / CIFAR100_FOLDER}")
                continue
            try:
                check_path("--data_folder", folder, "output")
            except UserError as err:
                report.problems.append(f"CIFAR-100 is not in {Path(folder) / CIFAR100_FOLDER} and cannot be downloaded "
                                       f"there: {err}")
                continue
            report.downloads.append(folder)
        elif dataset == "stanfordcars":
            root = cars_root(folder)
            absent = [str(name) for name in (META_MAT, TRAIN_MAT, TEST_MAT) if not (root / name).is_file()]
            if absent:
                report.problems.append(f"Stanford Cars is not in {root} (no {', '.join(absent)}); put the devkit files "
                                       "there as docs/data.md says, or pass --data_folder with the folder that holds them")
            else:
                report.checked.append(f"Stanford Cars is in {root}")


def _check_save_dirs(runs: list[Run], report: Preflight) -> None:
    """Every save folder can be written: its nearest existing folder takes a new file (created and removed at once)."""
    from helper.options import check_path

    for save_dir in sorted({str(run.opt.save_dir) for run in runs}):
        try:
            check_path("--save_dir", save_dir, "output")
            base = Path(save_dir)
            while not base.exists() and base != base.parent:
                base = base.parent
            fd, probe = tempfile.mkstemp(prefix=".sweep-preflight-", dir=base)
            os.close(fd)
            os.unlink(probe)
        except UserError as err:
            report.problems.append(str(err))
        except OSError as err:
            report.problems.append(fs.os_error_message(err, save_dir, "write to", location="--save_dir"))
        else:
            report.checked.append(f"{save_dir} is writable")


def preflight(runs: list[Run]) -> Preflight:
    """Check, before the first run, what every run of ``runs`` needs: its save folder, its teacher, its data."""
    report = Preflight(problems=[], checked=[], downloads=[])
    if runs:
        _check_save_dirs(runs, report)
        _check_teachers(runs, report)
        _check_data(runs, report)
    return report


def _download_data(folders: list[str]) -> None:
    """CIFAR-100 into each folder, once, before any run starts (the download's lock keeps concurrent sweeps to one)."""
    from core.errors import DataNotFound
    from dataset.cifar100 import download_cifar100
    from helper.options import data_not_found_message

    for folder in folders:
        print(f"preflight: downloading CIFAR-100 into {folder} once, before the first run", flush=True)
        try:
            download_cifar100(folder)
        except DataNotFound as err:
            raise UserError(data_not_found_message(err)) from err


# ---------------------------------------------------------------- launching


class Progress:
    """Thread-safe progress lines, counters and the children running now."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.ran = self.skipped = self.failed = self.stopped = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen[bytes]] = set()
        self.stopping = False  # set on Ctrl-C/SIGTERM: runs that exit now were stopped, not failed

    def say(self, run: Run, text: str) -> None:
        with self.lock:
            print(f"[{run.index}/{self.total}] {text}", flush=True)

    def done(self, run: Run, code: int, seconds: float, where: str = "", log: Path | None = None) -> None:
        with self.lock:
            prefix = f"[{run.index}/{self.total}] {where}"
            if code == 0:
                self.ran += 1
                print(f"{prefix}finished in {seconds:.1f} s: {run.run_dir}", flush=True)
            elif self.stopping:
                self.stopped += 1
                print(f"{prefix}stopped after {seconds:.1f} s; it resumes from its checkpoint when the sweep is run again",
                      flush=True)
            else:
                self.failed += 1
                self.failures.append(run.run_dir.name)
                hint = f", log: {log}" if log else ""
                print(f"{prefix}FAILED (exit code {code}) after {seconds:.1f} s{hint}", flush=True)

    def launch(self, cmd: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> int:
        """Run one child to its end and return its exit code."""
        handle = open(log, "wb") if log is not None else None  # closed below
        try:
            proc = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT if handle else None)
            with self.lock:
                self.running.add(proc)
            try:
                return proc.wait()
            finally:
                with self.lock:
                    self.running.discard(proc)
        finally:
            if handle is not None:
                handle.close()

    def wait_for_running(self) -> None:
        """After Ctrl-C (which the terminal also sent to the runs): let them save their checkpoints."""
        self.stopping = True
        with self.lock:
            procs = list(self.running)
        if procs:
            print(f"interrupted: waiting for {len(procs)} run(s) to save a checkpoint (Ctrl-C again to stop at once)", flush=True)
        for proc in procs:
            proc.wait()


def _command(python: str, program: str, run: Run) -> list[str]:
    return [python, program, *run.args]


def run_sequential(runs: list[Run], python: str, program: str, progress: Progress) -> None:
    for run in runs:
        cmd = _command(python, program, run)
        progress.say(run, f"running: {shlex.join(cmd)}")
        start = time.monotonic()
        try:
            code = progress.launch(cmd)
        except KeyboardInterrupt:
            progress.wait_for_running()
            progress.done(run, 1, time.monotonic() - start)
            raise
        progress.done(run, code, time.monotonic() - start)


def run_parallel(runs: list[Run], python: str, program: str, gpus: list[str], progress: Progress) -> None:
    """One run per GPU at a time; each child sees only its GPU (CUDA_VISIBLE_DEVICES) and writes its
    output to {save_dir}/sweep_logs/{run name}.log."""
    free: queue.Queue[str] = queue.Queue()
    for gpu in gpus:
        free.put(gpu)

    def work(run: Run) -> None:
        if progress.stopping:
            return
        gpu = free.get()
        try:
            cmd = _command(python, program, run)
            log = run.run_dir.parent.parent / "sweep_logs" / f"{run.run_dir.name}.log"  # {save_dir}/sweep_logs
            log.parent.mkdir(parents=True, exist_ok=True)
            progress.say(run, f"gpu {gpu}: running: {shlex.join(cmd)} (log: {log})")
            start = time.monotonic()
            code = progress.launch(cmd, env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu}, log=log)
            progress.done(run, code, time.monotonic() - start, where=f"gpu {gpu}: ", log=log)
        finally:
            free.put(gpu)

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(gpus))
    futures = [pool.submit(work, run) for run in runs]
    try:
        for future in concurrent.futures.as_completed(futures):
            future.result()
    except KeyboardInterrupt:
        progress.stopping = True
        pool.shutdown(wait=False, cancel_futures=True)
        progress.wait_for_running()
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)


def _terminate_on_sigterm(progress: Progress) -> Any:
    """SIGTERM (a scheduler stopping the sweep) reaches only this process: pass it on, then stop like Ctrl-C."""

    def handler(signum: int, frame: Any) -> None:
        progress.stopping = True
        with progress.lock:
            procs = list(progress.running)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        return signal.signal(signal.SIGTERM, handler)
    return None


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    from helper.options import POSITIVE_INT, SEED, OneLineParser, PathKind

    parser = OneLineParser(prog="sweep.py", usage="%(prog)s SWEEP_FILE [options] [-- EXTRA FLAGS FOR EVERY RUN]",
                           description="Run a W&B sweep file (grid or random) locally, without a W&B server. Flags after "
                                       "-- are appended to every run, e.g. -- --epochs 5 --wdb_project test.")
    parser.add_argument("sweep_file", type=Path, help="sweep configuration, e.g. ckd.yml")
    parser.add_argument("--dry-run", action="store_true", help="print one command per run and launch nothing")
    parser.add_argument("--count", type=POSITIVE_INT, default=None,
                        help="random: number of runs to draw (required); grid: launch at most this many runs")
    parser.add_argument("--seed", type=SEED, default=0, help="seed of the random search draws")
    parser.add_argument("--gpus", type=str, default=None,
                        help="comma-separated GPU ids, one slot each: 0,1 runs one run per GPU in parallel, 0,0,1,1 two per "
                             "GPU (each child sees only its GPU)")
    parser.add_argument("--save_dir", type=PathKind("output", "--save_dir"), default=None,
                        help="passed to every run as --save_dir (default: the program's)")
    parser.add_argument("--python", type=str, default=sys.executable, help="interpreter of the runs (default: this one)")
    parser.add_argument("--program", type=str, default=None,
                        help="training script (default: the sweep file's 'program', found at the repository root)")
    return parser


def _resolve_program(sweep: dict[str, Any], override: str | None, source: str) -> str:
    """The training script of every run, which must exist (also for --dry-run, whose commands name it)."""
    if override is not None:
        if not override.strip():
            raise UserError("--program is empty; name the training script (train_student.py), or leave --program out to "
                            "use the sweep file's program")
        program, named = override, f"--program {override}"
    else:
        program = sweep.get("program")
        if not isinstance(program, str) or not program:
            raise UserError(f"{source} has no 'program'; add `program: train_student.py` or pass --program")
        candidate = Path(program)
        if not candidate.is_absolute() and not candidate.exists() and (ROOT / candidate).exists():
            program = str(ROOT / candidate)
        named = f"{source}'s program {program}"
    if Path(program).is_dir():
        raise UserError(f"{named} is a directory, not a script; name the training script (train_student.py)")
    if not Path(program).is_file():
        raise UserError(f"{named} does not exist (looked in {Path.cwd()} and {ROOT}); fix the path or pass --program")
    return program


def _parse_gpus(text: str | None) -> list[str]:
    if text is None:
        return []
    gpus = [g.strip() for g in text.split(",") if g.strip()]
    if not gpus or not all(g.isdigit() for g in gpus):
        raise UserError(f"--gpus expects comma-separated GPU numbers such as 0,1 (repeat one, 0,0,1,1, to run several "
                        f"runs on it at once), got '{text}'")
    return gpus


def check_python(python: str) -> None:
    """``--python`` names an interpreter that can be started (raises UserError before anything is printed or run)."""
    found = shutil.which(python) if os.sep not in python else (python if os.path.isfile(python) else None)
    if found is None or not os.access(found, os.X_OK):
        raise UserError(f"--python {python} is not an executable interpreter; pass the path of a python, or leave "
                        "--python out to use the one running sweep.py")


def split_extra(argv: list[str]) -> tuple[list[str], list[str]]:
    """(sweep.py's own arguments, the flags after ``--`` that go to every run)."""
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def _pending(runs: list[Run], count: int | None, grid: bool) -> tuple[list[Run], list[tuple[Run, str]]]:
    """The runs to launch (at most ``count`` of a grid) and the skipped ones, each with why."""
    pending: list[Run] = []
    skipped: list[tuple[Run, str]] = []
    first_of: dict[Path, int] = {}
    for run in runs:
        if run.finished:
            skipped.append((run, f"skipped, results.json already exists: {run.run_dir}"))
        elif run.run_dir in first_of:  # e.g. values 0.1 and 0.10: one configuration, one folder, one run
            skipped.append((run, f"skipped, the same configuration as run {first_of[run.run_dir]}"))
        else:
            first_of[run.run_dir] = run.index
            pending.append(run)
    if count is not None and grid:
        pending = pending[:count]
    return pending, skipped


def _report_problems(report: Preflight, dry_run: bool) -> int:
    """One ``error:`` line per kind of problem on stderr (then, for a real sweep, that nothing was started); exit 2."""
    from core.errors import EXIT_USER_ERROR

    for problem in report.problems:
        print(f"error: preflight: {problem}", file=sys.stderr, flush=True)
    if not dry_run:
        print("error: preflight failed, so no run was started; fix the above and run the same command again",
              file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def main(argv: list[str] | None = None) -> int:
    own_argv, extra = split_extra(list(sys.argv[1:] if argv is None else argv))
    opt = build_parser().parse_args(own_argv)
    check_python(opt.python)
    if opt.save_dir is not None:
        opt.save_dir = str(opt.save_dir)
    source = opt.sweep_file.name
    sweep = load_sweep(opt.sweep_file)
    parameters: dict[str, Any] = dict(sweep["parameters"])
    gpus = _parse_gpus(opt.gpus)
    check_parameters(parameters, source)
    check_flag_names(parameters, source)
    if extra:
        try:
            _raising_parser().parse_args(extra)
        except UserError as err:
            raise UserError(f"the flags after --: {err}; fix them (`python train_student.py --help` lists the flags)") from err

    grid = sweep["method"] == "grid"
    count = opt.count if opt.count is not None else sweep.get("run_cap")  # W&B's run_cap: at most that many runs
    if grid:
        configs = expand_grid(parameters, source)
    else:
        if count is None:
            raise UserError(f"{source} is a random search, which never ends by itself; pass --count N (or give the file "
                            "a run_cap)")
        configs = sample_random(parameters, count, opt.seed, source)
    program = _resolve_program(sweep, opt.program, source)
    own = {"save_dir": opt.save_dir}
    for config in configs:
        for name in OWN_FLAGS:
            if own[name] is not None:
                config[name] = own[name]
    runs = build_runs(configs, source, extra)
    pending, skipped = _pending(runs, count, grid)
    try:
        report = preflight(pending)
    except KeyboardInterrupt:
        print("interrupted during the preflight; no run was started", file=sys.stderr, flush=True)
        return 130

    if opt.dry_run:
        shown = runs if count is None or not grid else runs[:count]
        try:
            for run in shown:
                mark = f"  # finished: {run.run_dir / 'results.json'}" if run.finished else ""
                print(shlex.join(_command(opt.python, program, run)) + mark)
            sys.stdout.flush()
        except BrokenPipeError:  # `| head`: the reader has seen enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        # the preflight goes to stderr, so that stdout stays one command per run (`--dry-run | wc -l`)
        if report.problems:
            return _report_problems(report, dry_run=True)
        for folder in report.downloads:
            print(f"preflight: CIFAR-100 is not in {folder}; the sweep downloads it there once, before its first run",
                  file=sys.stderr, flush=True)
        if report.checked:
            print(f"preflight: ok, {'; '.join(report.checked)}", file=sys.stderr, flush=True)
        return 0
    if report.problems:
        return _report_problems(report, dry_run=False)
    if report.checked:
        print(f"preflight: ok, {'; '.join(report.checked)}", flush=True)
    try:
        _download_data(report.downloads)
    except KeyboardInterrupt:
        print("interrupted while CIFAR-100 was downloaded, before the first run; nothing was started (the partial "
              "download is removed)", file=sys.stderr, flush=True)
        return 130

    progress = Progress(len(runs))
    for run, why in skipped:
        progress.skipped += 1
        progress.say(run, why)
    print(f"sweep {source}: {len(runs)} runs, {progress.skipped} already finished, {len(pending)} to run"
          + (f" on GPUs {','.join(gpus)}" if gpus else ""), flush=True)
    interrupted = False
    previous_sigterm = _terminate_on_sigterm(progress)
    try:
        if gpus:
            run_parallel(pending, opt.python, program, gpus, progress)
        else:
            run_sequential(pending, opt.python, program, progress)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    not_started = len(pending) - progress.ran - progress.failed
    print(f"sweep {source}: ran {progress.ran}, skipped {progress.skipped}, failed {progress.failed}"
          + (f", stopped {progress.stopped}, not started {not_started - progress.stopped} (interrupted; run the same "
             "command again to continue)" if interrupted else ""), flush=True)
    for name in progress.failures:
        print(f"failed: {name}", flush=True)
    if interrupted:
        return 130
    return 1 if progress.failed else 0


if __name__ == "__main__":
    sys.exit(run_main(main))
