"""`lax.top_k`, or the same result from a sort for StableHLO consumers older than jax.

jax serializes `lax.top_k` as a CHLO composite (`vhlo.composite_v2`), which
TensorFlow's XlaCallModule (StableHLO 1.13.7 in TF 2.21, older than jaxlib 0.10's
1.15) cannot read; with a symbolic batch even the older composite's decomposition
keeps dynamic shapes TF does not refine. Inside `portable()` (`jaxdet.export` uses it
for the TF SavedModel) `top_k` sorts instead: plain `stablehlo.sort`, which every
consumer reads. Elsewhere it is `lax.top_k`, which is much faster on GPUs for large
inputs.
"""

import contextlib
import contextvars

import jax
import jax.numpy as jnp
from jax import lax

_PORTABLE = contextvars.ContextVar('jaxdet_portable_top_k', default=False)


@contextlib.contextmanager
def portable():
  """Within this context (at trace time), `top_k` lowers to a sort."""
  token = _PORTABLE.set(True)
  try:
    yield
  finally:
    _PORTABLE.reset(token)


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """The k largest values along the last axis of a float array and their int32
  indices, in descending order, equal values by ascending index: `lax.top_k`."""
  if not _PORTABLE.get():
    return lax.top_k(x, k)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f'top_k: portable mode sorts -x, needs a float array, got {x.dtype}')
  axis = x.ndim - 1
  index = lax.broadcasted_iota(jnp.int32, x.shape, axis)
  # A stable ascending sort of -x: equal values keep index order, as in lax.top_k;
  # the total order puts NaN first there too (top_k ranks it above +inf).
  neg, index = lax.sort((-x, index), dimension=axis, is_stable=True, num_keys=1)
  return -lax.slice_in_dim(neg, 0, k, axis=axis), lax.slice_in_dim(index, 0, k, axis=axis)
