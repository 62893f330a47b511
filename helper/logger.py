"""Run logging: W&B (never fatal), TensorBoard scalars under the run folder, and console lines.

W&B mode, in order:
- ``WANDB_MODE`` set (``online``, ``offline``, ``disabled``): honoured as is;
- no API key configured (no ``WANDB_API_KEY``, no ``api.wandb.ai`` entry in ~/.netrc): offline, said in one line;
- a key but the W&B server unreachable within 3 s: offline, said in one line (no long hang);
- W&B failing during the run: a warning, then training goes on without it; metrics still land in
  ``results.json`` and TensorBoard.
"""

from __future__ import annotations

import argparse
import netrc
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

WANDB_PROBE_TIMEOUT_S = 3.0


def _say(message: str) -> None:
    print(message, flush=True)


def wandb_api_key_configured() -> bool:
    """True when W&B would find an API key (environment or ~/.netrc)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_server_reachable(timeout: float = WANDB_PROBE_TIMEOUT_S) -> bool:
    """Open (and close) one TCP connection to the W&B server, within ``timeout`` seconds."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_wandb_mode() -> str:
    """Pick online/offline/disabled as documented in the module docstring."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("online", "offline", "disabled"):
        return mode
    if mode in ("dryrun",):
        return "offline"
    if not wandb_api_key_configured():
        _say("wandb: no API key configured, logging offline (sync later with `wandb sync`, or set WANDB_MODE=disabled)")
        return "offline"
    if not wandb_server_reachable():
        _say(f"wandb: server not reachable within {WANDB_PROBE_TIMEOUT_S:g} s, logging offline (sync later with `wandb sync`)")
        return "offline"
    return "online"


class RunLogger:
    """Fan-out of scalars to W&B and TensorBoard, plus the run summary."""

    def __init__(self, run_dir: Path, config: dict[str, Any], opt: argparse.Namespace, job_type: str,
                 wandb_id: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.wandb = None
        self.wandb_id = wandb_id
        self.tb = None
        self._init_tensorboard()
        self._init_wandb(config, opt, job_type)

    def _init_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))
        except Exception as err:  # TensorBoard is a convenience: never fatal
            _say(f"tensorboard: disabled ({type(err).__name__}: {err})")
            self.tb = None

    def _init_wandb(self, config: dict[str, Any], opt: argparse.Namespace, job_type: str) -> None:
        mode = resolve_wandb_mode()
        if mode == "disabled":
            return
        try:
            import wandb

            project = getattr(opt, "wdb_project", None) or os.environ.get("WANDB_PROJECT")
            entity = getattr(opt, "wdb_entity", None) or os.environ.get("WANDB_ENTITY")
            tags = [t for t in (getattr(opt, "_tags", None) or "").split(",") if t.strip()]
            if self.wandb_id is None:
                self.wandb_id = uuid.uuid4().hex[:12]
            self.wandb = wandb.init(
                project=project, entity=entity, tags=tags or None, config=config, dir=str(self.run_dir),
                mode=mode, id=self.wandb_id, resume="allow", job_type=job_type, reinit="finish_previous",
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
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            try:
                self.wandb.finish(exit_code=exit_code, quiet=True)
            except Exception:
                pass
            self.wandb = None
