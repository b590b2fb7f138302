"""Faster R-CNN + FPN networks (Ren et al. 2015; Lin et al. 2017), also Cascade R-CNN's.

Only parameters live here: the backbone + FPN + RPN head run on images
(`FasterRCNN.features`), and each box head runs on RoI features that the detector
pooled from the pyramid in between (`FasterRCNN.box_head`). Proposals, sampling,
pooling, losses and decoding are pure functions in `jaxdet.detectors.two_stage`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxdet.models import fpn as fpn_lib
from jaxdet.models import layers
from jaxdet.models import resnet
from jaxdet.models import retinanet as retinanet_model

Dtype = Any


class RPNHead(nn.Module):
  """3x3 conv + ReLU, then 1x1 objectness (K) and 1x1 deltas (4K), shared by levels.

  Maps per-level [B,h,w,C] to (objectness [B,h,w,K], deltas [B,h,w,4K]) float32 lists.
  Init normal(0.01), zero bias, as mmdetection's RPNHead.
  """
  num_anchors: int = 3
  channels: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features):
    init = nn.initializers.normal(stddev=0.01)
    conv = layers.conv(self.channels, 3, dtype=self.dtype, kernel_init=init, name='conv')
    cls = layers.conv(self.num_anchors, 1, float32_bias=True, dtype=self.dtype,
                      kernel_init=init, name='objectness')
    box = layers.conv(4 * self.num_anchors, 1, float32_bias=True, dtype=self.dtype,
                      kernel_init=init, name='deltas')
    objectness, deltas = [], []
    for x in features:
      x = nn.relu(conv(x))
      objectness.append(cls(x))
      deltas.append(box(x))
    return objectness, deltas


class BoxHead(nn.Module):
  """Shared 2-fc RoI head (mmdetection Shared2FCBBoxHead): class logits and box outputs.

  Attributes:
    num_classes: C foreground classes; the logits have C + 1 (background last).
    fc_channels, num_fcs: the shared fully connected layers.
    box_outputs: shape of the box output per RoI, e.g. (4,) class-agnostic deltas,
      (C, 4) class-specific deltas, (4, K, n) offset-bin logits (OBC).

  Maps pooled RoI features [B, R, S, S, F] to dict(cls_logits [B, R, C+1],
  box [B, R, *box_outputs]), float32.
  """
  num_classes: int
  box_outputs: tuple[int, ...]
  fc_channels: int = 1024
  num_fcs: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, roi_features: jax.Array) -> dict[str, jax.Array]:
    b, r = roi_features.shape[:2]
    x = roi_features.reshape(b, r, -1).astype(self.dtype)
    for i in range(self.num_fcs):
      x = nn.relu(nn.Dense(self.fc_channels, dtype=self.dtype, param_dtype=jnp.float32,
                           kernel_init=nn.initializers.xavier_uniform(),
                           name=f'fc{i}')(x))
    # Output inits as mmdetection's BBoxHead: normal 0.01 (classes), 0.001 (boxes).
    cls = nn.Dense(self.num_classes + 1, dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=nn.initializers.normal(0.01), name='cls_logits')(x)
    size = 1
    for d in self.box_outputs:
      size *= d
    box = nn.Dense(size, dtype=self.dtype, param_dtype=jnp.float32,
                   kernel_init=nn.initializers.normal(0.001), name='box')(x)
    return dict(cls_logits=cls.astype(jnp.float32),
                box=box.astype(jnp.float32).reshape(b, r, *self.box_outputs))


class FasterRCNN(retinanet_model.ConfiguredModule):
  """ResNet + FPN + RPN + one box head per stage (1: Faster R-CNN, >1: Cascade R-CNN).

  Attributes:
    num_classes: C foreground classes.
    num_anchors: RPN anchors per location.
    box_outputs: per stage, the box output shape of its `BoxHead`.
    config: the `model` ConfigDict of `config_base.faster_rcnn_config()` (backbone,
      fpn, rpn, roi_head, dtype). Stored frozen, so the module stays hashable.

  Methods:
    features(images [B,H,W,3]) -> dict(pyramid: list per level of [B,h_l,w_l,F] in the
      compute dtype, rpn_objectness [B,A] and rpn_deltas [B,A,4] float32, A flat over
      levels, then y, x, anchor, as `ops.anchors.generate_anchors`).
    box_head(roi_features [B,R,S,S,F], stage) -> `BoxHead` outputs of that stage.
    __call__(images): both, on a dummy RoI per image (for init).
  """
  num_classes: int
  num_anchors: int
  box_outputs: tuple[tuple[int, ...], ...]
  config: ml_collections.ConfigDict

  def setup(self):
    cfg = self.config
    dtype = retinanet_model.compute_dtype(cfg.dtype)
    self.backbone = resnet.from_config(cfg.backbone, dtype)
    self.fpn = fpn_lib.FPN(
        channels=cfg.fpn.channels, min_level=cfg.fpn.min_level,
        max_level=cfg.fpn.max_level, extra_from=cfg.fpn.extra_from, dtype=dtype)
    self.rpn = RPNHead(num_anchors=self.num_anchors, channels=cfg.fpn.channels,
                       dtype=dtype)
    self.box_heads = [
        BoxHead(num_classes=self.num_classes, box_outputs=tuple(outputs),
                fc_channels=cfg.roi_head.fc_channels, num_fcs=cfg.roi_head.num_fcs,
                dtype=dtype)
        for outputs in self.box_outputs]

  def features(self, images: jax.Array) -> dict[str, Any]:
    pyramid = self.fpn(self.backbone(images))
    levels = [pyramid[l] for l in sorted(pyramid)]
    objectness, deltas = self.rpn(levels)
    return dict(pyramid=levels,
                rpn_objectness=retinanet_model.flatten_levels(objectness, 1)[..., 0],
                rpn_deltas=retinanet_model.flatten_levels(deltas, 4))

  def box_head(self, roi_features: jax.Array, stage: int) -> dict[str, jax.Array]:
    return self.box_heads[stage](roi_features)

  def __call__(self, images: jax.Array, train: bool = False) -> dict[str, Any]:
    del train
    out = self.features(images)
    size = self.config.roi_head.pool_size
    dummy = jnp.zeros((images.shape[0], 1, size, size, self.config.fpn.channels),
                      out['pyramid'][0].dtype)
    out['box_heads'] = [self.box_head(dummy, i) for i in range(len(self.box_outputs))]
    return out
