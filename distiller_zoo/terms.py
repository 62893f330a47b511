"""The two shapes a distillation term takes inside a training step (``helper.methods`` calls them).

Each loss file defines its loss (pure functions and a thin ``nn.Module``, pinned by golden tests) and, next to
it, its *term*: the small class that a row of the method table (``helper/method_table.py``) names as builder.

* A **logit term** is built as ``Term(ctx)`` and called as ``term(logits_s, logits_t, labels, batch)`` on the
  float32 logits of one batch of single images: ``labels`` is the batch's labels when the method's table row
  says ``needs_labels`` (else None) and ``batch`` the sampler's index tensors (``idx``, CRD's ``contrast_idx``)
  plus ``epoch``, the 1-based pseudo-epoch, when the row says ``needs_epoch``.
* A **feature term** (white-box) states which entries of the models' feature lists it reads
  (:meth:`FeatureTerm.layers`, the same rule for student and teacher; the teacher's entries are cached once,
  pre-activation maps when ``preact``), is built as ``Term(ctx, signed)`` and called as
  ``term(feats_s, feats_t)`` with those entries in order; it returns the summed, unweighted loss. Two-stage
  methods also give :meth:`FeatureTerm.init_modules` and :meth:`FeatureTerm.init_loss`, trained for
  ``--init_epochs`` pseudo-epochs before the main schedule.

``ctx`` is any object with the fields of :class:`TermContext` (``helper.methods.MethodContext``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, Protocol

from torch import Tensor, nn

Shape = tuple[int, ...]


class TermContext(Protocol):
    """What a term may read when it is built."""

    opt: argparse.Namespace
    num_classes: int
    student_feat_shapes: list[Shape]  # per-sample shapes of model_s(x, is_feat=True)[0]
    teacher_feat_shapes: list[Shape]
    pool: Any  # the cached training pool (dataset.TrainPool): n_items, labels, ...


class FeatureTerm(nn.Module):
    """Base of the white-box terms: layer selection, up-front checks, and the optional init stage."""

    preact = False  # read pre-activation maps: model(x, is_feat=True, preact=True), teacher cached that way

    @classmethod
    def layers(cls, opt: argparse.Namespace, n_feats: int) -> list[int]:
        """Indices into a feature list of ``n_feats`` entries that this term reads (student and teacher alike)."""
        raise NotImplementedError(f"{cls.__name__} must say which feature maps it reads")

    @classmethod
    def paired_layers(cls, opt: argparse.Namespace, n_student: int, n_teacher: int) -> tuple[list[int], list[int]]:
        """(student indices, teacher indices), paired in order and cut to the shorter list."""
        s_idx, t_idx = cls.layers(opt, n_student), cls.layers(opt, n_teacher)
        n = min(len(s_idx), len(t_idx))
        return s_idx[:n], t_idx[:n]

    @classmethod
    def check(cls, opt: argparse.Namespace, s_shapes: Sequence[Shape], t_shapes: Sequence[Shape]) -> None:
        """Raise ValueError (one sentence) when this student/teacher pair cannot be used; called before the teacher
        file is read, with the per-sample feature shapes of both architectures."""

    def __init__(self, ctx: TermContext, signed: bool = False) -> None:
        super().__init__()
        opt, s_all, t_all = ctx.opt, ctx.student_feat_shapes, ctx.teacher_feat_shapes
        self.student_idx, self.teacher_idx = self.paired_layers(opt, len(s_all), len(t_all))
        # batched (1, C, H, W) / (1, D) shapes of the selected maps, as the adapters of models.util expect
        self.s_shapes = [(1, *s_all[i]) for i in self.student_idx]
        self.t_shapes = [(1, *t_all[j]) for j in self.teacher_idx]
        self.signed = signed

    def forward(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ two-stage methods (init stage)
    def init_modules(self, student: nn.Module) -> list[nn.Module]:
        """Modules trained in the init stage (none: the method has no init stage)."""
        return []

    def init_loss(self, feats_s: list[Tensor], feats_t: list[Tensor]) -> Tensor:
        """The init-stage loss on single images' selected feature maps."""
        raise NotImplementedError(f"{type(self).__name__} has no init stage")

    def init_learning_rate(self, opt: argparse.Namespace) -> float:
        """SGD learning rate of the init stage."""
        return float(opt.learning_rate)


def sum_of(losses: Sequence[Tensor]) -> Tensor:
    """The sum of a list of per-layer losses (a tensor even for one layer)."""
    total = losses[0]
    for loss in losses[1:]:
        total = total + loss
    return total


def frozen(module: nn.Module) -> nn.Module:
    """``module`` with every parameter excluded from the main optimiser (the init stage unfreezes them itself)."""
    return module.requires_grad_(False)
