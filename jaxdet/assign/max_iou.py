"""Max-IoU anchor assignment (RetinaNet / Faster R-CNN), batched with static shapes."""

from typing import Dict

import jax.numpy as jnp

from jaxdet.ops import boxes as box_ops

POSITIVE = 1
NEGATIVE = 0
IGNORE = -1


def max_iou_assign(anchors: jnp.ndarray, gt_boxes: jnp.ndarray, gt_mask: jnp.ndarray,
                   pos_iou: float = 0.5, neg_iou: float = 0.4,
                   allow_low_quality: bool = True,
                   min_low_quality_iou: float = 0.0) -> Dict[str, jnp.ndarray]:
  """Assigns each anchor to its best-overlapping ground-truth box.

  Args:
    anchors: `[A, 4]` boxes in px.
    gt_boxes: `[B, G, 4]` ground truth in px (padded).
    gt_mask: `[B, G]` bool, True for real boxes; padded ones never match.
    pos_iou: anchors whose best IoU is >= this are positive.
    neg_iou: anchors whose best IoU is < this are negative; between: ignored.
    allow_low_quality: as torchvision / detectron2 `allow_low_quality_matches`: for each
      valid GT, every anchor whose IoU with it equals that GT's highest IoU over all
      anchors becomes positive (keeping its own best GT as `matched_gt`, which may be a
      different GT), so that each GT gets at least one anchor.
    min_low_quality_iou: a GT's highest IoU must be strictly greater than this for the
      low-quality rule to apply (with 0, a GT that overlaps no anchor creates no
      positives, unlike torchvision where it would make every anchor positive).

  Returns:
    dict with
      `matched_gt [B, A] int32`: index into G of each anchor's best valid GT; 0 where
        the image has no valid GT. Ties go to the lowest GT index (argmax).
      `assign [B, A] int32`: 1 positive, 0 negative, -1 ignored. With no valid GT in an
        image, every anchor is negative.
      `max_iou [B, A] float32`: IoU with `matched_gt` (0 without a valid GT).
  """
  batch, num_gt = gt_mask.shape
  num_anchors = anchors.shape[0]
  if num_gt == 0:
    zeros = jnp.zeros((batch, num_anchors), jnp.int32)
    return dict(matched_gt=zeros, assign=zeros + NEGATIVE,
                max_iou=jnp.zeros((batch, num_anchors), jnp.float32))

  gt_mask = gt_mask.astype(bool)
  iou = box_ops.box_iou(anchors[None].astype(jnp.float32),
                        gt_boxes.astype(jnp.float32))  # [B, A, G]
  # -1 is below any real IoU, so padded GTs lose every argmax / max.
  iou = jnp.where(gt_mask[:, None, :], iou, -1.0)
  matched_gt = jnp.argmax(iou, axis=-1).astype(jnp.int32)  # [B, A]
  max_iou = jnp.max(iou, axis=-1)

  assign = jnp.where(max_iou >= pos_iou, POSITIVE,
                     jnp.where(max_iou < neg_iou, NEGATIVE, IGNORE))
  if allow_low_quality:
    gt_best = jnp.max(iou, axis=1, keepdims=True)  # [B, 1, G]
    # `>=` on the very values the max came from is `==`, and robust to recomputation.
    is_best = ((iou >= gt_best) & (gt_best > min_low_quality_iou)
               & gt_mask[:, None, :])
    assign = jnp.where(jnp.any(is_best, axis=-1), POSITIVE, assign)

  has_gt = jnp.any(gt_mask, axis=-1, keepdims=True)  # [B, 1]
  return dict(
      matched_gt=jnp.where(has_gt, matched_gt, 0),
      assign=jnp.where(has_gt, assign, NEGATIVE).astype(jnp.int32),
      max_iou=jnp.where(has_gt, max_iou, 0.0).astype(jnp.float32),
  )
