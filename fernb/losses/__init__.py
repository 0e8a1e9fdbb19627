"""Losses the papers train with: SupCon / NT-Xent (FUCLE Eq. 1), the DRM losses (FUCLE Eq. 3-5), and FaceMix with
Mixup / CutMix (SSFER Eq. 6-14), Softmax-MSE (Xu et al. Eq. 3-6), and the labeled MoCo queue with its supervised
contrastive loss (Hu et al. Eq. 2)."""
from .contrastive import nt_xent_loss, supcon_loss
from .facemix import cutmix_batch, facemix_loss, kappa_from_boxes, kappa_from_images, mixup_batch
from .drm import (drm_loss, high_group_size, high_importance_mask, rank_regularization_loss,
                  weighted_cross_entropy)
from .moco import LabeledQueue, gather_across_ranks, momentum_update, supcon_queue_loss
from .softmax_mse import SoftmaxMSE, cross_entropy_gradient, expected_class_index, softmax_mse, softmax_mse_value

__all__ = ["supcon_loss", "nt_xent_loss", "weighted_cross_entropy", "rank_regularization_loss", "drm_loss",
           "high_group_size", "high_importance_mask",
           "facemix_loss", "kappa_from_boxes", "kappa_from_images", "mixup_batch", "cutmix_batch",
           "SoftmaxMSE", "softmax_mse", "softmax_mse_value", "expected_class_index", "cross_entropy_gradient",
           "LabeledQueue", "supcon_queue_loss", "momentum_update", "gather_across_ranks"]
