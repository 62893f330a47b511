"""The teacher fetch path (scripts/fetch_teachers.py behind scripts/fetch_pretrained_teachers.sh, scripts/verify_teacher.py)
against per-file mirrors and release archives in the real layout, served on 127.0.0.1 only.

The teachers are real architectures with random weights in RepDistiller's checkpoint format, so they load strictly but
score near chance on the CIFAR-100-format test set the tests write. Most tests call ``main(argv)`` in this process;
the shell wrapper runs as a subprocess once.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from core.errors import UserError, run_main
from models import model_dict
from scripts import fetch_teachers, verify_teacher
from tests.cifar_fixture import make_fake_cifar100_archive
from tests.http_fixture import FileServer, serving

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "fetch_pretrained_teachers.sh"
TAR = "cifar_teachers.tar"
DEAD = "http://127.0.0.1:1"  # port 1: connection refused at once
CKPT = "ckpt_epoch_240.pth"


def _checkpoint(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _teacher(name: str, seed: int) -> bytes:
    torch.manual_seed(seed)
    model = model_dict[name](num_classes=100)
    return _checkpoint({"epoch": 240, "model": model.state_dict(), "accuracy": 72.34, "optimizer": {"state": {}, "param_groups": []}})


def member(name: str) -> str:
    return f"cifar_teachers/{name}_vanilla/{CKPT}"


def _tar(members: dict[str, bytes | str]) -> bytes:
    """A plain tar holding ``members`` (name -> bytes, or name -> 'symlink:TARGET'), with the folder entries tar writes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for folder in sorted({str(Path(n).parent) for n in members if not n.startswith("..")} - {"."}):
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


class CodeCarrying:
    """Unpickling this would run a shell command (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def teachers() -> dict[str, bytes]:
    return {"resnet56": _teacher("resnet56", 0), "resnet110": _teacher("resnet110", 1)}


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
        f"/missing/{TAR}": _tar({member("resnet110"): teachers["resnet110"]}),
        f"/notckpt/{TAR}": _tar({member("resnet56"): b"<html><body>404 Not Found</body></html>\n"}),
        f"/wrong/{TAR}": _tar({member("resnet56"): teachers["resnet110"]}),
        f"/evil/{TAR}": _tar({member("resnet56"): _checkpoint({"model": CodeCarrying(marker), "epoch": 240})}),
        f"/link/{TAR}": _tar({"../escaped.pth": r56, member("resnet56"): "symlink:../../../../etc/passwd"}),
        f"/html/{TAR}": b"<html><body>a login page, not a tar</body></html>\n",
        f"/mirror/resnet56_vanilla/{CKPT}": r56,
    }
    with serving(files) as httpd:
        httpd.marker = marker  # type: ignore[attr-defined]
        yield httpd


def fetch(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], archive: str, *args: str,
          mirrors: str = f"{DEAD}/nothing", env: dict[str, str | None] | None = None) -> tuple[int, str, str]:
    """The fetch in this process, every source on 127.0.0.1 (``env``: more variables, None unsets one):
    (exit code, stdout, stderr)."""
    assert archive.startswith("http://127.0.0.1:") and mirrors.startswith("http://127.0.0.1:")  # loopback only, ever
    for key in [k for k in os.environ if "proxy" in k.lower() or k.startswith(("TEACHER_", "CIFAR100_"))]:
        monkeypatch.delenv(key)
    for key, value in {"TEACHER_MIRRORS": mirrors, "TEACHER_ARCHIVE_URL": archive, "TEACHER_CONNECT_TIMEOUT": "5",
                       **(env or {})}.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    capsys.readouterr()
    try:
        code = run_main(lambda: fetch_teachers.main(list(args)))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return int(code or 0), out, err


def dest(save: Path, name: str) -> Path:
    return save / "models" / f"{name}_vanilla" / CKPT


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for a folder)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def line_with(text: str, *words: str) -> str:
    """The one line of ``text`` holding every word."""
    lines = [line for line in text.splitlines() if all(word in line for word in words)]
    assert len(lines) == 1, (words, text)
    return lines[0]


# ------------------------------------------------------------------ never destroy a user's file


def test_users_own_resnet32x4_survives_a_plain_fetch(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    """A resnet32x4 the user trained (with train_teacher.py's config.json) differs from the pinned digest: left in place
    byte-identical, its fetch refused in one sentence naming the ways forward; the other five fail on dead sources."""
    save, data = tmp_path / "save", tmp_path / "data"
    own = dest(save, "resnet32x4")
    own.parent.mkdir(parents=True)
    own.write_bytes(_teacher("resnet32x4", 7))
    (own.parent / "config.json").write_text('{"model": "resnet32x4", "epochs": 240}\n')
    before = tree(tmp_path)
    code, _, err = fetch(monkeypatch, capsys, f"{DEAD}/{TAR}", "--save_dir", str(save), "--data_folder", str(data))
    assert code == 1
    assert tree(tmp_path) == before  # nothing deleted, overwritten or left behind (no empty folder of the five others)
    line = line_with(err, f"resnet32x4: {own} is left in place and not fetched")
    for words in ("is not the 22aa12e2", "pinned in scripts/teachers.sha256", "--replace", "--save_dir",
                  "--allow_unpinned resnet32x4"):
        assert words in line, words
    assert "deleted" not in err and ".part" not in err


def test_installed_resnet110_survives_a_sha256_list_not_naming_it(server: FileServer, teachers: dict[str, bytes],
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    save, data = tmp_path / "save", tmp_path / "data"
    good = dest(save, "resnet110")
    good.parent.mkdir(parents=True)
    good.write_bytes(teachers["resnet110"])
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{hashlib.sha256(teachers['resnet56']).hexdigest()}  {member('resnet56')}\n")
    before, requests = tree(tmp_path), len(server.requests)
    for only in ([], ["--only", "resnet56,resnet110"]):
        code, out, err = fetch(monkeypatch, capsys, server.url(f"/good/{TAR}"), *only, "--sha256", str(sums),
                               "--save_dir", str(save), "--data_folder", str(data))
        assert code == 2 and out == "" and len(err.splitlines()) == 1, err
        assert f"the --sha256 list {sums} names no digest for" in err and "resnet110" in err
    assert tree(tmp_path) == before and len(server.requests) == requests  # refused before the first byte


def test_replace_moves_aside_and_never_deletes(server: FileServer, teachers: dict[str, bytes], monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    save, data = tmp_path / "save", tmp_path / "data"
    broken = dest(save, "resnet56")
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"my notes, not a checkpoint\n")
    (broken.parent / "config.json").write_text("{}\n")
    args = ("--only", "resnet56", "--source", "archive", "--save_dir", str(save), "--data_folder", str(data))
    code, _, err = fetch(monkeypatch, capsys, server.url(f"/good/{TAR}"), *args)
    assert code == 1 and broken.read_bytes() == b"my notes, not a checkpoint\n"
    assert "is not a PyTorch checkpoint" in line_with(err, "is left in place and not fetched", "--replace")
    code, out, err = fetch(monkeypatch, capsys, server.url(f"/good/{TAR}"), *args, "--replace")
    assert code == 0, err
    assert broken.read_bytes() == teachers["resnet56"]
    names = sorted(p.name for p in broken.parent.iterdir())
    assert len(names) == 3 and names[0] == CKPT and names[1].startswith(f"{CKPT}.replaced-loading-")
    assert names[2].startswith("config.json.replaced-loading-")
    assert (broken.parent / names[1]).read_bytes() == b"my notes, not a checkpoint\n"  # moved aside, not deleted
    assert (broken.parent / names[2]).read_text() == "{}\n"
    assert f"resnet56: moved {broken} aside to {names[1]} and its config.json to {names[2]} (--replace), since it is not" in out


# ------------------------------------------------------------------ no empty folder from any failed fetch


def test_no_failed_fetch_leaves_an_empty_folder(server: FileServer, good_tar: bytes, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Every kind of failure, each into a --save_dir that did not exist (and once into a save folder the user made):
    each teacher's failure is named, and at most the kept archive or the resumable .part stays."""
    marker: Path = server.marker  # type: ignore[attr-defined]
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{'0' * 64}  {member('resnet56')}\n")
    cases = {  # archive folder on the server, extra args -> what the failure line says, what may stay in the save folder
        "dead": (f"{DEAD}/{TAR}", (), "Connection refused", set()),
        "404": (server.url(f"/gone/{TAR}"), (), "HTTP 404", set()),
        "html": (server.url(f"/html/{TAR}"), (), "is not a tar archive", set()),
        "truncated": (server.url(f"/truncated/{TAR}"), (), "is truncated", {TAR}),
        "missing": (server.url(f"/missing/{TAR}"), (), "has no member", {TAR}),
        "link": (server.url(f"/link/{TAR}"), (), "is a link and was refused", {TAR}),
        "notckpt": (server.url(f"/notckpt/{TAR}"), (), "is not a PyTorch checkpoint", {TAR}),
        "wrong": (server.url(f"/wrong/{TAR}"), (), "does not hold a resnet56", {TAR}),
        "evil": (server.url(f"/evil/{TAR}"), (), "refused to load", {TAR}),
        "digest": (server.url(f"/good/{TAR}"), ("--sha256", str(sums)), "is not the " + "0" * 64, {TAR}),
        "flaky": (server.url(f"/flaky/{TAR}"), (), "stopped at", {f"{TAR}.part"}),
    }
    server.cut[f"/flaky/{TAR}"] = len(good_tar) // 3
    for case, (url, extra, words, kept) in cases.items():
        save = tmp_path / case / "save"
        code, _, err = fetch(monkeypatch, capsys, url, "--only", "resnet56", *extra, "--save_dir", str(save),
                             "--data_folder", str(tmp_path / "data"))
        assert code == 1, (case, err)
        assert words in err and "resnet56: not installed" in err, (case, err)
        assert ".tmp" not in err and (".part" not in err or case == "flaky"), (case, err)  # no temporary name is ever shown
        assert not (save / "models").exists(), (case, tree(tmp_path / case))
        assert (tmp_path / case).exists() == bool(kept), case  # the new --save_dir (and its parent) removed when empty
        assert ({p.name for p in save.iterdir()} if kept else set()) == kept, case
    assert not marker.exists() and not list(tmp_path.rglob("escaped.pth")) and not (tmp_path / "data").exists()

    def full(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    mine = tmp_path / "mine"
    (mine / "models").mkdir(parents=True)
    (mine / TAR).write_bytes(good_tar)
    monkeypatch.setattr(fetch_teachers.tempfile, "mkstemp", full)  # the disk fills up while extracting
    code, _, err = fetch(monkeypatch, capsys, f"{DEAD}/{TAR}", "--only", "resnet56", "--source", "archive",
                         "--save_dir", str(mine), "--data_folder", str(tmp_path / "data"))
    assert code == 1 and "the disk is full" in err
    assert sorted(p.name for p in mine.rglob("*")) == [TAR, "models"]  # the user's own (empty) models/ is kept
    (mine / "models" / "resnet56_vanilla").write_text("a file where the teacher folder goes\n")
    code, _, err = fetch(monkeypatch, capsys, f"{DEAD}/{TAR}", "--only", "resnet56", "--save_dir", str(mine),
                         "--data_folder", str(tmp_path / "data"))
    assert code == 1 and "resnet56: cannot write" in err and "Traceback" not in err
    assert (mine / "models" / "resnet56_vanilla").read_text() == "a file where the teacher folder goes\n"


# ------------------------------------------------------------------ "verified" means checked


STORED = "stored in the checkpoint: epoch 240, accuracy 72.34"


def test_random_networks_refused_with_the_test_set_and_unmeasured_without(server: FileServer, teachers: dict[str, bytes],
                                                                          fake_cifar: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    save, empty = tmp_path / "save", tmp_path / "no_data"
    url = server.url(f"/good/{TAR}")
    code, _, err = fetch(monkeypatch, capsys, url, "--only", "resnet56,resnet110", "--source", "archive",
                         "--save_dir", str(save), "--data_folder", str(fake_cifar))
    assert code == 1
    for name in ("resnet56", "resnet110"):
        line = line_with(err, f"{name}: member {member(name)}", "was refused")
        assert "near chance" in line and "--accept_low_accuracy installs it anyway" in line
        aside = [p for p in dest(save, name).parent.iterdir()]
        assert len(aside) == 1 and aside[0].name.startswith(f"{CKPT}.refused-low-accuracy-")  # moved aside, with the reason
        assert aside[0].read_bytes() == teachers[name]
    assert not (save / "models" / "teachers.lock").exists()

    save = tmp_path / "save2"
    code, out, err = fetch(monkeypatch, capsys, url, "--only", "resnet56,resnet110", "--source", "archive",
                           "--save_dir", str(save), "--data_folder", str(empty))
    assert code == 0, err
    lock = save / "models" / "teachers.lock"
    for name in ("resnet56", "resnet110"):
        digest = hashlib.sha256(teachers[name]).hexdigest()
        line = line_with(out, f"{name}: installed {dest(save, name)} from member {member(name)}")
        assert f"digest not pinned: sha256 {digest} recorded in {lock} now (trust on first use" in line
        assert f"loading checked (weights-only, strict, {name} with 100 classes)" in line
        assert (f"accuracy not measured (no CIFAR-100 test set in {empty}); measure it with: sh scripts/fetch_pretrained_teachers.sh "
                f"--only {name} --check_accuracy --save_dir {save} --data_folder {empty}") in line
        assert line.endswith(STORED) and "accuracy 72.34" not in line.replace(STORED, "")  # stored, never as measured
        assert f"{digest}  {name}_vanilla/{CKPT}" in lock.read_text().splitlines()
        assert dest(save, name).read_bytes() == teachers[name]

    # later fetches and verify_teacher.py check the lock; the measuring command refuses the random network, kept in place
    code, out, _ = fetch(monkeypatch, capsys, url, "--only", "resnet56", "--save_dir", str(save), "--data_folder", str(empty))
    assert code == 0 and "equal to the sha256" in line_with(out, "resnet56: already in place, not downloaded again")
    code, _, err = fetch(monkeypatch, capsys, url, "--only", "resnet56", "--save_dir", str(save), "--data_folder",
                         str(fake_cifar), "--check_accuracy")
    assert code == 1 and "near chance" in line_with(err, "resnet56:", "is left in place", "--accept_low_accuracy to accept it")
    assert dest(save, "resnet56").read_bytes() == teachers["resnet56"]
    dest(save, "resnet56").write_bytes(teachers["resnet110"])  # changed behind the lock's back
    code, _, err = fetch(monkeypatch, capsys, url, "--only", "resnet56", "--save_dir", str(save), "--data_folder", str(empty))
    assert code == 1 and "recorded at its first install" in line_with(err, "resnet56:", "is left in place", "--allow_unpinned resnet56")
    with pytest.raises(UserError, match="the file changed since"):
        verify_teacher.main(["resnet56", str(dest(save, "resnet56"))])


def test_status_line_when_measured_and_pinned(server: FileServer, teachers: dict[str, bytes], fake_cifar: Path,
                                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    """A pinned teacher whose digest is equal, and one that differs (refused, then accepted by --allow_unpinned), with a
    measured accuracy close to the published one (the measurement is replaced: random networks score near chance)."""
    digest = hashlib.sha256(teachers["resnet56"]).hexdigest()
    monkeypatch.setattr(fetch_teachers, "read_pins", lambda: {"resnet56": digest, "resnet110": "1" * 64})
    monkeypatch.setattr(fetch_teachers, "measure_accuracy", lambda name, path, test: 74.0 if name == "resnet110" else 71.5)
    save = tmp_path / "save"
    args = ("--source", "archive", "--save_dir", str(save), "--data_folder", str(fake_cifar))
    code, out, err = fetch(monkeypatch, capsys, server.url(f"/good/{TAR}"), "--only", "resnet56,resnet110", *args)
    assert code == 1
    line = line_with(out, "resnet56: installed")
    assert f"digest pinned and equal (sha256 {digest}, scripts/teachers.sha256)" in line
    assert "accuracy measured now on the CIFAR-100 test set: 71.50%, published 72.34%" in line and line.endswith(STORED)
    line = line_with(err, "resnet110: member", "was refused")
    assert f"is not the {'1' * 64} pinned in scripts/teachers.sha256" in line and "--allow_unpinned resnet110 accepts it" in line
    code, out, err = fetch(monkeypatch, capsys, server.url(f"/good/{TAR}"), "--only", "resnet110", "--allow_unpinned",
                           "resnet110", *args)
    assert code == 0, err
    assert "digest differs from the pin 1111" in line_with(out, "resnet110: installed", "accepted by --allow_unpinned resnet110")
    assert "74.00%, published 74.31%" in out


def test_check_accuracy_downloads_the_data_first(server: FileServer, teachers: dict[str, bytes], monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    archive, md5 = make_fake_cifar100_archive(tmp_path / "served", n_train=100, n_test=100)
    server.files["/data/cifar-100-python.tar.gz"] = archive.read_bytes()
    before = len(server.requests)
    data = tmp_path / "data"
    code, out, err = fetch(monkeypatch, capsys, server.url(f"/good/{TAR}"), "--only", "resnet56", "--source", "archive",
                           "--check_accuracy", "--accept_low_accuracy", "--save_dir", str(tmp_path / "save"), "--data_folder",
                           str(data), env={"CIFAR100_URL": server.url("/data/cifar-100-python.tar.gz"), "CIFAR100_MD5": md5})
    assert code == 0, err
    paths = [path for path, _ in server.requests[before:]]
    assert paths[-1] == f"/good/{TAR}" and set(paths[:-1]) == {"/data/cifar-100-python.tar.gz"}  # the data first
    line = line_with(out, "resnet56: installed")
    assert "accuracy measured now on the CIFAR-100 test set" in line and "accepted by --accept_low_accuracy" in line


# ------------------------------------------------------------------ the fetch path's own bad inputs


BAD_ENVIRONMENT = {
    "TEACHER_CONNECT_TIMEOUT": ["abc", "0", "-5", "nan", "inf", "1e300"],
    "TEACHER_ARCHIVE_URL": ["ftp://example.org/t.tar", "not a url", "http://"],
    "TEACHER_MIRROR": ["file:///etc", "example.org/repo"],
    "TEACHER_MIRRORS": ["", "  ", "http://127.0.0.1:9/a gopher://x"],
}


def test_every_environment_variable_is_checked_before_the_first_byte(server: FileServer, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert set(BAD_ENVIRONMENT) == set(fetch_teachers.FETCH_ENVIRONMENT)  # every variable of the fetch path is walked
    before = len(server.requests)
    for variable, values in BAD_ENVIRONMENT.items():
        mirrors_unset: dict[str, str | None] = {"TEACHER_MIRRORS": None} if variable == "TEACHER_MIRROR" else {}
        for value in values:
            code, out, err = fetch(monkeypatch, capsys, server.url(f"/good/{TAR}"), "--only", "resnet56", "--save_dir",
                                   str(tmp_path / "save"), env={variable: value, **mirrors_unset})
            assert code == 2 and out == "" and len(err.splitlines()) == 1, (variable, value, err)
            assert err.startswith("error: ") and variable in err, (variable, value, err)
            assert "Traceback" not in err
    code, _, err = fetch(monkeypatch, capsys, server.url(f"/good/{TAR}"), env={"TEACHER_MIRROR": "http://127.0.0.1:9/m"})
    assert code == 2 and err.startswith("error: TEACHER_MIRROR and TEACHER_MIRRORS are both set")
    assert len(server.requests) == before and list(tmp_path.iterdir()) == []
    env = fetch_teachers.parse_fetch_environment({"TEACHER_MIRROR": "http://127.0.0.1:9/m", "TEACHER_CONNECT_TIMEOUT": "2.5"})
    assert env.mirrors == (fetch_teachers.ORIGINAL_MIRROR, "http://127.0.0.1:9/m") and env.connect_timeout == 2.5
    assert fetch_teachers.parse_fetch_environment({"TEACHER_ARCHIVE_URL": ""}).archive_url == fetch_teachers.ARCHIVE_URL


def test_flag_mistakes_are_refused_up_front(server: FileServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{'0' * 64}  resnet32x4_vanilla/{CKPT}\n")
    bad = {
        ("--only", "resnet57"): "--only got 'resnet57', not a published teacher",
        ("--only", ","): "--only got an empty name",
        ("--only", "vgg13", "--allow_unpinned", "vgg13"): "nothing to allow",
        ("--only", "vgg13", "--allow_unpinned", "resnet32x4"): "names a teacher this fetch does not fetch",
        ("--only", "resnet32x4", "--sha256", str(sums)): "scripts/teachers.sha256 pins 22aa12e2",
    }
    before = len(server.requests)
    for args, words in bad.items():
        code, out, err = fetch(monkeypatch, capsys, server.url(f"/good/{TAR}"), *args, "--save_dir", str(tmp_path / "save"))
        assert code == 2 and out == "" and len(err.splitlines()) == 1 and words in err, (args, err)
    assert len(server.requests) == before and not (tmp_path / "save").exists()


# ------------------------------------------------------------------ downloads: mirrors, resume, the kept archive


def test_mirror_resume_and_the_kept_archive(server: FileServer, teachers: dict[str, bytes], good_tar: bytes,
                                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    save, data = tmp_path / "save", tmp_path / "data"
    r56 = teachers["resnet56"]
    part = dest(save, "resnet56").with_name(CKPT + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(r56[: len(r56) // 2])  # an interrupted per-file download
    before = len(server.requests)
    code, out, err = fetch(monkeypatch, capsys, f"{DEAD}/{TAR}", "--only", "resnet56", "--save_dir", str(save), "--data_folder",
                           str(data), mirrors=f"{DEAD}/dead {server.url('/mirror')}")
    assert code == 0, err
    assert server.requests[before:] == [(f"/mirror/resnet56_vanilla/{CKPT}", f"bytes={len(r56) // 2}-")] and "resuming" in out
    assert dest(save, "resnet56").read_bytes() == r56 and not part.exists()
    assert "Connection refused" in err  # the dead mirror, then the next one

    # the archive: downloaded once for two teachers, kept (it was not all six), used again without a download
    dest(save, "resnet56").unlink()
    before = len(server.requests)
    code, out, err = fetch(monkeypatch, capsys, server.url(f"/good/{TAR}"), "--only", "resnet56,resnet110", "--source", "archive",
                           "--save_dir", str(save), "--data_folder", str(data))
    assert code == 0, err
    assert server.requests[before:] == [(f"/good/{TAR}", None)] and (save / TAR).read_bytes() == good_tar
    assert "archive: kept" in out
    dest(save, "resnet110").unlink()
    code, out, _ = fetch(monkeypatch, capsys, server.url(f"/good/{TAR}"), "--only", "resnet110", "--source", "archive",
                         "--save_dir", str(save), "--data_folder", str(data))
    assert code == 0 and "downloaded before" in out and len(server.requests) == before + 1

    # all six in place: an archive this run downloaded is deleted; one an earlier run left is never deleted
    for name in ("wrn_40_2", "resnet32x4", "vgg13", "ResNet50"):
        dest(save, name).parent.mkdir()
        dest(save, name).write_bytes(b"placeholder")
    dest(save, "resnet110").unlink()
    code, out, _ = fetch(monkeypatch, capsys, server.url(f"/good/{TAR}"), "--only", "resnet110", "--source", "archive",
                         "--save_dir", str(save), "--data_folder", str(data))
    assert code == 0 and (save / TAR).is_file() and "archive: kept" in out
    (save / TAR).unlink()
    dest(save, "resnet110").unlink()
    code, out, _ = fetch(monkeypatch, capsys, server.url(f"/good/{TAR}"), "--only", "resnet110", "--source", "archive",
                         "--save_dir", str(save), "--data_folder", str(data))
    assert code == 0 and not (save / TAR).exists() and "all six teachers" in out


def test_complete_part_file_is_checked_as_it_is(server: FileServer, teachers: dict[str, bytes], monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A download stopped between its last byte and its check: the server answers 416, the file is used as it is."""
    save = tmp_path / "save"
    part = dest(save, "resnet56").with_name(CKPT + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(teachers["resnet56"])
    code, out, err = fetch(monkeypatch, capsys, f"{DEAD}/{TAR}", "--only", "resnet56", "--save_dir", str(save), "--data_folder",
                           str(tmp_path / "data"), mirrors=server.url("/mirror"))
    assert code == 0, err
    assert "checking it as it is" in out and dest(save, "resnet56").read_bytes() == teachers["resnet56"] and not part.exists()

    # a .part whose first half is not this file: the resumed file fails its check and is downloaded once more, from the start
    dest(save, "resnet56").unlink()
    part.write_bytes(b"\0" * (len(teachers["resnet56"]) // 2))
    before = len(server.requests)
    code, out, err = fetch(monkeypatch, capsys, f"{DEAD}/{TAR}", "--only", "resnet56", "--save_dir", str(save), "--data_folder",
                           str(tmp_path / "data"), mirrors=server.url("/mirror"))
    assert code == 0, err
    assert [rng for _, rng in server.requests[before:]] == [f"bytes={len(teachers['resnet56']) // 2}-", None]
    assert "the resumed download failed its check" in out and dest(save, "resnet56").read_bytes() == teachers["resnet56"]


# ------------------------------------------------------------------ verify_teacher.py, the student's warning, the wrapper


def test_verify_teacher_status(teachers: dict[str, bytes], fake_cifar: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ckpt.pth"
    path.write_bytes(teachers["resnet56"])
    assert verify_teacher.main(["resnet56", str(path)]) == 0
    out = capsys.readouterr().out
    assert "digest not checked" in out and "loading checked (weights-only, strict, resnet56 with 100 classes)" in out
    assert f"accuracy not measured; measure it with: python scripts/verify_teacher.py resnet56 {path} --data_folder DIR" in out
    assert out.rstrip().endswith(STORED)
    with pytest.raises(UserError, match="near chance"):
        verify_teacher.main(["resnet56", str(path), "--data_folder", str(fake_cifar), "--device", "cpu"])


def test_student_warns_about_a_teacher_far_below_the_published_table(teachers: dict[str, bytes], fake_cifar: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import train_student
    from helper.config import parse_student_args
    from helper.student_trainer import teacher_accuracy_warning

    path = dest(tmp_path / "save", "resnet56")
    path.parent.mkdir(parents=True)
    path.write_bytes(teachers["resnet56"])
    train_student.main(["--model_s", "resnet8", "--model_t", "resnet56", "--path_t", str(path), "--subset_size", "100",
                        "--epochs", "1", "--data_folder", str(fake_cifar), "--device", "cpu", "--batch_size", "32",
                        "--relational=None", "--w_kd=0", "--save_dir", str(tmp_path / "save")])
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"warning: the teacher {path} scores 1.00% on the CIFAR-100 test set"), err

    opt = parse_student_args(["--model_t", "resnet110", "--model_s", "resnet20", "--device", "cpu"])
    line = teacher_accuracy_warning(opt, 1.2)
    assert line is not None and line.startswith("warning: the teacher") and "\n" not in line and "near chance" in line
    assert "5.31 points below RepDistiller's published 74.31%" in (teacher_accuracy_warning(opt, 69.0) or "")
    assert teacher_accuracy_warning(opt, 72.0) is None  # within 3 points
    own = parse_student_args(["--model_t", "resnet8", "--model_s", "resnet8", "--device", "cpu"])
    assert teacher_accuracy_warning(own, 30.0) is None  # no published figure: nothing to compare with


def test_the_shell_wrapper(server: FileServer, teachers: dict[str, bytes], tmp_path: Path) -> None:
    """`sh scripts/fetch_pretrained_teachers.sh` (as the README says; dash on Debian) runs the Python implementation,
    and names a bad PYTHON setting in one sentence."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("TEACHER_")}
    env.update(TEACHER_MIRRORS=f"{DEAD}/nothing", TEACHER_ARCHIVE_URL=server.url(f"/good/{TAR}"), PYTHON=sys.executable,
               TEACHER_CONNECT_TIMEOUT="5", NO_PROXY="*", no_proxy="*")
    save = tmp_path / "save"
    run = subprocess.run(["sh", str(SCRIPT), "--only", "resnet56", "--save_dir", str(save), "--data_folder", str(tmp_path / "d")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert dest(save, "resnet56").read_bytes() == teachers["resnet56"] and "resnet56: installed" in run.stdout
    for python in ("/nonexistent/python", "/bin/true"):
        bad = subprocess.run(["sh", str(SCRIPT), "--help"], capture_output=True, text=True, env={**env, "PYTHON": python}, timeout=30)
        assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.splitlines()) == 1, bad.stderr
        assert bad.stderr.startswith(f"error: PYTHON={python} is not a Python 3.11") and "unset PYTHON" in bad.stderr


def test_docs_say_what_is_pinned_and_checked() -> None:
    manual = (ROOT / "docs" / "teachers.md").read_text(encoding="utf-8")
    for words in (fetch_teachers.ARCHIVE_URL, "tar xvf cifar_teachers.tar", "mkdir -p save/models", "scripts/teachers.sha256",
                  "22aa12e2b632b19ddde155ccf2388671842ddd304824b3095e0a7fff364beb4f", "teachers.lock", "--replace",
                  "--allow_unpinned", "--accept_low_accuracy", "--check_accuracy", *fetch_teachers.FETCH_ENVIRONMENT):
        assert words in manual, words
    assert verify_teacher.read_pins() == {"resnet32x4": "22aa12e2b632b19ddde155ccf2388671842ddd304824b3095e0a7fff364beb4f"}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Teachers\n"):readme.index("## Reproduce the paper\n")]
    for words in ("docs/teachers.md", "tar xvf", "mkdir -p save/models", "fetch_pretrained_teachers.sh", "resnet32x4", "teachers.lock"):
        assert words in section, words
