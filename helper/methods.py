"""The method registry: every ``--relational`` and ``--distill`` value is one entry here.

A method object owns "how this method turns a batch into losses": which sampler feeds it,
which extra modules it trains (regressors, embeddings, memory banks), and how a batch of
sampled indices becomes a dict of named, already-weighted loss terms
``{'cls': ..., 'kd': ..., 'rel': ..., 'inter': ...}``. The training loop sums and logs that
dict and never asks which method it is running.

Teacher outputs come only from the cache built before training (``dataset.TrainPool``): no
method ever calls the teacher.

Weights (as published):  total = w_cls·cls + w_kd·kd + w_rel·rel + w_inter·inter, with
w_rel = default[relational]·w_rel_scale and w_inter = default[distill]·w_inter_scale.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crd.criterion import CRDLoss
from dataset import TrainPool
from dataset.augment import DeviceAugment
from dataset.samplers import ClassBalancedSampler, CRDSampler, PlainSampler, TupleSampler, group_feature_mean, group_targets
from distiller_zoo import DIST, CKDLoss, Correlation, DistillKL, HintLoss, MixupLoss, RKDLoss, VIDLoss
from distiller_zoo.mixup import apply_cutmix, cutmix_box, mix_images, sample_mixup_weights
from helper.device import to_device
from helper.errors import UserError
from models import model_dict
from models.util import ConvReg, LinearEmbed

# default weight of each relational method's 'rel' term (scaled by --w_rel_scale)
REL_WEIGHT = {None: 0.0, "ckd": 1.0, "ckd_add": 1.0, "ckd_mixup": 1.0, "ckd_inter": 1.0,
              "mixup": 1.0, "mixup3": 1.0, "cutmix": 1.0, "rkd": 1.0, "dist": 2.0, "crd": 0.8}
# default weight of each --distill method's 'inter' term (scaled by --w_inter_scale)
INTER_WEIGHT = {"kd": 0.0, "hint": 100.0, "correlation": 0.02, "vid": 1.0}
WHITE_BOX = ("hint", "vid", "correlation")
CKD_MODES = {"ckd": "ckd", "ckd_add": "ckd_add", "ckd_mixup": "ckd_mixup", "ckd_inter": "ckd"}


@dataclass
class MethodContext:
    """Everything a method needs to build itself."""

    opt: argparse.Namespace
    student: nn.Module
    pool: TrainPool
    augment: DeviceAugment
    num_classes: int
    student_feat_shapes: list[tuple[int, ...]]
    teacher_feat_shapes: list[tuple[int, ...]]
    device: torch.device


def validate_combination(opt: argparse.Namespace) -> None:
    """Reject incompatible --relational/--distill combinations with one sentence (before any work)."""
    if opt.relational not in REL_WEIGHT:
        raise UserError(f"unknown --relational '{opt.relational}'; choose one of None, {', '.join(k for k in REL_WEIGHT if k)}")
    if opt.distill not in INTER_WEIGHT:
        raise UserError(f"unknown --distill '{opt.distill}'; choose one of {', '.join(INTER_WEIGHT)}")
    if opt.relational == "ckd_inter" and opt.distill not in WHITE_BOX:
        raise UserError("--relational ckd_inter combines CKD with a white-box loss; pass --distill hint, vid or correlation")
    if opt.distill in WHITE_BOX and opt.relational not in (None, "ckd_inter"):
        raise UserError(
            f"--distill {opt.distill} is a white-box method and only combines with --relational None or ckd_inter, "
            f"not {opt.relational}"
        )


def uses_teacher_outputs(opt: argparse.Namespace) -> bool:
    """False only for the cross-entropy-only student (no relational method, no white-box loss, w_kd 0), which
    needs no teacher output at all and therefore makes no teacher call."""
    return not (opt.relational is None and opt.distill == "kd" and float(opt.w_kd) == 0.0)


def teacher_feature_layers(opt: argparse.Namespace, n_teacher_feats: int) -> tuple[int, ...]:
    """Indices of the teacher's feature list that the cache must keep for this method."""
    if opt.distill == "hint":
        return (opt.hint_layer,)
    if opt.distill == "vid":
        return tuple(range(1, n_teacher_feats - 1))
    if opt.distill == "correlation":
        return (n_teacher_feats - 1,)
    return ()


def check_hint_layer(opt: argparse.Namespace, n_student_feats: int, n_teacher_feats: int) -> None:
    """--hint_layer must index both feature lists."""
    if opt.distill == "hint" or opt.relational == "ckd_inter":
        limit = min(n_student_feats, n_teacher_feats)
        if opt.distill == "hint" and not 0 <= opt.hint_layer < limit:
            raise UserError(
                f"--hint_layer {opt.hint_layer} is outside the feature list of {opt.model_s}/{opt.model_t} "
                f"(valid: 0 to {limit - 1})"
            )


def check_hint_layer_early(opt: argparse.Namespace, num_classes: int, image_shape: Sequence[int]) -> None:
    """Check --hint_layer on freshly initialised CPU copies of both architectures, before the teacher file is read or
    called (the global RNG is left as it was)."""
    if opt.distill != "hint":
        return
    with torch.random.fork_rng(devices=[]):
        counts = [len(feature_shapes(model_dict[name](num_classes=num_classes), torch.device("cpu"), tuple(image_shape)))
                  for name in (opt.model_s, opt.model_t)]
    check_hint_layer(opt, counts[0], counts[1])


def _none(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in ("none", "null", ""):
        return None
    return value


def method_label(config: dict[str, Any]) -> str:
    """The method name of a run's resolved flags (the rule is in scripts/summarize.py's docstring)."""
    relational = _none(config.get("relational"))
    distill = _none(config.get("distill")) or "kd"
    w_kd = float(config.get("w_kd") or 0.0)
    if relational is None:
        if distill == "kd":
            return "kd" if w_kd > 0 else "ce"
        label = str(distill)
    else:
        label = str(relational)
        pos_and_neg = int(float(config.get("pos_and_neg", 2) or 2))
        if relational in tuple(CKD_MODES) and pos_and_neg != 2:
            label += f"(P+N={pos_and_neg})"
        if distill != "kd":
            label += f"+{distill}"
    if w_kd > 0:
        label += "+kd"
    if _none(config.get("calibrate")) not in (None, "none"):
        label += "+cal"
    return label


# ---------------------------------------------------------------------------------------------
# white-box terms (the --distill entries other than kd)
# ---------------------------------------------------------------------------------------------


class WhiteBoxTerm(nn.Module):
    """A white-box loss between student features and cached teacher features.

    ``signed=True`` is used by ckd_inter, where the inputs are group-mean feature *differences*
    (signed), so the FitNet regressor must not end in a ReLU.
    """

    def __init__(self, distill: str, ctx: MethodContext, signed: bool) -> None:
        super().__init__()
        self.distill = distill
        s_shapes, t_shapes = ctx.student_feat_shapes, ctx.teacher_feat_shapes
        if distill == "hint":
            self.layers = [(ctx.opt.hint_layer, ctx.opt.hint_layer)]
            s, t = s_shapes[ctx.opt.hint_layer], t_shapes[ctx.opt.hint_layer]
            self.regress = ConvReg((2, *s), (2, *t), use_relu=not signed)
            self.criterion = HintLoss()
        elif distill == "vid":
            pairs = list(zip(range(1, len(s_shapes) - 1), range(1, len(t_shapes) - 1)))
            self.layers = pairs
            self.vid = nn.ModuleList(
                VIDLoss(s_shapes[i][0], t_shapes[j][0], t_shapes[j][0]) for i, j in pairs
            )
        elif distill == "correlation":
            self.layers = [(len(s_shapes) - 1, len(t_shapes) - 1)]
            self.embed_s = LinearEmbed(s_shapes[-1][0], ctx.opt.feat_dim)
            self.embed_t = LinearEmbed(t_shapes[-1][0], ctx.opt.feat_dim)
            self.criterion = Correlation()
        else:
            raise ValueError(f"not a white-box method: {distill}")

    def student_layers(self) -> list[int]:
        return [i for i, _ in self.layers]

    def teacher_layers(self) -> list[int]:
        return [j for _, j in self.layers]

    def forward(self, feats_s: dict[int, Tensor], feats_t: dict[int, Tensor]) -> Tensor:
        if self.distill == "hint":
            i, j = self.layers[0]
            return self.criterion(self.regress(feats_s[i]), feats_t[j])
        if self.distill == "vid":
            return sum(vid(feats_s[i], feats_t[j]) for vid, (i, j) in zip(self.vid, self.layers))
        i, j = self.layers[0]
        return self.criterion(self.embed_s(feats_s[i]), self.embed_t(feats_t[j]))


# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------


class Method(nn.Module):
    """Base: shared weights, the student forward, and the per-method generator for λ draws."""

    sampler_kind = "plain"

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__()
        opt = ctx.opt
        self.ctx = SimpleNamespace(pool=ctx.pool, augment=ctx.augment, num_classes=ctx.num_classes, device=ctx.device)
        self.student = ctx.student
        self.w_cls = float(opt.w_cls)
        self.w_kd = float(opt.w_kd)
        self.w_rel = REL_WEIGHT[opt.relational] * float(opt.w_rel_scale)
        self.w_inter = INTER_WEIGHT[opt.distill] * float(opt.w_inter_scale)
        self.kd_T = float(opt.kd_T)
        self.kl = DistillKL(self.kd_T)
        self.channels_last = bool(getattr(opt, "channels_last", False))
        # λ draws (mixup, cutmix, ckd_mixup) come from their own CPU generator: resumable, device-independent
        self.generator = torch.Generator().manual_seed(int(opt.seed) + 7919)

    def trainable_modules(self) -> list[nn.Module]:
        """Modules besides the student whose parameters the optimiser trains."""
        return [m for name, m in self.named_children() if name not in ("student", "kl")]

    def extra_state(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def images(self, idx: Tensor) -> Tensor:
        """Augmented, normalised student inputs for pool items ``idx`` (any shape; flattened)."""
        x = self.ctx.augment(self.ctx.pool.images[idx.reshape(-1)], self.aug_generator)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def teacher_logits(self, idx: Tensor) -> Tensor:
        return self.ctx.pool.teacher_logits[idx]

    def make_sampler(self, opt: argparse.Namespace, device: torch.device):
        raise NotImplementedError

    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.losses(batch)


class SingleImageMethod(Method):
    """One augmented image per item: CE-only, KD, DIST, RKD, CRD and the white-box losses (FitNet, VID, CC).

    cls = CE(s, y); kd = DistillKL(s, t) (Hinton et al. 2015); rel = the relational loss on logits
    (as in the CKD paper); inter = the white-box loss on features.
    """

    def __init__(self, ctx: MethodContext, rel_loss: nn.Module | None, sampler_kind: str) -> None:
        super().__init__(ctx)
        self.sampler_kind = sampler_kind
        self.rel_loss = rel_loss
        self.white_box = WhiteBoxTerm(ctx.opt.distill, ctx, signed=False) if ctx.opt.distill in WHITE_BOX else None
        self.opt_for_sampler = ctx.opt

    def make_sampler(self, opt: argparse.Namespace, device: torch.device):
        pool = self.ctx.pool
        n_items = pool.labels.shape[0]
        if self.sampler_kind == "crd":
            return CRDSampler(pool.labels.cpu(), opt.batch_size, opt.nce_k, opt.mode, opt.seed, device)
        if self.sampler_kind == "class_balanced":
            return ClassBalancedSampler(pool.labels.cpu(), opt.batch_size, opt.seed, device)
        return PlainSampler(n_items, opt.batch_size, opt.seed, device)

    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        idx = batch["idx"]
        x = self.images(idx)
        labels = self.ctx.pool.labels[idx]
        t_logits = self.teacher_logits(idx)
        terms: dict[str, Tensor] = {}
        if self.white_box is not None and self.w_inter != 0:
            feats, logits = self.student(x, is_feat=True)
            feats_s = {i: feats[i] for i in self.white_box.student_layers()}
            feats_t = {j: self.ctx.pool.teacher_feats[j][idx].float() for j in self.white_box.teacher_layers()}
            terms["inter"] = self.w_inter * self.white_box(feats_s, feats_t)
        else:
            logits = self.student(x)
        logits = logits.float()
        if self.w_cls != 0:
            terms["cls"] = self.w_cls * F.cross_entropy(logits, labels)
        if self.w_kd != 0:
            terms["kd"] = self.w_kd * self.kl(logits, t_logits)
        if self.rel_loss is not None and self.w_rel != 0:
            if isinstance(self.rel_loss, CRDLoss):
                rel = self.rel_loss(logits, t_logits, idx, batch["contrast_idx"])
            else:
                rel = self.rel_loss(logits, t_logits)
            terms["rel"] = self.w_rel * rel
        return terms


class CKDMethod(Method):
    """Comparative KD (Wilf et al.): the student's combination of group-mean logits of a positive and
    a negative group must match the teacher's (cached) and the groups' label histograms.

    Positive and negative groups go through the student in separate forward passes, as published.
    ckd_inter adds a white-box loss on the group-mean feature *differences*.
    """

    sampler_kind = "tuples"

    def __init__(self, ctx: MethodContext, mode: str, with_inter: bool) -> None:
        super().__init__(ctx)
        opt = ctx.opt
        self.mode = mode
        self.n_neg = opt.pos_and_neg // 2
        self.n_pos = opt.pos_and_neg - self.n_neg
        self.ckd = CKDLoss(mode=mode, w_cls=self.w_cls, w_rel=self.w_rel, w_kd=self.w_kd, T=self.kd_T)
        self.white_box = WhiteBoxTerm(opt.distill, ctx, signed=True) if with_inter else None

    def make_sampler(self, opt: argparse.Namespace, device: torch.device):
        return TupleSampler(self.ctx.pool.image_ids, (self.n_pos, self.n_neg), opt.max_rel_samples, opt.batch_size,
                            opt.seed, device)

    def _group_forward(self, groups: Tensor, want_feats: bool) -> tuple[Tensor, dict[int, Tensor]]:
        """Student group means of logits (and of the white-box features) for groups [B, g]."""
        b, g = groups.shape
        x = self.images(groups)
        if want_feats:
            feats, logits = self.student(x, is_feat=True)
            means = {i: feats[i].reshape(b, g, *feats[i].shape[1:]).mean(1) for i in self.white_box.student_layers()}
        else:
            logits, means = self.student(x), {}
        return logits.float().reshape(b, g, -1).mean(1), means

    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        groups = batch["groups"]
        pos, neg = groups[:, : self.n_pos], groups[:, self.n_pos:]
        want_feats = self.white_box is not None and self.w_inter != 0
        s_pos, f_pos = self._group_forward(pos, want_feats)
        s_neg, f_neg = self._group_forward(neg, want_feats)
        y_pos, t_pos = group_targets(self.ctx.pool, pos, self.ctx.num_classes)
        y_neg, t_neg = group_targets(self.ctx.pool, neg, self.ctx.num_classes)
        lam = None
        if self.mode == "ckd_mixup":
            lam = to_device(torch.rand((), generator=self.generator), s_pos.device)  # λ ~ Beta(1,1), one per batch
        terms = dict(self.ckd(s_pos, s_neg, t_pos, t_neg, y_pos, y_neg, lam=lam))
        if want_feats:
            feats_t = self.ctx.pool.teacher_feats
            d_s = {i: f_pos[i] - f_neg[i] for i in f_pos}
            d_t = {j: (group_feature_mean(feats_t[j], pos) - group_feature_mean(feats_t[j], neg)).float()
                   for j in self.white_box.teacher_layers()}
            terms["inter"] = self.w_inter * self.white_box(d_s, d_t)
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
        self.mix_loss = MixupLoss(w_cls=self.w_cls, w_rel=self.w_rel, w_kd=self.w_kd, loss_fn=ctx.opt.loss_fn, T=self.kd_T)

    def make_sampler(self, opt: argparse.Namespace, device: torch.device):
        return TupleSampler(self.ctx.pool.image_ids, (1,) * self.n_images, opt.max_rel_samples, opt.batch_size,
                            opt.seed, device)

    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        groups = batch["groups"]
        b = groups.shape[0]
        x = self.images(groups.t()).reshape(self.n_images, b, *self.ctx.pool.images.shape[1:])
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
        logits = self.student(mixed).float()
        cols = [groups[:, k] for k in range(self.n_images)]
        t_logits = [self.teacher_logits(c) for c in cols]
        labels = [self.ctx.pool.labels[c] for c in cols]
        return dict(self.mix_loss(logits, t_logits, labels, to_device(weights, logits.device)))


# ---------------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------------

def _crd_loss(ctx: MethodContext) -> nn.Module:
    opt = ctx.opt
    crd_opt = SimpleNamespace(s_dim=ctx.num_classes, t_dim=ctx.num_classes, feat_dim=opt.feat_dim, nce_k=opt.nce_k,
                              nce_t=opt.nce_t, nce_m=opt.nce_m, n_data=int(ctx.pool.labels.shape[0]))
    return CRDLoss(crd_opt)


METHODS: dict[str | None, Callable[[MethodContext], Method]] = {
    None: lambda ctx: SingleImageMethod(ctx, None, "plain"),
    "rkd": lambda ctx: SingleImageMethod(ctx, RKDLoss(), "class_balanced"),
    "dist": lambda ctx: SingleImageMethod(ctx, DIST(), "plain"),
    "crd": lambda ctx: SingleImageMethod(ctx, _crd_loss(ctx), "crd"),
    "ckd": lambda ctx: CKDMethod(ctx, "ckd", with_inter=False),
    "ckd_add": lambda ctx: CKDMethod(ctx, "ckd_add", with_inter=False),
    "ckd_mixup": lambda ctx: CKDMethod(ctx, "ckd_mixup", with_inter=False),
    "ckd_inter": lambda ctx: CKDMethod(ctx, "ckd", with_inter=True),
    "mixup": lambda ctx: MixMethod(ctx, 2, cutmix=False),
    "mixup3": lambda ctx: MixMethod(ctx, 3, cutmix=False),
    "cutmix": lambda ctx: MixMethod(ctx, 2, cutmix=True),
}


def build_method(ctx: MethodContext, aug_generator: torch.Generator) -> Method:
    """The registry entry for ``ctx.opt.relational`` (with ``ctx.opt.distill``), on ``ctx.device``."""
    validate_combination(ctx.opt)
    method = METHODS[ctx.opt.relational](ctx)
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
