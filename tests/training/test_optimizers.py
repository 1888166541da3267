"""The optax chain: schedules, the optimisers against Keras 3, weight decay, frozen parameters."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


# Each optimiser against the installed Keras 3: the same dense layer, starting weights and batch,
# 20 steps. The loss is scaled so that gradients (5e-5 to 5e-4) are near sqrt(eps) = 3e-4, where
# Keras' placement of epsilon changes RMSprop's step severalfold and Adam's by a few percent.
_STEPS, _SCALE, _WEIGHT_DECAY = 20, 1e-3, 1e-3
_RNG = np.random.default_rng(0)
_KERNEL = _RNG.normal(0, 0.5, (4, 2)).astype(np.float32)
_BIAS = _RNG.normal(0, 0.1, 2).astype(np.float32)
_X = _RNG.normal(size=(8, 4)).astype(np.float32)
_Y = _RNG.normal(size=(8, 2)).astype(np.float32)

# name -> (our optimizer fields, Keras' optimiser from (keras, learning rate or schedule)).
_OPTIMIZERS = {
    'rmsprop': ({'name': 'rmsprop', 'learning_rate': 1e-2}, lambda k, lr: k.optimizers.RMSprop(lr)),
    'rmsprop_momentum': (
        {'name': 'rmsprop', 'learning_rate': 1e-2, 'momentum': 0.9},
        lambda k, lr: k.optimizers.RMSprop(lr, momentum=0.9),
    ),
    'adam': ({'name': 'adam', 'learning_rate': 1e-2}, lambda k, lr: k.optimizers.Adam(lr)),
    # SGD's steps are gradient-sized: a larger rate so that the weights move well beyond tolerance.
    'sgd': ({'name': 'sgd', 'learning_rate': 1.0}, lambda k, lr: k.optimizers.SGD(lr)),
    'sgd_momentum': (
        {'name': 'sgd', 'learning_rate': 1.0, 'momentum': 0.9},
        lambda k, lr: k.optimizers.SGD(lr, momentum=0.9),
    ),
    'sgd_nesterov': (
        {'name': 'sgd', 'learning_rate': 1.0, 'momentum': 0.9, 'nesterov': True},
        lambda k, lr: k.optimizers.SGD(lr, momentum=0.9, nesterov=True),
    ),
}
# (optimizer, weight decay, schedule): each with and without decay; a cosine rate where the
# momentum holds past rates (the other optimisers' state does not depend on the rate).
_CASES = [(name, wd, 'constant') for name in _OPTIMIZERS for wd in (0.0, _WEIGHT_DECAY)] + [
    (name, _WEIGHT_DECAY, 'cosine') for name in ('rmsprop_momentum', 'sgd_momentum', 'sgd_nesterov')
]


def _case_id(case):
  name, wd, schedule = case
  return f'{name}-{"wd" if wd else "no_wd"}-{schedule}'


def _case_config(case):
  name, wd, schedule = case
  fields = {f'optimizer.{k}': v for k, v in _OPTIMIZERS[name][0].items()}
  fields.update(
      {
          'optimizer.weight_decay': wd,
          'schedule.name': schedule,
          'schedule.cosine_alpha': 0.1,
          'num_epochs': _STEPS,  # one step per epoch: cosine decays over the 20 steps
      }
  )
  return _config(**fields)


def _keras_final_weights():
  os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
  keras = pytest.importorskip('keras')
  tf = pytest.importorskip('tensorflow')
  if keras.backend.backend() != 'tensorflow':
    pytest.skip('the Keras reference run uses tf.GradientTape')
  runs = []
  for case in _CASES:
    name, wd, schedule = case
    lr = _OPTIMIZERS[name][0]['learning_rate']
    if schedule == 'cosine':
      lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=_STEPS, alpha=0.1)
    # Our weight_decay is Keras' l2(weight_decay / 2): the gradient of lambda * |w|^2 is 2 lambda w.
    reg = keras.regularizers.L2(wd / 2) if wd else None
    layer = keras.layers.Dense(2, kernel_regularizer=reg)  # the bias is not regularised
    layer.build((None, 4))
    layer.set_weights([_KERNEL, _BIAS])
    optimizer = _OPTIMIZERS[name][1](keras, lr)
    optimizer.build(layer.trainable_variables)  # its variables before tracing: one trace
    runs.append((layer, optimizer))

  @tf.function(autograph=False)  # every case's step in one graph, traced once
  def step():
    for layer, optimizer in runs:
      with tf.GradientTape() as tape:
        loss = _SCALE * keras.ops.mean(keras.ops.square(layer(_X) - _Y)) + sum(layer.losses)
      variables = layer.trainable_variables
      optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

  for _ in range(_STEPS):
    step()
  return {case: layer.get_weights() for case, (layer, _) in zip(_CASES, runs)}


def _our_final_weights():
  txs = [optimizers.create_optimizer(_case_config(case), steps_per_epoch=1)[0] for case in _CASES]
  params = {'dense': {'kernel': jnp.asarray(_KERNEL), 'bias': jnp.asarray(_BIAS)}}

  def loss(p):
    return _SCALE * jnp.mean((_X @ p['dense']['kernel'] + p['dense']['bias'] - _Y) ** 2)

  def step(carry, _):
    new = []
    for tx, (p, state) in zip(txs, carry):
      updates, state = tx.update(jax.grad(loss)(p), state, p)
      new.append((optax.apply_updates(p, updates), state))
    return new, None

  @jax.jit  # every case's 20 steps in one program: compiled once
  def train(p):
    return jax.lax.scan(step, [(p, tx.init(p)) for tx in txs], None, length=_STEPS)[0]

  return {
      case: [np.asarray(p['dense']['kernel']), np.asarray(p['dense']['bias'])]
      for case, (p, _) in zip(_CASES, train(params))
  }


@pytest.fixture(scope='module')
def final_weights():
  keras_weights = _keras_final_weights()
  return _our_final_weights(), keras_weights


@pytest.mark.parametrize('case', _CASES, ids=_case_id)
def test_optimizer_matches_keras_over_20_steps(final_weights, case):
  ours, theirs = final_weights[0][case], final_weights[1][case]
  moved = max(np.abs(b - a).max() for a, b in zip((_KERNEL, _BIAS), theirs))
  assert moved > 1e-3  # the comparison is far above float32 noise
  for mine, keras_value in zip(ours, theirs):
    np.testing.assert_allclose(mine, keras_value, rtol=1e-5, atol=1e-6)
