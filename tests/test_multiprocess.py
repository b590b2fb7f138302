"""Two processes joined by jax.distributed train like one process with two devices."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _command(workdir, cache, *flags):
  return [sys.executable, 'train.py', '--config=configs/retinanet_shapes.py:smoke',
          f'--workdir={workdir}', f'--config.data.shapes.cache_dir={cache}',
          '--config.train.num_steps=10', '--config.train.log_every=5',
          '--config.train.checkpoint_every=5',
          # Pinned so that the tolerances below do not move with the shapes recipe: a
          # larger lr amplifies the reduction-order differences step by step.
          '--config.train.base_lr=0.002', *flags]


def _losses(log):
  return {int(s): (float(b), float(c)) for s, b, c in re.findall(
      r'\[(\d+)\] box_loss=([-+0-9.eE]+), cls_loss=([-+0-9.eE]+)', log)}


def test_two_processes_match_one_process_with_two_devices(repo_root, shapes_cache,
                                                          tmp_path):
  # Both runs inherit the suite's unoptimized XLA (tests/conftest.py), so they stay
  # comparable.
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2')
  port = _free_port()
  procs = [subprocess.Popen(
      _command(tmp_path / 'multi', shapes_cache, '--distributed',
               f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
               f'--process_id={i}'),
      cwd=repo_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  logs = [p.communicate(timeout=500)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-5000:]

  # Only process 0 of the pair above is checked for its evaluation; this run trains.
  single = subprocess.run(
      _command(tmp_path / 'single', shapes_cache, '--mode=train'), cwd=repo_root,
      capture_output=True,
      text=True, timeout=500,
      env=dict(env, XLA_FLAGS='--xla_force_host_platform_device_count=2'))
  assert single.returncode == 0, single.stderr[-5000:]

  multi, one = _losses(logs[0]), _losses(single.stdout + single.stderr)
  assert sorted(multi) == sorted(one) == [5, 10], (multi, one)
  # Same global batches (rows in another order); only the reduction order differs.
  assert multi[5] == pytest.approx(one[5], rel=5e-4)
  assert multi[10] == pytest.approx(one[10], rel=2e-2)
  assert sorted(os.listdir(tmp_path / 'multi' / 'checkpoints')) == ['10', '5']
  with open(tmp_path / 'multi' / 'eval_metrics.jsonl') as f:
    (metrics,) = [json.loads(line) for line in f]  # written once, by process 0
  assert metrics['step'] == 10 and metrics['num_images'] == 16
