"""Train-step and inference throughput of a config on this machine (not a test).

  python benchmarks/speed.py --config=configs/retinanet_coco.py --size=512 --batch=2
  python benchmarks/speed.py --config=configs/retinanet_coco.py --size=1344 --height=800 \
      --batch=8 --config.model.dtype=bfloat16        # 1333x800 (padded to 1344) on a GPU

Uses a synthetic batch (random image, a few boxes) so that it times the compiled step
alone. Prints one JSON line per measurement.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxdet import detectors
from jaxdet.training import optimizer, sharding, step as step_lib

config_flags.DEFINE_config_file('config', 'configs/retinanet_coco.py', 'Config file.')
flags.DEFINE_integer('size', 512, 'Input width (pixels); also the height unless --height.')
flags.DEFINE_integer('height', 0, 'Input height (pixels); 0: --size.')
flags.DEFINE_integer('batch', 2, 'Global batch size.')
flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
flags.DEFINE_integer('steps', 5, 'Timed steps.')
flags.DEFINE_bool('inference', True, 'Also time inference (forward + decoding + NMS).')
FLAGS = flags.FLAGS


def synthetic_batch(batch: int, height: int, width: int, max_boxes: int,
                    num_classes: int) -> dict:
  """Random images [batch, height, width, 3] with 8 random boxes (xyxy px) each."""
  rng = np.random.default_rng(0)
  hw = np.array([width, height], np.float32)
  xy = rng.uniform(0, 0.6, (batch, max_boxes, 2)) * hw
  wh = rng.uniform(0.05, 0.4, (batch, max_boxes, 2)) * hw
  gt_mask = np.arange(max_boxes)[None] < 8
  return dict(
      image=rng.standard_normal((batch, height, width, 3)).astype(np.float32),
      boxes=np.where(gt_mask[..., None], np.concatenate([xy, xy + wh], -1), 0).astype(np.float32),
      labels=np.where(gt_mask, rng.integers(0, num_classes, (batch, max_boxes)), -1).astype(np.int32),
      gt_mask=np.broadcast_to(gt_mask, (batch, max_boxes)).copy(),
      image_id=np.arange(batch, dtype=np.int32), scale=np.ones(batch, np.float32),
      orig_size=np.tile(np.array([[height, width]], np.int32), (batch, 1)),
      valid=np.ones(batch, bool))


def timed(fn, steps: int) -> float:
  """Seconds per call of fn() (which must block until done)."""
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  return (time.perf_counter() - start) / steps


def main(argv):
  del argv
  config = FLAGS.config
  height = FLAGS.height or FLAGS.size
  config.data.image_size = (height, FLAGS.size)
  config.train.batch_size = FLAGS.batch
  num_classes = config.data.num_classes or 80
  detector = detectors.build_detector(config, num_classes)
  mesh = sharding.make_mesh()
  schedule = optimizer.lr_schedule(config.train, 1000)
  state, tx = step_lib.create_train_state(detector, config, schedule, mesh)
  batch = sharding.global_batch(
      synthetic_batch(FLAGS.batch, height, FLAGS.size, config.data.max_boxes, num_classes),
      mesh)
  step = step_lib.make_train_step(detector, tx, mesh, 0)
  box = [state]

  def train_once():
    box[0], metrics = step(box[0], batch)
    jax.block_until_ready(metrics)

  t0 = time.perf_counter()
  train_once()
  compile_s = time.perf_counter() - t0
  for _ in range(FLAGS.warmup):
    train_once()
  step_s = timed(train_once, FLAGS.steps)
  common = dict(detector=config.detector,
                depth=config.model.backbone.depth, size=FLAGS.size, height=height,
                batch=FLAGS.batch,
                dtype=config.model.dtype, device=str(jax.devices()[0].device_kind),
                num_devices=jax.device_count())
  print(json.dumps(dict(framework='jaxdet', mode='train', step_s=round(step_s, 4),
                        images_per_s=round(FLAGS.batch / step_s, 3),
                        compile_s=round(compile_s, 1), **common)), flush=True)
  if FLAGS.inference:
    predict = step_lib.make_predict(detector, mesh)
    variables = box[0].variables()
    run = lambda: jax.block_until_ready(predict(variables, batch))
    run()
    for _ in range(FLAGS.warmup):
      run()
    infer_s = timed(run, FLAGS.steps)
    print(json.dumps(dict(framework='jaxdet', mode='inference', step_s=round(infer_s, 4),
                          images_per_s=round(FLAGS.batch / infer_s, 3), **common)),
          flush=True)


if __name__ == '__main__':
  app.run(main)
