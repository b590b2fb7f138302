"""The train / evaluate driver behind `train.py`."""

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from clu import metric_writers
from jax.experimental import multihost_utils

from jaxdet import detectors
from jaxdet import visualize
from jaxdet.data import pipeline
from jaxdet.data import sources
from jaxdet.evaluation import evaluator
from jaxdet.training import checkpoint
from jaxdet.training import optimizer as optimizer_lib
from jaxdet.training import sharding
from jaxdet.training.step import create_train_state, make_predict, make_train_step

TRAIN_SPLIT, EVAL_SPLIT = 'train', 'eval'


def without_pretrained(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` without `model.backbone.pretrained`, to build a state that a
  checkpoint then replaces entirely: the weights file is not read (the machine may not
  have it, or it may have moved since training started)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.backbone.pretrained = ''
  return config


class Experiment:
  """Everything a run needs, built once from the config."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str,
               record_config: bool = True):
    """`record_config=False` leaves workdir/config.json alone (analysis tools)."""
    self.config = config
    self.workdir = workdir
    os.makedirs(workdir, exist_ok=True)
    self.source = sources.build_source(config.data)
    self.class_names = list(self.source.class_names)
    num_classes = config.data.num_classes or len(self.class_names)
    self.detector = detectors.build_detector(config, num_classes)
    self.mesh = sharding.make_mesh()
    self.num_steps, steps_per_epoch = optimizer_lib.total_steps(
        config.train, self.source.num_examples(TRAIN_SPLIT))
    self.schedule = optimizer_lib.lr_schedule(config.train, steps_per_epoch)
    self.manager = checkpoint.make_manager(workdir, config.train)
    resuming = self.manager.latest_step() is not None
    self.state, self.tx = create_train_state(
        self.detector, without_pretrained(config) if resuming else config, self.schedule,
        self.mesh)
    self.predict = make_predict(self.detector, self.mesh)
    self.state = checkpoint.restore_latest(self.manager, self.state)
    if record_config and jax.process_index() == 0:
      with open(os.path.join(workdir, 'config.json'), 'w') as f:
        f.write(config.to_json_best_effort(indent=2))

  @property
  def step(self) -> int:
    return int(jax.device_get(self.state.step))

  def train(self) -> None:
    """Trains from the restored step to `num_steps`, checkpointing and logging."""
    config, start = self.config, self.step
    if start >= self.num_steps:
      logging.info('Already trained: step %d of %d.', start, self.num_steps)
      return
    local_batch = sharding.check_batch_size(
        config.train.batch_size, 'config.train.batch_size', self.mesh)
    batches = pipeline.make_dataset(
        config.data, self.source, TRAIN_SPLIT, batch_size=local_batch, training=True,
        seed=config.seed, process_index=jax.process_index(),
        process_count=jax.process_count(), start_step=start).as_numpy_iterator()
    train_step = make_train_step(self.detector, self.tx, self.mesh, config.seed)
    writer = metric_writers.create_default_writer(
        self.workdir, just_logging=jax.process_index() > 0)
    eval_every = config.train.eval_every
    logging.info('Training steps %d..%d, global batch %d.', start, self.num_steps,
                 config.train.batch_size)
    progress = tqdm.tqdm(total=self.num_steps, initial=start, desc='train',
                         disable=jax.process_index() > 0, dynamic_ncols=True)
    last_time, last_step = time.perf_counter(), start
    previous = None
    for step in range(start + 1, self.num_steps + 1):
      batch = sharding.global_batch(next(batches), self.mesh)
      self.state, metrics = train_step(self.state, batch)
      # Wait for the previous step only: the device stays busy, and the progress bar
      # (and its ETA) counts finished steps rather than dispatched ones.
      if previous is not None:
        jax.block_until_ready(previous)
        progress.update(1)
      previous = metrics
      if step % config.train.log_every == 0 or step == self.num_steps:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(metrics['loss']):
          raise FloatingPointError(
              f'Non-finite loss at step {step}: {metrics}. Lower config.train.base_lr or '
              'check the data.')
        now = time.perf_counter()
        metrics['images_per_s'] = (step - last_step) * config.train.batch_size / (now - last_time)
        metrics['lr'] = float(self.schedule(step - 1))
        last_time, last_step = now, step
        writer.write_scalars(step, metrics)
        progress.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.2g}")
      if step % config.train.checkpoint_every == 0 or step == self.num_steps:
        checkpoint.save(self.manager, step, self.state)
      if eval_every > 0 and step % eval_every == 0 and step < self.num_steps:
        self.evaluate(writer)
    jax.block_until_ready(previous)
    progress.update(1)
    progress.close()
    self.manager.wait_until_finished()
    writer.flush()

  def num_eval_batches(self, num_images: int) -> int:
    """Eval batches covering the first `num_images` images (<= 0: the whole split)."""
    available = self.source.num_examples(EVAL_SPLIT)
    num_images = min(available, num_images) if num_images > 0 else available
    return math.ceil(num_images / self.config.eval.batch_size)

  def eval_batches(self, num_batches: int | None):
    """(global, local) eval batches, at most `num_batches`."""
    local_batch = sharding.check_batch_size(self.config.eval.batch_size,
                                            'config.eval.batch_size', self.mesh)
    ds = pipeline.make_dataset(
        self.config.data, self.source, EVAL_SPLIT, batch_size=local_batch,
        training=False, seed=self.config.seed, process_index=jax.process_index(),
        process_count=jax.process_count())
    if num_batches is not None:
      ds = ds.take(num_batches)
    for local in ds.as_numpy_iterator():
      yield sharding.global_batch(local, self.mesh), local

  def evaluate(self, writer=None) -> dict:
    """COCO metrics of the current state on the eval split, appended to eval_metrics.jsonl."""
    config, step = self.config, self.step
    num_batches = self.num_eval_batches(config.eval.num_images)
    predict, variables = self.predict, self.state.variables()
    ground_truth = self.source.coco_ground_truth(EVAL_SPLIT)
    metrics, results = evaluator.evaluate(
        lambda batch: predict(variables, batch), self.eval_batches(num_batches),
        ground_truth, self.source.category_ids, num_batches=num_batches,
        voc_metric=config.data.source == 'tfds_voc')
    # The settings that shape the detections (not batch size or image count).
    settings = {k: v for k, v in config.eval.to_dict().items()
                if k not in ('batch_size', 'num_images')}
    evaluator.append_metrics(self.workdir, step, metrics, settings)
    if writer is not None:
      writer.write_scalars(step, {f'eval/{k}': v for k, v in metrics.items()})
    if jax.process_index() == 0:
      with open(os.path.join(self.workdir, 'detections_val.json'), 'w') as f:
        json.dump(results, f)
    self.save_picture()  # every host: the prediction is a sharded computation
    return metrics

  def save_picture(self, path: str | None = None) -> str:
    """Draws process 0's first eval images with their detections to `path`
    (default workdir/detections.png). Every host must call it."""
    global_batch, local = next(self.eval_batches(1))
    dets = multihost_utils.process_allgather(
        self.predict(self.state.variables(), global_batch), tiled=True)
    path = path or os.path.join(self.workdir, 'detections.png')
    if jax.process_index() == 0:
      # Process 0's rows come first in the gathered global batch.
      dets = {k: np.asarray(v)[:len(local['image'])] for k, v in dets.items()}
      grid = visualize.detection_grid(local, dets, self.class_names,
                                      self.config.data.mean, self.config.data.std)
      grid.save(path)
      logging.info('Wrote %s', path)
    return path


def require_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                       what: str) -> None:
  """Raises FileNotFoundError naming the folder if `workdir` has no checkpoint (for
  `what`, e.g. '--mode=eval', which needs one)."""
  if checkpoint.make_manager(workdir, config.train).latest_step() is None:
    raise FileNotFoundError(
        f'{what}: no checkpoint under {os.path.join(workdir, "checkpoints")}')


@dataclasses.dataclass(frozen=True)
class Restored:
  """A trained detector for inference: `detector.predict(variables, batch)`; labels
  0..C-1 are named `class_names[label]`, dataset category `category_ids[label]`."""
  detector: Any
  variables: dict
  step: int
  class_names: tuple[str, ...]
  category_ids: tuple[int, ...]


def restore_for_inference(config: ml_collections.ConfigDict, workdir: str,
                          what: str) -> Restored:
  """The variables of `workdir`'s latest checkpoint (the train loop's state structure
  and checkpoint manager), for tools that only predict; `what` names the tool in the
  error when there is no checkpoint.

  Unlike `Experiment` it reads no training split (only the source's categories, and
  for `shapes` not even those: `sources.categories`), no
  optimizer state (`checkpoint.restore_latest_variables`) and initializes nothing: the
  state it restores into is abstract.
  """
  require_checkpoint(config, workdir, what)
  class_names, category_ids = sources.categories(config.data)
  detector = detectors.build_detector(config, config.data.num_classes or len(class_names))
  # The restore needs the train state's structure (shapes, dtypes, shardings) only:
  # traced, not computed. (The schedule's length changes nothing in it; one step per
  # epoch spares counting the training split.)
  schedule = optimizer_lib.lr_schedule(config.train, steps_per_epoch=1)
  mesh = sharding.make_mesh()
  abstract = jax.eval_shape(
      lambda: create_train_state(detector, without_pretrained(config), schedule, mesh)[0])
  repl = sharding.replicated(mesh)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
                          abstract)
  state = checkpoint.restore_latest_variables(
      checkpoint.make_manager(workdir, config.train), abstract)
  return Restored(detector=detector, variables=state.variables(),
                  step=int(jax.device_get(state.step)), class_names=class_names,
                  category_ids=category_ids)


def run(config: ml_collections.ConfigDict, workdir: str, mode: str) -> dict | None:
  """train | eval | train_and_eval; returns the eval metrics when it evaluates."""
  if mode not in ('train', 'eval', 'train_and_eval'):
    raise ValueError(f'--mode: unknown {mode!r} (train, eval or train_and_eval)')
  if mode == 'eval':
    require_checkpoint(config, workdir, '--mode=eval')
  experiment = Experiment(config, workdir)
  if mode in ('train', 'train_and_eval'):
    experiment.train()
  if mode in ('eval', 'train_and_eval'):
    return experiment.evaluate()
  return None
