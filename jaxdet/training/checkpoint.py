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


def restore_latest_variables(manager: ocp.CheckpointManager, state: TrainState
                             ) -> TrainState:
  """The latest checkpoint's step, params and constants (what inference needs) with
  `state`'s structure and shardings (abstract arrays suffice), opt_state None; `state`
  if there is no checkpoint.

  The optimizer state is not read, so checkpoints written with another optimizer
  configuration (or an older jaxdet's optimizer state) still restore.
  """
  step = manager.latest_step()
  if step is None:
    return state
  item = jax.tree.map(ocp.utils.to_shape_dtype_struct, dict(
      step=state.step, params=state.params, constants=state.constants))
  restored = manager.restore(step, args=ocp.args.PyTreeRestore(
      item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
      partial_restore=True))
  return state.replace(opt_state=None, **restored)
