"""Run logging: W&B (never fatal), TensorBoard scalars under the run folder, and console lines.

W&B mode, in order:
- ``WANDB_MODE`` set (``online``, ``offline``, ``disabled``): honoured as is;
- no API key configured (no ``WANDB_API_KEY``, no ``api.wandb.ai`` entry in ~/.netrc): offline, said in one line;
- a key but the W&B server unreachable within 3 s: offline, said in one line (no long hang);
- W&B failing during the run: a warning, then training goes on without it; metrics still land in
  ``results.json`` and TensorBoard.

Runs are named after their method and seed (``ckd seed1``) and grouped per cell of a sweep: every
flag but the seed and the trial, so the seeds of one configuration sit together in W&B. Under
``wandb agent`` the agent's run id is used, and a configuration that already finished still reports
its stored results to the agent's run (:func:`report_finished_run`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import netrc
import socket
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from core import env, fs

if TYPE_CHECKING:
    from helper.config import StudentConfig, TeacherConfig

    RunConfig = StudentConfig | TeacherConfig

WANDB_PROBE_TIMEOUT_S = 3.0


def _say(message: str) -> None:
    print(message, flush=True)


def wandb_api_key_configured() -> bool:
    """True when W&B would find an API key (environment or ~/.netrc)."""
    if env.get("WANDB_API_KEY"):
        return True
    host = urlparse(env.get("WANDB_BASE_URL")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_server_reachable(timeout: float = WANDB_PROBE_TIMEOUT_S) -> bool:
    """Open (and close) one TCP connection to the W&B server, within ``timeout`` seconds."""
    url = urlparse(env.get("WANDB_BASE_URL"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_wandb_mode() -> str:
    """Pick online/offline/disabled as documented in the module docstring."""
    mode = env.get("WANDB_MODE")  # a value W&B does not know is refused here, in one sentence (core.env)
    if mode in ("online", "offline", "disabled"):
        return mode
    if mode == "dryrun":
        return "offline"
    if mode == "run":
        return "online"
    if not wandb_api_key_configured():
        _say("wandb: no API key configured, logging offline (sync later with `wandb sync`, or set WANDB_MODE=disabled)")
        return "offline"
    if not wandb_server_reachable():
        _say(f"wandb: server not reachable within {WANDB_PROBE_TIMEOUT_S:g} s, logging offline (sync later with `wandb sync`)")
        return "offline"
    return "online"


def under_wandb_agent() -> bool:
    """True when ``wandb agent`` started this process (it sets the sweep id and the run id it expects)."""
    return bool(env.get("WANDB_SWEEP_ID"))


def wandb_name_and_group(opt: RunConfig, job_type: str) -> tuple[str, str]:
    """A readable run name (method label and seed) and the group of its cell (every flag but seed and trial)."""
    if job_type == "teacher":
        return f"teacher {opt.model} seed{opt.seed}", f"teacher {opt.model} {opt.dataset}"
    from helper.methods import method_label
    from helper.run_folder import identity_config

    config = opt.to_dict()
    label = method_label(config)
    trial = f" trial{opt.trial}" if getattr(opt, "trial", 1) != 1 else ""
    cell = {k: v for k, v in identity_config(opt).items() if k not in ("seed", "trial", "device")}
    digest = hashlib.sha1(json.dumps(cell, sort_keys=True, default=str).encode()).hexdigest()[:8]
    group = f"{label} {opt.model_s}<-{opt.model_t} {opt.dataset} n{opt.subset_size} lr{opt.learning_rate:g} {digest}"
    return f"{label} seed{opt.seed}{trial}", group


class RunLogger:
    """Fan-out of scalars to W&B and TensorBoard, plus the run summary.

    Creates ``run_dir`` (the run's first files are written right after), unless ``tensorboard`` is off and W&B disabled.
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], opt: RunConfig, job_type: str,
                 wandb_id: str | None = None, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.wandb = None
        self.wandb_id = env.get("WANDB_RUN_ID") if under_wandb_agent() else wandb_id  # the agent's run wins
        self.tb = None
        if tensorboard:
            fs.make_folder(self.run_dir, location="--save_dir")
            self._init_tensorboard()
        self._init_wandb(config, opt, job_type)

    def _init_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))
        except Exception as err:  # TensorBoard is a convenience: never fatal
            _say(f"tensorboard: disabled ({type(err).__name__}: {err})")
            self.tb = None

    def _init_wandb(self, config: dict[str, Any], opt: RunConfig, job_type: str) -> None:
        mode = resolve_wandb_mode()
        if mode == "disabled":
            return
        # W&B writes its own log (wandb/debug*.log) through Python's logging; on a full or failing disk every record
        # would print a "--- Logging error ---" traceback after our one-line error. Its log is W&B's to lose, not ours
        # to report: logging drops such errors silently (the project itself logs nothing through logging).
        logging.raiseExceptions = False
        fs.make_folder(self.run_dir, location="--save_dir")  # W&B writes into it: a folder we cannot make is our error
        try:
            import wandb

            project = getattr(opt, "wdb_project", None) or env.get("WANDB_PROJECT")
            entity = getattr(opt, "wdb_entity", None) or env.get("WANDB_ENTITY")
            tags = [t for t in (getattr(opt, "_tags", None) or "").split(",") if t.strip()]
            if self.wandb_id is None:
                self.wandb_id = uuid.uuid4().hex[:12]
            name, group = wandb_name_and_group(opt, job_type)
            self.wandb = wandb.init(
                project=project, entity=entity, tags=tags or None, config=config, dir=str(self.run_dir),
                mode=mode, id=self.wandb_id, resume="allow", job_type=job_type, reinit="finish_previous",
                name=name, group=group,
                settings=wandb.Settings(init_timeout=30, silent=True),
            )
        except Exception as err:  # W&B must never stop a run
            _say(f"wandb: disabled for this run ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
            self.wandb = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Log scalars under the same names to TensorBoard and W&B."""
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(key, value, step)
            self.tb.flush()
        if self.wandb is not None:
            try:
                self.wandb.log(dict(metrics), step=step)
            except Exception as err:
                self._drop_wandb(err)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.wandb is not None:
            try:
                for key, value in metrics.items():
                    self.wandb.summary[key] = value
            except Exception as err:
                self._drop_wandb(err)

    def _drop_wandb(self, err: Exception) -> None:
        print(f"wandb: logging failed ({type(err).__name__}: {err}); continuing without W&B, metrics still go to "
              "results.json and TensorBoard", file=sys.stderr, flush=True)
        self.wandb = None

    def close(self, exit_code: int = 0) -> None:
        if self.tb is not None:
            try:
                self.tb.close()
            except OSError:  # its last events cannot be written (disk full): the run's own error says so
                pass
            self.tb = None
        if self.wandb is not None:
            try:
                self.wandb.finish(exit_code=exit_code, quiet=True)
            except Exception:
                pass
            self.wandb = None


def report_finished_run(run_dir: Path, results_path: Path, opt: RunConfig) -> bool:
    """Under ``wandb agent``, log the stored results of an already finished configuration to the agent's run.

    The agent waits for the run it started to report the sweep's metric; without this, a configuration
    that finished before (an earlier sweep, a local ``scripts/sweep.py``) would show up as a run with no
    result. TensorBoard and the files of the run folder are left untouched. Returns True when reported.
    """
    if not under_wandb_agent() or resolve_wandb_mode() == "disabled":
        return False
    try:
        results = json.loads(Path(results_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        _say(f"wandb: could not read {results_path} to report it ({err})")
        return False
    stored = {k: v for k, v in (results.get("config") or {}).items()
              if k in opt.to_dict() and k not in ("path_t", "save_dir")}  # where the run lived then is not where it is now
    finished_opt = dataclasses.replace(opt, **stored)  # the resolved flags of that run
    config = {**finished_opt.to_dict(), "n_train": results.get("n_train"), "n_val": results.get("n_val"),
              "subset_fingerprint": results.get("subset_fingerprint")}
    logger = RunLogger(run_dir, config, finished_opt, job_type="student", tensorboard=False)
    if logger.wandb is None:
        return False
    summary = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    logger.summary({**summary, "reused_finished_run": True})
    logger.close(0)
    _say(f"wandb: reported the stored results of {results_path} to this agent's run")
    return True
