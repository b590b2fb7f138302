"""2-D convolution with gradients that XLA:CPU computes fast.

A drop-in for `lax.conv_general_dilated` (used by the models' `nn.Conv` layers):

- 1x1 convolutions are matmuls (after a strided slice for stride 2). XLA:CPU runs the
  forward and both gradients of a matmul 2-3x faster than those of the equivalent
  convolution; elsewhere the two compile to the same GEMMs.
- For larger kernels the weight gradient is, on CPU, a sum of one matmul per kernel
  tap: dW[ky, kx] = sum over (b, y, x) of x_pad[b, y*s + ky*d, x*s + kx*d]^T dY[b, y, x].
  XLA:CPU's own kernel-gradient convolution is 3-4x slower than the forward conv; this
  is about as fast as it. GPUs and TPUs keep XLA's own gradient.
- Weight gradients contract over pixels; on CPU dY is transposed once, up front, so
  that each product is an untransposed matmul (see `_pixels_major_grad`).

Both paths are used from `MATMUL_MIN_CHANNELS` channels on: for narrower layers XLA's
own convolution is as fast or faster (measured on a 2-core x86 CPU: a 3x3 conv
128->128 at 2x64x64 takes 95 ms forward+backward with per-tap gradients vs 140 ms;
32->32 at 8x64x64, 61 vs 37 ms; a 1x1 conv 256->64 at 2x128x128, 50 vs 217 ms).

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


def _pixels_major_grad(g):
  """g [B, Ho, Wo, Cout] -> [Cout, B*Ho*Wo], materialized once.

  Weight gradients contract over pixels. With g transposed once up front every per-tap
  product is a plain (untransposed) matmul; left to itself XLA:CPU transposes each
  tap's input slice instead, and fuses the transposes with the elementwise ops that
  produce g and x (norm, ReLU mask, residual add), which then run in transposed order:
  2-5x slower in all.
  """
  g = lax.optimization_barrier(g)
  return g.reshape(-1, g.shape[-1]).T


def _weight_grad_by_taps(x, g, kernel_shape, strides, padding, dilation):
  """dL/dW [kh, kw, Cin, Cout] as one matmul per kernel tap."""
  kh, kw = kernel_shape[:2]
  x = lax.optimization_barrier(x)
  g_t = _pixels_major_grad(g)
  taps = _tap_slices(x, g.shape[1:3], (kh, kw), strides, padding, dilation)
  grads_t = [jnp.dot(g_t, t.reshape(-1, t.shape[-1]), preferred_element_type=jnp.float32)
             for t in taps]  # each [Cout, Cin]
  return jnp.stack(grads_t).transpose(0, 2, 1).reshape(kernel_shape).astype(x.dtype)


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


def _pointwise_forward(x, w, strides):
  return jnp.einsum('bhwc,cd->bhwd', _subsample(x, strides), w[0, 0])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pointwise(x, w, strides):
  """1x1 convolution without padding as a (strided) matmul."""
  return _pointwise_forward(x, w, strides)


def _pointwise_fwd(x, w, strides):
  return _pointwise_forward(x, w, strides), (x, w)


def _pointwise_bwd(strides, residuals, g):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda x_: _pointwise_forward(x_, w, strides), x)
  (dx,) = input_vjp(g)
  # Both branches return w's dtype: lax.platform_dependent needs equal output types
  # (the CPU matmul accumulates in float32; bf16 models would otherwise fail to trace).
  dw = lax.platform_dependent(
      x, g, cpu=lambda x, g: _pointwise_weight_grad_cpu(x, g, strides).astype(w.dtype),
      default=lambda x, g: jnp.einsum('bhwc,bhwd->cd', _subsample(x, strides), g,
                                      preferred_element_type=jnp.float32).astype(w.dtype))
  return dx, dw.reshape(w.shape)


def _subsample(x, strides):
  return x[:, ::strides[0], ::strides[1]] if strides != (1, 1) else x


def _pointwise_weight_grad_cpu(x, g, strides):
  """[Cin, Cout] weight gradient of a 1x1 conv, one untransposed matmul (see
  `_pixels_major_grad`)."""
  xs = _subsample(lax.optimization_barrier(x), strides)
  dw_t = jnp.dot(_pixels_major_grad(g), xs.reshape(-1, xs.shape[-1]),
                 preferred_element_type=jnp.float32)
  return dw_t.T


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


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
