"""What the inference, export and prediction tests share: small real images, smoke
configs that keep every detection, random-weight checkpoints, commands in-process."""

import os

from absl import flags
import jax
import numpy as np

from jaxdet import config_base
from jaxdet import detectors
from jaxdet.data import shapes
from jaxdet.training import checkpoint
from jaxdet.training import optimizer
from jaxdet.training import sharding
from jaxdet.training import step as step_lib

# (h, w): portrait and landscape (shrunk by the test configs), a small one (enlarged).
SIZES = ((128, 96), (80, 128), (60, 64))
NUM_CLASSES = len(shapes.CLASS_NAMES)


def shapes_images(sizes=SIZES) -> list[np.ndarray]:
  """uint8 RGB [h, w, 3] crops of `shapes` val images, one per (h, w)."""
  return [shapes.render_example((0, 1, i), 128)['image'][:h, :w]
          for i, (h, w) in enumerate(sizes)]


def config_path(repo_root: str, name: str) -> str:
  return os.path.join(repo_root, 'configs', f'{name}.py')


def smoke_config(repo_root: str, name: str, shapes_cache: str = ''):
  """configs/NAME.py:smoke keeping every detection (random weights score low), as
  `smoke_flags` sets it on a command line."""
  config = config_base.load_config_file(config_path(repo_root, name) + ':smoke')
  config.eval.score_threshold = 0.0
  config.data.shapes.cache_dir = shapes_cache
  return config


def smoke_flags(repo_root: str, name: str, shapes_cache: str) -> list[str]:
  """The command-line flags of `smoke_config(repo_root, name, shapes_cache)`."""
  return [f'--config={config_path(repo_root, name)}:smoke',
          '--config.eval.score_threshold=0.0',
          f'--config.data.shapes.cache_dir={shapes_cache}']


# The layers whose outputs become scores (class, objectness, IoU / quality logits).
SCORE_LAYERS = ('cls_logits', 'objectness', 'iou_logits', 'quality_logits')


def spread_scores(params, factor: float = 10.0):
  """`params` with the kernels of the score layers scaled by `factor`.

  Freshly initialized, they give every anchor almost the same score (gaps of 1e-7
  and less, the size of float rounding), so that two correct computations may rank
  and suppress differently; scaled, the scores spread over (0, 1) as a trained
  model's do and the comparisons of the tests are well defined.
  """
  def scale(path, x):
    names = [str(getattr(k, 'key', k)) for k in path]
    return x * factor if names[-1] == 'kernel' and names[-2] in SCORE_LAYERS else x
  return jax.tree_util.tree_map_with_path(scale, params)


def save_random_checkpoint(config, workdir: str, step: int = 5):
  """A random-weight TrainState (`spread_scores`) saved to workdir as the train loop
  saves it."""
  detector = detectors.build_detector(config, NUM_CLASSES)
  state, _ = step_lib.create_train_state(
      detector, config, optimizer.lr_schedule(config.train, 1), sharding.make_mesh())
  state = state.replace(step=state.step + step, params=spread_scores(state.params))
  manager = checkpoint.make_manager(workdir, config.train)
  checkpoint.save(manager, step, state)
  manager.wait_until_finished()
  return state


def run_command(module, *args: str):
  """`python -m MODULE *args` in-process: its own flags, parsed, then its main."""
  argv = [module.__name__, *args]
  flag_values = module.define_flags(flags.FlagValues(), argv)
  flag_values(argv)
  return module.main(argv, flag_values)
