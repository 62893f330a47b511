"""The teacher sees each training image exactly ``views`` times, never a validation image, and its cache is exact."""

import pytest
import torch
from torch import nn

from dataset import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    CountingModule,
    DeviceAugment,
    build_train_pool,
    crop_flip,
    draw_crop_params,
    load_dataset,
    make_subset_split,
    random_views,
)
from dataset.teacher_cache import load_or_build_cache
from tests.cifar_fixture import make_fake_cifar100


class TinyTeacher(nn.Module):
    """The model-zoo interface: ``forward(x, is_feat=False, preact=False)`` -> logits or ([f0, f1, f2], logits).

    BatchNorm and dropout make train and eval mode give different outputs."""

    def __init__(self, num_classes: int = 100) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, num_classes)
        self.forward_kwargs: list[dict] = []
        self.seen: list[torch.Tensor] = []
        self.record = False

    def forward(self, x, is_feat=False, preact=False):
        self.forward_kwargs.append({"is_feat": is_feat})
        if self.record:
            self.seen.append(x.detach().clone())
        f0 = torch.relu(self.bn(self.conv(x)))
        f1 = f0.mean(dim=(2, 3))
        logits = self.fc(self.drop(f1))
        return ([f0, f1, logits], logits) if is_feat else logits


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    root = make_fake_cifar100(tmp_path_factory.mktemp("cifar"), n_train=2500, n_test=10, seed=1)
    return load_dataset("cifar100", root, download=False)[0]


def _augment() -> DeviceAugment:
    return DeviceAugment(CIFAR100_MEAN, CIFAR100_STD, 2, "cpu")


def _teacher() -> TinyTeacher:
    torch.manual_seed(0)
    teacher = TinyTeacher()
    teacher.bn.running_mean.uniform_(-0.5, 0.5)
    teacher.bn.running_var.uniform_(0.5, 2.0)
    return teacher.train()


@pytest.mark.parametrize("views, expected_calls", [(1, 1600), (2, 3200)])
def test_teacher_called_exactly_n_train_times_views(cifar, views, expected_calls):
    split = make_subset_split(len(cifar), 2000, 0.8, seed=42, batch_size=64)
    counted = CountingModule(_teacher())
    pool = build_train_pool(counted, cifar.images[split.train_idx], cifar.labels[split.train_idx], _augment(), "cpu",
                            views=views, seed=42, batch_size=256)
    assert pool.teacher_calls == expected_calls == counted.calls
    assert pool.n_images == 1600 and pool.views == views and pool.n_items == expected_calls
    assert pool.teacher_logits.shape == (expected_calls, 100)
    assert torch.equal(pool.image_ids, torch.arange(1600).repeat(views))
    assert torch.equal(pool.labels, cifar.labels[split.train_idx].repeat(views))
    assert all(kw == {"is_feat": False} for kw in counted.module.forward_kwargs)
    # a second pool through the same counter adds up: counts are cumulative
    build_train_pool(counted, cifar.images[:10], cifar.labels[:10], _augment(), "cpu")
    assert counted.calls == expected_calls + 10


def test_validation_images_never_reach_the_teacher(cifar):
    split = make_subset_split(len(cifar), 400, 0.8, seed=3, batch_size=64)
    images = cifar.images.clone()
    for rank, i in enumerate(split.val_idx.tolist()):  # markers: unique values no training image carries
        images[i, 0, 0, :4] = torch.tensor([7, 7, rank // 256, rank % 256], dtype=torch.uint8)
        images[i, 1] = 255
    teacher = _teacher()
    teacher.record = True
    augment = _augment()
    pool = build_train_pool(teacher, images[split.train_idx], cifar.labels[split.train_idx], augment, "cpu", batch_size=64,
                            teacher_view="clean")
    seen = torch.cat(teacher.seen)
    assert seen.shape[0] == pool.teacher_calls == split.n_train == 320
    mean = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    pixels = ((seen * std + mean) * 255).round().to(torch.uint8)
    seen_keys = {bytes(p.numpy().tobytes()) for p in pixels}
    train_keys = {bytes(images[i].numpy().tobytes()) for i in split.train_idx.tolist()}
    val_keys = {bytes(images[i].numpy().tobytes()) for i in split.val_idx.tolist()}
    assert seen_keys == train_keys
    assert not seen_keys & val_keys


def test_clean_view_cache_equals_a_direct_eval_forward(cifar):
    teacher = _teacher()
    images, labels = cifar.images[:300], cifar.labels[:300]
    augment = _augment()
    pool = build_train_pool(teacher, images, labels, augment, "cpu", views=3, seed=9, batch_size=128, teacher_view="clean")
    assert not teacher.training
    assert not pool.teacher_logits.requires_grad and pool.teacher_logits.dtype == torch.float32
    with torch.no_grad():
        direct = teacher.eval()(augment.normalize(pool.images))
    torch.testing.assert_close(pool.teacher_logits, direct, rtol=1e-5, atol=1e-5)
    # view 0 is the clean image; views 1.. are the seed's crop+flip views, identical on every call
    assert torch.equal(pool.images[:300], images)
    expected_views = random_views(images, 2, torch.Generator().manual_seed(9)).reshape(600, 3, 32, 32)
    assert torch.equal(pool.images[300:], expected_views)
    again = build_train_pool(teacher, images, labels, augment, "cpu", views=3, seed=9, batch_size=7, teacher_view="clean")
    assert torch.equal(again.images, pool.images)
    torch.testing.assert_close(again.teacher_logits, pool.teacher_logits, rtol=1e-5, atol=1e-5)
    other_seed = build_train_pool(teacher, images, labels, augment, "cpu", views=3, seed=10, batch_size=128,
                                  teacher_view="clean")
    assert not torch.equal(other_seed.images[300:], pool.images[300:])


@pytest.mark.parametrize("use_da", [0, 1, 2])
def test_default_cache_is_the_teacher_on_drawn_augmented_views(cifar, use_da):
    """As published: the teacher sees one random view per image (crop with use_DA >= 1, flip with 2), drawn from the
    seed; the student's items stay the clean images."""
    teacher = _teacher()
    teacher.record = True
    images, labels = cifar.images[:200], cifar.labels[:200]
    augment = DeviceAugment(CIFAR100_MEAN, CIFAR100_STD, use_da, "cpu")
    pool = build_train_pool(teacher, images, labels, augment, "cpu", views=2, seed=5, batch_size=64)
    assert pool.teacher_calls == 400 and torch.cat(teacher.seen).shape[0] == 400
    assert torch.equal(pool.images, images.repeat(2, 1, 1, 1))  # the student augments the clean image afresh
    teacher.eval()
    with torch.no_grad():
        on_clean = teacher(augment.normalize(images))
        generator = torch.Generator().manual_seed(5)
        if use_da == 0:
            drawn = images.repeat(2, 1, 1, 1)
        else:
            offsets, flips = draw_crop_params(400, generator, flip=use_da == 2)
            drawn = crop_flip(images.repeat(2, 1, 1, 1), offsets, flips)
        on_views = teacher(augment.normalize(drawn))
    torch.testing.assert_close(pool.teacher_logits, on_views, rtol=1e-5, atol=1e-5)
    if use_da == 0:
        torch.testing.assert_close(pool.teacher_logits[:200], on_clean, rtol=1e-5, atol=1e-5)
    else:  # most views moved: the cache is not the clean-image output
        differs = (pool.teacher_logits[:200] - on_clean).abs().amax(dim=1) > 1e-4
        assert differs.float().mean() > 0.5
        assert not torch.equal(pool.teacher_logits[:200], pool.teacher_logits[200:])  # two views, two draws


def test_pool_state_dict_round_trip_and_cache_reuse(cifar, tmp_path):
    teacher = CountingModule(_teacher())
    images, labels = cifar.images[:64], cifar.labels[:64]
    built = []

    def build():
        pool = build_train_pool(teacher, images, labels, _augment(), "cpu", views=2, seed=1, feat_layers=(0,),
                                feat_dtype=torch.float16)
        built.append(pool)
        return pool, {"teacher_sha256": "abc", "teacher_calls": pool.teacher_calls}

    path = tmp_path / "teacher_cache.pth"
    pool, meta, reused = load_or_build_cache(path, "abc", build, "cpu")
    assert not reused and path.is_file() and teacher.calls == 128
    again, meta2, reused = load_or_build_cache(path, "abc", build, "cpu")
    assert reused and teacher.calls == 128 and len(built) == 1 and meta2 == meta
    for name in ("images", "labels", "image_ids", "teacher_logits"):
        assert torch.equal(getattr(again, name), getattr(pool, name)), name
    assert (again.n_images, again.views, again.teacher_calls) == (64, 2, 128)
    assert again.teacher_feats.keys() == pool.teacher_feats.keys()
    assert torch.equal(again.teacher_feats[0], pool.teacher_feats[0]) and again.teacher_feats[0].dtype == torch.float16
    assert again.nbytes == pool.nbytes > 0
    rebuilt, _, reused = load_or_build_cache(path, "another teacher", build, "cpu")
    assert not reused and teacher.calls == 256  # a changed teacher file is queried again
    _, _, reused = load_or_build_cache(path, None, build, "cpu")  # teacher file gone: any saved cache is used
    assert reused and teacher.calls == 256


def test_features_are_cached_only_when_requested(cifar):
    teacher = _teacher()
    images, labels = cifar.images[:50], cifar.labels[:50]
    augment = _augment()
    pool = build_train_pool(teacher, images, labels, augment, "cpu", feat_layers=(0, -2), batch_size=16,
                            feat_dtype=torch.float16, teacher_view="clean")
    assert all(kw == {"is_feat": True} for kw in teacher.forward_kwargs)
    assert set(pool.teacher_feats) == {0, -2}
    assert pool.teacher_feats[0].shape == (50, 4, 16, 16) and pool.teacher_feats[0].dtype == torch.float16
    with torch.no_grad():
        feats, logits = teacher(augment.normalize(images), is_feat=True)
    torch.testing.assert_close(pool.teacher_feats[0].float(), feats[0], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(pool.teacher_feats[-2].float(), feats[1], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(pool.teacher_logits, logits, rtol=1e-5, atol=1e-5)
    assert not any(t.requires_grad for t in pool.teacher_feats.values())
    with pytest.raises(ValueError, match="feature index 5 does not exist"):
        build_train_pool(teacher, images, labels, augment, "cpu", feat_layers=(5,))


def test_amp_on_cpu_gives_float32_logits(cifar):
    pool = build_train_pool(_teacher(), cifar.images[:20], cifar.labels[:20], _augment(), "cpu", amp=True)
    assert pool.teacher_logits.dtype == torch.float32 and pool.teacher_calls == 20


def test_bad_pool_inputs_are_value_errors(cifar):
    """Programmer-error backstops, worded without flag names (the flags are checked where they are parsed)."""
    with pytest.raises(ValueError, match="square uint8"):
        build_train_pool(_teacher(), cifar.images[:4].float(), cifar.labels[:4], _augment(), "cpu")
    with pytest.raises(ValueError, match="teacher views must be at least 1") as info:
        build_train_pool(_teacher(), cifar.images[:4], cifar.labels[:4], _augment(), "cpu", views=0)
    assert "--" not in str(info.value)
