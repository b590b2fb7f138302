"""RetinaNet (Lin et al. 2017): ResNet + FPN + shared head, outputs flat over anchors.

Anchor order contract (shared with the anchor generator): levels ascending, then y,
then x, then the K anchors of a location -- what reshaping [B,h,w,K*C] to [B,h*w*K,C]
gives.
"""

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jaxdet.models import fpn as fpn_lib
from jaxdet.models import resnet
from jaxdet.models import retina_head

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str) -> Any:
  """Maps config.dtype ('float32' | 'bfloat16') to a jnp dtype."""
  if name not in DTYPES:
    raise ValueError(f'model.dtype must be one of {sorted(DTYPES)}, got {name!r}')
  return DTYPES[name]


def anchors_per_location(anchors: Mapping[str, Any]) -> int:
  """K = len(ratios) * scales_per_octave, from config.model.anchors."""
  return len(anchors['ratios']) * anchors['scales_per_octave']


def feature_sizes(image_size: tuple[int, int], min_level: int,
                  max_level: int) -> list[tuple[int, int]]:
  """(ceil(H/2**l), ceil(W/2**l)) for l = min_level..max_level."""
  h, w = image_size
  return [(math.ceil(h / 2**l), math.ceil(w / 2**l))
          for l in range(min_level, max_level + 1)]


def flatten_levels(per_level: list[jax.Array], last: int) -> jax.Array:
  """[B,h_l,w_l,K*last] per level -> [B, sum_l h_l*w_l*K, last] float32."""
  b = per_level[0].shape[0]
  return jnp.concatenate(
      [x.reshape(b, -1, last).astype(jnp.float32) for x in per_level], axis=1)


class ConfiguredModule(nn.Module):
  """Base of the detector networks, whose `config` field (a ConfigDict) is stored as a
  FrozenConfigDict so that the module stays hashable (jit, Flax's module cache)."""

  def __post_init__(self):
    if not isinstance(self.config, ml_collections.FrozenConfigDict):
      object.__setattr__(self, 'config', ml_collections.FrozenConfigDict(self.config))
    super().__post_init__()


def backbone_pyramid(cfg: ml_collections.ConfigDict, images: jax.Array,
                     dtype: Any) -> dict[int, jax.Array]:
  """ResNet ('backbone') + FPN ('fpn') features {level: [B,h_l,w_l,fpn.channels]}.

  Call inside a parent's `nn.compact` method: the two submodules become its children
  under those names (the parameter paths loaders and `trainable_mask` rely on).
  """
  features = resnet.from_config(cfg.backbone, dtype, name='backbone')(images)
  return fpn_lib.FPN(
      channels=cfg.fpn.channels, min_level=cfg.fpn.min_level,
      max_level=cfg.fpn.max_level, extra_from=cfg.fpn.extra_from, dtype=dtype,
      name='fpn')(features)


class RetinaNet(ConfiguredModule):
  """RetinaNet detector network (no losses, no decoding).

  Attributes:
    num_classes: C foreground classes.
    config: the `model` ConfigDict of `config_base.retinanet_config()` (backbone, fpn,
      head, anchors, dtype). Stored frozen, so the module stays hashable.

  `__call__(images [B,H,W,3] float32, train=False)` returns dict:
    cls_logits [B,A,C] float32, box_deltas [B,A,4] float32,
    box_feat: list per level of [B,h_l,w_l,head.channels] in the compute dtype,
    and with `head.iou_branch`: iou_logits [B,A] float32 (one per anchor).
  A = sum over levels of h_l*w_l*K, ordered as in the module docstring.
  """
  num_classes: int
  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[str, Any]:
    del train  # No train-time behaviour yet (frozen BN, no dropout); kept for the API.
    cfg = self.config
    dtype = compute_dtype(cfg.dtype)
    pyramid = backbone_pyramid(cfg, images, dtype)
    head = retina_head.RetinaHead(
        num_classes=self.num_classes, num_anchors=anchors_per_location(cfg.anchors),
        channels=cfg.head.channels, num_convs=cfg.head.num_convs,
        prior_prob=cfg.head.prior_prob, norm=cfg.head.norm,
        iou_branch=cfg.head.iou_branch, dtype=dtype, name='head')
    out = head([pyramid[level] for level in sorted(pyramid)])
    result = dict(cls_logits=flatten_levels(out['cls'], self.num_classes),
                  box_deltas=flatten_levels(out['box'], 4),
                  box_feat=out['box_feat'])
    if 'iou' in out:
      result['iou_logits'] = flatten_levels(out['iou'], 1)[..., 0]
    return result
