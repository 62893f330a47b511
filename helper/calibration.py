"""``--calibrate train_mean``: remove the per-class logit offset that offset-free losses leave free.

CKD's loss only sees differences of group-mean logits, so a vector added to every logit of every image
changes nothing it measures: the classifier bias gets a zero gradient and the student's per-class offset
drifts. The fix costs no teacher call: on the run's own training split, shift the student's logits by
``mean(cached teacher logits) - mean(student logits on the clean training images)``, folded into the
classifier's bias. The optimiser's model is never changed: the shift is applied to the model that is
validated, selected, saved and tested.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from core.device import autocast
from helper.engine import EVAL_BATCH_SIZE

CALIBRATE_CHOICES = ("none", "train_mean")


def classifier_name(model: nn.Module, num_classes: int) -> str:
    """Name of the model's classifier: its last ``nn.Linear`` with ``num_classes`` outputs and a bias."""
    names = [name for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and m.out_features == num_classes and m.bias is not None]
    if not names:
        raise ValueError(f"{type(model).__name__} has no linear classifier with {num_classes} outputs and a bias")
    return names[-1]


def classifier_bias(model: nn.Module, num_classes: int) -> nn.Parameter:
    return model.get_submodule(classifier_name(model, num_classes)).bias


# CPU convolutions run several times faster at small batches (cache-resident activations): 64 there, large on GPUs
CPU_BATCH_SIZE = 64


@torch.no_grad()
def mean_logits(model: nn.Module, images: Tensor, normalize: Callable[[Tensor], Tensor], amp: bool = False,
                channels_last: bool = False, batch_size: int | None = None) -> Tensor:
    """Mean logits of ``model`` (eval mode, no grad) over uint8 ``images``, in float32."""
    if batch_size is None:
        batch_size = CPU_BATCH_SIZE if images.device.type == "cpu" else EVAL_BATCH_SIZE
    was_training = model.training
    model.eval()
    total = None
    for start in range(0, images.shape[0], batch_size):
        x = normalize(images[start:start + batch_size])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(images.device, amp):
            logits = model(x)
        part = logits.float().sum(0)
        total = part if total is None else total + part
    model.train(was_training)
    assert total is not None
    return total / images.shape[0]


def train_mean_shift(model: nn.Module, clean_images: Tensor, teacher_logits: Tensor, normalize: Callable[[Tensor], Tensor],
                     amp: bool = False, channels_last: bool = False, sample: Tensor | None = None) -> Tensor:
    """``mean(teacher_logits) - mean(model logits on clean_images)``: the per-class shift of the training split.

    With ``sample`` (indices of clean images, see :func:`validation_sample`) the student's forward covers those images
    only, and the shift is the paired mean over them of (the teacher's logits averaged over the image's cached views
    minus the student's logits): an unbiased estimate of the full-split shift whose error shrinks with the correlation
    of student and teacher."""
    if sample is None:
        return teacher_logits.float().mean(0) - mean_logits(model, clean_images, normalize, amp, channels_last)
    n_images = int(clean_images.shape[0])
    per_image = teacher_logits.float().view(-1, n_images, teacher_logits.shape[-1]).mean(0)  # items are view-major
    sample = sample.to(clean_images.device)
    return per_image[sample].mean(0) - mean_logits(model, clean_images[sample], normalize, amp, channels_last)


# --calibrate train_mean before each validation: the student's pass over a fixed sample of the training split of
# max(VALIDATION_SAMPLE_MIN, VALIDATION_SAMPLE_FRACTION * n_train) images (all of them up to VALIDATION_SAMPLE_MIN),
# about 0.09 of a pseudo-epoch of training on the CPU instead of 0.44 (benchmarks/bench.py calibrate_overhead)
VALIDATION_SAMPLE_MIN = 256
VALIDATION_SAMPLE_FRACTION = 0.2


def validation_sample(n_images: int, seed: int) -> Tensor | None:
    """The fixed, sorted sample of clean training images the per-validation shift is measured on (None: all of them),
    drawn from its own generator (the run's random streams are untouched)."""
    size = max(VALIDATION_SAMPLE_MIN, math.ceil(VALIDATION_SAMPLE_FRACTION * n_images))
    if size >= n_images:
        return None
    generator = torch.Generator().manual_seed(int(seed) + 7919)
    return torch.randperm(n_images, generator=generator)[:size].sort().values


@contextlib.contextmanager
def shifted(model: nn.Module, shift: Tensor | None, num_classes: int) -> Iterator[nn.Module]:
    """``model`` with ``shift`` added to its classifier bias inside the block; the bias is restored bit for bit."""
    if shift is None:
        yield model
        return
    bias = classifier_bias(model, num_classes)
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.add_(shift.to(bias.dtype))
    try:
        yield model
    finally:
        with torch.no_grad():
            bias.copy_(saved)


def fold_shift(state_dict: dict[str, Tensor], model: nn.Module, shift: Tensor | None, num_classes: int) -> dict[str, Tensor]:
    """A copy of ``state_dict`` whose classifier bias includes ``shift`` (a plain checkpoint of the calibrated model)."""
    if shift is None:
        return state_dict
    key = f"{classifier_name(model, num_classes)}.bias"
    out = dict(state_dict)
    out[key] = state_dict[key] + shift.to(state_dict[key].device, state_dict[key].dtype)
    return out
