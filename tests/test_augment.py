"""DeviceAugment: exact normalisation, torchvision-equivalent crop padding, uniform offsets and fair flips."""

import pytest
import torch
import torch.nn.functional as F

from dataset import CIFAR100_MEAN, CIFAR100_STD, DeviceAugment, crop_flip, draw_crop_params, random_views


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _reference_crop(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor | None) -> torch.Tensor:
    """Per-image slice of the zero-padded image (what RandomCrop(32, padding=4) + RandomHorizontalFlip do)."""
    padded = F.pad(x, (4, 4, 4, 4))
    out = []
    for i in range(x.shape[0]):
        oy, ox = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[i, :, oy: oy + 32, ox: ox + 32]
        if flips is not None and bool(flips[i]):
            crop = crop.flip(-1)
        out.append(crop)
    return torch.stack(out)


def test_use_da_0_is_exactly_normalisation():
    x = _images(16)
    aug = DeviceAugment(CIFAR100_MEAN, CIFAR100_STD, 0, "cpu")
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.equal(out, aug.normalize(x))
    mean = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, (x.float() / 255 - mean) / std, rtol=0, atol=1e-6)


def test_crop_equals_slice_of_padded_image():
    x = _images(64, seed=1)
    offsets, flips = draw_crop_params(64, torch.Generator().manual_seed(3), flip=True)
    assert torch.equal(crop_flip(x, offsets, flips), _reference_crop(x, offsets, flips))
    assert torch.equal(crop_flip(x, offsets, None), _reference_crop(x, offsets, None))


def test_call_matches_its_draws_for_crop_and_flip():
    x = _images(32, seed=2)
    for use_da in (1, 2):
        aug = DeviceAugment(CIFAR100_MEAN, CIFAR100_STD, use_da, "cpu")
        out = aug(x, torch.Generator().manual_seed(5))
        offsets, flips = draw_crop_params(32, torch.Generator().manual_seed(5), flip=use_da == 2)
        assert torch.equal(out, aug.normalize(_reference_crop(x, offsets, flips)))


def test_padding_is_zero_in_pixel_space():
    x = torch.full((2, 3, 32, 32), 200, dtype=torch.uint8)
    aug = DeviceAugment(CIFAR100_MEAN, CIFAR100_STD, 1, "cpu")
    out = aug.normalize(crop_flip(x, torch.tensor([[0, 0], [8, 8]]), None))
    pad_value = torch.tensor([(0 - m) / s for m, s in zip(CIFAR100_MEAN, CIFAR100_STD)])
    for c in range(3):
        torch.testing.assert_close(out[0, c, :4, :], torch.full((4, 32), float(pad_value[c])), rtol=0, atol=1e-6)
        torch.testing.assert_close(out[0, c, :, :4], torch.full((32, 4), float(pad_value[c])), rtol=0, atol=1e-6)
        torch.testing.assert_close(out[1, c, -4:, :], torch.full((4, 32), float(pad_value[c])), rtol=0, atol=1e-6)
    assert torch.equal(out[0, :, 4:, 4:], aug.normalize(x)[0, :, :28, :28])


def _recover_offsets_and_flips(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """With mean 0 / std 1 and an image whose channel 0 holds row+1 and channel 1 holds col+1, the centre pixel
    tells the crop offset and the sign of the column step tells the flip."""
    pixels = (out * 255).round().long()
    oy = pixels[:, 0, 16, 16] - 13
    step = pixels[:, 1, 16, 17] - pixels[:, 1, 16, 16]
    flipped = step < 0
    ox = torch.where(flipped, pixels[:, 1, 16, 16] - 12, pixels[:, 1, 16, 16] - 13)
    return oy * 9 + ox, flipped


def test_offsets_uniform_over_81_positions_and_fair_flips():
    grid = torch.arange(32, dtype=torch.uint8) + 1
    marker = torch.stack([grid[:, None].expand(32, 32), grid[None, :].expand(32, 32), torch.zeros(32, 32, dtype=torch.uint8)])
    x = marker.expand(8100, 3, 32, 32).contiguous()
    aug = DeviceAugment((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 2, "cpu")
    positions, flipped = _recover_offsets_and_flips(aug(x, torch.Generator().manual_seed(11)))
    assert positions.min() >= 0 and positions.max() <= 80
    counts = torch.bincount(positions, minlength=81).double()
    expected = x.shape[0] / 81
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 140, f"crop offsets are not uniform (chi2={chi2:.1f} over 80 degrees of freedom)"
    assert abs(float(flipped.double().mean()) - 0.5) < 0.02

    crop_only = DeviceAugment((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1, "cpu")
    _, flipped = _recover_offsets_and_flips(crop_only(x[:500], torch.Generator().manual_seed(12)))
    assert not bool(flipped.any())


def test_random_views_are_deterministic_uint8_crop_flips():
    x = _images(10, seed=4)
    views = random_views(x, 3, torch.Generator().manual_seed(7))
    assert views.dtype == torch.uint8 and views.shape == (3, 10, 3, 32, 32)
    assert torch.equal(views, random_views(x, 3, torch.Generator().manual_seed(7)))
    assert not torch.equal(views, random_views(x, 3, torch.Generator().manual_seed(8)))
    offsets, flips = draw_crop_params(30, torch.Generator().manual_seed(7), flip=True)
    assert torch.equal(views.reshape(30, 3, 32, 32), _reference_crop(x.repeat(3, 1, 1, 1), offsets, flips))
    aug = DeviceAugment(CIFAR100_MEAN, CIFAR100_STD, 0, "cpu")
    assert torch.equal(aug.random_views(x, 3, torch.Generator().manual_seed(7)), views)


def test_bad_settings_are_value_errors():
    """Programmer-error backstops (--use_DA is checked by the flag parser, in its own words)."""
    with pytest.raises(ValueError, match="use_DA must be 0"):
        DeviceAugment(CIFAR100_MEAN, CIFAR100_STD, 3, "cpu")
    with pytest.raises(ValueError):
        DeviceAugment(CIFAR100_MEAN, (0.1, 0.0, 0.2), 0, "cpu")
