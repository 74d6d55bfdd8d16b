"""Loss of the trained safety classifier: unsafe detection plus the harm category.

The classifier has ``1 + K`` outputs per conversation: ``logits[:, 0]`` is the logit of "unsafe",
``logits[:, 1:]`` score the K categories of the taxonomy. For example ``i`` with gold ``y_i`` (1 for
unsafe) and, when unsafe, category ``c_i``::

    loss_i = BCE(sigmoid(logits[i, 0]), y_i) + w * [c_i known] * CE(softmax(logits[i, 1:]), c_i)

(binary cross-entropy of the detector, and softmax cross-entropy of the category head trained on
unsafe examples only, as Llama Guard predicts the category only after an unsafe verdict.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NO_CATEGORY = -100
"""Category label of a safe example, or of an unsafe one without a known category."""


def safety_classifier_loss(
    logits: torch.Tensor, unsafe: torch.Tensor, category: torch.Tensor, category_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-example loss ``[B]`` and detached metrics.

    ``logits``: ``[B, 1 + K]``; ``unsafe``: ``[B]`` floats in {0, 1}; ``category``: ``[B]`` longs in
    ``[0, K)`` or :data:`NO_CATEGORY`.
    """
    logits = logits.float()
    detection = F.binary_cross_entropy_with_logits(logits[:, 0], unsafe.float(), reduction="none")  # [B]
    has_category = category != NO_CATEGORY  # [B]
    if logits.shape[1] > 1:
        ce = F.cross_entropy(logits[:, 1:], category.clamp(min=0), reduction="none")  # [B]
        categorisation = torch.where(has_category, ce, torch.zeros_like(ce))
    else:
        categorisation = torch.zeros_like(detection)
    per_example = detection + category_weight * categorisation
    with torch.no_grad():
        predicted = (logits[:, 0] >= 0).float()
        metrics = {
            "detection_loss": detection.mean(),
            "category_loss": categorisation.sum() / has_category.sum().clamp(min=1),
            "accuracy": (predicted == unsafe.float()).float().mean(),
        }
    return per_example, metrics
