"""ResNet backbones (He et al. 2016).

Two styles of the bottleneck block (ResNet-50/101/152), as mmdetection's `style`:
'pytorch' (torchvision, the default) puts the stride in the 3x3 conv, 'caffe' (the
original MSRA model, Keras `ResNet50`) in the first 1x1 conv. Both have the same
parameters; pretrained weights only give their ImageNet accuracy in the style they were
trained in (`jaxdet.models.pretrained` checks it). Basic blocks have one style.

Submodule names are a contract with pretrained-weight loaders and `trainable_mask`:
'stem' (conv, norm), 'stage1'..'stage4', each holding 'block0', 'block1', ... with
'conv1', 'norm1', ..., and 'downsample_conv', 'downsample_norm' on projection shortcuts.
"""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdet.models import layers

Dtype = Any

STAGE_NAMES = ('stage1', 'stage2', 'stage3', 'stage4')
STYLES = ('pytorch', 'caffe')


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34). [B,H,W,Cin] -> [B,H/s,W/s,channels]."""
  channels: int
  stride: int = 1
  norm: str = 'frozen_bn'
  dtype: Dtype = jnp.float32
  style: str = 'pytorch'  # unused: one style of basic block (a Stage passes it)
  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda f, k, s, name: layers.conv(
        f, k, s, use_bias=self.norm == 'none', dtype=self.dtype, name=name)
    norm = lambda name: layers.norm_layer(self.norm, self.dtype, name)
    y = nn.relu(norm('norm1')(conv(self.channels, 3, self.stride, 'conv1')(x)))
    y = norm('norm2')(conv(self.channels, 3, 1, 'conv2')(y))
    shortcut = _shortcut(x, self.channels, self.stride, conv, norm)
    return nn.relu(y + shortcut)


class Bottleneck(nn.Module):
  """1x1, 3x3, 1x1 to 4*channels (ResNet-50/101/152); the stride in the 3x3 conv
  (style 'pytorch') or in the first 1x1 conv (style 'caffe').

  [B,H,W,Cin] -> [B,H/s,W/s,4*channels].
  """
  channels: int
  stride: int = 1
  norm: str = 'frozen_bn'
  dtype: Dtype = jnp.float32
  style: str = 'pytorch'
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda f, k, s, name: layers.conv(
        f, k, s, use_bias=self.norm == 'none', dtype=self.dtype, name=name)
    norm = lambda name: layers.norm_layer(self.norm, self.dtype, name)
    if self.style not in STYLES:
      raise ValueError(f'ResNet style must be one of {STYLES}, got {self.style!r}')
    out = self.channels * self.expansion
    s1, s3 = (self.stride, 1) if self.style == 'caffe' else (1, self.stride)
    y = nn.relu(norm('norm1')(conv(self.channels, 1, s1, 'conv1')(x)))
    y = nn.relu(norm('norm2')(conv(self.channels, 3, s3, 'conv2')(y)))
    y = norm('norm3')(conv(out, 1, 1, 'conv3')(y))
    shortcut = _shortcut(x, out, self.stride, conv, norm)
    return nn.relu(y + shortcut)


def _shortcut(x, out_channels, stride, conv, norm):
  # Projection only where the shape changes (torchvision's "option B").
  if stride == 1 and x.shape[-1] == out_channels:
    return x
  return norm('downsample_norm')(conv(out_channels, 1, stride, 'downsample_conv')(x))


# depth -> (block, blocks per stage)
SPECS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class Stem(nn.Module):
  """7x7/2 conv, norm, ReLU, 3x3/2 maxpool. [B,H,W,3] -> [B,ceil(H/4),ceil(W/4),width]."""
  width: int = 64
  norm: str = 'frozen_bn'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = layers.conv(self.width, 7, 2, use_bias=self.norm == 'none', dtype=self.dtype,
                    name='conv')(x)
    x = nn.relu(layers.norm_layer(self.norm, self.dtype, 'norm')(x))
    return layers.max_pool_3x3_s2(x)


class Stage(nn.Module):
  """`count` residual blocks, the first one strided. [B,H,W,Cin] -> [B,H/s,W/s,Cout]."""
  block: type[nn.Module]
  count: int
  channels: int
  stride: int
  norm: str = 'frozen_bn'
  dtype: Dtype = jnp.float32
  style: str = 'pytorch'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for j in range(self.count):
      x = self.block(self.channels, self.stride if j == 0 else 1, self.norm, self.dtype,
                     self.style, name=f'block{j}')(x)
    return x


class ResNet(nn.Module):
  """ResNet feature extractor.

  Attributes:
    depth: 18, 34, 50, 101 or 152.
    width: channels of the stem; stage i has width * 2**(i-1) * expansion outputs
      (64 is the standard model, smaller widths scale every stage linearly).
    norm: 'frozen_bn' | 'bn' (batch statistics, synchronized) | 'gn' | 'none'.
    freeze_at: mmdetection's frozen_stages: 0 freezes nothing, k >= 1 freezes the stem
      and stages 1..k (gradients are stopped after stage k).
    dtype: compute dtype; parameters stay float32.
    style: 'pytorch' (stride in the bottleneck's 3x3 conv) | 'caffe' (in its first
      1x1 conv); see the module docstring.

  Maps images [B,H,W,3] to {'C2','C3','C4','C5'}, 'Cl' of shape
  [B, ceil(H/2**l), ceil(W/2**l), channels].
  """
  depth: int = 50
  width: int = 64
  norm: str = 'frozen_bn'
  freeze_at: int = 1
  dtype: Dtype = jnp.float32
  style: str = 'pytorch'

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    if self.depth not in SPECS:
      raise ValueError(f'ResNet depth must be one of {sorted(SPECS)}, got {self.depth}')
    if not 0 <= self.freeze_at <= len(STAGE_NAMES):
      raise ValueError(f'freeze_at must be in [0, 4], got {self.freeze_at}')
    if self.style not in STYLES:
      raise ValueError(f'ResNet style must be one of {STYLES}, got {self.style!r}')
    block, counts = SPECS[self.depth]
    x = Stem(self.width, self.norm, self.dtype, name='stem')(x.astype(self.dtype))
    features = {}
    for i, (stage, count) in enumerate(zip(STAGE_NAMES, counts)):
      x = Stage(block, count, self.width * 2**i, stride=1 if i == 0 else 2,
                norm=self.norm, dtype=self.dtype, style=self.style, name=stage)(x)
      if i + 1 == self.freeze_at:
        # Nothing below needs a backward pass: cut it off here.
        x = jax.lax.stop_gradient(x)
      features[f'C{i + 2}'] = x
    return features


def from_config(backbone: Mapping[str, Any], dtype: Dtype,
                name: str | None = None) -> ResNet:
  """The ResNet of `config.model.backbone` (depth, width, norm, freeze_at, style)
  computing in `dtype`."""
  return ResNet(depth=backbone['depth'], width=backbone['width'], norm=backbone['norm'],
                freeze_at=backbone['freeze_at'], style=backbone['style'], dtype=dtype,
                name=name)


def frozen_names(freeze_at: int) -> tuple[str, ...]:
  """Top-level backbone submodules frozen by `freeze_at` (see `ResNet`)."""
  return ('stem',) + STAGE_NAMES[:freeze_at] if freeze_at > 0 else ()


def trainable_mask(params: Mapping[str, Any], freeze_at: int,
                   prefix: tuple[str, ...] = ('backbone',)) -> Any:
  """Pytree of bools like `params`: False for leaves of frozen backbone parts.

  Args:
    params: a detector's params (backbone under `prefix`), or the backbone's own params
      with `prefix=()`.
    freeze_at: as in `ResNet`.
    prefix: path of the backbone inside `params`.
  Returns:
    The same tree structure with True where the optimizer should update (and decay).
  """
  frozen = frozen_names(freeze_at)
  n = len(prefix)

  def is_trainable(path, _):
    keys = tuple(getattr(k, 'key', getattr(k, 'name', None)) for k in path)
    return not (len(keys) > n and keys[:n] == tuple(prefix) and keys[n] in frozen)

  return jax.tree_util.tree_map_with_path(is_trainable, params)
