"""Read W&B offline run folders (``offline-run-*/run-*.wandb``) without the network.

Recent wandb releases write an offline run only as a ``.wandb`` record log (LevelDB log format:
32 KiB blocks of records with a 7-byte header, each record one protobuf ``Record``), with no
``wandb-summary.json``. This reader returns the run's config, logged history rows and summary, so
tests and ``scripts/summarize.py`` can use offline runs.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FILE_HEADER = 7  # b":W&B" + magic (2 bytes) + version (1 byte)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_records(path: str | Path):
    """Yield the raw payload of every record in a ``.wandb`` file."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run log")
    pos, pending = FILE_HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pos += HEADER
        payload = data[pos:pos + length]
        pos += length
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            yield pending + payload
            pending = b""
        elif kind == 0 and length == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
        else:
            return


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(run_folder: str | Path) -> dict[str, Any]:
    """``{'config': {...}, 'history': [{...}, ...], 'summary': {...}, 'name': str, 'group': str}`` of one offline run folder."""
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(run_folder).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_folder}")
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    explicit_summary: dict[str, Any] = {}
    name = group = ""
    for payload in iter_records(files[0]):
        record = pb.Record()
        try:
            record.ParseFromString(payload)
        except Exception:  # a torn last record of a killed run
            continue
        kind = record.WhichOneof("record_type")
        if kind == "run":
            name, group = record.run.display_name or name, record.run.run_group or group
        if kind in ("config", "run"):
            updates = record.config.update if kind == "config" else record.run.config.update
            for item in updates:
                value = json.loads(item.value_json)
                config[_key(item)] = value.get("value", value) if isinstance(value, dict) else value
        elif kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            explicit_summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
    summary: dict[str, Any] = {}
    for row in history:  # W&B's summary defaults to the last logged value of each key
        summary.update({k: v for k, v in row.items() if not k.startswith("_")})
    summary.update(explicit_summary)
    return {"config": config, "history": history, "summary": summary, "name": name, "group": group}
