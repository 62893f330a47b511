"""Teachers from mdistiller's release archive (scripts/teacher_archive.py, and fetch_pretrained_teachers.sh falling back
to it), against tars built here in the real layout and served on 127.0.0.1 only; plus verify_teacher.py's accuracy check.

The teachers are real resnet56 / wrn_40_2 state_dicts with random weights in RepDistiller's checkpoint format.
Every bad case ends in one line naming the cause, a non-zero exit and nothing (not even an empty folder) in models/.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import resource
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from core.errors import run_main
from models import model_dict
from scripts import teacher_archive
from tests.http_fixture import FileServer, serving
from tests.test_fetch_teachers import CodeCarrying

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "fetch_pretrained_teachers.sh"
TAR = "cifar_teachers.tar"
DEAD = "http://127.0.0.1:1"  # port 1: connection refused at once


def _checkpoint(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _teacher(name: str, seed: int) -> bytes:
    torch.manual_seed(seed)
    model = model_dict[name](num_classes=100)
    return _checkpoint({"epoch": 240, "model": model.state_dict(), "accuracy": 70.0, "optimizer": {"state": {}, "param_groups": []}})


def _tar(members: dict[str, bytes | str]) -> bytes:
    """A plain tar holding ``members`` (name -> bytes, or name -> 'symlink:TARGET'), with the folder entries tar writes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        folders = sorted({str(Path(n).parent) for n in members if not n.startswith("..")} - {"."})
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data.removeprefix("symlink:")
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def member(name: str) -> str:
    return f"cifar_teachers/{name}_vanilla/ckpt_epoch_240.pth"


@pytest.fixture(scope="module")
def teachers() -> dict[str, bytes]:
    return {"resnet56": _teacher("resnet56", 0), "wrn_40_2": _teacher("wrn_40_2", 1)}


@pytest.fixture(scope="module")
def good_tar(teachers: dict[str, bytes]) -> bytes:
    return _tar({member(name): data for name, data in teachers.items()})


@pytest.fixture(scope="module")
def server(teachers: dict[str, bytes], good_tar: bytes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    marker = tmp_path_factory.mktemp("evil") / "MARKER"
    r56 = teachers["resnet56"]
    start = good_tar.index(r56)  # the member's first byte in the tar
    files = {
        f"/good/{TAR}": good_tar,
        f"/flaky/{TAR}": good_tar,
        f"/truncated/{TAR}": good_tar[: start + len(r56) // 2],  # ends in the middle of the resnet56 member
        f"/missing/{TAR}": _tar({member("wrn_40_2"): teachers["wrn_40_2"]}),
        f"/notckpt/{TAR}": _tar({member("resnet56"): b"<html><body>404 Not Found</body></html>\n"}),
        f"/evil/{TAR}": _tar({member("resnet56"): _checkpoint({"model": CodeCarrying(marker), "epoch": 240})}),
        f"/link/{TAR}": _tar({"../escaped.pth": r56, member("resnet56"): "symlink:../../../../etc/passwd"}),
        f"/pinned/{TAR}": _tar({member("resnet32x4"): b"\x80" + os.urandom(4000)}),  # the checked-in pin must refuse it
        f"/html/{TAR}": b"<html><body>a login page, not a tar</body></html>\n",
    }
    with serving(files) as httpd:
        httpd.marker = marker  # type: ignore[attr-defined]
        yield httpd


def _run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, save: Path, *args: str) -> tuple[int, str, str]:
    """scripts/teacher_archive.py in this process, the archive at ``url``: (exit code, stdout, stderr)."""
    assert url.startswith("http://127.0.0.1:")  # loopback only, ever
    for key in [k for k in os.environ if "proxy" in k.lower()]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("TEACHER_ARCHIVE_URL", url)
    monkeypatch.setenv("TEACHER_CONNECT_TIMEOUT", "5")
    capsys.readouterr()
    try:
        code = run_main(lambda: teacher_archive.main([*args, "--save_dir", str(save)]))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return int(code or 0), out, err


def _only_archive_left(save: Path) -> None:
    """Nothing in models/ (no file, no temporary, no empty folder): at most the kept archive in the save folder."""
    assert not (save / "models").exists(), sorted(p.relative_to(save) for p in save.rglob("*"))
    assert {p.name for p in save.iterdir()} <= {TAR} if save.exists() else True


def _one_line(err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert all(word in lines[0] for word in words), err
    return lines[0]


def _shell(*args: str, archive: str, mirrors: str = f"{DEAD}/nothing", preexec: Callable[[], None] | None = None
           ) -> subprocess.CompletedProcess[str]:
    assert archive.startswith("http://127.0.0.1:") and mirrors.startswith("http://127.0.0.1:")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("TEACHER_")}
    env.update(TEACHER_MIRRORS=mirrors, TEACHER_ARCHIVE_URL=archive, PYTHON=sys.executable, TEACHER_CONNECT_TIMEOUT="5",
               NO_PROXY="*", no_proxy="*")
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=SCRIPT.parent, timeout=120,
                          preexec_fn=preexec)


# --- acceptance: the script, dead per-file mirrors, the archive on a loopback server ---


def test_dead_mirrors_fall_back_to_the_archive(server: FileServer, teachers: dict[str, bytes], good_tar: bytes, tmp_path: Path) -> None:
    save = tmp_path / "save"
    before = len(server.requests)
    result = _shell("--only", "resnet56", "--only", "wrn_40_2", "--save_dir", str(save), archive=server.url(f"/good/{TAR}"))
    assert result.returncode == 0, result.stdout + result.stderr
    for name, data in teachers.items():
        assert (save / "models" / f"{name}_vanilla" / "ckpt_epoch_240.pth").read_bytes() == data  # byte-identical
        assert f"sha256 {hashlib.sha256(data).hexdigest()}, not pinned" in result.stdout  # printed, so it can be pinned
    assert server.requests[before:] == [(f"/good/{TAR}", None)]  # downloaded once for both teachers
    assert (save / TAR).read_bytes() == good_tar and "kept" in result.stdout  # kept for the next teacher
    assert "trying the release archive" in result.stderr and "teachers: 2 of 2 verified" in result.stdout
    assert sorted(p.name for p in (save / "models").rglob("*")) == ["ckpt_epoch_240.pth"] * 2 + ["resnet56_vanilla", "wrn_40_2_vanilla"]

    # a teacher fetched later comes from the kept archive: nothing is downloaded again
    (save / "models" / "resnet56_vanilla" / "ckpt_epoch_240.pth").unlink()
    again = _shell("--source", "archive", "--only", "resnet56", "--save_dir", str(save), archive=server.url(f"/good/{TAR}"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "downloaded before" in again.stdout and len(server.requests) == before + 1
    assert (save / "models" / "resnet56_vanilla" / "ckpt_epoch_240.pth").read_bytes() == teachers["resnet56"]


def test_truncated_member_leaves_only_the_kept_archive(server: FileServer, tmp_path: Path) -> None:
    save = tmp_path / "save"
    result = _shell("--source", "archive", "--only", "resnet56", "--save_dir", str(save), archive=server.url(f"/truncated/{TAR}"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "resnet56: member cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth is truncated" in result.stderr
    assert "FAILED" in result.stderr
    assert [p.name for p in save.iterdir()] == [TAR]  # nothing but the kept archive


# --- every bad case: one line, non-zero exit, nothing in models/ ---


def test_archive_404(server: FileServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(monkeypatch, capsys, server.url(f"/gone/{TAR}"), tmp_path / "save", "resnet56")
    assert code == 1
    _one_line(err, "cannot download the teacher archive", "HTTP 404", "TEACHER_ARCHIVE_URL")
    assert not (tmp_path / "save").exists()


def test_connection_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(monkeypatch, capsys, f"{DEAD}/{TAR}", tmp_path / "save", "resnet56")
    assert code == 1
    _one_line(err, "cannot download the teacher archive", "refused")
    assert not (tmp_path / "save").exists()


def test_truncated_member(server: FileServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(monkeypatch, capsys, server.url(f"/truncated/{TAR}"), tmp_path / "save", "resnet56")
    assert code == 1
    _one_line(err, "resnet56:", "is truncated", "refused")
    _only_archive_left(tmp_path / "save")


def test_member_missing(server: FileServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(monkeypatch, capsys, server.url(f"/missing/{TAR}"), tmp_path / "save", "resnet56")
    assert code == 1
    _one_line(err, "has no member cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth")
    _only_archive_left(tmp_path / "save")


def test_member_not_a_checkpoint(server: FileServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                 tmp_path: Path) -> None:
    code, _, err = _run(monkeypatch, capsys, server.url(f"/notckpt/{TAR}"), tmp_path / "save", "resnet56")
    assert code == 1
    _one_line(err, "is not a PyTorch checkpoint")
    _only_archive_left(tmp_path / "save")


def test_code_carrying_member_is_refused_and_never_run(server: FileServer, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    marker: Path = server.marker  # type: ignore[attr-defined]
    code, _, err = _run(monkeypatch, capsys, server.url(f"/evil/{TAR}"), tmp_path / "save", "resnet56")
    assert code == 1
    _one_line(err, "refused to load", "nothing was run")
    assert not marker.exists()
    _only_archive_left(tmp_path / "save")


def test_digest_mismatch(server: FileServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A --sha256 list that disagrees, and the digest pinned in scripts/teachers.sha256 (resnet32x4), both refuse the member."""
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{'0' * 64}  {member('resnet56')}\n")
    code, _, err = _run(monkeypatch, capsys, server.url(f"/good/{TAR}"), tmp_path / "save", "resnet56", "--sha256", str(sums))
    assert code == 1
    _one_line(err, "sha256 of member", "not the pinned " + "0" * 64, "nothing was loaded")
    _only_archive_left(tmp_path / "save")

    code, _, err = _run(monkeypatch, capsys, server.url(f"/pinned/{TAR}"), tmp_path / "pinned", "resnet32x4")
    assert code == 1
    _one_line(err, "not the pinned 22aa12e2b632b19ddde155ccf2388671842ddd304824b3095e0a7fff364beb4f")
    _only_archive_left(tmp_path / "pinned")


def test_checked_in_pin_file() -> None:
    pins = teacher_archive.read_sha256_list(teacher_archive.PINS)
    assert pins == {"resnet32x4": "22aa12e2b632b19ddde155ccf2388671842ddd304824b3095e0a7fff364beb4f"}


def test_link_member_is_refused_and_no_member_name_is_a_path(server: FileServer, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _run(monkeypatch, capsys, server.url(f"/link/{TAR}"), tmp_path / "save", "resnet56")
    assert code == 1
    _one_line(err, "is a link and was refused")
    _only_archive_left(tmp_path / "save")
    assert not (tmp_path / "escaped.pth").exists() and not list(tmp_path.rglob("escaped.pth"))


def test_not_a_tar_is_deleted(server: FileServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                              tmp_path: Path) -> None:
    code, _, err = _run(monkeypatch, capsys, server.url(f"/html/{TAR}"), tmp_path / "save", "resnet56")
    assert code == 1
    _one_line(err, "is not a tar archive", "deleted")
    assert list((tmp_path / "save").iterdir()) == []


def test_interrupted_download_resumes(server: FileServer, good_tar: bytes, teachers: dict[str, bytes], fake_cifar: Path,
                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The .part of a dropped connection is resumed with a Range request; with CIFAR-100 on disk the accuracy is reported."""
    save = tmp_path / "save"
    server.cut[f"/flaky/{TAR}"] = len(good_tar) // 3
    code, _, err = _run(monkeypatch, capsys, server.url(f"/flaky/{TAR}"), save, "resnet56")
    assert code == 1
    _one_line(err, "stopped at", "is kept", "resume")
    assert (save / f"{TAR}.part").stat().st_size == len(good_tar) // 3 and not (save / "models").exists()
    before = len(server.requests)
    code, out, err = _run(monkeypatch, capsys, server.url(f"/flaky/{TAR}"), save, "resnet56", "--data_folder", str(fake_cifar))
    assert code == 0, err
    assert "resnet56: CIFAR-100 test accuracy" in out and "(published 72.34%)" in out
    _one_line(err, "resnet56: warning:", "points below the published 72.34%")
    assert server.requests[before:] == [(f"/flaky/{TAR}", f"bytes={len(good_tar) // 3}-")] and "resuming" in out
    assert (save / TAR).read_bytes() == good_tar and not (save / f"{TAR}.part").exists()
    assert (save / "models" / "resnet56_vanilla" / "ckpt_epoch_240.pth").read_bytes() == teachers["resnet56"]


def test_full_disk_leaves_nothing_in_models(server: FileServer, good_tar: bytes, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """ENOSPC simulated in-process: the member's temporary file fails after its first MB, as on a full disk."""
    real_fdopen = os.fdopen

    class Full(io.RawIOBase):
        def __init__(self, fd: int) -> None:
            self.handle = real_fdopen(fd, "wb")
            self.written = 0

        def write(self, data: bytes) -> int:  # type: ignore[override]
            if self.written + len(data) > 1 << 20:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return self.handle.write(data)

        def close(self) -> None:
            self.handle.close()
            super().close()

    monkeypatch.setattr(teacher_archive.os, "fdopen", lambda fd, mode: Full(fd))
    code, _, err = _run(monkeypatch, capsys, server.url(f"/good/{TAR}"), tmp_path / "save", "resnet56")
    assert code == 1
    _one_line(err, "the disk is full", "free some space")
    _only_archive_left(tmp_path / "save")


def test_file_size_limit_in_the_real_script(good_tar: bytes, tmp_path: Path) -> None:
    """A real kernel write failure (RLIMIT_FSIZE: EFBIG, enforced for root too) while extracting from a kept archive."""
    save = tmp_path / "save"
    save.mkdir()
    (save / TAR).write_bytes(good_tar)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    result = _shell("--source", "archive", "--only", "resnet56", "--save_dir", str(save), archive=f"{DEAD}/{TAR}", preexec=limit)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "resnet56: cannot write" in result.stderr and "file size limit" in result.stderr
    assert [p.name for p in save.iterdir()] == [TAR]


def test_read_only_save_folder(server: FileServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                               tmp_path: Path) -> None:
    """Root ignores chmod, so: a save folder below a regular file (fails for root too), and EROFS from the temporary file."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    result = _shell("--source", "archive", "--only", "resnet56", "--save_dir", str(blocker / "save"), archive=server.url(f"/good/{TAR}"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stdout + result.stderr  # refused up front
    assert "--save_dir" in result.stderr and f"lies below the file '{blocker}'" in result.stderr
    assert blocker.read_text() == "not a folder\n"

    def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(teacher_archive.tempfile, "mkstemp", read_only)
    code, _, err = _run(monkeypatch, capsys, server.url(f"/good/{TAR}"), tmp_path / "save", "resnet56")
    assert code == 1
    _one_line(err, "cannot write", "Read-only file system", "make the folder writable")
    _only_archive_left(tmp_path / "save")


def test_archive_deleted_once_all_six_are_in_place(server: FileServer, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    save = tmp_path / "save"
    for name in ("resnet110", "resnet32x4", "vgg13", "ResNet50", "wrn_40_2"):
        path = teacher_archive.destination(save, name)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"placeholder")
    code, out, _ = _run(monkeypatch, capsys, server.url(f"/good/{TAR}"), save, "resnet56", "--keep_archive")
    assert code == 0 and (save / TAR).is_file() and "kept" in out
    teacher_archive.destination(save, "resnet56").unlink()
    code, out, _ = _run(monkeypatch, capsys, server.url(f"/good/{TAR}"), save, "resnet56")
    assert code == 0 and not (save / TAR).exists() and "all six teachers" in out


# --- accuracy next to the published one ---


def test_verify_teacher_reports_accuracy_and_warns(teachers: dict[str, bytes], fake_cifar: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from scripts.verify_teacher import main

    path = tmp_path / "ckpt.pth"
    path.write_bytes(teachers["resnet56"])
    assert main(["resnet56", str(path), "--data_folder", str(fake_cifar), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "holds a valid resnet56" in out and "(published 72.34%)" in out and "CIFAR-100 test accuracy" in out
    line = _one_line(err, "warning:", "points below the published 72.34%")
    assert str(path) in line


def test_published_accuracy_table() -> None:
    from scripts.verify_teacher import PUBLISHED_ACCURACY

    assert PUBLISHED_ACCURACY == {"wrn_40_2": 75.61, "resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "vgg13": 74.64,
                                  "ResNet50": 79.34}


def test_docs_say_where_teachers_come_from() -> None:
    manual = (ROOT / "docs" / "teachers.md").read_text(encoding="utf-8")
    for words in (teacher_archive.ARCHIVE_URL, "tar xvf cifar_teachers.tar", "scripts/teachers.sha256", "--keep_archive",
                  "22aa12e2b632b19ddde155ccf2388671842ddd304824b3095e0a7fff364beb4f", "save/models/{name}_vanilla/ckpt_epoch_240.pth"):
        assert words in manual, words
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Teachers\n"):readme.index("## Reproduce the paper\n")]
    assert "docs/teachers.md" in section and "tar xvf" in section and "fetch_pretrained_teachers.sh" in section
