"""scripts/fetch_pretrained_teachers.sh end to end against a Range-capable HTTP server on 127.0.0.1.

Only the loopback server is ever contacted: TEACHER_MIRRORS replaces the mirror list and every
proxy variable is removed from the script's environment."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from models import model_dict
from tests.http_fixture import FileServer, serving

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "fetch_pretrained_teachers.sh"
NAME = "resnet56"
REL_PATH = f"{NAME}_vanilla/ckpt_epoch_240.pth"
DEAD_ARCHIVE = "http://127.0.0.1:1/cifar_teachers.tar"  # port 1: connection refused at once


def _checkpoint_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class CodeCarrying:
    """Unpickling this would run a shell command (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def good_bytes() -> bytes:
    torch.manual_seed(0)
    model = model_dict[NAME](num_classes=100)
    return _checkpoint_bytes({"model": model.state_dict(), "epoch": 240, "accuracy": 70.0})


@pytest.fixture(scope="module")
def server(good_bytes: bytes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    marker = tmp_path_factory.mktemp("evil") / "MARKER"
    wrong = model_dict["resnet20"](num_classes=100).state_dict()
    with serving({
        f"/good/{REL_PATH}": good_bytes,
        f"/truncated/{REL_PATH}": good_bytes[: len(good_bytes) * 3 // 5],
        f"/wrong/{REL_PATH}": _checkpoint_bytes({"model": wrong, "epoch": 240, "accuracy": 70.0}),
        f"/evil/{REL_PATH}": _checkpoint_bytes({"model": CodeCarrying(marker), "epoch": 240}),
    }) as httpd:
        httpd.marker = marker  # type: ignore[attr-defined]
        yield httpd


def _base(server: FileServer, folder: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{folder}"


def _fetch(mirrors: list[str], *args: str, cwd: Path | None = None, archive: str = DEAD_ARCHIVE) -> subprocess.CompletedProcess[str]:
    """Run the fetch script with only loopback sources: ``mirrors`` per file, then the release archive at ``archive``
    (refused by default). It runs from scripts/, so no ./data/cifar-100-python of a checkout starts an accuracy check."""
    assert all(m.startswith("http://127.0.0.1:") for m in [*mirrors, archive])  # loopback only, ever
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("TEACHER_")}
    env.update(TEACHER_MIRRORS=" ".join(mirrors), TEACHER_ARCHIVE_URL=archive, PYTHON=sys.executable, TEACHER_CONNECT_TIMEOUT="5",
               NO_PROXY="*", no_proxy="*")
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=cwd or SCRIPT.parent,
                          timeout=120)


def _dest(save_dir: Path) -> Path:
    return save_dir / "models" / REL_PATH


def test_fetch_verify_skip_and_fall_back(server: FileServer, good_bytes: bytes, tmp_path: Path) -> None:
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{hashlib.sha256(good_bytes).hexdigest()}  models/{REL_PATH}\n")
    dead = "http://127.0.0.1:1/nothing"  # refused at once: the next mirror is tried
    result = _fetch([dead, _base(server, "good")], "--only", NAME, "--save_dir", str(tmp_path / "save"), "--sha256", str(sums))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _dest(tmp_path / "save").read_bytes() == good_bytes
    assert not Path(str(_dest(tmp_path / "save")) + ".part").exists()
    assert "holds a valid resnet56" in result.stdout and "trying the next mirror" in result.stderr
    assert "shape2prog" not in result.stdout + result.stderr
    assert sorted((tmp_path / "save" / "models").iterdir()) == [tmp_path / "save" / "models" / f"{NAME}_vanilla"]

    before = len(server.requests)
    again = _fetch([_base(server, "good")], "--only", NAME, "--save_dir", str(tmp_path / "save"))
    assert again.returncode == 0, again.stderr
    assert "already present and verified" in again.stdout
    assert len(server.requests) == before  # nothing downloaded again


def test_replaces_a_broken_file_and_resumes_a_partial_download(server: FileServer, good_bytes: bytes, tmp_path: Path) -> None:
    dest = _dest(tmp_path / "save")
    dest.parent.mkdir(parents=True)
    half = len(good_bytes) // 2
    Path(str(dest) + ".part").write_bytes(good_bytes[:half])
    dest.write_bytes(b"junk")  # a broken file in place is deleted, then replaced
    before = len(server.requests)
    result = _fetch([_base(server, "good")], "--only", NAME, "--save_dir", str(tmp_path / "save"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is not a PyTorch checkpoint (not a zip/pickle file)" in result.stderr and "downloading it again" in result.stderr
    assert "resuming" in result.stdout
    assert server.requests[before:] == [(f"/good/{REL_PATH}", f"bytes={half}-")]
    assert dest.read_bytes() == good_bytes
    assert not Path(str(dest) + ".part").exists()


def test_complete_part_file_is_checked_and_moved(server: FileServer, good_bytes: bytes, tmp_path: Path) -> None:
    """A download stopped between its last byte and its check: the server answers 416, the file is used as it is."""
    dest = _dest(tmp_path / "save")
    dest.parent.mkdir(parents=True)
    Path(str(dest) + ".part").write_bytes(good_bytes)
    result = _fetch([_base(server, "good")], "--only", NAME, "--save_dir", str(tmp_path / "save"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checking it as it is" in result.stdout
    assert dest.read_bytes() == good_bytes and not Path(str(dest) + ".part").exists()


@pytest.mark.parametrize("folder, words", [
    ("truncated", "truncated"),
    ("wrong", "does not hold a resnet56"),
])
def test_bad_file_is_deleted(server: FileServer, tmp_path: Path, folder: str, words: str) -> None:
    result = _fetch([_base(server, folder)], "--only", NAME, "--save_dir", str(tmp_path / "save"))
    assert result.returncode != 0
    assert words in result.stderr and "deleted" in result.stderr and "FAILED" in result.stderr
    assert not _dest(tmp_path / "save").exists()
    assert not (tmp_path / "save").exists()  # no .part left either, and no empty {name}_vanilla/, models/ or save/


def test_code_carrying_pickle_is_refused_and_never_run(server: FileServer, tmp_path: Path) -> None:
    marker: Path = server.marker  # type: ignore[attr-defined]
    result = _fetch([_base(server, "evil")], "--only", NAME, "--save_dir", str(tmp_path / "save"), cwd=marker.parent)
    assert result.returncode != 0
    assert "refused" in result.stderr and "deleted" in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "save").exists()


def test_sha256_mismatch_is_deleted_without_loading(server: FileServer, tmp_path: Path) -> None:
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{'0' * 64}  {REL_PATH}\n")
    result = _fetch([_base(server, "good")], "--only", NAME, "--save_dir", str(tmp_path / "save"), "--sha256", str(sums))
    assert result.returncode != 0
    assert "sha256" in result.stderr and "deleted" in result.stderr
    assert not (tmp_path / "save").exists()


def test_dead_mirror_leaves_no_empty_folder(tmp_path: Path) -> None:
    save = tmp_path / "save"
    result = _fetch(["http://127.0.0.1:1/nothing"], "--only", "resnet110", "--save_dir", str(save))
    assert result.returncode == 1 and "FAILED" in result.stderr
    assert not save.exists()  # no empty resnet110_vanilla/ (nor models/, save/) left behind


def test_failed_fetch_keeps_folders_it_did_not_create(server: FileServer, good_bytes: bytes, tmp_path: Path) -> None:
    """One teacher fetched, one failed: the good one stays, the failed one leaves no folder, a folder the user made stays."""
    save = tmp_path / "save"
    (save / "models").mkdir(parents=True)
    result = _fetch([_base(server, "good")], "--only", f"{NAME},resnet110", "--save_dir", str(save))
    assert result.returncode == 1, result.stdout + result.stderr
    assert _dest(save).read_bytes() == good_bytes
    assert sorted(p.name for p in (save / "models").iterdir()) == [f"{NAME}_vanilla"]
    empty = tmp_path / "empty_save"
    (empty / "models").mkdir(parents=True)
    result = _fetch(["http://127.0.0.1:1/nothing"], "--only", "resnet110", "--save_dir", str(empty))
    assert result.returncode == 1 and list((empty / "models").iterdir()) == []  # the user's own empty folders are kept


def test_mirror_list_and_usage_errors(tmp_path: Path) -> None:
    """--dry-run prints the URLs of both kinds of source (per-file mirrors, then the release archive) without contacting anything."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEACHER_")}
    default = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--only", "vgg13"], capture_output=True, text=True,
                             env={**env, "TEACHER_MIRROR": "http://127.0.0.1:9/extra"}, timeout=30)
    assert default.returncode == 0, default.stderr
    assert [line.split()[1] for line in default.stdout.splitlines()] == [
        "http://shape2prog.csail.mit.edu/repo/vgg13_vanilla/ckpt_epoch_240.pth",
        "http://127.0.0.1:9/extra/vgg13_vanilla/ckpt_epoch_240.pth",
        "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar",
    ]
    assert "member cifar_teachers/vgg13_vanilla/ckpt_epoch_240.pth" in default.stdout.splitlines()[2]
    replaced = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--save_dir", str(tmp_path)], capture_output=True, text=True,
                              env={**env, "TEACHER_MIRRORS": "http://127.0.0.1:9/a http://127.0.0.1:9/b/"}, timeout=30)
    lines = [line for line in replaced.stdout.splitlines() if "cifar_teachers.tar" not in line]
    assert len(lines) == 12 and all(line.split()[1].startswith("http://127.0.0.1:9/") for line in lines)
    assert lines[0].split()[-1] == str(tmp_path / "models" / "wrn_40_2_vanilla" / "ckpt_epoch_240.pth")
    archive_only = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--source", "archive", "--only", "resnet56"], capture_output=True,
                                  text=True, env={**env, "TEACHER_ARCHIVE_URL": "http://127.0.0.1:9/t.tar"}, timeout=30)
    assert archive_only.stdout.split()[:2] == ["resnet56", "http://127.0.0.1:9/t.tar"] and len(archive_only.stdout.splitlines()) == 1
    unknown = subprocess.run(["bash", str(SCRIPT), "--only", "resnet57"], capture_output=True, text=True, env=env, timeout=30)
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1 and "resnet57" in unknown.stderr


def test_verify_teacher_accepts_a_good_file(good_bytes: bytes, tmp_path: Path) -> None:
    from scripts.verify_teacher import verify

    path = tmp_path / "ckpt.pth"
    path.write_bytes(good_bytes)
    assert "holds a valid resnet56" in verify(NAME, path)


def test_runs_when_started_with_sh() -> None:
    # the published instructions say `sh scripts/fetch_pretrained_teachers.sh`; on Debian sh is dash
    result = subprocess.run(["sh", str(SCRIPT), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "Illegal option" not in result.stderr
