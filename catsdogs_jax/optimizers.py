"""One optax chain for every optimiser, schedule, weight decay and frozen subtree."""

import re
from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from catsdogs_jax.callbacks import monitor_mode

OPTIMIZERS = ('sgd', 'rmsprop', 'adam')
SCHEDULES = ('constant', 'step', 'cosine', 'plateau')


def create_schedule(config, steps_per_epoch: int) -> optax.Schedule:
  """The learning rate as a function of the step (before any plateau scaling)."""
  s, lr = config.schedule, config.optimizer.learning_rate
  warmup = int(s.warmup_epochs * steps_per_epoch)
  if s.name in ('constant', 'plateau'):
    main = optax.constant_schedule(lr)
  elif s.name == 'step':
    boundaries = {int(e * steps_per_epoch) - warmup: s.step_factor for e in s.step_epochs}
    main = optax.piecewise_constant_schedule(lr, boundaries)
  elif s.name == 'cosine':
    total = config.num_epochs * steps_per_epoch
    main = optax.cosine_decay_schedule(lr, max(total - warmup, 1), alpha=s.cosine_alpha)
  else:
    raise ValueError(f'Unknown schedule {s.name!r} (config.schedule.name); '
                     f'choose one of: {", ".join(SCHEDULES)}.')
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _base_optimizer(config, schedule) -> optax.GradientTransformation:
  o = config.optimizer
  if o.name == 'sgd':
    return optax.sgd(schedule, momentum=o.momentum or None, nesterov=o.nesterov)
  if o.name == 'rmsprop':
    # Keras adds epsilon outside the square root; so do we (eps_in_sqrt=False).
    return optax.rmsprop(schedule, decay=o.rho, eps=o.eps, eps_in_sqrt=False,
                         momentum=o.momentum or None, nesterov=o.nesterov)
  if o.name == 'adam':
    return optax.adam(schedule, b1=o.b1, b2=o.b2, eps=o.eps)
  raise ValueError(f'Unknown optimizer {o.name!r} (config.optimizer.name); '
                   f'choose one of: {", ".join(OPTIMIZERS)}.')


def path_string(path: Tuple[str, ...]) -> str:
  return '/'.join(str(p) for p in path)


def matches_any(path: Tuple[str, ...], patterns: Sequence[str]) -> bool:
  """True when a parameter path ('block1_conv1/kernel') matches any regex."""
  name = path_string(path)
  return any(re.search(p, name) for p in patterns)


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
  # L2 on weight matrices and conv kernels only (as Keras kernel_regularizer).
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(config, steps_per_epoch: int, schedule: Optional[optax.Schedule] = None
                     ) -> Tuple[optax.GradientTransformation, Callable]:
  """Returns the optax transformation and its learning-rate schedule (config's, or `schedule`)."""
  schedule = create_schedule(config, steps_per_epoch) if schedule is None else schedule
  parts = []
  if config.optimizer.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.optimizer.grad_clip_norm))
  if config.optimizer.weight_decay:
    # Coupled L2 (the gradient of wd/2*|w|^2), as in the VGG paper and Keras.
    parts.append(optax.add_decayed_weights(config.optimizer.weight_decay, mask=_kernel_mask))
  parts.append(_base_optimizer(config, schedule))
  tx = optax.chain(*parts)
  if config.frozen or config.trainable:
    # Frozen parameters get zero updates and no optimizer state.
    tx = optax.multi_transform(
        {'trainable': tx, 'frozen': optax.set_to_zero()},
        lambda params: frozen_labels(params, config))
  return tx, schedule


def create_plateau(config) -> optax.GradientTransformationExtraArgs:
  """Reduce-on-plateau, updated once per epoch with the monitored validation metric."""
  s = config.schedule
  return optax.contrib.reduce_on_plateau(
      factor=s.plateau_factor, patience=s.plateau_patience, rtol=0.0,
      atol=s.plateau_min_delta, cooldown=s.plateau_cooldown,
      min_scale=s.plateau_min_scale)


def plateau_value(config, metrics) -> float:
  """reduce_on_plateau minimises; flip metrics where higher is better."""
  monitor = config.schedule.plateau_monitor
  value = metrics[monitor]
  return -value if monitor_mode(monitor) == 'max' else value


def learning_rate(schedule, step, plateau_state) -> jnp.ndarray:
  return schedule(step) * plateau_state.scale
