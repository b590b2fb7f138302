"""FCOS (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", 2019) as
the baseline of MMMC (Hao et al., papers/mmmc_minimal_misalignment_fcos.md, Sec. 4.1
and Table 2).

The detector object ties the Flax module to its points and to the pure functions that
turn outputs into losses (training) or detections (inference). It is mmdetection 2.x's
FCOS with the improvements its `fcos_center-normbbox-centeronreg-giou` config turns on
(center sampling, distances normalized by the stride, quality branch on the regression
tower, GIoU loss), which is what the paper's FCOS* row reproduces (38.6 AP; mmdetection
reports 38.7). `model.head.quality` picks the quality branch: 'centerness' (FCOS*) or
'giou' (the paper's FCOS row: BCE to the GIoU of the predicted box). MMMC's two changes
plug in here: `model.head.first_conv` (RFA, a deformable tower conv) and a subclass
overriding `assign` (APS, `jaxdet/detectors/mmmc.py`). Readings and the facts they
rest on: docs/methods.md.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdet import losses
from jaxdet import postprocess
from jaxdet.assign import fcos as fcos_assign
from jaxdet.detectors import base
from jaxdet.detectors.retinanet import gather_matched, num_positives
from jaxdet.models import fcos as fcos_model
from jaxdet.models import fcos_head
from jaxdet.ops import anchors as anchors_lib
from jaxdet.ops import boxes as box_ops

QUALITIES = ('giou', 'centerness')
BOX_WEIGHTINGS = ('centerness', 'quality', 'none')
GIOU_TARGETS = ('clamp', 'rescale')
# eval.quality_fusion -> alpha of `postprocess.iou_aware_scores` (None: p * q).
FUSIONS = {'product': None, 'sqrt': 0.5}
THRESHOLD_ON = ('classification', 'fused')

# Points are cell centres (mmdetection 2.x MlvlPointGenerator offset 0.5, the original
# FCOS's `+ stride // 2`).
POINT_OFFSET = 0.5
# Largest log-distance decoded without norm_on_bbox: 1e5 px is beyond any image, and
# exp stays finite for an untrained head.
_MAX_LOG_DISTANCE = math.log(1e5)


def check_choice(value, choices, field: str) -> None:
  """Raises a ValueError naming `config.<field>` unless `value` is one of `choices`."""
  if value not in choices:
    raise ValueError(f'config.{field}: unknown {value!r} (expected one of '
                     f'{tuple(choices)})')


def quality_targets(quality: str, pred_boxes: jax.Array, gt_boxes: jax.Array,
                    centerness: jax.Array, giou_target: str = 'clamp',
                    stop_gradient: bool = True) -> jax.Array:
  """Targets of the quality branch, in [0, 1].

  Args:
    quality: 'centerness' (FCOS eq. 3, given as `centerness`) or 'giou' (MMMC Sec.
      4.1: the GIoU of the predicted box with its ground truth).
    pred_boxes, gt_boxes: `[..., 4]` aligned boxes px.
    centerness: `[...]` centerness targets (`assign.fcos.centerness_targets`).
    giou_target: how GIoU in [-1, 1] becomes a BCE target: 'clamp' max(GIoU, 0)
      (GIoU itself wherever the boxes overlap) or 'rescale' (GIoU + 1) / 2.
    stop_gradient: treat the GIoU target as a constant (GFL / VFNet, which the paper
      follows for the quality branch, detach it).
  Returns:
    `[...]` targets.
  """
  if quality == 'centerness':
    return centerness
  giou = box_ops.elementwise_giou(pred_boxes, gt_boxes)
  if stop_gradient:
    giou = jax.lax.stop_gradient(giou)
  if giou_target == 'clamp':
    return jnp.maximum(giou, 0.0)
  return (giou + 1.0) * 0.5


class FCOS(base.DenseDetector):
  """FCOS: focal loss on FCOS-assigned points, GIoU on ltrb distances, quality branch.

  Scores `predict(..., score=)` can rank by: 'fused' (default) class probability times
  the predicted quality (`eval.quality_fusion`), 'classification' the class
  probability alone.
  """

  SCORES = ('fused', 'classification')

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
    self.config = config
    self.num_classes = num_classes
    self.image_size = tuple(config.data.image_size)
    model = config.model
    if model.head.norm == 'bn':
      # One head serves every level: batch statistics would mix levels.
      raise ValueError("config.model.head.norm: 'bn' is not supported (the head is "
                       "shared across levels); use 'gn' or 'none'")
    check_choice(model.head.quality, QUALITIES, 'model.head.quality')
    fcos_head.check_tower_conv(model.head.first_conv, model.head.rfa_position,
                               model.head.num_convs)
    check_choice(config.loss.box_weighting, BOX_WEIGHTINGS, 'loss.box_weighting')
    check_choice(config.loss.giou_target, GIOU_TARGETS, 'loss.giou_target')
    check_choice(config.eval.quality_fusion, FUSIONS, 'eval.quality_fusion')
    check_choice(config.eval.score_threshold_on, THRESHOLD_ON, 'eval.score_threshold_on')
    postprocess.nms_kwargs(config.eval)  # a bad eval.nms fails now, not after training

    self.strides = tuple(2**l for l in range(model.fpn.min_level, model.fpn.max_level + 1))
    points, point_strides = anchors_lib.generate_points(self.image_size, self.strides,
                                                        POINT_OFFSET)
    # Host constants (NumPy, as RetinaNet's anchors), folded into the compiled step.
    self.points, self.point_strides = points, point_strides  # [P, 2], [P]
    self.points_per_level = anchors_lib.num_anchors_per_level(
        self.image_size, self.strides, 1)
    self.point_ranges = fcos_assign.point_ranges(
        config.assign.regress_ranges, self.points_per_level)  # [P, 2]
    self.module = fcos_model.FCOS(num_classes=num_classes, config=model)

  def box_distances(self, box_pred: jax.Array) -> jax.Array:
    """The head's regression output `[B, P, 4]` -> (l, t, r, b) distances px, >= 0.

    `model.head.norm_on_bbox=True` (mmdetection's improved FCOS): relu(s x) * stride;
    False (the FCOS paper): exp(s x). `box_pred` already carries the level scale s.
    """
    if self.config.model.head.norm_on_bbox:
      return jax.nn.relu(box_pred) * self.point_strides[:, None]
    return jnp.exp(jnp.minimum(box_pred, _MAX_LOG_DISTANCE))

  def decode(self, box_pred: jax.Array) -> jax.Array:
    """The head's regression output `[B, P, 4]` -> boxes px (not clipped)."""
    return box_ops.decode_ltrb(self.box_distances(box_pred), self.points)

  def assign(self, out: dict, batch: dict) -> dict:
    """Point labels for the batch (`assign.fcos.fcos_assign`: assign, matched_gt [B, P]).

    `out` (this step's network outputs) is unused here; loss-driven assigners (MMMC's
    APS) override this method and read it.
    """
    del out
    a = self.config.assign
    return fcos_assign.fcos_assign(
        self.points, self.point_strides, self.point_ranges, batch['boxes'],
        batch['gt_mask'], a.center_sampling, a.center_radius)

  def loss_from_assignment(self, out: dict, batch: dict, assigned: dict):
    """Classification, box and quality losses given a point assignment.

    Args:
      out: network outputs (`models.fcos.FCOS`).
      batch: with boxes [B, G, 4], labels [B, G].
      assigned: assign [B, P] (1 positive, 0 negative, -1 ignored) and matched_gt
        [B, P]. Box and quality targets are recomputed from the matched boxes, so an
        assigner need not return distances.
    Returns:
      (scalar loss, dict of scalar metrics).

    Focal loss over every counted point and the quality BCE over positives are divided
    by the number of positives of the global batch; the GIoU loss is a weighted mean
    over positives (`loss.box_weighting`), its normalizer the global sum of the
    weights, as mmdetection's `centerness_denorm`.
    """
    cfg = self.config.loss
    positive = assigned['assign'] == 1
    counted = assigned['assign'] >= 0
    num_pos = num_positives(positive)

    matched_labels = gather_matched(batch['labels'], assigned['matched_gt'])
    cls_targets = jax.nn.one_hot(matched_labels, self.num_classes) * positive[..., None]
    focal = losses.sigmoid_focal_loss(out['cls_logits'], cls_targets, cfg.focal_alpha,
                                      cfg.focal_gamma)
    cls_loss = jnp.sum(focal * counted[..., None]) / num_pos

    matched_boxes = gather_matched(batch['boxes'], assigned['matched_gt'])
    pred_boxes = self.decode(out['box_pred'])
    centerness = fcos_assign.centerness_targets(
        box_ops.encode_ltrb(matched_boxes, self.points))
    quality = self.config.model.head.quality
    q_targets = quality_targets(quality, pred_boxes, matched_boxes, centerness,
                                cfg.giou_target, cfg.quality_stop_gradient)

    if cfg.box_weighting == 'centerness':
      weights = centerness
    elif cfg.box_weighting == 'quality':
      weights = jax.lax.stop_gradient(q_targets)
    else:
      weights = jnp.ones_like(centerness)
    weights = jnp.where(positive, weights, 0.0)
    per_point = losses.giou_loss(pred_boxes, matched_boxes)
    box_loss = cfg.box_weight * (jnp.sum(jnp.where(positive, weights * per_point, 0.0))
                                 / jnp.maximum(jnp.sum(weights), 1e-6))

    bce = losses.binary_cross_entropy_with_logits(out['quality_logits'], q_targets)
    quality_loss = cfg.quality_weight * jnp.sum(jnp.where(positive, bce, 0.0)) / num_pos

    total = cls_loss + box_loss + quality_loss
    giou = jax.lax.stop_gradient(1.0 - per_point)
    metrics = dict(loss=total, cls_loss=cls_loss, box_loss=box_loss,
                   quality_loss=quality_loss,
                   num_pos_per_image=positive.sum() / positive.shape[0],
                   pos_giou=jnp.sum(jnp.where(positive, giou, 0.0)) / num_pos)
    return total, metrics

  def predict(self, variables: dict, batch: dict, score: str | None = None) -> dict:
    """Detections per image: boxes [B, D, 4] (network-input pixels), scores, classes, valid.

    `score` names the detection score (one of `SCORES`, default the first) that is
    ranked for top-k and NMS and returned. With `eval.score_threshold_on=
    'classification'` (mmdetection, the original FCOS) `eval.score_threshold` applies
    to the class probability, else to that score.
    """
    out = self.module.apply(variables, batch['image'], train=False)
    return self.detections_from_outputs(out, score or self.SCORES[0],
                                        self.clip_size(batch))

  def detections_from_outputs(self, out: dict, score: str, clip_size=None) -> dict:
    """`predict` after the network: scores, thresholding, decoding, top-k and NMS;
    boxes clipped to `clip_size` (`Detector.clip_size`; default the canvas)."""
    scores = self.detection_scores(out, score)
    e = self.config.eval
    threshold = e.score_threshold
    if e.score_threshold_on == 'classification':
      scores = jnp.where(jax.nn.sigmoid(out['cls_logits']) > threshold, scores, 0.0)
      threshold = 0.0
    boxes = box_ops.clip_boxes(self.decode(out['box_pred']), *(clip_size or self.image_size))
    return self.detections_from_dense(scores, boxes, threshold)

  def detection_scores(self, out: dict, score: str) -> jax.Array:
    """[B, P, C] scores in [0, 1]: p * q or sqrt(p * q) ('fused'), or p."""
    self.check_score(score)
    probs = jax.nn.sigmoid(out['cls_logits'])
    if score == 'classification':
      return probs
    return postprocess.iou_aware_scores(probs, jax.nn.sigmoid(out['quality_logits']),
                                        FUSIONS[self.config.eval.quality_fusion])

  def detections_from_dense(self, scores, boxes, score_threshold: float):
    """Split [B, P, ...] by level and run thresholding, top-k and NMS."""
    splits = np.cumsum(self.points_per_level)[:-1]
    e = self.config.eval
    return postprocess.dense_detections(
        jnp.split(scores, splits, axis=1), jnp.split(boxes, splits, axis=1),
        score_threshold=score_threshold, pre_nms_top_k=e.pre_nms_top_k,
        nms_iou=e.nms_iou, max_detections=e.max_detections,
        **postprocess.nms_kwargs(e))
