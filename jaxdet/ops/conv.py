"""2-D convolution with gradients that XLA:CPU computes fast.

A drop-in for `lax.conv_general_dilated` (used by the models' `nn.Conv` layers):

- 1x1 convolutions are matmuls (after a strided slice for stride 2). XLA:CPU runs the
  forward and both gradients of a matmul 2-3x faster than those of the equivalent
  convolution; elsewhere the two compile to the same GEMMs.
- For larger kernels the weight gradient is, on CPU, a sum of one matmul per kernel
  tap: dW[ky, kx] = sum over (b, y, x) of x_pad[b, y*s + ky*d, x*s + kx*d]^T dY[b, y, x].
  XLA:CPU's own kernel-gradient convolution is 3-4x slower than the forward conv; this
  is about as fast as it. GPUs and TPUs keep XLA's own gradient.

Both paths are used from `MATMUL_MIN_CHANNELS` channels on: for narrower layers XLA's
own convolution is as fast or faster (measured on a 2-core x86 CPU: a 3x3 conv
128->128 at 2x64x64 takes 114 ms forward+backward with per-tap gradients vs 127 ms;
32->32 at 8x64x64, 67 vs 43 ms; a 1x1 conv 256->64 at 2x128x128, 50 vs 217 ms).

Values are those of `lax.conv_general_dilated` (up to float summation order).
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

_NHWC_HWIO = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
MATMUL_MIN_CHANNELS = 128


def _xla_conv(x, w, strides, padding, dilation):
  return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _tap_slices(x, out_hw, kernel_hw, strides, padding, dilation):
  """For each kernel tap (ky, kx): the [B, Ho, Wo, Cin] input pixels it multiplies."""
  xp = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  (ho, wo), (sy, sx), (dy, dx) = out_hw, strides, dilation
  for ky in range(kernel_hw[0]):
    for kx in range(kernel_hw[1]):
      yield lax.slice(xp, (0, ky * dy, kx * dx, 0),
                      (xp.shape[0], ky * dy + (ho - 1) * sy + 1,
                       kx * dx + (wo - 1) * sx + 1, xp.shape[3]),
                      (1, sy, sx, 1))


def _weight_grad_by_taps(x, g, kernel_shape, strides, padding, dilation):
  """dL/dW [kh, kw, Cin, Cout] as one matmul per kernel tap."""
  kh, kw = kernel_shape[:2]
  taps = _tap_slices(x, g.shape[1:3], (kh, kw), strides, padding, dilation)
  grads = [jnp.einsum('bhwc,bhwd->cd', t, g, preferred_element_type=jnp.float32)
           for t in taps]
  return jnp.stack(grads).reshape(kernel_shape).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_tap_grads(x, w, strides, padding, dilation):
  return _xla_conv(x, w, strides, padding, dilation)


def _conv_fwd(x, w, strides, padding, dilation):
  return _xla_conv(x, w, strides, padding, dilation), (x, w)


def _conv_bwd(strides, padding, dilation, residuals, g):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda x_: _xla_conv(x_, w, strides, padding, dilation), x)
  (dx,) = input_vjp(g)

  def xla_weight_grad(x, g):
    _, weight_vjp = jax.vjp(lambda w_: _xla_conv(x, w_, strides, padding, dilation), w)
    return weight_vjp(g)[0]

  def tap_weight_grad(x, g):
    return _weight_grad_by_taps(x, g, w.shape, strides, padding, dilation)

  dw = lax.platform_dependent(x, g, cpu=tap_weight_grad, default=xla_weight_grad)
  return dx, dw.astype(w.dtype)


_conv_tap_grads.defvjp(_conv_fwd, _conv_bwd)


def _pointwise(x, w, strides):
  """1x1 convolution without padding as a (strided) matmul."""
  if strides != (1, 1):
    x = x[:, ::strides[0], ::strides[1]]
  return jnp.einsum('bhwc,cd->bhwd', x, w[0, 0])


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding,
                         lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` with the fast paths above for NHWC/HWIO convolutions.

  lhs [B, H, W, Cin], rhs [kh, kw, Cin, Cout] -> [B, Ho, Wo, Cout]. Other layouts,
  string paddings, input dilation, grouped convolutions and explicit precisions go to
  `lax.conv_general_dilated` unchanged.
  """
  strides = tuple(int(s) for s in window_strides)
  dilation = tuple(int(d) for d in (rhs_dilation or (1, 1)))
  numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  plain = (tuple(numbers) == _NHWC_HWIO and not isinstance(padding, str)
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and feature_group_count == 1 and batch_group_count == 1
           and precision is None and preferred_element_type is None)
  if not plain:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
        dimension_numbers, feature_group_count, batch_group_count, precision,
        preferred_element_type)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  cin, cout = rhs.shape[2:]
  if rhs.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0)):
    if max(cin, cout) >= MATMUL_MIN_CHANNELS:
      return _pointwise(lhs, rhs, strides)
  elif min(cin, cout) >= MATMUL_MIN_CHANNELS:
    return _conv_tap_grads(lhs, rhs, strides, padding, dilation)
  return _xla_conv(lhs, rhs, strides, padding, dilation)
