"""End to end through the command line: train, checkpoint, resume, evaluate, draw."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests import cli

pytestmark = pytest.mark.slow

COCO_KEYS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AP55', 'AP60', 'AP65', 'AP70', 'AP80',
             'AP85', 'AP90', 'AP95')


def train(repo, workdir, cache, *flags):
  """Runs train.py on the shapes smoke config; returns its log."""
  # With XLA's optimizations, as users run it: the 30 smoke steps must lower the loss,
  # and that trajectory is the one this test was tuned on.
  return cli.run_script(repo, cache, 'train.py', '--config=configs/retinanet_shapes.py:smoke',
                        f'--workdir={workdir}', f'--config.data.shapes.cache_dir={cache}',
                        *flags, env=dict(JAX_DISABLE_MOST_OPTIMIZATIONS='0'))


def logged(log, name):
  """{step: value} of a scalar from the metric writer's log lines '[step] a=1, b=2'."""
  return {int(s): float(v) for s, v in
          re.findall(r'\[(\d+)\] .*?\b' + name + r'=([-+0-9.eE]+|nan|inf)', log)}


def test_train_resume_evaluate(repo_root, shapes_cache, tmp_path):
  workdir = str(tmp_path / 'run')
  # 30 steps, checkpoints every 15 (smoke config).
  log = train(repo_root, workdir, shapes_cache, '--mode=train')
  losses = logged(log, 'loss')
  assert sorted(losses) == [10, 20, 30], log[-3000:]
  assert losses[30] < losses[10], losses
  assert logged(log, 'images_per_s')[30] > 0
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['15', '30']
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))
  assert not os.path.exists(os.path.join(workdir, 'eval_metrics.jsonl'))

  # A restart with a longer schedule resumes at the saved step, then evaluates.
  log = train(repo_root, workdir, shapes_cache, '--mode=train_and_eval',
              '--config.train.num_steps=40')
  assert 'Training steps 30..40' in log, log[-3000:]
  assert sorted(logged(log, 'loss')) == [40]
  with open(os.path.join(workdir, 'eval_metrics.jsonl')) as f:
    (metrics,) = [json.loads(line) for line in f]
  assert metrics['step'] == 40
  assert metrics['num_images'] == 16
  assert metrics['eval']['nms'] == 'standard' and 'batch_size' not in metrics['eval']
  for key in COCO_KEYS:
    assert 0.0 <= metrics[key] <= 1.0 or metrics[key] == -1.0, (key, metrics)
  assert os.path.getsize(os.path.join(workdir, 'detections.png')) > 1000
  with open(os.path.join(workdir, 'detections_val.json')) as f:
    detections = json.load(f)
  assert detections and {'image_id', 'category_id', 'bbox', 'score'} <= set(detections[0])

  # --mode=eval evaluates the latest checkpoint again: same step, same numbers.
  train(repo_root, workdir, shapes_cache, '--mode=eval', '--config.train.num_steps=40')
  with open(os.path.join(workdir, 'eval_metrics.jsonl')) as f:
    first, again = [json.loads(line) for line in f]
  assert again == first


def test_eval_without_checkpoint_names_the_folder(repo_root, shapes_cache, tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  workdir = str(tmp_path / 'empty')
  proc = subprocess.run(
      [sys.executable, 'train.py', '--config=configs/retinanet_shapes.py:smoke',
       f'--workdir={workdir}', f'--config.data.shapes.cache_dir={shapes_cache}',
       '--mode=eval'], cwd=repo_root, env=env, capture_output=True, text=True,
      timeout=300)
  assert proc.returncode != 0
  assert os.path.join(workdir, 'checkpoints') in proc.stderr
