"""jaxdet.ops.conv: same values and gradients as lax.conv_general_dilated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxdet.ops import conv as conv_lib

DN = ('NHWC', 'HWIO', 'NHWC')


def _reference(x, w, stride, pad, dilation):
  return lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                  rhs_dilation=(dilation, dilation), dimension_numbers=DN)


def _ours(x, w, stride, pad, dilation):
  return conv_lib.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                       rhs_dilation=(dilation, dilation),
                                       dimension_numbers=DN)


@pytest.fixture(autouse=True)
def _always_use_the_fast_paths(monkeypatch):
  monkeypatch.setattr(conv_lib, 'MATMUL_MIN_CHANNELS', 1)


@pytest.mark.parametrize('kernel, stride, pad, dilation, hw', [
    (3, 1, 1, 1, (9, 7)), (3, 2, 1, 1, (9, 7)), (3, 2, 1, 1, (8, 8)),
    (7, 2, 3, 1, (11, 10)), (3, 1, 2, 2, (9, 9)), (1, 1, 0, 1, (5, 6)),
    (1, 2, 0, 1, (7, 5)), (5, 3, 0, 1, (13, 11)),
])
def test_values_and_gradients_match_lax(kernel, stride, pad, dilation, hw):
  rng = np.random.default_rng(kernel * 100 + stride * 10 + pad)
  x = jnp.asarray(rng.standard_normal((2, *hw, 3)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 3, 4)), jnp.float32)
  np.testing.assert_allclose(_ours(x, w, stride, pad, dilation),
                             _reference(x, w, stride, pad, dilation), rtol=1e-5, atol=1e-5)
  # A non-uniform cotangent, so that every tap's gradient differs.
  loss = lambda f: (lambda x, w: jnp.sum(jnp.sin(f(x, w, stride, pad, dilation))))
  ours = jax.jit(jax.grad(loss(_ours), argnums=(0, 1)))(x, w)
  ref = jax.grad(loss(_reference), argnums=(0, 1))(x, w)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_unsupported_settings_fall_back_to_lax():
  x = jnp.ones((1, 6, 6, 4))
  w = jnp.ones((3, 3, 2, 4))  # grouped: 2 groups of 2 input channels
  out = conv_lib.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=DN,
                                      feature_group_count=2)
  ref = lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=DN,
                                 feature_group_count=2)
  np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize('kernel', [3, 1])
def test_bfloat16_inputs_give_bfloat16_gradients(kernel):
  # Both paths (per-tap 3x3, pointwise 1x1) pick the CPU or default weight gradient with
  # lax.platform_dependent, which traces both: their dtypes must agree under bf16.
  x = jnp.ones((1, 5, 5, 2), jnp.bfloat16)
  w = jnp.ones((kernel, kernel, 2, 2), jnp.bfloat16)
  pad = kernel // 2
  dw = jax.jit(jax.grad(lambda w: _ours(x, w, 1, pad, 1).astype(jnp.float32).sum()))(w)
  assert dw.dtype == jnp.bfloat16
  # dW[ky, kx] sums the in-image pixels tap (ky, kx) sees: 5x5 at the centre, 4x4 at a corner.
  np.testing.assert_allclose(np.asarray(dw[pad, pad, 0, 0], np.float32), 25.0)
  if kernel == 3:
    np.testing.assert_allclose(np.asarray(dw[0, 0, 0, 0], np.float32), 16.0)
