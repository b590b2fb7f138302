"""Batches of fixed shapes from a source: decode, resize, pad, shard per host.

A batch (all shapes static; B = per-host batch size, G = max_boxes, canvas (H, W)):

  image      float32 [B, H, W, 3]  normalized, padded bottom/right with zeros
  boxes      float32 [B, G, 4]     x1y1x2y2 in resized-image pixels, zeros on padding
  labels     int32 [B, G]          0..C-1, -1 on padding
  gt_mask    bool [B, G]           labels >= 0
  image_id   int32 [B]             as in the source's `coco_ground_truth`
  scale      float32 [B]           resized / original (divide boxes by it to go back)
  orig_size  int32 [B, 2]          original (height, width)
  valid      bool [B]              False on rows that only pad the last eval batch

Training order is a pure function of the seed: global example positions run over
epochs, each a permutation keyed by (seed, epoch), and the global batch of step s is
positions [s * B * P, (s + 1) * B * P), of which host i takes every P-th from i. The
random flip is keyed by (seed, position). So `start_step=k` yields exactly the batches
an uninterrupted run yields from step k on, skipping cheap records, not decoded images.
"""

import math

from absl import logging
import tensorflow as tf

from jaxdet.data import transforms

_LOG_EVERY = 5000  # examples between summaries of dropped boxes


class _DropLog:
  """Counts boxes dropped on the fly and logs a running summary from inside tf.data."""

  def __init__(self):
    self.examples = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.small = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.truncated = tf.Variable(0, dtype=tf.int64, trainable=False)

  def update(self, small, truncated, file_name, max_boxes):
    """Returns an op to run with the example (graph-mode side effect)."""
    n = self.examples.assign_add(1)
    total_small = self.small.assign_add(tf.cast(small, tf.int64))
    total_truncated = self.truncated.assign_add(tf.cast(truncated, tf.int64))

    def warn_truncated():
      tf.print('jaxdet input:', file_name, 'has', truncated, 'boxes beyond max_boxes =',
               max_boxes, '(dropped); raise data.max_boxes',
               output_stream=logging.warning)
      return tf.constant(0)

    def summary():
      tf.print('jaxdet input: after', n, 'examples,', total_small,
               'boxes smaller than data.min_box_size and', total_truncated,
               'boxes beyond data.max_boxes were dropped', output_stream=logging.info)
      return tf.constant(0)

    nothing = lambda: tf.constant(0)
    a = tf.cond(truncated > 0, warn_truncated, nothing)
    b = tf.cond(tf.equal(n % _LOG_EVERY, 0) & (total_small + total_truncated > 0),
                summary, nothing)
    return tf.group(a, b)


def _example(ex, *, config, canvas, training, seed, drop_log):
  """Raw source example -> one fixed-shape row of a batch."""
  image = transforms.decode_image(ex['image'], ex['file_name'])
  orig_hw = tf.shape(image)[:2]
  # Crowd (COCO) / difficult (VOC) boxes are never targets; evaluation reads them from
  # the source's COCO ground truth instead.
  keep = tf.logical_not(ex['is_crowd'])
  boxes = tf.boolean_mask(tf.reshape(ex['boxes'], [-1, 4]), keep)
  labels = tf.boolean_mask(ex['labels'], keep)
  boxes = transforms.clip_boxes(boxes, orig_hw)
  image, boxes, scale = transforms.resize_keep_aspect(
      image, boxes, config.short_side, config.max_size, canvas)
  if training and config.random_flip:
    # Folded so flips do not share a Philox stream with the epoch permutations.
    flip_seed = tf.random.experimental.stateless_fold_in(
        tf.stack([tf.constant(seed, tf.int64), ex['position']]), 1)
    image, boxes = transforms.random_horizontal_flip(image, boxes, flip_seed)
  boxes, labels, small = transforms.filter_boxes(boxes, labels, config.min_box_size)
  image = transforms.normalize(image, config.mean, config.std)
  image = transforms.pad_to(image, canvas)
  boxes, labels, truncated = transforms.pad_boxes(boxes, labels, config.max_boxes)
  with tf.control_dependencies(
      [drop_log.update(small, truncated, ex['file_name'], config.max_boxes)]):
    valid = tf.identity(True)
  return dict(image=image, boxes=boxes, labels=labels, gt_mask=labels >= 0,
              image_id=tf.cast(ex['image_id'], tf.int32), scale=scale,
              orig_size=tf.cast(orig_hw, tf.int32), valid=valid)


def _padding_example(config, canvas):
  g = config.max_boxes
  return dict(image=tf.zeros([canvas[0], canvas[1], 3], tf.float32),
              boxes=tf.zeros([g, 4], tf.float32), labels=-tf.ones([g], tf.int32),
              gt_mask=tf.zeros([g], tf.bool), image_id=tf.constant(-1, tf.int32),
              scale=tf.constant(1.0), orig_size=tf.zeros([2], tf.int32),
              valid=tf.constant(False))


def num_eval_batches(num_examples: int, batch_size: int, process_count: int = 1
                     ) -> int:
  """Eval batches per host: every host runs the same number (the last ones padded)."""
  return math.ceil(num_examples / (batch_size * process_count))


def make_dataset(data_config, source, split: str, *, batch_size: int, training: bool,
                 seed: int, process_index: int = 0, process_count: int = 1,
                 start_step: int = 0) -> tf.data.Dataset:
  """Per-host batches (see the module docstring for the batch layout).

  Args:
    data_config: `config_base.data_config()` fields.
    source: a `sources` object (e.g. from `sources.build_source`).
    split: 'train' or 'eval'.
    batch_size: examples per batch ON THIS HOST (global batch = batch_size *
      process_count).
    training: True: endless, shuffled, flipped, resumable at `start_step`. False: one
      pass in a fixed order; the last batches are padded with `valid=False` rows so
      that every host yields `num_eval_batches(...)` full-size batches.
    seed: the whole training order and augmentation follow from it.
    process_index, process_count: this host and the number of hosts.
    start_step: first training step to produce (global batches already consumed).
  """
  if batch_size <= 0 or not 0 <= process_index < process_count:
    raise ValueError(f'bad batch_size={batch_size} / process_index={process_index} / '
                     f'process_count={process_count}')
  canvas = tuple(int(v) for v in data_config.image_size)
  if len(canvas) != 2:
    raise ValueError(f'data.image_size must be (height, width), got {canvas}')
  drop_log = _DropLog()

  def example(ex):
    return _example(ex, config=data_config, canvas=canvas, training=training,
                    seed=seed, drop_log=drop_log)

  shard = (process_index, process_count)  # applied before images are read
  if training:
    ds = source.epochs(split, seed=seed, start=start_step * batch_size * process_count,
                       shard=shard)
  else:
    ds = source.dataset(split, shard=shard)
  ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if data_config.skip_bad_examples:
    # Unreadable images are logged and skipped. (In training this shifts later batch
    # boundaries on this host, so resuming is exact only up to such images.)
    ds = ds.ignore_errors(log_warning=True)
  if training:
    ds = ds.batch(batch_size, drop_remainder=True)
  else:
    steps = num_eval_batches(source.num_examples(split), batch_size, process_count)
    padding = tf.data.Dataset.from_tensors(_padding_example(data_config, canvas))
    ds = ds.concatenate(padding.repeat()).batch(batch_size, drop_remainder=True)
    ds = ds.take(steps)
  ds = ds.prefetch(data_config.prefetch)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)
