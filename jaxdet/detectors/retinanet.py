"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", 2017).

The detector object ties the Flax module to its anchors and to the pure functions that
turn outputs into losses (training) or detections (inference).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdet import losses
from jaxdet import postprocess
from jaxdet.assign import max_iou
from jaxdet.detectors import base
from jaxdet.models import retinanet as retinanet_model
from jaxdet.ops import anchors as anchors_lib
from jaxdet.ops import boxes as box_ops


def gather_matched(values, matched_gt):
  """values [B, G, ...] gathered by matched_gt [B, A] -> [B, A, ...]."""
  return jax.vmap(lambda v, i: v[i])(values, matched_gt)


def num_positives(positive):
  """The loss normalizer: positive anchors of the whole batch, at least 1 (float32).

  Under jit over a sharded batch this sum already spans every device and host.
  """
  return jnp.maximum(positive.sum(), 1).astype(jnp.float32)


class RetinaNet(base.DenseDetector):
  """RetinaNet: focal loss on MaxIoU-assigned anchors, delta regression."""

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
    self.config = config
    self.num_classes = num_classes
    self.image_size = tuple(config.data.image_size)
    model = config.model
    self.strides = tuple(2**l for l in range(model.fpn.min_level, model.fpn.max_level + 1))
    a = model.anchors
    self.anchors = anchors_lib.generate_anchors(
        self.image_size, self.strides, a.octave_base_scale, a.scales_per_octave,
        a.ratios, a.center_offset)
    self.anchors_per_level = anchors_lib.num_anchors_per_level(
        self.image_size, self.strides, len(a.ratios) * a.scales_per_octave)
    if model.head.norm == 'bn':
      # One head serves every level: batch statistics would mix levels.
      raise ValueError("config.model.head.norm: 'bn' is not supported (the head is "
                       "shared across levels); use 'gn' or 'none'")
    postprocess.nms_kwargs(config.eval)  # a bad eval.nms fails now, not after training
    self.module = retinanet_model.RetinaNet(num_classes=num_classes, config=model)

  def _decode(self, deltas):
    c = self.config.box_coder
    return box_ops.decode_deltas(deltas, self.anchors, c.means, c.stds)

  def assign(self, out: dict, batch: dict) -> dict:
    """Anchor labels for the batch ([B, A] arrays of `max_iou.max_iou_assign`).

    `out` (this step's network outputs) is unused here; assigners that look at the
    predictions (CLE) read it.
    """
    del out
    a = self.config.assign
    return max_iou.max_iou_assign(self.anchors, batch['boxes'], batch['gt_mask'],
                                  a.pos_iou, a.neg_iou, a.allow_low_quality,
                                  a.min_low_quality_iou)

  def loss_from_assignment(self, out: dict, batch: dict, assigned: dict):
    """Classification and box losses given an anchor assignment ([B, A] arrays)."""
    cfg = self.config
    positive = assigned['assign'] == 1
    counted = assigned['assign'] >= 0
    num_pos = num_positives(positive)

    matched_labels = gather_matched(batch['labels'], assigned['matched_gt'])
    cls_targets = jax.nn.one_hot(matched_labels, self.num_classes) * positive[..., None]
    focal = losses.sigmoid_focal_loss(
        out['cls_logits'], cls_targets, cfg.loss.focal_alpha, cfg.loss.focal_gamma)
    focal = focal * counted[..., None]
    weights = self.positive_cls_weights(out, batch, assigned, jnp.sum(focal, axis=-1))
    if weights is not None:
      focal = focal * jnp.where(positive, weights, 1.0)[..., None]
    cls_loss = jnp.sum(focal) / num_pos

    matched_boxes = gather_matched(batch['boxes'], assigned['matched_gt'])
    box_loss = self.box_loss(out['box_deltas'], matched_boxes, positive) / num_pos
    total = cls_loss + box_loss
    metrics = dict(loss=total, cls_loss=cls_loss, box_loss=box_loss,
                   num_pos_per_image=positive.sum() / positive.shape[0])
    return total, metrics

  def positive_cls_weights(self, out: dict, batch: dict, assigned: dict,
                           cls_loss: jax.Array) -> jax.Array | None:
    """Per-anchor factors on the classification loss of positive anchors, or None (1).

    Args:
      out, batch, assigned: as `loss_from_assignment`.
      cls_loss: [B, A] each anchor's classification loss, summed over classes (0 at
        ignored anchors).
    Returns:
      [B, A] factors (read at positives only) or None. RetinaNet weights all anchors
      alike; CLE's Dynamic Coefficient loss overrides this.
    """
    del out, batch, assigned, cls_loss
    return None

  def box_loss(self, deltas, matched_boxes, positive):
    """Summed box loss over positive anchors. deltas/matched_boxes: [B, A, 4]."""
    cfg = self.config.loss
    if cfg.box_loss == 'giou':
      per_box = losses.giou_loss(self._decode(deltas), matched_boxes)
      return cfg.giou_weight * jnp.sum(jnp.where(positive, per_box, 0.0))
    c = self.config.box_coder
    targets = box_ops.encode_deltas(matched_boxes, self.anchors, c.means, c.stds)
    if cfg.box_loss == 'smooth_l1':
      per_coord = losses.smooth_l1_loss(deltas, targets, cfg.smooth_l1_beta)
    elif cfg.box_loss == 'l1':
      per_coord = losses.l1_loss(deltas, targets)
    else:
      raise ValueError(f'config.loss.box_loss: unknown {cfg.box_loss!r} '
                       "(expected 'smooth_l1', 'l1' or 'giou')")
    return cfg.box_weight * jnp.sum(jnp.where(positive[..., None], per_coord, 0.0))

  def predict(self, variables: dict, batch: dict, score: str | None = None) -> dict:
    """Detections per image: boxes [B, D, 4] (network-input pixels), scores, classes, valid.

    `score` names the detection score (one of `SCORES`, default the first) that is
    thresholded, ranked for top-k and NMS, and returned.
    """
    out = self.module.apply(variables, batch['image'], train=False)
    scores = self.detection_scores(out, score or self.SCORES[0])
    boxes = self._decode(out['box_deltas'])
    boxes = box_ops.clip_boxes(boxes, *self.clip_size(batch))
    return self.detections_from_dense(scores, boxes)

  def detection_scores(self, out: dict, score: str) -> jax.Array:
    """[B, A, C] scores in [0, 1] from the network outputs: the class probabilities."""
    self.check_score(score)
    return jax.nn.sigmoid(out['cls_logits'])

  def detections_from_dense(self, scores, boxes):
    """Split [B, A, ...] by level and run thresholding, top-k and NMS."""
    splits = np.cumsum(self.anchors_per_level)[:-1]
    e = self.config.eval
    return postprocess.dense_detections(
        jnp.split(scores, splits, axis=1), jnp.split(boxes, splits, axis=1),
        score_threshold=e.score_threshold, pre_nms_top_k=e.pre_nms_top_k,
        nms_iou=e.nms_iou, max_detections=e.max_detections,
        **postprocess.nms_kwargs(e))
