"""The shapes a distillation term takes inside a training step (``helper.methods`` calls them).

Each loss file defines its loss (pure functions and a thin ``nn.Module``, pinned by golden tests) and, next to
it, its *term*: the small class that a row of the method table (``helper/method_table.py``) names as builder.

A term never sees the run's configuration. It is built from a :class:`TermContext` (the number of classes, the
per-sample feature shapes, the training pool's sizes) plus exactly the run settings its class lists in ``ARGS``,
passed as keyword arguments of the same names (``ARGS = ("hint_layer",)`` -> ``hint_layer=...``); the class
methods below (``layers``, ``paired_layers``, ``check``) and ``init_learning_rate`` get those same keywords.

* A **logit term** is built as ``Term(ctx, **args)`` and called as ``term(logits_s, logits_t, labels, batch)`` on
  the float32 logits of one batch of single images: ``labels`` is the batch's labels when the method's table row
  says ``needs_labels`` (else None) and ``batch`` the sampler's index tensors (``idx``, CRD's ``contrast_idx``)
  plus ``epoch``, the 1-based pseudo-epoch, when the row says ``needs_epoch``.
* A **logit-pair term** (KD) is built as ``Term(ctx, **args)`` and called as ``term(logits_s, logits_t)`` on each
  (student, teacher) pair that the method exposes (:class:`LogitPairs`, :func:`apply_to_pairs`).
* A **feature term** (white-box) states which entries of the models' feature lists it reads
  (:meth:`FeatureTerm.layers`, the same rule for student and teacher; the teacher's entries are cached once,
  pre-activation maps when ``preact``), is built as ``Term(ctx, signed, **args)`` and called as
  ``term(feats_s, feats_t)`` with those entries in order; it returns the summed, unweighted loss. Two-stage
  methods also give :meth:`FeatureTerm.init_modules` and :meth:`FeatureTerm.init_loss`, trained for
  ``--init_epochs`` pseudo-epochs before the main schedule.

Every term returns its unweighted loss; the method applies the weights, in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TermContext:
    """What a term may read when it is built (besides its own ``ARGS``)."""

    num_classes: int
    student_feat_shapes: list[Shape]  # per-sample shapes of model_s(x, is_feat=True)[0]
    teacher_feat_shapes: list[Shape]
    n_items: int  # items of the cached training pool (images x views): CRD's memory slots
    n_images: int  # distinct training images of the pool


@dataclass
class LogitPairs:
    """The (student, teacher) logit pairs a method's logit-pair terms see: one pair (single images: (s, t); CKD:
    the combined group summaries (Δs, Δt)), or one pair per mixed source with its mixing weight (mixup: (s, t_i),
    weights[i])."""

    student: list[Tensor]
    teacher: list[Tensor]
    weights: Tensor | None = None  # [len(student)] mixing weights; None for one unweighted pair


def apply_to_pairs(term: Callable[[Tensor, Tensor], Tensor], pairs: LogitPairs) -> Tensor:
    """A logit-pair term on a method's pairs: ``term(s, t)`` for one pair, ``sum_i w_i term(s_i, t_i)`` for weighted
    ones (unweighted by the term's own weight, which the method applies)."""
    if pairs.weights is None:
        if len(pairs.student) != 1 or len(pairs.teacher) != 1:
            raise ValueError(f"unweighted logit pairs must be one pair, got {len(pairs.student)}/{len(pairs.teacher)}")
        return term(pairs.student[0], pairs.teacher[0])
    w, k = pairs.weights, pairs.weights.numel()
    if len(pairs.student) != k or len(pairs.teacher) != k:
        raise ValueError(f"{len(pairs.student)} student and {len(pairs.teacher)} teacher logit sets but {k} weights")
    return sum(w[i] * term(pairs.student[i], pairs.teacher[i]) for i in range(k))


class FeatureTerm(nn.Module):
    """Base of the white-box terms: layer selection, up-front checks, and the optional init stage."""

    preact = False  # read pre-activation maps: model(x, is_feat=True, preact=True), teacher cached that way
    ARGS: tuple[str, ...] = ()  # the run settings this term reads, passed by name to __init__ and the methods below

    @classmethod
    def layers(cls, n_feats: int, **args: Any) -> list[int]:
        """Indices into a feature list of ``n_feats`` entries that this term reads (student and teacher alike)."""
        raise NotImplementedError(f"{cls.__name__} must say which feature maps it reads")

    @classmethod
    def paired_layers(cls, n_student: int, n_teacher: int, **args: Any) -> tuple[list[int], list[int]]:
        """(student indices, teacher indices), paired in order and cut to the shorter list."""
        s_idx, t_idx = cls.layers(n_student, **args), cls.layers(n_teacher, **args)
        n = min(len(s_idx), len(t_idx))
        return s_idx[:n], t_idx[:n]

    @classmethod
    def check(cls, s_shapes: Sequence[Shape], t_shapes: Sequence[Shape], **args: Any) -> None:
        """Raise ValueError (one sentence) when this student/teacher pair cannot be used; called before the teacher
        file is read, with the per-sample feature shapes of both architectures."""

    def __init__(self, ctx: TermContext, signed: bool = False, **args: Any) -> None:
        super().__init__()
        s_all, t_all = ctx.student_feat_shapes, ctx.teacher_feat_shapes
        self.student_idx, self.teacher_idx = self.paired_layers(len(s_all), len(t_all), **args)
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

    def init_learning_rate(self, **args: Any) -> float | None:
        """SGD learning rate of the init stage (None: the run's --learning_rate)."""
        return None


def sum_of(losses: Sequence[Tensor]) -> Tensor:
    """The sum of a list of per-layer losses (a tensor even for one layer)."""
    total = losses[0]
    for loss in losses[1:]:
        total = total + loss
    return total


def frozen(module: nn.Module) -> nn.Module:
    """``module`` with every parameter excluded from the main optimiser (the init stage unfreezes them itself)."""
    return module.requires_grad_(False)
