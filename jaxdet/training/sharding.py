"""Device mesh and the sharding of batches and state (data parallelism)."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every host), axis 'data'.

  Auto axes: XLA propagates shardings through the model (jax.make_mesh would default
  to explicit axes, which make every reshape of a sharded batch spell its sharding).
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), ('data',), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Per-host numpy batch -> global jax arrays sharded over the data axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def check_batch_size(global_batch_size: int, what: str, mesh: Mesh) -> int:
  """Per-host batch size; the global one must split evenly over the mesh's devices."""
  if global_batch_size % mesh.size:
    raise ValueError(
        f'{what}={global_batch_size} is not divisible by the {mesh.size} devices of '
        'the mesh')
  return global_batch_size // jax.process_count()
