"""The compiled pieces of a run: initial state, train step, predict."""

import functools

import jax
import jax.numpy as jnp
import optax

from jaxdet.training import optimizer as optimizer_lib
from jaxdet.training import sharding
from jaxdet.training.state import TrainState


def create_train_state(detector, config, schedule, mesh):
  """Initial TrainState (replicated over the mesh) and its optax transformation."""
  repl = sharding.replicated(mesh)
  # rbg keys: the same quality for initialization, and far less to compile than
  # threefry over every parameter (6 vs 20-30 s on a CPU).
  rng = jax.random.key(config.seed, impl='rbg')
  variables = jax.jit(detector.init, out_shardings=repl)(rng)
  if config.model.backbone.get('pretrained'):
    variables = jax.device_put(detector.with_pretrained(variables), repl)
  params = variables['params']
  constants = {k: v for k, v in variables.items() if k != 'params'}
  tx = optimizer_lib.make_optimizer(config.train, schedule, detector.trainable_mask(params))
  opt_state = jax.jit(tx.init, out_shardings=repl)(params)
  step = jax.device_put(jnp.zeros((), jnp.int32), repl)
  return TrainState(step=step, params=params, constants=constants, opt_state=opt_state), tx


def make_train_step(detector, tx, mesh, seed: int):
  """jit-compiled (state, global batch) -> (state, metrics); the state is donated."""
  def train_step(state: TrainState, batch: dict):
    rng = jax.random.fold_in(jax.random.key(seed), state.step)

    def loss_fn(params):
      return detector.loss(state.variables(params), batch, rng)

    (_, (metrics, model_state)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics['grad_norm'] = optax.global_norm(grads)
    constants = {**state.constants, **model_state}  # e.g. BN running statistics
    return state.replace(step=state.step + 1, params=params, constants=constants,
                         opt_state=opt_state), metrics

  repl = sharding.replicated(mesh)
  return jax.jit(train_step, in_shardings=(repl, sharding.batch_sharding(mesh)),
                 out_shardings=(repl, repl), donate_argnums=0)


def make_predict(detector, mesh, **predict_kwargs):
  """jit-compiled (variables, global batch) -> detections.

  `predict_kwargs` are static arguments of `detector.predict` (e.g. `score=`).
  """
  predict = detector.predict
  if predict_kwargs:
    predict = functools.partial(predict, **predict_kwargs)
  return jax.jit(predict,
                 in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh)))
