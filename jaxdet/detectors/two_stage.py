"""Faster R-CNN + FPN and Cascade R-CNN (Cai & Vasconcelos 2018) with static shapes,
with either delta regression or offset bin classification (OBC) in the box heads.

One detector class: `config.roi.stage_ious` has one entry per box-head stage (one:
Faster R-CNN; (0.5, 0.7): the two-stage cascade of the OBC paper). Training per image:
RPN loss; fixed-size proposals (no gradient) plus the ground truth as candidates;
per stage, a static random sample of `num_samples` RoIs with `positive_fraction`
positives (IoU >= the stage's threshold), RoIAlign from each RoI's pyramid level,
softmax classification + box loss; the next stage starts from this stage's refined
boxes. Inference: the stages refine the proposals in turn, the class scores are the
softmax of the stages' mean logits (as mmdetection's Cascade R-CNN), the boxes the last
stage's.
"""

import jax
import jax.numpy as jnp
import ml_collections

from jaxdet import losses
from jaxdet import postprocess
from jaxdet.assign import samplers
from jaxdet.detectors import base
from jaxdet.detectors.retinanet import gather_matched as gather
from jaxdet.detectors import roi_box
from jaxdet.detectors import rpn as rpn_lib
from jaxdet.models import faster_rcnn as faster_rcnn_model
from jaxdet.ops import boxes as box_ops
from jaxdet.ops import roi_align


def match_rois(candidates: jax.Array, valid: jax.Array, batch: dict,
               pos_iou: float) -> dict:
  """Each candidate box's best ground truth (R-CNN labelling, no low-quality matches).

  Args:
    candidates: [B, N, 4] px; valid: [B, N] bool; batch: boxes [B, G, 4], labels [B, G],
      gt_mask [B, G].
    pos_iou: candidates with IoU >= this are positive, the other valid ones negative
      (mmdetection's rcnn assigner: pos_iou_thr = neg_iou_thr, min_pos_iou ignored).
  Returns:
    dict of [B, N]: positive, negative (bool), matched_gt (int32 into G).
  """
  iou = box_ops.box_iou(candidates, batch['boxes'])  # [B, N, G]
  iou = jnp.where(batch['gt_mask'][:, None, :], iou, -1.0)
  best = jnp.max(iou, axis=-1) if iou.shape[-1] else jnp.full(valid.shape, -1.0)
  matched = (jnp.argmax(iou, axis=-1).astype(jnp.int32) if iou.shape[-1]
             else jnp.zeros(valid.shape, jnp.int32))
  positive = valid & (best >= pos_iou)
  return dict(positive=positive, negative=valid & ~positive, matched_gt=matched)


class TwoStageDetector(base.Detector):
  """Faster R-CNN / Cascade R-CNN with regression or OBC box heads.

  `config`: `config_base.faster_rcnn_config()` and its variants.
  """

  SCORES = ('classification',)

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
    self.config = config
    self.num_classes = num_classes
    self.image_size = tuple(config.data.image_size)
    model = config.model
    strides = tuple(2**l for l in range(model.fpn.min_level, model.fpn.max_level + 1))
    self.rpn = rpn_lib.RPN(config.rpn, self.image_size, strides)
    pool_max = min(model.roi_head.max_level, model.fpn.max_level)
    self.pool_strides = tuple(2**l for l in range(model.fpn.min_level, pool_max + 1))
    roi = config.roi
    n = len(roi.stage_ious)
    if not n or len(roi.stage_weights) != n or len(roi.stage_stds) < n:
      raise ValueError('config.roi: stage_ious, stage_weights and stage_stds need one '
                       f'entry per stage, got {roi.stage_ious}, {roi.stage_weights}, '
                       f'{roi.stage_stds}')
    self.box_outputs = [roi_box.build(config, k, num_classes) for k in range(n)]
    if n > 1 and not all(o.class_agnostic for o in self.box_outputs):
      raise ValueError('config.model.roi_head.class_agnostic: cascade stages refine '
                       'boxes class-agnostically (set it True)')
    postprocess.nms_kwargs(config.eval)  # a bad eval.nms fails now, not after training
    self.module = faster_rcnn_model.FasterRCNN(
        num_classes=num_classes,
        num_anchors=len(config.rpn.anchors.ratios) * config.rpn.anchors.scales_per_octave,
        box_outputs=tuple(o.output_shape for o in self.box_outputs), config=model)

  # ---- network -------------------------------------------------------------------

  def _features(self, variables, images, train: bool):
    method = faster_rcnn_model.FasterRCNN.features
    if train and self.config.model.backbone.norm == 'bn':
      return self.module.apply(variables, images, method=method, mutable=['batch_stats'])
    return self.module.apply(variables, images, method=method), {}

  def _box_head(self, variables, pyramid, rois, stage: int) -> dict:
    """Pools [B, R, 4] RoIs (no gradient to the boxes) and runs stage `stage`'s head."""
    h = self.config.model.roi_head
    rois = jax.lax.stop_gradient(rois)
    levels = roi_align.roi_levels(rois, len(self.pool_strides), h.finest_scale)
    feats = roi_align.multilevel_roi_align(
        pyramid[:len(self.pool_strides)], rois, self.pool_strides, levels,
        output_size=h.pool_size, sampling_ratio=h.sampling_ratio, aligned=True)
    return self.module.apply(variables, feats, stage,
                             method=faster_rcnn_model.FasterRCNN.box_head)

  # ---- training ------------------------------------------------------------------

  def loss(self, variables: dict, batch: dict, rng: jax.Array | None = None):
    """RPN + every stage's classification and box losses over the global batch.

    Returns:
      (scalar loss, (dict of scalar metrics, updated non-trainable collections)).
    """
    if rng is None:
      rng = jax.random.key(0)
    rpn_rng, *stage_rngs = jax.random.split(rng, 1 + len(self.box_outputs))
    out, model_state = self._features(variables, batch['image'], train=True)
    total, metrics = self.rpn.loss(out['rpn_objectness'], out['rpn_deltas'], batch, rpn_rng)
    clip = self.clip_size(batch)
    boxes, valid = self.rpn.proposals(out['rpn_objectness'], out['rpn_deltas'], train=True,
                                      clip_size=clip)
    roi = self.config.roi
    for k, box_output in enumerate(self.box_outputs):
      if roi.add_gt_as_proposals:
        boxes = jnp.concatenate([boxes, batch['boxes']], axis=1)
        valid = jnp.concatenate([valid, batch['gt_mask']], axis=1)
      stage_loss, stage_metrics, refined = self._stage_loss(
          variables, out['pyramid'], boxes, valid, batch, clip, k, box_output,
          stage_rngs[k])
      total = total + roi.stage_weights[k] * stage_loss
      metrics.update({f'{name}{k}': v for name, v in stage_metrics.items()})
      boxes, valid = refined
    metrics['loss'] = total
    return total, (metrics, model_state)

  def _stage_loss(self, variables, pyramid, candidates, valid, batch, clip, k, box_output,
                  rng):
    """One stage: sample RoIs among the candidates, pool, classify and box losses.

    Returns:
      (loss, metrics, (refined boxes [B, S, 4], valid [B, S]) for the next stage: the
      sampled RoIs after this stage's box prediction, the ground-truth RoIs left out as
      mmdetection's refine_bboxes does).
    """
    roi = self.config.roi
    matched = match_rois(candidates, valid, batch, roi.stage_ious[k])
    sample = samplers.sample_indices(rng, matched['positive'], matched['negative'],
                                     roi.num_samples, roi.positive_fraction)
    idx, positive, sampled = sample['indices'], sample['positive'], sample['valid']
    rois = gather(candidates, idx)
    gt_index = gather(matched['matched_gt'], idx)
    gt_boxes = gather(batch['boxes'], gt_index)
    gt_labels = gather(batch['labels'], gt_index)
    labels = jnp.where(positive, gt_labels, self.num_classes)  # background: C

    out = self._box_head(variables, pyramid, rois, k)
    num_sampled = jnp.maximum(sampled.sum(), 1).astype(jnp.float32)
    ce = losses.softmax_cross_entropy(out['cls_logits'], labels)
    cls_loss = jnp.sum(jnp.where(sampled, ce, 0.0)) / num_sampled
    # Over all sampled RoIs, not positives: mmdetection's bbox avg_factor.
    box_loss = self.config.loss.box_weight * box_output.loss(
        out['box'], rois, gt_boxes, gt_labels, positive) / num_sampled
    accuracy = jnp.sum(jnp.where(sampled, jnp.argmax(out['cls_logits'], -1) == labels,
                                 False)) / num_sampled
    metrics = dict(cls_loss=cls_loss, box_loss=box_loss, cls_accuracy=accuracy,
                   num_pos_rois_per_image=positive.sum() / positive.shape[0])

    # Class-specific heads refine with the GT class on positives, the predicted one
    # elsewhere (mmdetection's refine_bboxes); only cascade stages use the result.
    predicted = jnp.argmax(out['cls_logits'][..., :self.num_classes], axis=-1)
    refined = box_output.decode(jax.lax.stop_gradient(out['box']), rois,
                                jnp.where(positive, gt_labels, predicted),
                                clip_size=clip)
    is_gt = idx >= candidates.shape[1] - batch['boxes'].shape[1] \
        if roi.add_gt_as_proposals else jnp.zeros_like(sampled)
    return cls_loss + box_loss, metrics, (refined, sampled & ~is_gt)

  # ---- inference -----------------------------------------------------------------

  def predict(self, variables: dict, batch: dict, score: str | None = None) -> dict:
    """Detections per image: boxes [B, D, 4] (network-input pixels), scores, classes, valid."""
    self.check_score(score or self.SCORES[0])
    out, _ = self._features(variables, batch['image'], train=False)
    clip = self.clip_size(batch)
    rois, valid = self.rpn.proposals(out['rpn_objectness'], out['rpn_deltas'], train=False,
                                     clip_size=clip)
    logits = 0.0
    last = len(self.box_outputs) - 1
    for k, box_output in enumerate(self.box_outputs):
      head = self._box_head(variables, out['pyramid'], rois, k)
      # mmdetection's cascade averages the stages' logits, then takes the softmax.
      logits = logits + head['cls_logits'] / len(self.box_outputs)
      if k < last:
        labels = jnp.argmax(head['cls_logits'][..., :self.num_classes], axis=-1)
        rois = box_output.decode(head['box'], rois, labels, clip_size=clip)
      else:
        boxes = box_output.decode(head['box'], rois, clip_size=clip)
    probs = jax.nn.softmax(logits, axis=-1)[..., :self.num_classes]
    probs = jnp.where(valid[..., None], probs, 0.0)
    e = self.config.eval
    return postprocess.dense_detections(
        [probs], [boxes], score_threshold=e.score_threshold,
        pre_nms_top_k=e.pre_nms_top_k, nms_iou=e.nms_iou,
        max_detections=e.max_detections, **postprocess.nms_kwargs(e))
