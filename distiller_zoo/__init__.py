"""Distillation losses: KD and the RepDistiller baselines, DIST, DKD, logit standardization, TTM/WTTM, MLKD, the CKD
comparative loss and mixup baselines."""

from distiller_zoo.AB import ABLoss, ABTerm, activation_boundary_loss
from distiller_zoo.AT import Attention, AttentionTerm, at_loss, attention_map
from distiller_zoo.CC import Correlation, CorrelationTerm, consecutive_discrepancy_correlation
from distiller_zoo.CKD import CKD_MODES, CKDLoss, ckd_group_sizes, combine, group_mean, label_histogram
from distiller_zoo.dist import DIST, DISTTerm, cosine_similarity, inter_class_relation, intra_class_relation, pearson_correlation
from distiller_zoo.dkd import DKD, DKDTerm, dkd_loss
from distiller_zoo.FitNet import HintLoss, HintTerm, hint_loss
from distiller_zoo.fsp import FSP, FSPTerm, fsp_matrix
from distiller_zoo.FT import FactorTerm, FactorTransfer, factor_transfer_loss
from distiller_zoo.KD import DistillKL, KDTerm, distill_kl
from distiller_zoo.kdsvd import KDSVD, KDSVDTerm
from distiller_zoo.LS import logit_standardize
from distiller_zoo.mixup import (
    MixupLoss,
    apply_cutmix,
    cutmix_box,
    mix_images,
    sample_gamma,
    sample_mixup_weights,
    soft_cross_entropy,
)
from distiller_zoo.mlkd import MLKD, MLKDTerm, bc_loss, cc_loss, mlkd_loss
from distiller_zoo.NST import NSTLoss, NSTTerm, nst_loss, poly_kernel
from distiller_zoo.pkt import PKT, PKTTerm, pkt_loss
from distiller_zoo.RKD import (
    RKDLoss,
    RKDTerm,
    mean_normalised_distances,
    pairwise_distances,
    rkd_angle_loss,
    rkd_distance_loss,
    triplet_angle_cosines,
)
from distiller_zoo.SP import Similarity, SimilarityTerm, similarity_matrix, sp_loss
from distiller_zoo.terms import FeatureTerm, LogitPairs, TermContext, apply_to_pairs
from distiller_zoo.ttm import TTM, WTTM, TTMTerm, WTTMTerm, ttm_loss, wttm_loss
from distiller_zoo.VID import VIDLoss, VIDTerm, gaussian_nll, inverse_softplus, match_spatial_size

__all__ = [
    "ABTerm",
    "AttentionTerm",
    "CorrelationTerm",
    "DISTTerm",
    "DKDTerm",
    "HintTerm",
    "FSPTerm",
    "FactorTerm",
    "KDSVDTerm",
    "KDTerm",
    "MLKDTerm",
    "NSTTerm",
    "PKTTerm",
    "RKDTerm",
    "SimilarityTerm",
    "TTMTerm",
    "WTTMTerm",
    "VIDTerm",
    "FeatureTerm",
    "TermContext",
    "LogitPairs",
    "apply_to_pairs",
    "CKD_MODES",
    "ABLoss",
    "Attention",
    "CKDLoss",
    "Correlation",
    "DIST",
    "DKD",
    "DistillKL",
    "FSP",
    "FactorTransfer",
    "HintLoss",
    "KDSVD",
    "MLKD",
    "MixupLoss",
    "NSTLoss",
    "PKT",
    "RKDLoss",
    "Similarity",
    "TTM",
    "WTTM",
    "VIDLoss",
    "activation_boundary_loss",
    "apply_cutmix",
    "at_loss",
    "attention_map",
    "bc_loss",
    "cc_loss",
    "combine",
    "consecutive_discrepancy_correlation",
    "cosine_similarity",
    "cutmix_box",
    "distill_kl",
    "dkd_loss",
    "factor_transfer_loss",
    "fsp_matrix",
    "gaussian_nll",
    "ckd_group_sizes",
    "group_mean",
    "hint_loss",
    "inter_class_relation",
    "intra_class_relation",
    "inverse_softplus",
    "label_histogram",
    "logit_standardize",
    "match_spatial_size",
    "mean_normalised_distances",
    "mix_images",
    "mlkd_loss",
    "nst_loss",
    "pairwise_distances",
    "pearson_correlation",
    "pkt_loss",
    "poly_kernel",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "sample_gamma",
    "sample_mixup_weights",
    "similarity_matrix",
    "soft_cross_entropy",
    "sp_loss",
    "triplet_angle_cosines",
    "ttm_loss",
    "wttm_loss",
]
