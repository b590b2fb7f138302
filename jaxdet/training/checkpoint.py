"""Orbax checkpoints of the train state; the data position is the step itself."""

import os

import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxdet.training.state import TrainState


def make_manager(workdir: str, train: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """CheckpointManager on `workdir/checkpoints`, keeping `train.keep_checkpoints`."""
  # The train loop decides when to save (every `checkpoint_every` steps and at the end).
  options = ocp.CheckpointManagerOptions(max_to_keep=train.keep_checkpoints, create=True)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options)


def restore_latest(manager: ocp.CheckpointManager, state: TrainState) -> TrainState:
  """The latest checkpoint restored with `state`'s structure and shardings, or `state`."""
  step = manager.latest_step()
  if step is None:
    return state
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def save(manager: ocp.CheckpointManager, step: int, state: TrainState) -> None:
  """Saves `state` as `step` (asynchronously; `manager.wait_until_finished()` joins)."""
  manager.save(step, args=ocp.args.StandardSave(state), force=True)
