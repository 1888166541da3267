"""Data parallelism: a step over 4 devices equals the same step over 1 device."""

import functools

import jax
import numpy as np
import pytest

from catsdogs_jax import models
from catsdogs_jax.models.resnet import BasicBlock, ResNet
from catsdogs_jax.runtime import parallel
from catsdogs_jax.training import optimizers
from catsdogs_jax.training.steps import make_eval_step, make_train_step
from catsdogs_jax.training.train_state import make_init_fn
from configs import default


def _setup(config, devices):
  mesh = parallel.create_mesh(devices)
  model = models.create_model(config)
  tx, _ = optimizers.create_optimizer(config, steps_per_epoch=10)
  init = make_init_fn(
      model,
      tx,
      optimizers.create_plateau(config),
      (config.data.image_size, config.data.image_size, 3),
  )
  state = parallel.jit_init(init, mesh)(jax.random.PRNGKey(0))
  step = parallel.jit_train_step(make_train_step(model, tx, config), mesh)
  return mesh, state, step, model


def _batch(n, size, num_classes=2, seed=0):
  rng = np.random.default_rng(seed)
  return {
      'image': rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
      'label': rng.integers(0, num_classes, (n,), dtype=np.int32),
  }


def _two_steps(config, devices, batch, setup=None):
  """State after one step, its loss, and the loss of the next step (which sees the update).

  `setup` (from `_setup`) reuses a compiled step; its state is re-initialised.
  """
  mesh, state, step, _ = setup or _setup(config, devices)
  state = jax.tree.map(lambda x: x.copy(), state)  # the step donates its input state
  sharded = parallel.shard_batch(batch, mesh)
  state, metrics, finite = step(state, sharded)
  first = (jax.device_get(state), float(metrics.compute()['loss']))
  _, metrics, finite = step(state, sharded)
  assert bool(finite)
  return (*first, float(metrics.compute()['loss'])), sharded


def _max_difference(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


# SGD, not RMSprop: RMSprop's first update is lr * sign(g) in effect, so float32
# rounding noise in a near-zero gradient flips whole updates.
@pytest.mark.parametrize(
    'name, loss',
    [
        ('small_cnn', 'sigmoid'),  # with dropout: the same mask however it is sharded
        ('resnet_tiny', 'softmax'),  # BatchNorm: statistics over the global batch
    ],
)
def test_sharded_step_equals_single_device_step(name, loss, monkeypatch):
  assert jax.device_count() == 4, 'conftest sets 4 simulated CPU devices'
  # ResNet18's blocks, two stages of one: the same BatchNorm code, a fraction of the compile time.
  monkeypatch.setitem(
      models.MODELS,
      'resnet_tiny',
      functools.partial(ResNet, stage_sizes=(1, 1), block_cls=BasicBlock),
  )
  config = default.get_config()
  config.model.name, config.loss, config.optimizer.name = name, loss, 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.learning_rate = 1e-3
  config.model.dropout_rate = 0.5 if name == 'small_cnn' else 0.0
  config.data.image_size = 48 if name == 'small_cnn' else 32
  batch = _batch(16, config.data.image_size)

  single = _setup(config, jax.devices()[:1])
  (one, loss_one, next_one), _ = _two_steps(config, jax.devices()[:1], batch, single)
  (four, loss_four, next_four), sharded = _two_steps(config, jax.devices(), batch)
  # The batch really is split: 4 examples on each device.
  assert sharded['image'].sharding.spec == jax.sharding.PartitionSpec('data')
  assert [s.data.shape[0] for s in sharded['image'].addressable_shards] == [4, 4, 4, 4]

  np.testing.assert_allclose(loss_one, loss_four, rtol=1e-5)
  np.testing.assert_allclose(next_one, next_four, rtol=1e-4)
  trees = lambda s: (s.params, s.batch_stats, s.opt_state)
  if name == 'small_cnn':
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), trees(one), trees(four)
    )
  else:
    # BatchNorm's backward pass subtracts nearly equal sums, so any change of
    # reduction order moves the gradients by more than float32 epsilon. The noise
    # floor is what merely reordering the batch on one device does.
    perm = np.random.default_rng(1).permutation(len(batch['label']))
    (reordered, _, _), _ = _two_steps(
        config, jax.devices()[:1], {k: v[perm] for k, v in batch.items()}, single
    )
    floor = _max_difference(trees(one), trees(reordered))
    assert _max_difference(trees(one), trees(four)) <= 2 * floor + 1e-7

  # Parameters moved: the comparison is not between two untouched initialisations.
  assert _max_difference(one.params, jax.device_get(single[1].params)) > 1e-5


def test_eval_step_masks_padding():
  config = default.get_config()
  config.data.image_size = 48
  mesh, state, _, model = _setup(config, jax.devices())
  eval_step = parallel.jit_eval_step(make_eval_step(model, config), mesh)
  batch = _batch(8, 48)
  batch['mask'] = np.array([1, 1, 1, 0, 0, 0, 0, 0], np.float32)
  full = eval_step(state, parallel.shard_batch(batch, mesh)).compute()
  assert int(np.sum(full['confusion'])) == 3
  first3 = {k: v[:3] for k, v in batch.items()}
  padded_again = {k: np.concatenate([v[:3], v[:3], v[:2]]) for k, v in first3.items()}
  padded_again['mask'] = batch['mask']
  other = eval_step(state, parallel.shard_batch(padded_again, mesh)).compute()
  np.testing.assert_allclose(full['loss'], other['loss'], rtol=1e-6)
  np.testing.assert_array_equal(full['confusion'], other['confusion'])
