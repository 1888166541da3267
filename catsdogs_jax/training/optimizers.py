"""One optax chain for every optimiser, schedule, weight decay and frozen subtree."""

from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from catsdogs_jax.models import matches_any
from catsdogs_jax.registry import lookup
from catsdogs_jax.runtime.checkpointing import monitor_mode


def _constant(config, steps_per_epoch: int, warmup: int) -> optax.Schedule:
  del steps_per_epoch, warmup  # a constant rate needs neither
  return optax.constant_schedule(config.optimizer.learning_rate)


def _step(config, steps_per_epoch: int, warmup: int) -> optax.Schedule:
  s = config.schedule
  boundaries = {int(e * steps_per_epoch) - warmup: s.step_factor for e in s.step_epochs}
  return optax.piecewise_constant_schedule(config.optimizer.learning_rate, boundaries)


def _cosine(config, steps_per_epoch: int, warmup: int) -> optax.Schedule:
  total = config.num_epochs * steps_per_epoch
  return optax.cosine_decay_schedule(
      config.optimizer.learning_rate, max(total - warmup, 1), alpha=config.schedule.cosine_alpha
  )


# config.schedule.name -> (config, steps_per_epoch, warmup_steps) -> the schedule after warmup.
# 'plateau' is constant here: create_plateau scales it once per epoch.
SCHEDULES: Dict[str, Callable[..., optax.Schedule]] = {
    'constant': _constant,
    'step': _step,
    'cosine': _cosine,
    'plateau': _constant,
}


def _sgd(o, schedule) -> optax.GradientTransformation:
  if not o.momentum:
    return optax.sgd(schedule)
  # Keras' velocity (as Caffe's) holds steps already scaled by the rate, v = momentum * v - lr * g,
  # so a scheduled rate applies to new gradients only; optax.sgd would rescale the whole velocity.
  # optax.trace's Nesterov step, applied after the rate, is Keras' momentum * v - lr * g.
  return optax.chain(
      optax.scale_by_learning_rate(schedule),
      optax.trace(decay=o.momentum, nesterov=o.nesterov),
  )


def _rmsprop(o, schedule) -> optax.GradientTransformation:
  # Keras 3 divides by sqrt(v + eps), epsilon inside the root (optax's default; Keras 2.2 added it
  # outside), and its momentum, like optax's here, accumulates steps scaled by the rate. Keras'
  # RMSprop has no Nesterov variant: optimizer.nesterov here is optax's.
  return optax.rmsprop(
      schedule,
      decay=o.rho,
      eps=o.eps,
      momentum=o.momentum or None,
      nesterov=o.nesterov,
  )


def _scale_by_keras_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """Adam's scaling as Keras 3 computes it, with optax.scale_by_adam's state.

  Keras applies the bias corrections to the step, sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps),
  so its epsilon is added before the correction: optax.adam (and PyTorch) would need
  eps / sqrt(1 - b2^t), which differs visibly while gradients are small.
  """

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    count = optax.safe_increment(state.count)
    t = count.astype(jnp.float32)
    correction = jnp.sqrt(1 - b2**t) / (1 - b1**t)
    updates = jax.tree.map(lambda m, v: correction * m / (jnp.sqrt(v) + eps), mu, nu)
    return updates, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(optax.scale_by_adam(b1, b2, eps).init, update_fn)


def _adam(o, schedule) -> optax.GradientTransformation:
  # optax.adam's chain and state, with Keras' placement of epsilon.
  return optax.chain(
      _scale_by_keras_adam(o.b1, o.b2, o.eps), optax.scale_by_learning_rate(schedule)
  )


# config.optimizer.name -> (config.optimizer, schedule) -> the optax optimiser.
OPTIMIZERS: Dict[str, Callable[..., optax.GradientTransformation]] = {
    'sgd': _sgd,
    'rmsprop': _rmsprop,
    'adam': _adam,
}


def _schedule_factory(name: str):
  return lookup(SCHEDULES, name, 'schedule.name')


def _optimizer_factory(name: str):
  return lookup(OPTIMIZERS, name, 'optimizer.name')


def create_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate as a function of the step (before any plateau scaling)."""
  factory = _schedule_factory(config.schedule.name)
  lr = config.optimizer.learning_rate
  warmup = int(config.schedule.warmup_epochs * steps_per_epoch)
  main = factory(config, steps_per_epoch, warmup)
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def is_frozen(path: Tuple[str, ...], config) -> bool:
  """Frozen: matches config.frozen, or config.trainable is set and does not match it."""
  if matches_any(path, config.frozen):
    return True
  return bool(config.trainable) and not matches_any(path, config.trainable)


def frozen_mask(params, config):
  """True per frozen parameter leaf (computed from paths only: works on tracers too)."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({k: is_frozen(k, config) for k in flat})


def frozen_labels(params, config):
  return jax.tree.map(lambda f: 'frozen' if f else 'trainable', frozen_mask(params, config))


def _kernel_mask(params):
  # Decay on weight matrices and conv kernels only (as Keras' kernel_regularizer): not on biases
  # or BatchNorm scales and offsets.
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(
    config, steps_per_epoch: int, schedule: Optional[optax.Schedule] = None
) -> Tuple[optax.GradientTransformation, Callable]:
  """Returns the optax transformation and its learning-rate schedule (config's, or `schedule`)."""
  schedule = create_schedule(config, steps_per_epoch) if schedule is None else schedule
  parts = []
  if config.optimizer.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.optimizer.grad_clip_norm))
  if config.optimizer.weight_decay:
    # Coupled L2: gradient += weight_decay * w on kernels, before the optimiser and after clipping
    # (Caffe, the VGG paper's 5e-4, PyTorch SGD's weight_decay). In Keras that is
    # kernel_regularizer=l2(weight_decay / 2), whose gradient is 2 * lambda * w; it is not Keras 3
    # optimizers' weight_decay argument, which is decoupled (w -= lr * weight_decay * w).
    parts.append(optax.add_decayed_weights(config.optimizer.weight_decay, mask=_kernel_mask))
  parts.append(_optimizer_factory(config.optimizer.name)(config.optimizer, schedule))
  tx = optax.chain(*parts)
  if config.frozen or config.trainable:
    # Frozen parameters get zero updates and no optimizer state.
    tx = optax.multi_transform(
        {'trainable': tx, 'frozen': optax.set_to_zero()},
        lambda params: frozen_labels(params, config),
    )
  return tx, schedule


def create_plateau(config) -> optax.GradientTransformationExtraArgs:
  """Reduce-on-plateau, updated once per epoch with the monitored validation metric."""
  s = config.schedule
  return optax.contrib.reduce_on_plateau(
      factor=s.plateau_factor,
      patience=s.plateau_patience,
      rtol=0.0,
      atol=s.plateau_min_delta,
      cooldown=s.plateau_cooldown,
      min_scale=s.plateau_min_scale,
  )


def plateau_value(config, metrics) -> float:
  """reduce_on_plateau minimises; flip metrics where higher is better."""
  monitor = config.schedule.plateau_monitor
  value = metrics[monitor]
  return -value if monitor_mode(monitor) == 'max' else value


def learning_rate(schedule, step, plateau_state) -> jnp.ndarray:
  return schedule(step) * plateau_state.scale
