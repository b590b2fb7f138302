"""Region Proposal Network (Ren et al. 2015) over an FPN (Lin et al. 2017): anchors,
training loss and fixed-size proposals, as mmdetection's RPNHead with static shapes."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdet import losses
from jaxdet.assign import max_iou
from jaxdet.assign import samplers
from jaxdet.detectors import retinanet
from jaxdet.ops import anchors as anchors_lib
from jaxdet.ops import boxes as box_ops
from jaxdet.ops import nms as nms_lib
from jaxdet.ops import topk


class RPN:
  """Anchors of every pyramid level and the pure functions on the RPN outputs.

  Args:
    config: `config.rpn` (anchors, assignment, sampling, proposal sizes).
    image_size: (H, W) of the padded network input.
    strides: stride of each pyramid level the RPN runs on (P2-P6: 4-64).
  """

  def __init__(self, config: ml_collections.ConfigDict, image_size, strides):
    self.config = config
    self.image_size = tuple(image_size)
    a = config.anchors
    self.anchors = anchors_lib.generate_anchors(
        self.image_size, strides, a.octave_base_scale, a.scales_per_octave, a.ratios,
        a.center_offset)
    self.anchors_per_level = anchors_lib.num_anchors_per_level(
        self.image_size, strides, len(a.ratios) * a.scales_per_octave)

  def loss(self, objectness: jax.Array, deltas: jax.Array, batch: dict,
           rng: jax.Array) -> tuple[jax.Array, dict]:
    """BCE on sampled anchors + Smooth L1 on sampled positives, both over the number of
    sampled anchors of the global batch (mmdetection's avg_factor with sampling).

    Args:
      objectness: [B, A] logits; deltas: [B, A, 4]; batch: boxes, gt_mask.
    Returns:
      (loss, metrics).
    """
    c = self.config
    assigned = max_iou.max_iou_assign(self.anchors, batch['boxes'], batch['gt_mask'],
                                      c.pos_iou, c.neg_iou, True, c.min_pos_iou)
    pos, neg = samplers.sample_mask(rng, assigned['assign'] == max_iou.POSITIVE,
                                    assigned['assign'] == max_iou.NEGATIVE,
                                    c.num_samples, c.positive_fraction)
    num_sampled = jnp.maximum((pos | neg).sum(), 1).astype(jnp.float32)
    bce = losses.binary_cross_entropy_with_logits(objectness, pos.astype(jnp.float32))
    cls_loss = jnp.sum(jnp.where(pos | neg, bce, 0.0)) / num_sampled
    matched = retinanet.gather_matched(batch['boxes'], assigned['matched_gt'])
    targets = box_ops.encode_deltas(matched, self.anchors)
    per_coord = losses.smooth_l1_loss(deltas, targets, c.smooth_l1_beta)
    box_loss = c.box_weight * jnp.sum(jnp.where(pos[..., None], per_coord, 0.0)) / num_sampled
    return cls_loss + box_loss, dict(rpn_cls_loss=cls_loss, rpn_box_loss=box_loss)

  def proposals(self, objectness: jax.Array, deltas: jax.Array, train: bool,
                clip_size=None) -> tuple[jax.Array, jax.Array]:
    """Fixed-size proposals: per level the `pre_nms` best anchors, decoded and clipped,
    boxes with a side <= `min_size` px dropped, NMS at `nms_iou` within each level
    (mmdetection's batched_nms over level ids), then the `post_nms` best.

    Args:
      objectness: [B, A] logits; deltas: [B, A, 4] (no gradient flows back).
      train: the training (True) or test sizes of `config`.
      clip_size: (height, width) the boxes are clipped to, scalars or [B] per image
        (`Detector.clip_size`); default the canvas.
    Returns:
      (boxes [B, P, 4] px, valid [B, P] bool), P = post_nms, by descending score.
    """
    c = self.config
    pre_nms, post_nms = ((c.train_pre_nms, c.train_post_nms) if train
                         else (c.test_pre_nms, c.test_post_nms))
    objectness = jax.lax.stop_gradient(objectness)
    deltas = jax.lax.stop_gradient(deltas)
    scores, boxes, levels = [], [], []
    start = 0
    for level, count in enumerate(self.anchors_per_level):
      k = min(pre_nms, count)
      top, idx = topk.top_k(objectness[:, start:start + count], k)  # [B, k]
      anchors = jnp.asarray(self.anchors[start:start + count])[idx]  # [B, k, 4]
      d = jnp.take_along_axis(deltas[:, start:start + count], idx[..., None], axis=1)
      boxes.append(box_ops.decode_deltas(d, anchors, clip_size=clip_size or self.image_size))
      scores.append(top)
      levels.append(np.full((k,), level, np.int32))
      start += count
    scores = jnp.concatenate(scores, axis=1)
    boxes = jnp.concatenate(boxes, axis=1)
    levels = jnp.asarray(np.concatenate(levels))
    wh = boxes[..., 2:] - boxes[..., :2]
    valid = jnp.all(wh > c.min_size, axis=-1)

    def one_image(boxes, scores, valid):
      keep, keep_valid = nms_lib.batched_nms(boxes, scores, levels, c.nms_iou, post_nms,
                                             valid=valid)
      return jnp.where(keep_valid[:, None], boxes[keep], 0.0), keep_valid

    return jax.vmap(one_image)(boxes, scores, valid)
