"""Contrastive Representation Distillation (Tian et al., ICLR 2020): memory banks and the NCE loss."""

from crd.criterion import ContrastLoss, CRDLoss, CRDTerm, Embed, nce_loss
from crd.memory import ContrastMemory, momentum_update, scores_against_bank

__all__ = ["CRDLoss", "CRDTerm", "ContrastLoss", "ContrastMemory", "Embed", "momentum_update", "nce_loss", "scores_against_bank"]
