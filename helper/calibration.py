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
                     amp: bool = False, channels_last: bool = False) -> Tensor:
    """``mean(teacher_logits) - mean(model logits on clean_images)``: the per-class shift of the training split."""
    return teacher_logits.float().mean(0) - mean_logits(model, clean_images, normalize, amp, channels_last)


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
