"""Distillation losses: KD and the RepDistiller baselines, DIST, the CKD comparative loss and mixup baselines."""

from distiller_zoo.CC import Correlation, consecutive_discrepancy_correlation
from distiller_zoo.CKD import CKD_MODES, CKDLoss, combine, group_mean, label_histogram
from distiller_zoo.DIST import DIST, cosine_similarity, inter_class_relation, intra_class_relation, pearson_correlation
from distiller_zoo.FitNet import HintLoss, hint_loss
from distiller_zoo.KD import DistillKL, distill_kl
from distiller_zoo.mixup import (
    MixupLoss,
    apply_cutmix,
    cutmix_box,
    mix_images,
    sample_gamma,
    sample_mixup_weights,
    soft_cross_entropy,
)
from distiller_zoo.RKD import (
    RKDLoss,
    mean_normalised_distances,
    pairwise_distances,
    rkd_angle_loss,
    rkd_distance_loss,
    triplet_angle_cosines,
)
from distiller_zoo.VID import VIDLoss, gaussian_nll, inverse_softplus, match_spatial_size

__all__ = [
    "CKD_MODES",
    "CKDLoss",
    "Correlation",
    "DIST",
    "DistillKL",
    "HintLoss",
    "MixupLoss",
    "RKDLoss",
    "VIDLoss",
    "apply_cutmix",
    "combine",
    "consecutive_discrepancy_correlation",
    "cosine_similarity",
    "cutmix_box",
    "distill_kl",
    "gaussian_nll",
    "group_mean",
    "hint_loss",
    "inter_class_relation",
    "intra_class_relation",
    "inverse_softplus",
    "label_histogram",
    "match_spatial_size",
    "mean_normalised_distances",
    "mix_images",
    "pairwise_distances",
    "pearson_correlation",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "sample_gamma",
    "sample_mixup_weights",
    "soft_cross_entropy",
    "triplet_angle_cosines",
]
