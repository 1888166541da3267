"""Every config in configs/ is checked: it validates, its model initialises at full size
(shapes only), and one train step of its exact recipe runs at a tiny size."""

import importlib
import importlib.util
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from catsdogs_jax import models
from catsdogs_jax.models import abstract_variables
from catsdogs_jax.runtime import parallel
from catsdogs_jax.training import config_checks, experiment
from catsdogs_jax.training.steps import make_train_step
from catsdogs_jax.weights import converted

from conftest import SHARED_DATA, override

CONFIG_DIR = os.path.join(os.path.dirname(__file__), '..', 'configs')
CONFIGS = sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith('.py') and f != '__init__.py')


def _load(name):
  return importlib.import_module(f'configs.{name}').get_config()


def test_every_config_is_listed():
  assert {
      'default',
      'alexnet',
      'mnist_mlp',
      'vgg16_50px',
      'efficientnet_b0_transfer',
      'efficientnet_b0_finetune',
  } <= set(CONFIGS)


@pytest.mark.parametrize('name', CONFIGS)
def test_config_validates_and_its_model_initialises_at_full_size(name):
  config = _load(name)
  config_checks.validate_config(config, num_devices=1)
  model = models.create_model(config)
  config_checks.check_image_size(config, model)
  size = models.input_shape(config)
  variables = abstract_variables(model, size)
  logits = jax.eval_shape(
      lambda v, x: model.apply(v, x), variables, jax.ShapeDtypeStruct((2, *size), np.float32)
  )
  assert logits.shape == (2, models.num_outputs(config))


def _random_weights(config, directory):
  """Stands in for the converted or trained weights a recipe starts from: the model's own
  random initialisation, saved as a converted weights directory (a bare base where the
  recipe extracts features with it)."""
  if config.features.enabled:
    config = override(
        config.copy_and_resolve_references(), **{'model.head': None, 'model.head_units': None}
    )
  model = models.create_model(config)
  abstract = abstract_variables(model, models.input_shape(config))
  rng = np.random.default_rng(1)  # numpy, not the model's init: nothing to compile
  variables = jax.tree_util.tree_map_with_path(
      lambda path, leaf: np.abs(rng.normal(1, 0.1, leaf.shape)).astype(np.float32)
      if path[-1].key in ('var', 'scale')
      else rng.normal(0, 0.05, leaf.shape).astype(np.float32),
      abstract,
  )
  converted.save(
      directory,
      variables,
      {
          'model': config.model.name,
          'include_top': True,
          'num_classes': config.data.num_classes,
          'image_size': config.data.image_size,
          'preprocess': 'torch',
          'source': 'test',
      },
  )
  return directory


# Hardware variants: their base's recipe with other batch, learning rate and compute dtype.
HARDWARE = {'resnet50_gpu': 'resnet50', 'vgg16_gpu': 'vgg16'}
HARDWARE_FIELDS = {'half_precision', 'batch_size', 'optimizer.learning_rate'}


@pytest.mark.parametrize('name', sorted(HARDWARE))
def test_hardware_configs_change_only_hardware_fields(name):
  flat = lambda c: traverse_util.flatten_dict(c.to_dict(), sep='.')
  variant, base = flat(_load(name)), flat(_load(HARDWARE[name]))
  assert {'half_precision'} <= {k for k in variant if variant[k] != base[k]} <= HARDWARE_FIELDS
  assert variant['half_precision'] is True
  # The learning rate follows the batch as in the base (linear scaling) or stays the paper's.
  assert variant['optimizer.learning_rate'] in (
      base['optimizer.learning_rate'],
      base['optimizer.learning_rate'] * variant['batch_size'] / base['batch_size'],
  )


# Trained end to end on the shared photos by tests/training/test_recipes.py whenever it runs (photos and Keras present).
END_TO_END = {'vgg16_transfer', 'vgg16_frozen_aug', 'vgg16_finetune', 'vgg16_features'}
RECIPES_RUN = os.path.isdir(SHARED_DATA) and importlib.util.find_spec('keras') is not None


@pytest.mark.parametrize('name', [c for c in CONFIGS if c not in HARDWARE])
def test_config_trains_one_step_at_a_tiny_size(name, image_folder, tmp_path):
  if name in END_TO_END and RECIPES_RUN:
    pytest.skip('trained end to end by tests/training/test_recipes.py')
  config = override(
      _load(name),
      batch_size=8,
      **{
          'data.dataset': f'folder:{image_folder}',
          'data.train_split': 'train',
          'data.eval_split': 'validation',
          'data.test_split': 'test',
          'data.num_classes': 2,
          'features.cache_dir': str(tmp_path / 'features'),
      },
  )
  config.data.image_size = max(
      32, config_checks.smallest_image_size(models.create_model(config), config.data.channels)
  )
  if config.init_from:
    config.init_from = _random_weights(config, str(tmp_path / 'weights'))
  exp = experiment.build(config, str(tmp_path / 'run'))
  step = parallel.jit_train_step(make_train_step(exp.model, exp.tx, exp.config), exp.mesh)
  batch = next(exp.pipeline(config.data.train_split).train_epoch(0))
  state, metrics, finite = step(exp.init_state(), parallel.shard_batch(batch, exp.mesh))
  assert bool(finite) and int(state.step) == 1
  assert np.isfinite(metrics.compute()['loss'])
