"""Methods built from the method table (``helper/method_table.py``): one row per ``--relational``/``--distill`` value.

A method object owns "how this method turns a batch into losses": which sampler feeds it, which extra modules it
trains (regressors, embeddings, memory banks), and how a batch of sampled indices becomes a dict of named loss
terms ``{'cls': ..., 'kd': ..., 'rel': ..., 'inter': ...}``. The training loop sums and logs that dict and never
asks which method it is running. Each step is split in two: :meth:`Method.inputs` (the data path: sampled indices
-> augmented images, labels and cached teacher outputs, no student) and :meth:`Method.losses_from` (the student
forwards and the unweighted loss terms); ``benchmarks/bench.py`` times the first alone. :meth:`Method.losses` applies
the weights, in one place (:meth:`Method.weighted`).

Three shapes of method (the table's ``kind``):
- logit terms (rkd, dist, crd, dkd, ...) and the white-box terms (``--distill``) run inside
  :class:`SingleImageMethod`, which calls every logit term the same way, ``term(logits_s, logits_t, labels, batch)``,
  and every white-box term as ``term(feats_s, feats_t)`` (see ``distiller_zoo/terms.py``);
- relational methods (CKD, mixup, CutMix) are methods of their own, built by the ``build_*`` functions below;
- logit-pair terms (KD, ``--w_kd``) run with every method: each method hands the (student, teacher) logit pairs of
  its step to :meth:`Method.pair_losses` (single images (s, t), CKD (Δs, Δt), mixup (s, t_i) with weights w_i).

A term gets its context (:meth:`MethodContext.term_context`: classes, feature shapes, pool sizes) and exactly the
run settings its class lists in ``ARGS`` (:func:`term_args`); only this module reads the run's configuration.

Teacher outputs come only from the cache built before training (``dataset.TrainPool``): no method ever calls the
teacher, the init stage of two-stage methods included.

Weights (as published):  total = w_cls·cls + w_kd·kd + w_rel·rel + w_inter·inter, with
w_rel = row[relational].weight·w_rel_scale, w_inter = row[distill].weight·w_inter_scale and w_kd = row[kd].weight·w_kd
(each row's ``scale_flag``). A term whose weight is 0 is not computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.device import to_device
from core.errors import UserError
from dataset import TrainPool
from dataset.augment import DeviceAugment
from dataset.samplers import ClassBalancedSampler, CRDSampler, PlainSampler, TupleSampler, steps_per_epoch
from distiller_zoo import CKDLoss, FeatureTerm, MixupLoss, ckd_group_sizes, group_mean, label_histogram
from distiller_zoo.mixup import apply_cutmix, cutmix_box, mix_images, sample_mixup_weights
from distiller_zoo.terms import LogitPairs, TermContext, apply_to_pairs
from helper.engine import NonFiniteLoss, train_step
from helper.method_table import LOGIT_PAIR, MethodRow, images_per_item, queries_teacher, resolve, rows
from helper.method_table import method_label as method_label  # noqa: F401  (re-exported for callers of helper.methods)
from models import model_dict

if TYPE_CHECKING:
    from helper.config import StudentConfig

# the init stage draws its own shuffles: the seed of its sampler is --seed plus this
INIT_SAMPLER_SEED_OFFSET = 31337


@dataclass
class MethodContext:
    """Everything a method needs to build itself; its terms get :meth:`term_context` and their ``ARGS`` only."""

    opt: StudentConfig  # the run's configuration: read by the method layer, never handed to a term
    student: nn.Module
    pool: TrainPool
    augment: DeviceAugment
    num_classes: int
    student_feat_shapes: list[tuple[int, ...]]
    teacher_feat_shapes: list[tuple[int, ...]]
    device: torch.device

    def term_context(self) -> TermContext:
        """What a term sees of the run besides its ``ARGS``: classes, feature shapes, the pool's sizes."""
        return TermContext(num_classes=int(self.num_classes), student_feat_shapes=list(self.student_feat_shapes),
                           teacher_feat_shapes=list(self.teacher_feat_shapes), n_items=int(self.pool.n_items),
                           n_images=int(self.pool.n_images))


def term_args(term: Any, opt: StudentConfig) -> dict[str, Any]:
    """The run settings a term class declares in ``ARGS``, by name: all a term is given of the run's configuration."""
    return {name: getattr(opt, name) for name in getattr(term, "ARGS", ())}


def build_term(row: MethodRow, ctx: MethodContext, **extra: Any) -> nn.Module:
    """The term of a table row: ``Term(ctx.term_context(), **extra, **its ARGS)``."""
    term = resolve(row.builder)
    return term(ctx.term_context(), **extra, **term_args(term, ctx.opt))


def uses_teacher_outputs(opt: StudentConfig) -> bool:
    """False only for the cross-entropy-only student (no relational method, no white-box loss, no logit-pair term:
    w_kd 0), which needs no teacher output at all and therefore makes no teacher call."""
    return queries_teacher(opt.method, {row.weight_flag: getattr(opt, row.scale_flag) for row in rows(kind=LOGIT_PAIR)})


def white_box_class(opt: StudentConfig) -> type[FeatureTerm] | None:
    """The term class of ``--distill`` (None for kd, i.e. no white-box loss)."""
    row = opt.method.distill
    return None if row is None else resolve(row.builder)


def teacher_feature_layers(opt: StudentConfig, n_teacher_feats: int) -> tuple[int, ...]:
    """Indices of the teacher's feature list that the cache must keep for this method (stated by its term class)."""
    term = white_box_class(opt)
    return () if term is None else tuple(term.layers(n_teacher_feats, **term_args(term, opt)))


def teacher_needs_preact(opt: StudentConfig) -> bool:
    """Whether the cached teacher feature maps are the pre-activation ones (``model(x, is_feat=True, preact=True)``)."""
    term = white_box_class(opt)
    return bool(term is not None and term.preact)


def check_white_box(opt: StudentConfig, student_shapes: Sequence[tuple[int, ...]],
                    teacher_shapes: Sequence[tuple[int, ...]]) -> None:
    """The white-box term's own check of this student/teacher pair (layer indices, channel counts)."""
    term = white_box_class(opt)
    if term is None:
        return
    try:
        term.check(list(student_shapes), list(teacher_shapes), **term_args(term, opt))
    except ValueError as err:
        raise UserError(str(err)) from err


def check_white_box_early(opt: StudentConfig, num_classes: int, image_shape: Sequence[int]) -> None:
    """:func:`check_white_box` on freshly initialised CPU copies of both architectures, before the teacher file is read
    or called (the global RNG is left as it was)."""
    if white_box_class(opt) is None:
        return
    with torch.random.fork_rng(devices=[]):
        shapes = [feature_shapes(model_dict[name](num_classes=num_classes), torch.device("cpu"), tuple(image_shape))
                  for name in (opt.model_s, opt.model_t)]
    check_white_box(opt, shapes[0], shapes[1])


# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------


class Method(nn.Module):
    """Base: the weights (applied in :meth:`weighted`, the one place), the student forward, the white-box term, the
    logit-pair terms (KD), and the per-method generator for λ draws."""

    sampler_kind = "plain"

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__()
        opt = ctx.opt
        self.ctx = SimpleNamespace(pool=ctx.pool, augment=ctx.augment, num_classes=ctx.num_classes, device=ctx.device)
        self.student = ctx.student
        self.rel_row: MethodRow | None = opt.method.relational
        self.distill_row: MethodRow | None = opt.method.distill
        pair_rows = rows(kind=LOGIT_PAIR)
        # each term's weight: w_cls, then a row's default weight times its scale flag (0 for no row)
        self.weights: dict[str, float] = {
            "cls": float(opt.w_cls),
            "rel": (self.rel_row.weight if self.rel_row else 0.0) * float(opt.w_rel_scale),
            "inter": (self.distill_row.weight if self.distill_row else 0.0) * float(opt.w_inter_scale),
            **{row.term: row.weight * float(getattr(opt, row.scale_flag)) for row in pair_rows},
        }
        # the logit-pair terms with a non-zero weight (KD with --w_kd), applied by pair_losses
        self.pair_terms = nn.ModuleDict({row.term: build_term(row, ctx) for row in pair_rows if self.active(row.term)})
        self.channels_last = bool(getattr(opt, "channels_last", False))
        self.white_box: FeatureTerm | None = None
        self.epoch = 1  # the 1-based pseudo-epoch, set by the trainer (set_epoch)
        # λ draws (mixup, cutmix, ckd_mixup) come from their own CPU generator: resumable, device-independent
        self.generator = torch.Generator().manual_seed(int(opt.seed) + 7919)

    def _add_white_box(self, ctx: MethodContext, signed: bool) -> None:
        """Build the ``--distill`` term (call it where its parameters were always drawn from the global RNG)."""
        if self.distill_row is not None:
            self.white_box = build_term(self.distill_row, ctx, signed=signed)

    def active(self, term: str) -> bool:
        """Whether the loss term ``term`` has a non-zero weight (a term with weight 0 is not computed)."""
        return self.weights.get(term, 0.0) != 0

    @property
    def wants_feats(self) -> bool:
        """Whether the student forward must return feature maps (a white-box term with a non-zero weight)."""
        return self.white_box is not None and self.active("inter")

    def pair_losses(self, pairs: LogitPairs) -> dict[str, Tensor]:
        """The unweighted logit-pair terms (KD) on this step's logit pairs: the one path by which every method applies
        them."""
        return {name: apply_to_pairs(term, pairs) for name, term in self.pair_terms.items()}

    def weighted(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """The one place the weights are applied: ``weight * term``, in the order the method computed the terms."""
        return {name: self.weights[name] * term for name, term in terms.items()}

    def trainable_modules(self) -> nn.ModuleDict:
        """The modules besides the student whose parameters the optimiser trains (regressors, embeddings, CRD memory),
        by name: the run saves, restores and optimises them as one ``extras`` dict."""
        return nn.ModuleDict({name: m for name, m in self.named_children() if name not in ("student", "pair_terms")})

    def extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"].cpu())  # a checkpoint read onto CUDA holds it there

    def set_epoch(self, epoch: int) -> None:
        """The 1-based pseudo-epoch of the coming steps (read by terms whose table row says needs_epoch)."""
        self.epoch = int(epoch)

    def images(self, idx: Tensor) -> Tensor:
        """Augmented, normalised student inputs for pool items ``idx`` (any shape; flattened)."""
        x = self.ctx.augment(self.ctx.pool.images[idx.reshape(-1)], self.aug_generator)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def teacher_logits(self, idx: Tensor) -> Tensor:
        return self.ctx.pool.teacher_logits[idx]

    def teacher_feats(self, idx: Tensor) -> list[Tensor]:
        """The white-box term's cached teacher maps of pool items ``idx`` (float32)."""
        assert self.white_box is not None
        return [self.ctx.pool.teacher_feats[j][idx].float() for j in self.white_box.teacher_idx]

    def student_feats(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """(the white-box term's student maps, logits) of one student forward."""
        assert self.white_box is not None
        feats, logits = self.student(x, is_feat=True, preact=self.white_box.preact)
        return [feats[i] for i in self.white_box.student_idx], logits

    def make_sampler(self, opt: StudentConfig, device: torch.device):
        raise NotImplementedError

    def inputs(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        """The data path of one step: augmented images, labels and cached teacher outputs (no student call)."""
        raise NotImplementedError

    def student_inputs(self, inputs: dict[str, Any]) -> list[tuple[Tensor, bool]]:
        """(images, with feature maps) of each student forward that :meth:`losses_from` makes on ``inputs``."""
        raise NotImplementedError

    def losses_from(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        """The unweighted loss terms of one step, by name, each computed only when its weight is non-zero."""
        raise NotImplementedError

    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The weighted loss terms of one step (``train_step`` sums them)."""
        return self.weighted(self.losses_from(self.inputs(batch)))

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.losses(batch)

    # ------------------------------------------------------------------------------ init stage
    def init_stage(self, opt: StudentConfig) -> InitStage | None:
        """The init stage of a two-stage white-box method (its table row says init_stage), or None."""
        if self.white_box is None or self.distill_row is None or not self.distill_row.init_stage or opt.init_epochs < 1:
            return None
        return InitStage(self, opt)


class InitStage:
    """The init stage of a two-stage method (AB, FT, FSP; RepDistiller's ``init``): the term's init modules are trained
    alone on its init loss for ``--init_epochs`` pseudo-epochs, from the cache (no teacher call), on shuffled single
    images, with SGD at the term's init learning rate; the student is in eval mode, the trained modules in train
    mode. Afterwards each parameter's ``requires_grad`` is what it was before (frozen modules stay out of the main
    optimiser)."""

    def __init__(self, method: Method, opt: StudentConfig) -> None:
        assert method.white_box is not None
        self.method = method
        self.term = method.white_box
        self.epochs = int(opt.init_epochs)
        self.modules = self.term.init_modules(method.student)
        self.params = list(dict.fromkeys(p for m in self.modules for p in m.parameters()))
        lr = self.term.init_learning_rate(**term_args(type(self.term), opt))
        self.optimizer = torch.optim.SGD(self.params, lr=float(opt.learning_rate) if lr is None else lr,
                                         momentum=opt.momentum, weight_decay=opt.weight_decay)
        pool = method.ctx.pool
        self.sampler = PlainSampler(pool.n_items, opt.batch_size, int(opt.seed) + INIT_SAMPLER_SEED_OFFSET,
                                    method.ctx.device)
        self.steps_per_epoch = steps_per_epoch(pool.n_images, opt.batch_size)

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        idx = batch["idx"]
        x = self.method.images(idx)
        feats_t = self.method.teacher_feats(idx)
        feats_s, _ = self.method.student_feats(x)
        return {"init": self.term.init_loss(feats_s, feats_t)}

    def run(self, device: torch.device, amp: bool, stop_requested: Callable[[], bool]) -> bool:
        """Train the init modules; False when a stop was requested (nothing of the stage is kept then)."""
        saved = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(True)
        self.method.student.eval()
        for module in self.modules:
            module.train()
        try:
            for epoch in range(1, self.epochs + 1):
                total = torch.zeros((), device=device)
                for _ in range(self.steps_per_epoch):
                    total = total + train_step(self, self.optimizer, self.sampler.next_batch(), device, amp)["train_loss"]
                    if stop_requested():
                        return False
                mean = total.item() / self.steps_per_epoch
                if not torch.isfinite(torch.tensor(mean)):
                    raise NonFiniteLoss(f"the init-stage loss of --distill {self.method.distill_row.name} became non-finite "
                                        f"at init epoch {epoch}; likely cause: the init modules' weights diverged: lower "
                                        f"--learning_rate, then start a new run")
                print(f"init epoch {epoch:3d}/{self.epochs} | {self.method.distill_row.name} init loss {mean:.4f}", flush=True)
        finally:
            for p, requires_grad in zip(self.params, saved):
                p.requires_grad_(requires_grad)
            self.method.student.train()
        return True


class SingleImageMethod(Method):
    """One augmented image per item: CE-only, KD, the logit terms (RKD, DIST, CRD, DKD, ...) and the white-box terms.

    cls = CE(s, y); kd (and any logit-pair term, on standardized logits with --logit_stand) on the pair (s, t); rel = the
    logit term ``term(logits_s, logits_t, labels, batch)``; inter = the white-box term on features. A term whose row
    sets ``image_views`` V > 1 (MLKD) gets V views of each sampled image, view-major, and cls/kd average over all of them.
    """

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        row = self.rel_row
        self.sampler_kind = row.sampler if row is not None else "plain"
        self.image_views = row.image_views if row is not None else 1  # >1: each sampled image in that many views
        self.rel_loss = build_term(row, ctx) if row is not None else None
        self._add_white_box(ctx, signed=False)

    def make_sampler(self, opt: StudentConfig, device: torch.device):
        pool = self.ctx.pool
        n_items = pool.labels.shape[0]
        if self.sampler_kind == "crd":
            return CRDSampler(pool.labels.cpu(), opt.batch_size, opt.nce_k, opt.mode, opt.seed, device)
        if self.sampler_kind == "class_balanced":
            return ClassBalancedSampler(pool.labels.cpu(), opt.batch_size, opt.seed, device)
        if self.sampler_kind != "plain":
            raise ValueError(f"a logit term cannot use the '{self.sampler_kind}' sampler; use plain, class_balanced or crd")
        if self.image_views > 1:  # draw images; inputs() takes image_views pool items (views) of each
            return PlainSampler(pool.n_images, opt.batch_size, opt.seed, device)
        return PlainSampler(n_items, opt.batch_size, opt.seed, device)

    def inputs(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        idx = batch["idx"]
        if self.image_views > 1:  # [B] images -> [image_views * B] items, view-major
            idx = self.ctx.pool.view_items(idx, self.image_views)
        out: dict[str, Any] = {"batch": batch, "x": self.images(idx), "labels": self.ctx.pool.labels[idx],
                               "t_logits": self.teacher_logits(idx)}
        if self.wants_feats:
            out["feats_t"] = self.teacher_feats(idx)
        return out

    def student_inputs(self, inputs: dict[str, Any]) -> list[tuple[Tensor, bool]]:
        return [(inputs["x"], self.wants_feats)]

    def losses_from(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        labels, t_logits = inputs["labels"], inputs["t_logits"]
        terms: dict[str, Tensor] = {}
        if self.wants_feats:
            feats_s, logits = self.student_feats(inputs["x"])
            terms["inter"] = self.white_box(feats_s, inputs["feats_t"])
        else:
            logits = self.student(inputs["x"])
        logits = logits.float()
        if self.active("cls"):
            terms["cls"] = F.cross_entropy(logits, labels)
        terms.update(self.pair_losses(LogitPairs([logits], [t_logits])))
        if self.rel_loss is not None and self.active("rel"):
            row = self.rel_row
            term_batch = {**inputs["batch"], "epoch": self.epoch} if row.needs_epoch else inputs["batch"]
            terms["rel"] = self.rel_loss(logits, t_logits, labels if row.needs_labels else None, term_batch)
        return terms


class CKDMethod(Method):
    """Comparative KD (Wilf et al.): the student's combination of group-mean logits of a positive and
    a negative group must match the teacher's (cached) and the groups' label histograms.

    Positive and negative groups go through the student in separate forward passes, as published.
    ckd_inter adds a white-box loss on the group-mean feature *differences*.
    """

    sampler_kind = "tuples"

    def __init__(self, ctx: MethodContext, mode: str) -> None:
        super().__init__(ctx)
        self.mode = mode
        self.n_pos, self.n_neg = ckd_group_sizes(ctx.opt.pos_and_neg)
        self.ckd = CKDLoss(mode=mode, terms=tuple(t for t in CKDLoss.TERMS if self.active(t)))
        if self.rel_row is not None and self.rel_row.with_white_box:
            self._add_white_box(ctx, signed=True)

    def make_sampler(self, opt: StudentConfig, device: torch.device):
        return TupleSampler(self.ctx.pool.image_ids, (self.n_pos, self.n_neg), opt.max_rel_samples, opt.batch_size,
                            opt.seed, device)

    def inputs(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        groups = batch["groups"]
        pos, neg = groups[:, : self.n_pos], groups[:, self.n_pos:]
        out: dict[str, Any] = {"pos": pos, "neg": neg, "x_pos": self.images(pos), "x_neg": self.images(neg)}
        pool, num_classes = self.ctx.pool, self.ctx.num_classes
        out["y_pos"], out["t_pos"] = label_histogram(pool.labels, pos, num_classes), group_mean(pool.teacher_logits, pos)
        out["y_neg"], out["t_neg"] = label_histogram(pool.labels, neg, num_classes), group_mean(pool.teacher_logits, neg)
        out["lam"] = None
        if self.mode == "ckd_mixup":
            out["lam"] = to_device(torch.rand((), generator=self.generator), pos.device)  # λ ~ Beta(1,1), one per batch
        if self.wants_feats:
            feats_t = self.ctx.pool.teacher_feats
            out["d_t"] = [(group_mean(feats_t[j], pos) - group_mean(feats_t[j], neg)).float()
                          for j in self.white_box.teacher_idx]
        return out

    def student_inputs(self, inputs: dict[str, Any]) -> list[tuple[Tensor, bool]]:
        return [(inputs["x_pos"], self.wants_feats), (inputs["x_neg"], self.wants_feats)]

    def _group_forward(self, x: Tensor, groups: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Student group means of logits (and of the white-box term's feature maps) for groups [B, g]."""
        b, g = groups.shape
        if self.wants_feats:
            feats, logits = self.student_feats(x)
            means = [f.reshape(b, g, *f.shape[1:]).mean(1) for f in feats]
        else:
            logits, means = self.student(x), []
        return logits.float().reshape(b, g, -1).mean(1), means

    def losses_from(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        s_pos, f_pos = self._group_forward(inputs["x_pos"], inputs["pos"])
        s_neg, f_neg = self._group_forward(inputs["x_neg"], inputs["neg"])
        delta_s, delta_t, delta_y = self.ckd.combined(s_pos, s_neg, inputs["t_pos"], inputs["t_neg"], inputs["y_pos"],
                                                      inputs["y_neg"], lam=inputs["lam"], teacher=bool(self.pair_terms))
        terms = self.ckd.terms_of(delta_s, delta_t, delta_y)
        if self.pair_terms:
            terms.update(self.pair_losses(LogitPairs([delta_s], [delta_t])))
        if self.wants_feats:
            d_s = [a - b for a, b in zip(f_pos, f_neg)]
            terms["inter"] = self.white_box(d_s, inputs["d_t"])
        return terms


class MixMethod(Method):
    """mixup (Zhang et al. 2018), three-image mixup, and CutMix (Yun et al. 2019) on cached teacher logits.

    The student sees the mixed image; the targets are the same mixture of the per-image labels and of
    the per-image cached teacher outputs (the teacher is never called on a mixed image).
    """

    sampler_kind = "tuples"

    def __init__(self, ctx: MethodContext, n_images: int, cutmix: bool) -> None:
        super().__init__(ctx)
        self.n_images = n_images
        self.cutmix = cutmix
        self.mix_loss = MixupLoss(terms=tuple(t for t in MixupLoss.TERMS if self.active(t)), loss_fn=ctx.opt.loss_fn,
                                  T=float(ctx.opt.kd_T))

    def make_sampler(self, opt: StudentConfig, device: torch.device):
        return TupleSampler(self.ctx.pool.image_ids, (1,) * self.n_images, opt.max_rel_samples, opt.batch_size,
                            opt.seed, device)

    def inputs(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        groups = batch["groups"]
        b = groups.shape[0]
        x = self.images(groups.t())
        x = x.reshape(self.n_images, b, *x.shape[1:])  # the augmented crops (Cars: 56x56 of the 64x64 items)
        if self.cutmix:
            lam = sample_mixup_weights(2, self.generator)[0]
            box = cutmix_box(x.shape[-2], x.shape[-1], float(lam), self.generator)
            mixed = apply_cutmix(x[0], x[1], box)
            lam_adj = torch.tensor(box[4], dtype=torch.float32)
            weights = torch.stack([lam_adj, 1 - lam_adj])
        else:
            weights = sample_mixup_weights(self.n_images, self.generator)
            mixed = mix_images(list(x), to_device(weights, x.device))  # non-blocking on CUDA: no stream sync per step
        if self.channels_last:
            mixed = mixed.contiguous(memory_format=torch.channels_last)
        cols = [groups[:, k] for k in range(self.n_images)]
        return {"mixed": mixed, "weights": weights, "t_logits": [self.teacher_logits(c) for c in cols],
                "labels": [self.ctx.pool.labels[c] for c in cols]}

    def student_inputs(self, inputs: dict[str, Any]) -> list[tuple[Tensor, bool]]:
        return [(inputs["mixed"], False)]

    def losses_from(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        logits = self.student(inputs["mixed"]).float()
        weights = to_device(inputs["weights"], logits.device)
        terms = self.mix_loss(logits, inputs["t_logits"], inputs["labels"], weights)
        if self.pair_terms:  # each source's pair (s, t_i) with its mixing weight
            pairs = LogitPairs([logits] * self.n_images, list(inputs["t_logits"]),
                               weights.to(device=logits.device, dtype=logits.dtype))
            terms.update(self.pair_losses(pairs))
        return terms


# ---------------------------------------------------------------------------------------------
# builders of the relational rows (named by helper/method_table.py)
# ---------------------------------------------------------------------------------------------


def build_ckd(ctx: MethodContext) -> Method:
    return CKDMethod(ctx, "ckd")


def build_ckd_add(ctx: MethodContext) -> Method:
    return CKDMethod(ctx, "ckd_add")


def build_ckd_mixup(ctx: MethodContext) -> Method:
    return CKDMethod(ctx, "ckd_mixup")


def build_ckd_inter(ctx: MethodContext) -> Method:
    return CKDMethod(ctx, "ckd")  # plus the --distill term on group-mean differences (row: with_white_box)


def _mixed_images(ctx: MethodContext) -> int:
    """Images per mixed input: the tuple size of the row's sampler (pairs or triples)."""
    return images_per_item(ctx.opt.method.sampler, ctx.opt.pos_and_neg)


def build_mixup(ctx: MethodContext) -> Method:
    return MixMethod(ctx, _mixed_images(ctx), cutmix=False)


def build_mixup3(ctx: MethodContext) -> Method:
    return MixMethod(ctx, _mixed_images(ctx), cutmix=False)


def build_cutmix(ctx: MethodContext) -> Method:
    return MixMethod(ctx, _mixed_images(ctx), cutmix=True)


def build_method(ctx: MethodContext, aug_generator: torch.Generator) -> Method:
    """The method of ``ctx.opt.relational`` (with ``ctx.opt.distill``) from its table row, on ``ctx.device``."""
    row = ctx.opt.method.relational
    method = resolve(row.builder)(ctx) if row is not None and row.kind == "relational" else SingleImageMethod(ctx)
    method.aug_generator = aug_generator
    return method.to(ctx.device)


def feature_shapes(model: nn.Module, device: torch.device, image_shape: Sequence[int] = (3, 32, 32)) -> list[tuple[int, ...]]:
    """Per-sample shapes of a model's feature list, from one eval-mode forward of two blank images."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        feats, _ = model(torch.zeros(2, *image_shape, device=device), is_feat=True)
    model.train(was_training)
    return [tuple(f.shape[1:]) for f in feats]
