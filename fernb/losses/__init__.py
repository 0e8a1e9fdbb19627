"""Losses the papers train with: SupCon / NT-Xent (FUCLE Eq. 1), the DRM losses (FUCLE Eq. 3-5), FaceMix with
Mixup / CutMix (SSFER Eq. 6-14), and the labeled MoCo queue with its supervised contrastive loss (Hu et al. Eq. 2)."""
from .contrastive import nt_xent_loss, supcon_loss
from .facemix import cutmix_batch, facemix_loss, kappa_from_boxes, kappa_from_images, mixup_batch
from .drm import (drm_loss, high_group_size, high_importance_mask, rank_regularization_loss,
                  weighted_cross_entropy)
from .moco import LabeledQueue, gather_across_ranks, momentum_update, supcon_queue_loss

__all__ = ["supcon_loss", "nt_xent_loss", "weighted_cross_entropy", "rank_regularization_loss", "drm_loss",
           "high_group_size", "high_importance_mask",
           "facemix_loss", "kappa_from_boxes", "kappa_from_images", "mixup_batch", "cutmix_batch",
           "LabeledQueue", "supcon_queue_loss", "momentum_update", "gather_across_ranks"]
