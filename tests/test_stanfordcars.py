"""Stanford Cars: the devkit layout, the 64x64 tensor cache, its errors, and the 64 -> 56 crop augmentation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from torch import nn

import dataset.stanfordcars as cars
from core.errors import UserError
from dataset import (
    CARS_MEAN,
    CARS_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DATASETS,
    DeviceAugment,
    build_train_pool,
    crop_flip,
    draw_crop_params,
    load_dataset,
    load_stanfordcars,
)
from tests.cars_fixture import TEST_CLASSES, TEST_SIZES, TRAIN_CLASSES, TRAIN_SIZES, annotations, make_fake_cars, write_jpeg


def _load(folder: Path):
    return load_stanfordcars(folder, workers=2, progress=False)


def _fnames(classes: tuple[int, ...]) -> list[str]:
    return [f"{i + 1:05d}.jpg" for i in range(len(classes))]


def _leftovers(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.name.startswith((".stanfordcars", "stanfordcars")))


@pytest.fixture
def nested(tmp_path: Path) -> tuple[Path, Path]:
    """(data_folder, stanford_cars folder) in torchvision's layout."""
    return tmp_path, make_fake_cars(tmp_path, nested=True)


def test_fixture_mat_files_have_the_devkit_layout(nested):
    _, base = nested
    names = scipy.io.loadmat(base / "devkit" / "cars_meta.mat")["class_names"]
    assert names.shape == (1, 196) and names.dtype == object and names[0, 0].dtype.kind == "U"
    records = scipy.io.loadmat(base / "devkit" / "cars_train_annos.mat")["annotations"]
    assert records.shape == (1, len(TRAIN_CLASSES))
    assert records.dtype.names == ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    assert records[0, 0]["class"].shape == (1, 1) and str(records[0, 0]["fname"][0]) == "00001.jpg"


def test_images_and_labels_match_torchvision_resize(nested):
    """Same order, 0-based labels and pixels as torchvision's StanfordCars + Resize((64, 64)) on the PIL image."""
    from torchvision.datasets import StanfordCars
    from torchvision.transforms import Compose, PILToTensor, Resize

    data_folder, _ = nested
    train, test = _load(data_folder)
    for split, ours in (("train", train), ("test", test)):
        reference = StanfordCars(str(data_folder), split=split, transform=Compose([Resize((64, 64)), PILToTensor()]))
        assert len(ours) == len(reference)
        for i in range(len(reference)):
            image, label = reference[i]
            assert int(ours.labels[i]) == label
            assert torch.equal(ours.images[i], image)
    assert train.labels.tolist() == [c - 1 for c in TRAIN_CLASSES]
    assert test.labels.tolist() == [c - 1 for c in TEST_CLASSES]


@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_both_layouts_give_image_sets(tmp_path, layout):
    base = make_fake_cars(tmp_path, nested=layout == "nested")
    train, test = _load(tmp_path)
    assert train.images.dtype == torch.uint8 and train.images.shape == (len(TRAIN_CLASSES), 3, 64, 64)
    assert test.images.shape == (len(TEST_CLASSES), 3, 64, 64)
    assert train.labels.dtype == torch.int64 and int(train.labels.min()) >= 0 and int(train.labels.max()) == 195
    grey = train.images[2]  # the greyscale JPEG becomes three equal channels
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    for split in (train, test):
        assert split.num_classes == 196 and split.mean == CARS_MEAN and split.std == CARS_STD
        assert (split.crop_size, split.crop_padding) == (56, 0)
    assert (base / "stanfordcars_64.pt").is_file()
    assert _load(base)[0].images.equal(train.images)  # the stanford_cars folder itself works too


def test_registered_in_load_dataset(nested):
    data_folder, _ = nested
    assert "stanfordcars" in DATASETS
    train, test = load_dataset("stanfordcars", data_folder)
    assert len(train) == len(TRAIN_CLASSES) and len(test) == len(TEST_CLASSES) and train.num_classes == 196


def test_cache_is_reused_then_rebuilt_when_an_image_changes(nested, monkeypatch):
    data_folder, base = nested
    train, test = _load(data_folder)
    assert _leftovers(base) == ["stanfordcars_64.pt"]

    def refuse(path: Path, size: int) -> np.ndarray:
        raise AssertionError(f"decoded {path} although the cache is current")

    monkeypatch.setattr(cars, "_decode_image", refuse)
    again_train, again_test = _load(data_folder)
    assert torch.equal(again_train.images, train.images) and torch.equal(again_test.labels, test.labels)

    monkeypatch.undo()
    changed = base / "cars_test" / "00002.jpg"
    write_jpeg(changed, 33, 47, seed=99)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    decoded: list[str] = []
    original = cars._decode_image

    def counting(path: Path, size: int) -> np.ndarray:
        decoded.append(path.name)
        return original(path, size)

    monkeypatch.setattr(cars, "_decode_image", counting)
    _, rebuilt_test = _load(data_folder)
    assert len(decoded) == len(TRAIN_CLASSES) + len(TEST_CLASSES)
    assert not torch.equal(rebuilt_test.images[1], test.images[1])
    assert torch.equal(rebuilt_test.images[0], test.images[0])
    assert torch.equal(rebuilt_test.images[1], torch.from_numpy(original(changed, 64)))
    assert _leftovers(base) == ["stanfordcars_64.pt"]


def test_a_changed_annotation_file_rebuilds_and_a_garbage_cache_is_replaced(nested):
    data_folder, base = nested
    _load(data_folder)
    # fresh arrays: writing into loadmat's 1x1 results can alias interpreter-shared bytes objects
    relabelled = (9, *TEST_CLASSES[1:])
    scipy.io.savemat(base / "cars_test_annos_withlabels.mat", {"annotations": annotations(_fnames(TEST_CLASSES), relabelled, TEST_SIZES)})
    assert int(_load(data_folder)[1].labels[0]) == 8

    (base / "stanfordcars_64.pt").write_bytes(b"not a tensor file")
    train, _ = _load(data_folder)
    assert train.images.shape == (len(TRAIN_CLASSES), 3, 64, 64)
    assert torch.load(base / "stanfordcars_64.pt", weights_only=True)["train_images"].equal(train.images)


def _break_missing_meta(base: Path) -> str:
    (base / "devkit" / "cars_meta.mat").unlink()
    return "cars_meta.mat is missing"


def _break_missing_test_mat(base: Path) -> str:
    (base / "cars_test_annos_withlabels.mat").unlink()
    return "cars_test_annos_withlabels.mat is missing"


def _break_missing_image(base: Path) -> str:
    (base / "cars_train" / "00003.jpg").unlink()
    return "00003.jpg is missing"


def _break_corrupt_mat(base: Path) -> str:
    (base / "devkit" / "cars_train_annos.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(range(256)) * 3)
    return "cars_train_annos.mat is not a readable MATLAB file"


def _break_wrong_mat(base: Path) -> str:
    scipy.io.savemat(base / "devkit" / "cars_train_annos.mat", {"something": np.zeros(3)})
    return "has no 'annotations' variable"


def _break_bad_class(base: Path) -> str:
    bad = (TRAIN_CLASSES[0], 0, *TRAIN_CLASSES[2:])
    scipy.io.savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": annotations(_fnames(TRAIN_CLASSES), bad, TRAIN_SIZES)})
    return "outside 1..196"


def _break_corrupt_jpeg(base: Path) -> str:
    path = base / "cars_test" / "00003.jpg"
    path.write_bytes(path.read_bytes()[:200])
    return "00003.jpg cannot be decoded"


def _break_not_an_image(base: Path) -> str:
    (base / "cars_train" / "00001.jpg").write_bytes(b"hello")
    return "00001.jpg cannot be decoded"


@pytest.mark.parametrize("breakage", [_break_missing_meta, _break_missing_test_mat, _break_missing_image, _break_corrupt_mat,
                                      _break_wrong_mat, _break_bad_class, _break_corrupt_jpeg, _break_not_an_image])
def test_bad_inputs_are_one_line_user_errors_and_write_nothing(nested, breakage):
    data_folder, base = nested
    expected = breakage(base)
    with pytest.raises(UserError) as info:
        _load(data_folder)
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert _leftovers(base) == []


def test_nothing_is_left_behind_when_the_cache_write_fails(nested, monkeypatch):
    data_folder, base = nested

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cars.torch, "save", disk_full)
    with pytest.warns(UserWarning, match="could not write"):
        train, _ = _load(data_folder)
    assert train.images.shape[0] == len(TRAIN_CLASSES)
    assert _leftovers(base) == []


def test_missing_folder_names_the_torchvision_layout(tmp_path):
    with pytest.raises(UserError, match=r"stanford_cars/devkit/cars_meta\.mat is missing.*Kaggle"):
        _load(tmp_path)


# --- augmentation for 64x64 images and 56x56 model inputs ---------------------------------------------------------


def _marker(n: int, size: int = 64) -> torch.Tensor:
    """Channel 0 holds row + 1, channel 1 column + 1, channel 2 the image index."""
    grid = torch.arange(size, dtype=torch.uint8) + 1
    one = torch.stack([grid[:, None].expand(size, size), grid[None, :].expand(size, size), torch.zeros(size, size, dtype=torch.uint8)])
    images = one.expand(n, 3, size, size).clone()
    images[:, 2] = torch.arange(n, dtype=torch.uint8)[:, None, None]
    return images


def _unit_augment(use_da: int) -> DeviceAugment:
    return DeviceAugment((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), use_da, "cpu", crop=56, padding=0)


def test_train_crop_is_a_slice_of_the_64_image_with_offsets_0_to_8():
    x = torch.randint(0, 256, (40, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for use_da in (1, 2):
        aug = DeviceAugment(CARS_MEAN, CARS_STD, use_da, "cpu", crop=56, padding=0)
        out = aug(x, torch.Generator().manual_seed(3))
        assert out.shape == (40, 3, 56, 56) and out.dtype == torch.float32
        offsets, flips = draw_crop_params(40, torch.Generator().manual_seed(3), flip=use_da == 2, max_offset=8)
        expected = []
        for i in range(40):
            oy, ox = int(offsets[i, 0]), int(offsets[i, 1])
            crop = x[i, :, oy: oy + 56, ox: ox + 56]
            expected.append(crop.flip(-1) if flips is not None and bool(flips[i]) else crop)
        assert torch.equal(out, aug.normalize(torch.stack(expected)))

    pixels = (_unit_augment(2)(_marker(4000), torch.Generator().manual_seed(1)) * 255).round().long()
    rows, cols = pixels[:, 0, 0, 0] - 1, pixels[:, 1, 0, 0] - 1  # top-left pixel: offset, or offset + 55 when flipped
    flipped = pixels[:, 1, 0, 1] < pixels[:, 1, 0, 0]
    cols = torch.where(flipped, cols - 55, cols)
    assert set(rows.tolist()) == set(range(9)) and set(cols.tolist()) == set(range(9))
    assert abs(float(flipped.double().mean()) - 0.5) < 0.05
    assert not bool(((_unit_augment(1)(_marker(300), torch.Generator().manual_seed(2)) * 255).round().long()[:, 1].diff(dim=-1) < 0).any())


def test_centre_crop_matches_torchvision_and_cifar_is_untouched():
    from torchvision.transforms import CenterCrop

    x = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    aug = DeviceAugment(CARS_MEAN, CARS_STD, 2, "cpu", crop=56, padding=0)
    assert torch.equal(aug.eval_view(x), CenterCrop(56)(x))
    assert torch.equal(aug.eval_view(x), x[:, :, 4:60, 4:60])
    assert torch.equal(aug.normalize_eval(x), aug.normalize(x[:, :, 4:60, 4:60]))
    no_da = DeviceAugment(CARS_MEAN, CARS_STD, 0, "cpu", crop=56, padding=0)
    assert torch.equal(no_da(x, torch.Generator().manual_seed(0)), aug.normalize(x[:, :, 4:60, 4:60]))

    cifar = DeviceAugment(CIFAR100_MEAN, CIFAR100_STD, 2, "cpu")
    small = x[:, :, :32, :32]
    assert cifar.eval_view(small) is small and torch.equal(cifar.normalize_eval(small), cifar.normalize(small))
    assert (cifar.crop, cifar.padding, cifar.view_padding(32), aug.view_padding(64)) == (32, 4, 4, 4)
    with pytest.raises(UserError, match="smaller than the 56x56"):
        aug.eval_view(small)
    with pytest.raises(UserError, match="smaller than the 56x56"):
        aug(small, torch.Generator().manual_seed(0))


def test_a_teacher_view_seen_through_the_centre_crop_is_a_train_style_crop():
    """A same-size 64x64 view (4-pixel padding) viewed through CenterCrop(56) is RandomCrop(56) + flip of the image."""
    x = torch.randint(0, 256, (30, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    aug = _unit_augment(2)
    views = aug.random_views(x, 2, torch.Generator().manual_seed(6))
    assert views.shape == (2, 30, 3, 64, 64)
    offsets, flips = draw_crop_params(60, torch.Generator().manual_seed(6), flip=True, max_offset=8)
    seen = aug.eval_view(views.reshape(60, 3, 64, 64))
    assert torch.equal(seen, crop_flip(x.repeat(2, 1, 1, 1), offsets, flips, size=56, pad=0))


class _ShapeRecorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 196)
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape[1:]))
        return self.linear(x.mean(dim=(2, 3)))


def test_train_pool_keeps_64_pixel_items_and_feeds_the_teacher_56_pixel_crops():
    x = _marker(6)
    labels = torch.arange(6)
    teacher = _ShapeRecorder()
    aug = DeviceAugment(CARS_MEAN, CARS_STD, 2, "cpu", crop=56, padding=0)
    pool = build_train_pool(teacher, x, labels, aug, "cpu", views=3, seed=1, batch_size=4, teacher_view="clean")
    assert pool.images.shape == (18, 3, 64, 64) and pool.teacher_calls == 18
    assert set(teacher.shapes) == {(3, 56, 56)}
    assert torch.equal(pool.images[:6], x)
    offsets, flips = draw_crop_params(12, torch.Generator().manual_seed(1), flip=True, max_offset=8)
    assert torch.equal(pool.images[6:], crop_flip(x.repeat(2, 1, 1, 1), offsets, flips, pad=4))
    with torch.no_grad():
        direct = teacher(aug.normalize_eval(pool.images))
    torch.testing.assert_close(pool.teacher_logits, direct)
    with pytest.raises(ValueError, match="square uint8"):
        build_train_pool(teacher, x[:, :, :, :60], labels, aug, "cpu")


def test_default_augmented_teacher_view_is_a_random_56_crop_of_the_clean_image():
    x = _marker(6)
    teacher = _ShapeRecorder()
    aug = DeviceAugment(CARS_MEAN, CARS_STD, 2, "cpu", crop=56, padding=0)
    pool = build_train_pool(teacher, x, torch.arange(6), aug, "cpu", views=2, seed=3, batch_size=4)
    assert torch.equal(pool.images, x.repeat(2, 1, 1, 1)) and pool.teacher_calls == 12
    offsets, flips = draw_crop_params(12, torch.Generator().manual_seed(3), flip=True, max_offset=8)
    views = crop_flip(x.repeat(2, 1, 1, 1), offsets, flips, pad=4)
    with torch.no_grad():
        direct = teacher(aug.normalize_eval(views))
    torch.testing.assert_close(pool.teacher_logits, direct)
