"""The data-parallel step over 4 (simulated) devices equals the single-device step.

The backbone uses norm='bn', so this also checks that batch statistics (and the running
averages the step writes back) span the global batch: synchronized BN.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent('''
    import jax, numpy as np
    from configs import retinanet_shapes
    from jaxdet import detectors
    from jaxdet.training import optimizer, sharding, step as step_lib
    from benchmarks.speed import synthetic_batch

    assert jax.device_count() == 4, jax.devices()
    config = retinanet_shapes.get_config('smoke')
    config.model.backbone.norm = 'bn'
    detector = detectors.build_detector(config, 6)
    schedule = optimizer.lr_schedule(config.train, 100)
    batch = synthetic_batch(4, 128, 128, config.data.max_boxes, 6)
    batch['boxes'] = np.clip(batch['boxes'], 0, 127)

    def two_steps(devices):
      mesh = sharding.make_mesh(devices)
      state, tx = step_lib.create_train_state(detector, config, schedule, mesh)
      train_step = step_lib.make_train_step(detector, tx, mesh, seed=0)
      out = []
      for _ in range(2):
        state, metrics = train_step(state, sharding.global_batch(batch, mesh))
        out.append(jax.device_get(metrics))
      return jax.device_get((state.params, state.constants)), out, state.params

    (p1, c1), m1, _ = two_steps(jax.devices()[:1])
    (p4, c4), m4, sharded = two_steps(jax.devices())
    leaf = jax.tree.leaves(sharded)[0]
    assert len(leaf.sharding.device_set) == 4, leaf.sharding
    for a, b in zip(m1, m4):
      for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-5, err_msg=k)
    for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p4)):
      np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-5)
    stem_mean = c4['batch_stats']['backbone']['stem']['norm']['mean']
    assert np.abs(stem_mean).max() > 1e-3, 'running mean not updated'
    for x, y in zip(jax.tree.leaves(c1), jax.tree.leaves(c4)):
      np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-5)
    print('num_pos', [float(m['num_pos_per_image']) for m in m4])
    print('SHARDED_MATCHES')
''')


def test_four_device_step_matches_one_device(repo_root):
  # With XLA's optimizations (the tests' default turns them off): without them the
  # two programs sum in orders that differ by more than the tolerances below.
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu', PYTHONPATH=repo_root, TF_CPP_MIN_LOG_LEVEL='2',
             JAX_DISABLE_MOST_OPTIMIZATIONS='0')
  proc = subprocess.run([sys.executable, '-c', SCRIPT], cwd=repo_root, env=env,
                        capture_output=True, text=True, timeout=400)
  assert 'SHARDED_MATCHES' in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
  # The batch has objects, so the global positive count is not trivially zero.
  assert 'num_pos [0.0' not in proc.stdout
