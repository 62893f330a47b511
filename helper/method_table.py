"""The method table: every ``--relational`` and ``--distill`` value is one row here, and nothing else lists them.

A row says what kind of term the method adds, its default weight, which sampler feeds it, which inputs its
term reads (labels, the pseudo-epoch), whether it trains an init stage first, which relational methods it
combines with, and where its builder lives (``"module:callable"``, so this module imports no torch and the
flag parser, the summaries and the sweep checks stay light). ``helper.methods`` builds a method from its
row; ``helper.options`` takes the flag choices and help from here; ``scripts/summarize.py`` its labels; the
tests their list of combinations and the README check.

Kinds:
  logit       a term on the logits of a batch of single images, ``term(logits_s, logits_t, labels, batch)``
              (``--relational``; 'rel' loss term, weight scaled by --w_rel_scale)
  relational  a method with its own batch structure (CKD groups, mixed images): the builder returns the
              whole method (``--relational``)
  white-box   a loss between student and cached teacher feature maps (``--distill``; 'inter' loss term,
              weight scaled by --w_inter_scale); combines with --relational None, or with a relational row
              whose ``with_white_box`` is set (ckd_inter: group-mean feature differences)
  logit-pair  a term on the (student, teacher) logit pairs that every method exposes, ``term(logits_s, logits_t)``:
              single images (s, t), CKD the combined group summaries (Δs, Δt), mixup each source's (s, t_i)
              weighted by its mixing weight. Not chosen by --relational/--distill: it is on when its weight
              flag (``weight_flag``, KD: --w_kd) is non-zero, with every method; its loss term is its name

A term receives, besides its context (``distiller_zoo.terms.TermContext``), exactly the run settings its class
lists in ``ARGS``, as keyword arguments (``helper.methods.term_args``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import UserError

LOGIT = "logit"
RELATIONAL = "relational"
WHITE_BOX = "white-box"
LOGIT_PAIR = "logit-pair"
KINDS = (LOGIT, RELATIONAL, WHITE_BOX, LOGIT_PAIR)
# the samplers of dataset/samplers.py a row may name
SAMPLERS = ("plain", "class_balanced", "crd", "ckd_tuples", "pairs", "triples")
# distinct images in one item of a tuple sampler (ckd_tuples: --pos_and_neg); the other samplers draw single images
TUPLE_IMAGES = {"pairs": 2, "triples": 3}

# the values that mean "no method" for each flag: no relational term / no white-box term (KD is --w_kd)
NO_RELATIONAL = None
NO_DISTILL = "kd"


def none_or_str(value: Any) -> Any:
    """``None``/``none``/``null``/empty (how W&B agents and results files write a missing method) as None; any other
    value unchanged. Also the ``type`` of ``--relational`` (helper/options.py)."""
    if isinstance(value, str) and value.strip().lower() in ("none", "null", ""):
        return None
    return value


@dataclass(frozen=True)
class MethodRow:
    """One method: a ``--relational`` value (kinds logit and relational), a ``--distill`` value (white-box), or a
    logit-pair term switched on by its weight flag (KD: ``--w_kd``)."""

    name: str
    kind: str
    weight: float  # default weight of its term (w_rel, w_inter or the logit-pair term's, before its weight flag)
    sampler: str  # which sampler feeds a training step
    builder: str  # "module:callable": logit term (ctx) -> module, relational (ctx) -> Method, white-box class
    summary: str  # one line for --help and the README
    needs_labels: bool = False  # a logit term that reads the labels gets them (others get None)
    needs_epoch: bool = False  # a logit term that reads batch['epoch'] (the 1-based pseudo-epoch) gets it
    init_stage: bool = False  # white-box: trains its init modules for --init_epochs before the main schedule
    with_white_box: bool = False  # relational: needs a white-box --distill, applied to group-mean differences
    not_on_differences: str = ""  # white-box: why it cannot run on group-mean differences (empty: it can)
    weight_flag: str = ""  # logit-pair: the flag that scales its weight and switches it on (--w_kd)
    logit_stand_ok: bool = False  # logit or logit-pair term: honours --logit_stand (its ARGS has logit_stand): KD, DKD, MLKD
    image_views: int = 1  # logit term: reads this many views of each sampled image, stacked view-major (MLKD: 2)
    # relational: every term of the method (its cls and rel terms, the logit-pair terms it feeds, a white-box term on
    # feature differences) sees the student's logits only as differences, so a vector added to every logit leaves the
    # loss unchanged and the classifier bias gets zero gradient: the per-class offset is free (docs/calibration.md).
    # Only then is test_acc_calibrated reported by default (:func:`reports_calibrated`)
    offset_free: bool = False

    @property
    def flag(self) -> str:
        """The flag whose value selects this row (a logit-pair row: its weight flag)."""
        if self.kind == LOGIT_PAIR:
            return self.weight_flag
        return "distill" if self.kind == WHITE_BOX else "relational"

    @property
    def term(self) -> str:
        """The name of its loss term: 'rel' (logit, relational), 'inter' (white-box), a logit-pair row's own name."""
        if self.kind == LOGIT_PAIR:
            return self.name
        return "inter" if self.kind == WHITE_BOX else "rel"

    @property
    def scale_flag(self) -> str:
        """The flag its default weight is multiplied by: --w_rel_scale, --w_inter_scale, or a logit-pair row's own."""
        if self.kind == LOGIT_PAIR:
            return self.weight_flag
        return "w_inter_scale" if self.kind == WHITE_BOX else "w_rel_scale"


def _row(name: str, kind: str, weight: float, sampler: str, builder: str, summary: str, **facts: Any) -> MethodRow:
    return MethodRow(name=name, kind=kind, weight=weight, sampler=sampler, builder=builder, summary=summary, **facts)


_M = "helper.methods"
METHODS: tuple[MethodRow, ...] = (
    # --relational: relational methods (own batch structure)
    _row("ckd", RELATIONAL, 1.0, "ckd_tuples", f"{_M}:build_ckd", "CKD: group-mean logit differences",
         offset_free=True),
    _row("ckd_add", RELATIONAL, 1.0, "ckd_tuples", f"{_M}:build_ckd_add", "CKD with the group average"),
    _row("ckd_mixup", RELATIONAL, 1.0, "ckd_tuples", f"{_M}:build_ckd_mixup", "CKD with a lambda-weighted average"),
    _row("ckd_inter", RELATIONAL, 1.0, "ckd_tuples", f"{_M}:build_ckd_inter",
         "CKD plus a white-box loss on group-mean feature differences", with_white_box=True, offset_free=True),
    _row("mixup", RELATIONAL, 1.0, "pairs", f"{_M}:build_mixup", "mixup on cached teacher logits"),
    _row("mixup3", RELATIONAL, 1.0, "triples", f"{_M}:build_mixup3", "three-image mixup"),
    _row("cutmix", RELATIONAL, 1.0, "pairs", f"{_M}:build_cutmix", "CutMix on cached teacher logits"),
    # --relational: logit terms
    _row("rkd", LOGIT, 1.0, "class_balanced", "distiller_zoo:RKDTerm", "RKD distance and angle on logits"),
    _row("dist", LOGIT, 2.0, "plain", "distiller_zoo:DISTTerm", "DIST on logits"),
    _row("crd", LOGIT, 0.8, "crd", "crd:CRDTerm", "CRD on logits"),
    _row("dkd", LOGIT, 1.0, "plain", "distiller_zoo:DKDTerm", "DKD on logits and labels, 20-epoch warm-up",
         needs_labels=True, needs_epoch=True, logit_stand_ok=True),
    _row("ttm", LOGIT, 45.0, "plain", "distiller_zoo:TTMTerm", "TTM: KL to the power-transformed teacher (--ttm_l)"),
    _row("wttm", LOGIT, 4.0, "plain", "distiller_zoo:WTTMTerm", "WTTM: TTM weighted by the teacher's power sum (--ttm_l)"),
    _row("mlkd", LOGIT, 0.9, "plain", "distiller_zoo:MLKDTerm",
         "MLKD: instance, class and batch levels on two cached views of each image (--teacher_views 2)",
         logit_stand_ok=True, image_views=2),
    # --distill: white-box terms
    _row("hint", WHITE_BOX, 100.0, "plain", "distiller_zoo:HintTerm", "FitNet at --hint_layer"),
    _row("vid", WHITE_BOX, 1.0, "plain", "distiller_zoo:VIDTerm", "VID"),
    _row("correlation", WHITE_BOX, 0.02, "plain", "distiller_zoo:CorrelationTerm", "CC"),
    _row("attention", WHITE_BOX, 1000.0, "plain", "distiller_zoo:AttentionTerm", "AT"),
    _row("similarity", WHITE_BOX, 3000.0, "plain", "distiller_zoo:SimilarityTerm", "SP"),
    _row("pkt", WHITE_BOX, 30000.0, "plain", "distiller_zoo:PKTTerm", "PKT"),
    _row("abound", WHITE_BOX, 1.0, "plain", "distiller_zoo:ABTerm", "AB, with an init stage", init_stage=True,
         not_on_differences="AB pushes pre-activations past the teacher's activation boundaries, which group-mean "
                            "differences do not have"),
    _row("factor", WHITE_BOX, 200.0, "plain", "distiller_zoo:FactorTerm", "FT, with an init stage", init_stage=True,
         not_on_differences="FT's paraphraser is trained to reconstruct teacher feature maps, not group-mean "
                            "differences"),
    _row("fsp", WHITE_BOX, 50.0, "plain", "distiller_zoo:FSPTerm", "FSP, with an init stage", init_stage=True),
    _row("nst", WHITE_BOX, 50.0, "plain", "distiller_zoo:NSTTerm", "NST"),
    _row("kdsvd", WHITE_BOX, 1.0, "plain", "distiller_zoo:KDSVDTerm", "KD-SVD"),
    # logit-pair terms: on with every method when their weight flag is non-zero
    _row("kd", LOGIT_PAIR, 1.0, "plain", "distiller_zoo:KDTerm", "Hinton KD at --kd_T on the method's logit pairs",
         weight_flag="w_kd", logit_stand_ok=True),
)


def rows(kind: str | None = None, flag: str | None = None) -> list[MethodRow]:
    """The table's rows, optionally of one kind or of one flag, in table order."""
    return [r for r in METHODS if (kind is None or r.kind == kind) and (flag is None or r.flag == flag)]


def find(flag: str, name: str | None) -> MethodRow | None:
    """The row of ``--flag name``; None for the flag's "no method" value (raises UserError for an unknown name)."""
    if (flag == "relational" and name == NO_RELATIONAL) or (flag == "distill" and name == NO_DISTILL):
        return None
    for row in rows(flag=flag):
        if row.name == name:
            return row
    choices = ", ".join(str(c) for c in choices_of(flag))
    raise UserError(f"unknown --{flag} '{name}'; choose one of {choices}")


def choices_of(flag: str) -> tuple[str | None, ...]:
    """The accepted values of ``--relational`` or ``--distill``, the "no method" value first."""
    first = NO_RELATIONAL if flag == "relational" else NO_DISTILL
    return (first, *(r.name for r in rows(flag=flag)))


def help_of(flag: str) -> str:
    """The --help text of ``--relational`` or ``--distill``."""
    if flag == "relational":
        listed = "; ".join(f"{r.name} ({r.summary})" for r in rows(flag=flag))
        return f"relational or logit method: None (KD through --w_kd only), {listed}"
    listed = "; ".join(f"{r.name} ({r.summary})" for r in rows(flag=flag))
    return f"white-box loss on cached teacher features: kd (none), {listed}"


def images_per_item(sampler: str, pos_and_neg: int) -> int:
    """Distinct training images in one sampled item of ``sampler``: 1 for single images, P + N for CKD tuples."""
    if sampler == "ckd_tuples":
        return int(pos_and_neg)
    return TUPLE_IMAGES.get(sampler, 1)


def weight_of(flag: str, name: str | None) -> float:
    """Default weight of a flag value's term (0 for the "no method" values)."""
    row = find(flag, name)
    return 0.0 if row is None else row.weight


def resolve(path: str) -> Callable[..., Any]:
    """The object named by ``"package.module:attribute"``."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class MethodSpec:
    """The table rows of a run's ``--relational`` and ``--distill`` values, resolved and checked once
    (``helper.config.StudentConfig.method``)."""

    relational: MethodRow | None
    distill: MethodRow | None

    @property
    def sampler(self) -> str:
        """The sampler that feeds a training step: the relational row's, else single images."""
        return self.relational.sampler if self.relational is not None else "plain"


def method_spec(relational: str | None, distill: str) -> MethodSpec:
    """The rows of ``--relational relational --distill distill``; raises UserError for an unknown name or a
    combination that cannot run."""
    spec = MethodSpec(relational=find("relational", relational), distill=find("distill", distill))
    check_rows(spec.relational, spec.distill)
    return spec


def check_rows(relational: MethodRow | None, distill: MethodRow | None) -> None:
    """Reject an incompatible pair of rows with one sentence."""
    if relational is not None and relational.with_white_box:
        if distill is None:
            usable = ", ".join(r.name for r in rows(kind=WHITE_BOX) if not r.not_on_differences)
            raise UserError(f"--relational {relational.name} combines CKD with a white-box loss; pass --distill {usable}")
        if distill.not_on_differences:
            raise UserError(f"--distill {distill.name} cannot be combined with --relational {relational.name}: "
                            f"{distill.not_on_differences}")
    elif distill is not None and relational is not None:
        partners = " or ".join(["None", *(r.name for r in rows(flag="relational") if r.with_white_box)])
        raise UserError(f"--distill {distill.name} is a white-box method and only combines with --relational {partners}, "
                        f"not {relational.name}")


def check_modifiers(spec: MethodSpec, *, logit_stand: bool, teacher_views: int, pair_scales: dict[str, float]) -> None:
    """Reject ``--logit_stand`` where no term of the run standardizes its logits (the rows whose ``logit_stand_ok`` is
    set: KD and the logit terms that honour it), and ``--teacher_views`` beyond what a multi-view term reads, with one
    sentence (when the configuration is built). ``pair_scales``: each logit-pair row's weight flag and its value."""
    relational = spec.relational
    if logit_stand:
        pairs = [r for r in rows(kind=LOGIT_PAIR) if r.logit_stand_ok]
        pair_names = " and ".join(f"{r.name.upper()} (--{r.weight_flag})" for r in pairs)
        scope = " or ".join(r.name for r in rows(flag="relational") if r.logit_stand_ok)
        if relational is not None and not relational.logit_stand_ok:
            raise UserError(f"--logit_stand standardizes the logits of {pair_names} and of --relational {scope}, not those "
                            f"of --relational {relational.name}; drop --logit_stand or choose one of those")
        if relational is None and all(float(pair_scales.get(r.weight_flag, 0.0)) == 0 for r in pairs):
            flags = " or ".join(f"--{r.weight_flag}" for r in pairs)
            raise UserError(f"--logit_stand standardizes the logits of {' and '.join(r.name.upper() for r in pairs)}, but "
                            f"{flags} is 0; pass {flags} above 0 (the official recipe: --w_kd 9 --kd_T 2) or "
                            f"--relational {scope}")
    if relational is not None and relational.image_views > 1 and int(teacher_views) > relational.image_views:
        raise UserError(f"--relational {relational.name} reads {relational.image_views} cached teacher views per image, "
                        f"so --teacher_views {teacher_views} would query the teacher for views it never reads; pass "
                        f"--teacher_views {relational.image_views} or less")


def queries_teacher(spec: MethodSpec, pair_scales: dict[str, float]) -> bool:
    """False only for the cross-entropy-only student (no relational method, no white-box loss, every logit-pair term's
    weight flag 0, ``pair_scales``), which needs no teacher output and makes no teacher call."""
    pair_terms = any(row.weight * float(pair_scales.get(row.weight_flag, 0.0)) != 0 for row in rows(kind=LOGIT_PAIR))
    return not (spec.relational is None and spec.distill is None and not pair_terms)


def active_weight_flags(spec: MethodSpec) -> tuple[str, ...]:
    """The weight flags whose terms a run of ``spec`` computes: --w_cls, every logit-pair row's flag (--w_kd), and the
    scale flag of its relational and white-box rows (--w_rel_scale, --w_inter_scale)."""
    flags = ["w_cls", *(r.weight_flag for r in rows(kind=LOGIT_PAIR))]
    flags += [row.scale_flag for row in (spec.relational, spec.distill) if row is not None]
    return tuple(dict.fromkeys(flags))


def check_weights(spec: MethodSpec, weights: dict[str, float]) -> None:
    """Refuse a run whose every active loss weight (:func:`active_weight_flags`) is 0: it would query the teacher and then
    train nothing (raises UserError when the configuration is built)."""
    flags = active_weight_flags(spec)
    if all(float(weights[f]) == 0 for f in flags):
        given = ", ".join(f"--{f} 0" for f in flags)
        raise UserError(f"every loss weight is 0 ({given}): nothing would train; give one of them a value above 0 "
                        "(the published default is --w_cls 1)")


def combinations() -> list[tuple[str | None, str]]:
    """Every accepted (--relational, --distill) pair, in table order."""
    pairs: list[tuple[str | None, str]] = [(NO_RELATIONAL, NO_DISTILL)]
    pairs += [(NO_RELATIONAL, r.name) for r in rows(kind=WHITE_BOX)]
    for rel in rows(flag="relational"):
        if rel.with_white_box:
            pairs += [(rel.name, r.name) for r in rows(kind=WHITE_BOX) if not r.not_on_differences]
        else:
            pairs.append((rel.name, NO_DISTILL))
    return pairs


def offset_free(config: dict[str, Any]) -> bool:
    """Whether a run's loss leaves the student's per-class logit offset free: its ``--relational`` row says
    ``offset_free`` (ckd, ckd_inter). Single-image methods always have a term on absolute logits (cross-entropy, KD,
    their logit term), mixup and CutMix train on absolute logits of mixed images, ckd_add and ckd_mixup on averages of
    group means, which move with the offset."""
    relational = none_or_str(config.get("relational"))
    row = next((r for r in rows(flag="relational") if r.name == relational), None)
    return row is not None and row.offset_free


def reports_calibrated(config: dict[str, Any]) -> bool:
    """Whether ``test_acc_calibrated`` is reported for a run (results.json, summaries): for the methods whose loss leaves
    the offset free (:func:`offset_free`), whose remedy it is, and for any run trained with ``--calibrate train_mean``
    (the user asked for the shift: its ``test_acc`` is then the calibrated accuracy). On other methods the shift is a
    different operation with unpredictable effect (TTM drops to chance on digits: docs/calibration.md)."""
    return offset_free(config) or none_or_str(config.get("calibrate")) not in (None, "none")


# ---------------------------------------------------------------------------------------------------- labels


def method_order() -> tuple[str, ...]:
    """Row order of the summary tables: ce, kd, then the table's --relational and --distill methods."""
    return ("ce", "kd", *(r.name for r in METHODS if r.kind != LOGIT_PAIR))


def method_label(config: dict[str, Any]) -> str:
    """The method name of a run's resolved flags (the rule is in scripts/summarize.py's docstring)."""
    relational = none_or_str(config.get("relational"))
    distill = none_or_str(config.get("distill")) or NO_DISTILL
    w_kd = float(config.get("w_kd") or 0.0)
    if relational is None and distill == NO_DISTILL:
        label = "kd" if w_kd > 0 else "ce"
    else:
        label = str(distill) if relational is None else str(relational)
        if relational is not None:
            pos_and_neg = int(float(config.get("pos_and_neg", 2) or 2))
            row = next((r for r in rows(flag="relational") if r.name == relational), None)
            if row is not None and row.sampler == "ckd_tuples" and pos_and_neg != 2:
                label += f"(P+N={pos_and_neg})"
            if distill != NO_DISTILL:
                label += f"+{distill}"
        if w_kd > 0:
            label += "+kd"
    if str(config.get("logit_stand", False)).lower() in ("true", "1"):
        label += "+ls"  # logit standardization: its own method variant (kd+ls, dkd+ls, mlkd+ls)
    if none_or_str(config.get("calibrate")) not in (None, "none"):
        label += "+cal"  # --calibrate train_mean: its own method variant in tables and plots
    return label
