"""Bad configs fail before any heavy work, with the problem and the fix in the message."""

import jax
import numpy as np
import pytest
from flax import linen as nn

from catsdogs_jax import models
from catsdogs_jax.runtime import parallel
from catsdogs_jax.training import config_checks, experiment
from catsdogs_jax.training.steps import make_train_step
from configs import default

from conftest import override


@pytest.mark.parametrize(
    'field, value, message',
    [
        (
            'model.name',
            'vgg17',
            "Unknown config.model.name 'vgg17'; choose one of: alexnet, efficientnet_b0, efficientnet_lite0, ",
        ),
        (
            'optimizer.name',
            'adamax',
            "Unknown config.optimizer.name 'adamax'; choose one of: adam, ",
        ),
        (
            'schedule.name',
            'linear',
            "Unknown config.schedule.name 'linear'; choose one of: constant",
        ),
        ('loss', 'hinge', "Unknown config.loss 'hinge'"),
        ('data.preprocess', 'imagenet', "Unknown config.data.preprocess 'imagenet'"),
        ('early_stopping.monitor', 'loss', "Unknown config.early_stopping.monitor 'loss'"),
        (
            'model.head',
            'mlp',
            "Unknown config.model.head 'mlp'; choose one of: dense, flatten_dense",
        ),
        ('model.pooling', 'min', "Unknown config.model.pooling 'min'; choose one of: avg, max."),
        ('data.num_classes', 3, 'use --config.loss=softmax'),
        ('batch_size', 6, 'not divisible by the 4 devices'),
        ('num_epochs', 0, 'config.num_epochs must be positive'),
    ],
)
def test_invalid_values_are_named(field, value, message):
  config = override(default.get_config(), **{field: value})
  with pytest.raises(config_checks.ConfigError) as error:
    config_checks.validate_config(config, num_devices=4)
  assert message in str(error.value)


def test_image_too_small_names_the_minimum():
  config = default.get_config()
  config.model.name, config.loss, config.data.image_size = 'vgg16', 'softmax', 16
  with pytest.raises(
      config_checks.ConfigError,
      match=r"image_size=16 is too small for model 'vgg16'.*image_size=32 or more",
  ):
    config_checks.check_image_size(config, models.create_model(config))
  config.data.image_size = 32
  config_checks.check_image_size(config, models.create_model(config))


def test_model_errors_other_than_too_small_are_not_reported_as_too_small(monkeypatch):
  config = default.get_config()
  config.model.name, config.loss, config.data.image_size = 'vgg16', 'softmax', 16
  model = models.create_model(config)

  def broken(model, image_shape):
    raise TypeError('boom')

  monkeypatch.setattr(config_checks, 'abstract_variables', broken)
  with pytest.raises(TypeError, match='boom'):
    config_checks.check_image_size(config, model)


class _Broken(nn.Module):
  """A conv that keeps its input's size, then a bug: the map is never empty."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), padding='SAME')(x)
    raise ValueError(f'a bug after a {x.shape[1]}x{x.shape[2]} map')


class _Shrinking(nn.Module):
  """A VALID conv empties small maps; a non-variance-scaling Dense then makes an empty kernel."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (5, 5), padding='VALID')(x)
    return nn.Dense(2, kernel_init=nn.initializers.normal())(x.reshape((x.shape[0], -1)))


def test_a_bug_in_the_model_propagates_and_an_empty_map_means_too_small():
  config = default.get_config()
  config.data.image_size = 8
  with pytest.raises(ValueError, match='a bug after a 8x8 map'):
    config_checks.check_image_size(config, _Broken())
  config.data.image_size = 4
  with pytest.raises(
      config_checks.ConfigError, match=r'image_size=4 is too small.*image_size=5 or'
  ):
    config_checks.check_image_size(config, _Shrinking())


def test_dataset_with_other_classes_than_the_config(make_config, tmp_path):
  config = make_config(loss='softmax', **{'data.num_classes': 3})
  with pytest.raises(config_checks.ConfigError, match=r'2 classes \(cats, dogs\).*num_classes=2'):
    experiment.build(config, str(tmp_path))


def test_batch_larger_than_the_training_split(make_config, tmp_path):
  with pytest.raises(config_checks.ConfigError, match='larger than the training split'):
    experiment.build(make_config(batch_size=64), str(tmp_path))


@pytest.mark.parametrize(
    'fields, message',
    [
        (
            {'model.head': 'dense'},
            "head='dense' is a dense layer on the pooled base; set " '--config.model.pooling=avg',
        ),
        (
            {'model.head': 'gmp_dense', 'model.pooling': 'avg'},
            "config.model.head='gmp_dense' works "
            'on the feature map; leave config.'
            'model.pooling unset',
        ),
        ({'model.head': 'flatten_mlp', 'model.pooling': 'max'}, "head='flatten_mlp' works on the "),
        (
            {'train_from': 'conv3', 'frozen': ('^conv1/',)},
            'leave config.frozen (and config.trainable) empty with it',
        ),
        (
            {'train_from': 'conv3', 'features.enabled': True},
            'trains only a head on cached features',
        ),
    ],
)
def test_head_and_train_from_conflicts_are_named(fields, message):
  with pytest.raises(config_checks.ConfigError) as error:
    config_checks.validate_config(override(default.get_config(), **fields), num_devices=1)
  assert message in str(error.value)


def test_train_from_trains_that_layer_and_the_ones_after_it(make_config, tmp_path):
  exp = experiment.build(make_config(train_from='conv3'), str(tmp_path / 'run'))
  assert exp.config.trainable == ('^conv3/', '^conv4/', '^dense1/', '^logits/')
  assert exp.config.train_from == 'conv3'
  step = parallel.jit_train_step(make_train_step(exp.model, exp.tx, exp.config), exp.mesh)
  state = exp.init_state()
  before = jax.device_get(state.params)  # the step donates the state's buffers
  batch = next(exp.pipeline('train').train_epoch(0))
  after, _, _ = step(state, parallel.shard_batch(batch, exp.mesh))
  changed = {
      name: not np.array_equal(before[name]['kernel'], after.params[name]['kernel'])
      for name in before
  }
  assert changed == {
      'conv1': False,
      'conv2': False,
      'conv3': True,
      'conv4': True,
      'dense1': True,
      'logits': True,
  }
  with pytest.raises(
      config_checks.ConfigError,
      match="train_from='conv9' is not a layer with "
      'parameters of this model; its layers are: '
      'conv1, conv2, conv3, conv4, dense1, logits',
  ):
    experiment.build(make_config(train_from='conv9'), str(tmp_path / 'other'))
  with pytest.raises(config_checks.ConfigError, match='leave config.trainable empty with it'):
    experiment.build(
        make_config(train_from='conv3', trainable=('^logits/',)), str(tmp_path / 'third')
    )
  assert not (tmp_path / 'other').exists() and not (tmp_path / 'third').exists()
