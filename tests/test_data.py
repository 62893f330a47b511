"""Data sets (CIFAR-100 reader and download, digits) and the subset split."""

import functools
import http.server
import os
import pickle
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import DataNotFound, UserError
from dataset import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    load_dataset,
    make_subset_split,
    min_subset_size,
)
from helper.config import StudentConfig, check_split_against_data, check_subset_against_data, parse_student_args
from helper.options import data_not_found_message
from tests.cifar_fixture import make_fake_cifar100, make_fake_cifar100_archive
from tests.http_fixture import FileServer, RangeHandler

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- CIFAR-100 reader


def test_fake_cifar_loads_in_the_real_layout(tmp_path):
    root = make_fake_cifar100(tmp_path, n_train=150, n_test=120, seed=3)
    train, test = load_dataset("cifar100", root, download=False)
    assert train.images.shape == (150, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (120, 3, 32, 32)
    assert train.labels.dtype == torch.int64 and train.num_classes == test.num_classes == 100
    assert train.mean == CIFAR100_MEAN and train.std == CIFAR100_STD
    with open(root / "cifar-100-python" / "train", "rb") as handle:
        raw = pickle.load(handle, encoding="bytes")
    assert torch.equal(train.labels, torch.tensor(raw[b"fine_labels"]))
    # row-major CHW: the first 1024 values are the red plane, row by row
    assert torch.equal(train.images[5, 0].flatten(), torch.from_numpy(raw[b"data"][5, :1024]))
    assert torch.equal(train.images[5, 2, 31], torch.from_numpy(raw[b"data"][5, -32:]))
    # the cifar-100-python folder itself is accepted as the data folder too
    again, _ = load_dataset("cifar100", root / "cifar-100-python", download=False)
    assert torch.equal(again.images, train.images)


def test_truncated_pickle_is_a_user_error_naming_the_file(tmp_path):
    root = make_fake_cifar100(tmp_path, n_train=100, n_test=100)
    path = root / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(UserError, match="train is truncated or not a CIFAR-100 pickle.*delete"):
        load_dataset("cifar100", root, download=False)
    assert path.exists(), "user data must never be deleted"


def test_wrong_shapes_and_code_carrying_pickles_are_user_errors(tmp_path):
    root = make_fake_cifar100(tmp_path, n_train=100, n_test=100)
    test_path = root / "cifar-100-python" / "test"
    with open(test_path, "wb") as handle:
        pickle.dump({b"data": np.zeros((4, 100), np.uint8), b"fine_labels": [0] * 4}, handle)
    with pytest.raises(UserError, match="test holds data of shape"):
        load_dataset("cifar100", root, download=False)
    with open(test_path, "wb") as handle:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0, 1]}, handle)
    with pytest.raises(UserError, match="2 fine labels for 4 images"):
        load_dataset("cifar100", root, download=False)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(test_path, "wb") as handle:
        pickle.dump({b"data": Evil()}, handle)
    with pytest.raises(UserError, match="refusing to load global"):
        load_dataset("cifar100", root, download=False)
    assert not (tmp_path / "pwned").exists()


def test_missing_folder_without_download_is_a_user_error(tmp_path):
    with pytest.raises(DataNotFound, match="CIFAR-100 is not in .*cifar-100-python.*extract it into") as info:
        load_dataset("cifar100", tmp_path / "nothing", download=False)
    assert "--" not in str(info.value)  # the flag is named by the caller that parsed it
    assert data_not_found_message(info.value).endswith(", or pass --data_folder with the folder that holds it")


def test_unknown_dataset_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("imagenet", tmp_path)


# ---------------------------------------------------------------- CIFAR-100 download (loopback server)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):  # a client closing early is not a test failure
        pass


@pytest.fixture
def archive_server(tmp_path):
    serve_dir = tmp_path / "served"
    serve_dir.mkdir()
    archive, md5 = make_fake_cifar100_archive(serve_dir, n_train=120, n_test=100, seed=5)
    server = _QuietServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(serve_dir)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{archive.name}", md5
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_download_verifies_and_loads(tmp_path, archive_server, monkeypatch):
    url, md5 = archive_server
    monkeypatch.setenv("CIFAR100_URL", url)
    monkeypatch.setenv("CIFAR100_MD5", md5)
    data = tmp_path / "data"
    timeout_before = socket.getdefaulttimeout()
    train, test = load_dataset("cifar100", data)
    assert socket.getdefaulttimeout() == timeout_before
    assert train.images.shape == (120, 3, 32, 32) and test.images.shape == (100, 3, 32, 32)
    assert (data / "cifar-100-python" / "meta").is_file()
    assert (data / "cifar-100-python.tar.gz").is_file()
    assert _leftovers(data) == []
    # a second load reads the extracted folder without the network
    monkeypatch.setenv("CIFAR100_URL", f"http://127.0.0.1:{_closed_port()}/cifar-100-python.tar.gz")
    again, _ = load_dataset("cifar100", data)
    assert torch.equal(again.images, train.images)


def test_existing_archive_is_extracted_without_network(tmp_path, archive_server, monkeypatch):
    url, md5 = archive_server
    data = tmp_path / "data"
    data.mkdir()
    (data / "cifar-100-python.tar.gz").write_bytes((tmp_path / "served" / "cifar-100-python.tar.gz").read_bytes())
    monkeypatch.setenv("CIFAR100_URL", f"http://127.0.0.1:{_closed_port()}/cifar-100-python.tar.gz")
    monkeypatch.setenv("CIFAR100_MD5", md5)
    train, _ = load_dataset("cifar100", data)
    assert len(train) == 120

    other = tmp_path / "other"
    other.mkdir()
    (other / "cifar-100-python.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(UserError, match="exists but its md5 .* delete it"):
        load_dataset("cifar100", other)
    assert (other / "cifar-100-python.tar.gz").read_bytes() == b"not the archive", "user data must never be deleted"


def test_wrong_md5_is_a_user_error(tmp_path, archive_server, monkeypatch):
    url, _ = archive_server
    monkeypatch.setenv("CIFAR100_URL", url)
    monkeypatch.setenv("CIFAR100_MD5", "0" * 32)
    data = tmp_path / "data"
    with pytest.raises(UserError, match="md5"):
        load_dataset("cifar100", data)
    assert not data.exists(), "a download that failed its md5 check must not leave files (or the folder it made) behind"


def test_unreachable_url_is_a_user_error_naming_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFAR100_URL", f"http://127.0.0.1:{_closed_port()}/cifar-100-python.tar.gz")
    monkeypatch.setenv("CIFAR100_TIMEOUT", "5")
    data = tmp_path / "data"
    with pytest.raises(DataNotFound) as info:
        load_dataset("cifar100", data)
    message = data_not_found_message(info.value)
    assert str(data / "cifar-100-python") in message
    assert "could not be downloaded" in message and "--data_folder" in message
    assert "\n" not in message
    assert not data.exists()  # the failed download removed the folder it created
    mine = tmp_path / "mine"  # a folder the user made is theirs: kept, and left as it was
    mine.mkdir()
    with pytest.raises(DataNotFound):
        load_dataset("cifar100", mine / "a" / "b")
    assert mine.is_dir() and list(mine.iterdir()) == []


class _GatedHandler(RangeHandler):
    """Holds every response until the test opens ``server.gate``; ``server.arrived`` counts requests as they come in."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.arrived.append(self.path)
        self.server.gate.wait(60)
        super().do_GET()


def _download_in_child(data: Path, out_fd: int) -> None:
    """A second process's CIFAR-100 download, its stdout (the "waiting" line) sent to ``out_fd``."""
    from dataset.cifar100 import download_cifar100

    sys.stdout = open(out_fd, "w", buffering=1)  # noqa: SIM115 - the child's whole life
    code = 1
    try:
        download_cifar100(data)
        code = 0
    finally:
        sys.stdout.flush()
        os._exit(code)


def test_concurrent_downloads_take_turns_and_fetch_once(tmp_path, monkeypatch):
    """Two processes download CIFAR-100 into one folder at once: the first holds the lock and downloads, the second
    waits (and says so), then reuses the folder: one download's requests, no lock file or temporary file left."""
    import multiprocessing
    import select

    from dataset.cifar100 import download_cifar100

    archive, md5 = make_fake_cifar100_archive(tmp_path / "served", n_train=120, n_test=100, seed=5)
    server = FileServer(("127.0.0.1", 0), _GatedHandler)
    server.files, server.cut, server.requests = {"/c.tar.gz": archive.read_bytes()}, {}, []
    server.arrived, server.gate = [], threading.Event()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("CIFAR100_URL", server.url("/c.tar.gz"))
    monkeypatch.setenv("CIFAR100_MD5", md5)
    server.gate.set()  # first the requests of one download alone (torchvision's downloader makes more than one)
    download_cifar100(tmp_path / "alone")
    one_download = len(server.requests)
    server.requests.clear()
    server.arrived.clear()
    server.gate.clear()
    data = tmp_path / "data"
    fork = multiprocessing.get_context("fork")
    first_r, first_w = os.pipe()
    second_r, second_w = os.pipe()
    try:
        first = fork.Process(target=_download_in_child, args=(data, first_w))
        first.start()
        for _ in range(600):  # the first process holds the lock and its request is at the server
            if server.arrived:
                break
            first.join(0.05)
        assert len(server.arrived) == 1
        second = fork.Process(target=_download_in_child, args=(data, second_w))
        second.start()
        os.close(second_w)
        assert select.select([second_r], [], [], 60)[0], "the second download neither waited nor finished"
        said = os.read(second_r, 4096).decode()
        assert said.startswith(f"waiting for another process to finish downloading CIFAR-100 into {data}"), said
        server.gate.set()
        first.join(60)
        second.join(60)
        assert first.exitcode == 0 and second.exitcode == 0
    finally:
        server.gate.set()
        server.shutdown()
        server.server_close()
        for fd in (first_r, first_w, second_r):
            os.close(fd)
    assert len(server.requests) == one_download  # the second process requested nothing
    assert sorted(p.name for p in data.iterdir()) == ["cifar-100-python", "cifar-100-python.tar.gz"]
    train, _ = load_dataset("cifar100", data, download=False)
    assert len(train) == 120


# ---------------------------------------------------------------- digits


def test_digits_load_offline_with_a_fixed_test_split():
    torch.manual_seed(123)
    np.random.seed(123)
    train, test = load_dataset("digits", "unused-folder")
    assert train.num_classes == test.num_classes == 10
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 32, 32)
    assert torch.equal(train.images[:, 0], train.images[:, 2]) and int(train.images.max()) > 200
    assert sorted(torch.unique(test.labels).tolist()) == list(range(10))
    assert int(torch.bincount(test.labels).min()) >= 35  # stratified: about 36 per class
    pixels = train.images.double() / 255
    assert abs(train.mean[0] - float(pixels.mean())) < 1e-9
    torch.manual_seed(7)
    np.random.seed(7)
    train2, test2 = load_dataset("digits", "elsewhere")
    assert torch.equal(test.images, test2.images) and torch.equal(test.labels, test2.labels)
    assert torch.equal(train.images, train2.images) and train.mean == train2.mean


# ---------------------------------------------------------------- subset split


def test_subset_is_deterministic_disjoint_and_sized():
    a = make_subset_split(50000, 2000, 0.8, seed=42, batch_size=64)
    b = make_subset_split(50000, 2000, 0.8, seed=42, batch_size=64)
    c = make_subset_split(50000, 2000, 0.8, seed=43, batch_size=64)
    assert np.array_equal(a.train_idx, b.train_idx) and np.array_equal(a.val_idx, b.val_idx)
    assert not np.array_equal(a.train_idx, c.train_idx)
    assert a.train_idx.dtype == np.int64 and a.val_idx.dtype == np.int64
    assert (a.n_train, a.n_val) == (1600, 400)
    assert not set(a.train_idx.tolist()) & set(a.val_idx.tolist())
    assert len(set(a.train_idx.tolist()) | set(a.val_idx.tolist())) == 2000
    assert 0 <= min(a.train_idx.min(), a.val_idx.min()) and max(a.train_idx.max(), a.val_idx.max()) < 50000
    for frac, expected in ((0.5, 1000), (0.9, 1800), (0.75, 1500)):
        split = make_subset_split(50000, 2000, frac, seed=0, batch_size=64)
        assert (split.n_train, split.n_val) == (expected, 2000 - expected)


def test_subset_is_unaffected_by_other_random_state():
    a = make_subset_split(50000, 500, 0.8, seed=1, batch_size=32)
    torch.manual_seed(999)
    np.random.seed(999)
    np.random.default_rng(5).random(100)
    b = make_subset_split(50000, 500, 0.8, seed=1, batch_size=32)
    assert np.array_equal(a.train_idx, b.train_idx)


def test_subset_is_identical_in_a_separate_process():
    here = make_subset_split(50000, 2000, 0.8, seed=7, batch_size=64)
    code = ("from dataset.subset import make_subset_split; s = make_subset_split(50000, 2000, 0.8, seed=7, batch_size=64); "
            "print(','.join(map(str, s.train_idx.tolist())) + ';' + ','.join(map(str, s.val_idx.tolist())))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    train_text, val_text = out.stdout.strip().split(";")
    assert [int(v) for v in train_text.split(",")] == here.train_idx.tolist()
    assert [int(v) for v in val_text.split(",")] == here.val_idx.tolist()


def test_subset_bad_input_is_a_value_error_without_flag_names():
    """make_subset_split is the programmer-error backstop; the user's message comes from helper.options (below)."""
    for args in ((50000, 60000, 0.8), (50000, 50, 0.8), (50000, 2000, 0.0), (50000, 2000, 1.5), (100, 100, 0.5)):
        with pytest.raises(ValueError) as info:
            make_subset_split(*args, seed=0, batch_size=64)
        assert "--" not in str(info.value) and not isinstance(info.value, UserError)


def _opt(**flags: object) -> StudentConfig:
    return parse_student_args([f"--{k}={v}" for k, v in flags.items()])


def test_subset_checked_against_the_data_with_flag_names():
    with pytest.raises(UserError, match="--subset_size 60000 is larger than the 50000-image training set"):
        check_subset_against_data(_opt(subset_size=60000), 50000)
    with pytest.raises(UserError, match=r"fewer than one batch.*--subset_size 80 or more.*--batch_size"):
        check_subset_against_data(_opt(subset_size=50), 50000)
    with pytest.raises(UserError, match="lower --batch_size"):
        check_subset_against_data(_opt(subset_size=100, train_val_frac=0.5), 100)
    check_subset_against_data(_opt(subset_size=2000), 50000)


def test_sampler_needs_checked_against_the_training_split():
    with pytest.raises(UserError, match=r"tuples of 3 distinct training images, but only 2.*--subset_size or lower --pos_and_neg"):
        check_split_against_data(_opt(relational="ckd", pos_and_neg=3), 2, 2)
    with pytest.raises(UserError, match=r"tuples of 3 distinct training images.*raise --subset_size$"):
        check_split_against_data(_opt(relational="mixup3"), 2, 2)
    with pytest.raises(UserError, match="every training image has the same class"):
        check_split_against_data(_opt(relational="crd"), 50, 1)
    check_split_against_data(_opt(relational="crd"), 50, 2)
    check_split_against_data(_opt(relational="None"), 1, 1)  # single images, any class count


@pytest.mark.parametrize("batch_size, frac", [(64, 0.8), (64, 0.5), (7, 0.33), (128, 0.9), (1, 0.5)])
def test_min_subset_size_is_the_smallest_that_works(batch_size, frac):
    need = min_subset_size(batch_size, frac)
    assert make_subset_split(100000, need, frac, seed=0, batch_size=batch_size).n_train >= batch_size
    if need > 2:
        with pytest.raises(ValueError):
            make_subset_split(100000, need - 1, frac, seed=0, batch_size=batch_size)
