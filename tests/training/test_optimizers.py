"""The optax chain: schedules, Keras-compatible RMSprop, weight decay, frozen parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catsdogs_jax.training import optimizers
from configs import default

from conftest import override


def _config(**fields):
  return override(default.get_config(), **fields)


def test_step_schedule_multiplies_at_epoch_boundaries():
  config = _config(
      **{'schedule.name': 'step', 'schedule.step_epochs': (2, 4), 'optimizer.learning_rate': 0.1}
  )
  schedule = optimizers.create_schedule(config, steps_per_epoch=10)
  np.testing.assert_allclose(
      [schedule(s) for s in (0, 19, 20, 39, 40)], [0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-6
  )


def test_cosine_schedule_warms_up_then_decays_to_alpha():
  config = _config(
      **{
          'schedule.name': 'cosine',
          'schedule.warmup_epochs': 1.0,
          'schedule.cosine_alpha': 0.1,
          'optimizer.learning_rate': 1.0,
          'num_epochs': 3,
      }
  )
  schedule = optimizers.create_schedule(config, steps_per_epoch=10)
  assert float(schedule(0)) == 0.0 and float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(30)) == pytest.approx(0.1)


def test_rmsprop_matches_keras_update_rule():
  # Keras: v = rho v + (1 - rho) g^2; w -= lr g / (sqrt(v) + eps).
  config = _config(**{'optimizer.name': 'rmsprop', 'optimizer.learning_rate': 0.01})
  tx, _ = optimizers.create_optimizer(config, 1)
  g = jnp.array([0.5, -2.0, 1e-3])
  updates, _ = tx.update(g, tx.init(jnp.zeros(3)))
  expected = -0.01 * g / (jnp.sqrt(0.1 * g**2) + 1e-7)
  np.testing.assert_allclose(updates, expected, rtol=1e-5)


def test_weight_decay_applies_to_kernels_not_biases():
  config = _config(
      **{'optimizer.name': 'sgd', 'optimizer.learning_rate': 1.0, 'optimizer.weight_decay': 0.5}
  )
  tx, _ = optimizers.create_optimizer(config, 1)
  params = {'dense': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates['dense']['kernel'], -0.5)
  np.testing.assert_allclose(updates['dense']['bias'], 0.0)


def test_frozen_parameters_get_no_update_and_no_state():
  config = _config(**{'optimizer.name': 'adam', 'frozen': ('^block1_',)})
  tx, _ = optimizers.create_optimizer(config, 1)
  params = {'block1_conv1': {'kernel': jnp.ones((3, 3))}, 'fc1': {'kernel': jnp.ones((3, 3))}}
  state = tx.init(params)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  np.testing.assert_array_equal(updates['block1_conv1']['kernel'], 0.0)
  assert np.all(np.asarray(updates['fc1']['kernel']) != 0.0)
  # Adam's moments exist only for the trainable subtree.
  moments = [x for x in jax.tree.leaves(state) if getattr(x, 'shape', ()) == (3, 3)]
  assert len(moments) == 2


def test_plateau_value_flips_accuracy_only():
  config = _config(**{'schedule.plateau_monitor': 'val_accuracy'})
  assert optimizers.plateau_value(config, {'val_accuracy': 0.8}) == -0.8
  config.schedule.plateau_monitor = 'val_loss'
  assert optimizers.plateau_value(config, {'val_loss': 0.3}) == 0.3
