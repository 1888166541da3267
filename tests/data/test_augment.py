"""Augmentation: parity with Keras' ImageDataGenerator, identity when off, and its randomness."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from catsdogs_jax.data import augment
from catsdogs_jax.runtime import parallel
from configs import default, small_cnn_aug

from conftest import override

H = W = 24


def _test_image():
  """A smooth but asymmetric image, so that any wrong direction or centre shows."""
  yy, xx = np.mgrid[0:H, 0:W]
  return np.stack(
      [np.sin(xx / 3.0) * 100 + 120, np.cos(yy / 4.0) * 100 + 120, (xx * 7 + yy * 3) % 255], -1
  ).astype(np.float32)


def _ours(image, params, fill_mode, interpolation, cval=7.0):
  p = {k: jnp.asarray(v) for k, v in params.items()}
  return np.asarray(
      augment.transform_image(
          jnp.asarray(image), augment.affine_matrix(p, H, W), fill_mode, cval, interpolation
      )
  )


IDENTITY = dict(
    theta=0.0, tx=0.0, ty=0.0, shear=0.0, zx=1.0, zy=1.0, flip_horizontal=False, flip_vertical=False
)
CASES = [
    dict(theta=30.0),
    dict(tx=3.3),
    dict(ty=-2.6),
    dict(shear=20.0),
    dict(zx=1.2, zy=0.8),
    dict(flip_horizontal=True),
    dict(flip_vertical=True),
    dict(theta=-35.0, tx=2.0, ty=-3.0, shear=15.0, zx=0.9, zy=1.15, flip_horizontal=True),
]


@pytest.mark.parametrize('fill_mode', augment.FILL_MODES)
@pytest.mark.parametrize('case', CASES)
def test_matches_keras_apply_transform(fill_mode, case):
  keras_image = pytest.importorskip('keras.src.legacy.preprocessing.image')
  generator = keras_image.ImageDataGenerator(fill_mode=fill_mode, cval=7.0)
  image = _test_image()
  params = {**IDENTITY, **case}
  expected = generator.apply_transform(image, params)
  np.testing.assert_allclose(_ours(image, params, fill_mode, 'bilinear'), expected, atol=2e-3)


def test_nearest_interpolation_matches_keras_order_0():
  keras_image = pytest.importorskip('keras.src.legacy.preprocessing.image')
  generator = keras_image.ImageDataGenerator(fill_mode='reflect', interpolation_order=0)
  params = {**IDENTITY, **CASES[-1]}  # no exact half-pixel ties, where rounding may differ
  expected = generator.apply_transform(_test_image(), params)
  np.testing.assert_array_equal(_ours(_test_image(), params, 'reflect', 'nearest'), expected)


def test_all_zero_settings_are_the_identity_bit_for_bit():
  images = np.random.default_rng(0).integers(0, 256, (4, H, W, 3), dtype=np.uint8)
  out = augment.augment_batch(jax.random.PRNGKey(0), images, default.get_config().augment)
  assert out is images
  # And the identity transform itself returns the pixels unchanged.
  np.testing.assert_array_equal(
      _ours(_test_image(), IDENTITY, 'nearest', 'bilinear'), _test_image()
  )


def test_parameters_stay_in_range_and_cover_it():
  cfg = small_cnn_aug.get_config().augment
  n = 20_000
  p = jax.device_get(augment.random_parameters(jax.random.PRNGKey(0), n, 150, 150, cfg))
  for name, bound in (('theta', 40.0), ('tx', 30.0), ('ty', 30.0), ('shear', 0.2)):
    assert np.abs(p[name]).max() <= bound
    assert p[name].min() < -0.98 * bound and p[name].max() > 0.98 * bound
    assert abs(p[name].mean()) < 0.03 * bound
  for name in ('zx', 'zy'):
    assert 0.8 <= p[name].min() < 0.805 and 1.195 < p[name].max() <= 1.2
  assert abs(np.corrcoef(p['zx'], p['zy'])[0, 1]) < 0.05  # drawn independently
  assert 0.48 < p['flip_horizontal'].mean() < 0.52
  assert not p['flip_vertical'].any()  # off in the tutorial's settings


def test_same_key_same_batch_other_key_other_batch():
  cfg = small_cnn_aug.get_config().augment
  images = np.random.default_rng(0).integers(0, 256, (4, H, W, 3), dtype=np.uint8)
  run = jax.jit(lambda k, x: augment.augment_batch(k, x, cfg))
  a, b = run(jax.random.PRNGKey(1), images), run(jax.random.PRNGKey(1), images)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, run(jax.random.PRNGKey(2), images))
  # Each example has its own parameters, even for identical inputs.
  same = np.repeat(images[:1], 4, axis=0)
  out = np.asarray(run(jax.random.PRNGKey(1), same))
  assert len({out[i].tobytes() for i in range(4)}) == 4


def test_sharded_batch_gets_per_example_randomness_independent_of_devices():
  cfg = small_cnn_aug.get_config().augment
  images = np.random.default_rng(0).integers(0, 256, (8, H, W, 3), dtype=np.uint8)
  mesh = parallel.create_mesh()
  run = jax.jit(
      lambda k, x: augment.augment_batch(k, x, cfg),
      in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
      out_shardings=parallel.batch_sharding(mesh),
  )
  sharded = run(jax.random.PRNGKey(3), parallel.shard_batch(images, mesh))
  single = jax.jit(lambda k, x: augment.augment_batch(k, x, cfg))(jax.random.PRNGKey(3), images)
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), rtol=1e-5, atol=1e-3)
  shards = [np.asarray(s.data) for s in sharded.addressable_shards]
  assert len(shards) == 4 and not np.allclose(shards[0], shards[1])


def test_invalid_settings_are_named():
  from catsdogs_jax.training import config_checks

  for field, value, message in (
      ('augment.fill_mode', 'mirror', "config.augment.fill_mode 'mirror'"),
      ('augment.zoom_range', 1.0, 'zoom_range=1.0'),
      ('augment.rotation_range', -5.0, 'rotation_range must be >= 0'),
  ):
    with pytest.raises(config_checks.ConfigError, match=message):
      config_checks.validate_config(override(default.get_config(), **{field: value}), num_devices=4)


def _losses_over_steps(aug_config):
  """Train losses of the same batch at steps 0 and 1, with a learning rate of 0."""
  from catsdogs_jax import models
  from catsdogs_jax.training import optimizers
  from catsdogs_jax.training.steps import make_eval_step, make_train_step
  from catsdogs_jax.training.train_state import make_init_fn

  config = override(
      aug_config,
      **{
          'data.image_size': 48,
          'optimizer.name': 'sgd',
          'optimizer.learning_rate': 0.0,
          'model.dropout_rate': 0.0,
      },
  )
  model = models.create_model(config)
  tx, _ = optimizers.create_optimizer(config, 1)
  state = make_init_fn(model, tx, optimizers.create_plateau(config), (48, 48, 3))(
      jax.random.PRNGKey(0)
  )
  batch = {
      'image': np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8),
      'label': np.array([0, 1, 0, 1], np.int32),
      'mask': np.ones(4, np.float32),
  }
  step = jax.jit(make_train_step(model, tx, config))
  losses = []
  for _ in range(2):
    state, metrics, _ = step(state, batch)
    losses.append(float(metrics.compute()['loss']))
  evaluation = jax.jit(make_eval_step(model, config))(state, batch).compute()
  return losses, float(evaluation['loss'])


def test_each_step_draws_new_augmentations_and_evaluation_never_augments():
  (a0, a1), eval_augmented = _losses_over_steps(small_cnn_aug.get_config())
  (p0, p1), eval_plain = _losses_over_steps(default.get_config())
  assert p0 == p1  # no augmentation, no learning: the same loss
  assert a0 != a1  # augmentation: a new draw at every step
  assert a0 != p0
  assert eval_augmented == eval_plain


def test_crop_jitter_and_the_batch_norm_small_cnn_train_in_the_step():
  config = override(
      default.get_config(),
      **{
          'augment.crop_scale': (0.3, 1.0),
          'augment.brightness': 0.4,
          'augment.contrast': 0.4,
          'augment.saturation': 0.4,
          'model.batch_norm': True,
          'model.pooling': 'avg',
      },
  )
  (a0, a1), evaluation = _losses_over_steps(config)
  assert np.isfinite([a0, a1, evaluation]).all()
  assert a0 != a1  # a new crop and jitter at every step
