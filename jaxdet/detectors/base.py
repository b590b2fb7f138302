"""What every detector shares (init, the score check, the frozen-stage mask) and what
every dense (one-stage) detector adds: the training forward pass and the loss skeleton
(forward -> assign -> losses).

A subclass sets `config`, `image_size`, `module` and `SCORES` in its `__init__`; a
dense one also defines `assign`, `loss_from_assignment` and its decoding.
"""

import jax
import jax.numpy as jnp

from jaxdet.models import pretrained
from jaxdet.models import resnet
from jaxdet.ops import boxes as box_ops


class Detector:
  """Base of every detector: a Flax `module` plus pure functions around it."""

  # The detection scores `predict(..., score=)` can rank by; the first is the default.
  SCORES = ('classification',)

  def init(self, rng: jax.Array) -> dict:
    """Random variables ({'params', 'batch_stats'?}) for one [1, H, W, 3] image."""
    images = jnp.zeros((1, *self.image_size, 3), jnp.float32)
    return self.module.init(rng, images, train=False)

  def with_pretrained(self, variables: dict) -> dict:
    """`variables` with the backbone of `config.model.backbone.pretrained` (unchanged
    when it is ''); a clear error if the file does not fit the config
    (`jaxdet.models.pretrained`). Host side, outside `jit`: the file's arrays would
    otherwise become constants of the compiled init (100 MB for a ResNet-50)."""
    return pretrained.load_into(variables, self.config.model.backbone)

  def clip_size(self, batch: dict) -> tuple[jax.Array, jax.Array]:
    """(height [B], width [B]) px of each image's content in the padded canvas,
    what boxes are clipped to (mmdetection clips to `img_shape`, not the padded
    `pad_shape`); the whole canvas where the batch has no `scale` / `orig_size` (a
    caller's own unpadded images)."""
    if 'scale' not in batch or 'orig_size' not in batch:
      return self.image_size
    hw = box_ops.content_size(batch['scale'], batch['orig_size'], self.image_size)
    hw = hw.astype(jnp.float32)
    return hw[:, 0], hw[:, 1]

  def check_score(self, score: str) -> None:
    if score not in self.SCORES:
      raise ValueError(f'{type(self).__name__}.predict: unknown score {score!r}; '
                       f'known: {self.SCORES}')

  def trainable_mask(self, params):
    """Pytree of bools: False for the frozen backbone stages."""
    return resnet.trainable_mask(params, self.config.model.backbone.freeze_at)


class DenseDetector(Detector):
  """Base of RetinaNet and FCOS (and their paper variants)."""

  def apply_train(self, variables: dict, images: jax.Array) -> tuple[dict, dict]:
    """Training-mode forward pass.

    Returns:
      (network outputs, updated non-trainable collections): with `norm='bn'` the
      backbone's running statistics ({'batch_stats': ...}), else {}.
    """
    if self.config.model.backbone.norm == 'bn':
      return self.module.apply(variables, images, train=True, mutable=['batch_stats'])
    return self.module.apply(variables, images, train=True), {}

  def loss(self, variables: dict, batch: dict, rng: jax.Array | None = None):
    """The detector's losses over the global batch.

    Returns:
      (scalar loss, (dict of scalar metrics, updated non-trainable collections)).
    """
    del rng
    out, model_state = self.apply_train(variables, batch['image'])
    assigned = self.assign(out, batch)
    total, metrics = self.loss_from_assignment(out, batch, assigned)
    return total, (metrics, model_state)
