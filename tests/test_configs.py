"""Every config in configs/ is checked: its training, validation and test splits share no
image, it validates, its model initialises at full size (shapes only), and one train step of its
exact recipe runs at a tiny size."""

import glob
import importlib
import inspect
import itertools
import os
import re

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import traverse_util

from catsdogs_jax import models
from catsdogs_jax.models import abstract_variables
from catsdogs_jax.runtime import parallel
from catsdogs_jax.tools import sweep
from catsdogs_jax.training import config_checks, experiment
from catsdogs_jax.training.steps import make_train_step
from catsdogs_jax.weights import converted

from conftest import override

CONFIG_DIR = os.path.join(os.path.dirname(__file__), '..', 'configs')


def _is_experiment(name):
  """An experiment file's get_config() takes no argument; configs/run.py's reads a workdir."""
  get_config = importlib.import_module(f'configs.{name}').get_config
  return all(
      p.default is not inspect.Parameter.empty
      for p in inspect.signature(get_config).parameters.values()
  )


CONFIGS = sorted(
    name
    for name in (f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith('.py'))
    if name != '__init__' and _is_experiment(name)
)


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


# The split sizes of the tfds datasets the configs read, to resolve slices as tfds does:
# tfds' mnist builder, and cats_vs_dogs' one split (Microsoft's 25,000 images less 1,738 corrupt).
TFDS_SPLITS = {'mnist': {'train': 60_000, 'test': 10_000}, 'cats_vs_dogs': {'train': 23_262}}
# Folder datasets: sub-folders are split by name; their slices are compared as if each
# sub-folder held this many images (percent and absolute bounds need a size to meet).
FOLDER_SPLIT_SIZE = 1_000
SPLIT_FIELDS = ('data.dataset', 'data.train_split', 'data.eval_split', 'data.test_split')


def _ranges(config, split):
  """The (split, start, stop) index ranges that `split` reads, tfds' own parser resolving slices."""
  dataset = config.data.dataset
  if dataset.startswith('folder:'):
    names = {part.split('[')[0].strip() for part in split.split('+')}
    sizes = dict.fromkeys(names, FOLDER_SPLIT_SIZE)
  else:
    base = re.split('[:/]', dataset)[0]  # 'mnist:3.*.*', 'name/builder_config'
    if base not in TFDS_SPLITS:
      pytest.fail(f'tfds dataset {dataset!r}: add its split sizes to TFDS_SPLITS')
    sizes = TFDS_SPLITS[base]
  infos = tfds.core.SplitDict(
      [tfds.core.SplitInfo(name=n, shard_lengths=[k], num_bytes=0) for n, k in sizes.items()]
  )
  return [
      (a.splitname, a.from_ or 0, sizes[a.splitname] if a.to is None else a.to)
      for a in tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
  ]


def _shared(ranges, others):
  return sum(
      max(0, min(stop, stop2) - max(start, start2))
      for (name, start, stop), (name2, start2, stop2) in itertools.product(ranges, others)
      if name == name2
  )


# Sweep variants that change what is read: a sweep runs over whichever config it is given.
SPLIT_SWEEPS = [
    (os.path.basename(path), variant)
    for path in sorted(glob.glob(os.path.join(CONFIG_DIR, 'sweeps', '*.py')))
    for variant in sweep.load_sweep(path)
    if set(variant) & set(SPLIT_FIELDS)
]


@pytest.mark.parametrize('name', CONFIGS)
def test_training_validation_and_test_splits_share_no_image(name):
  # Validation picks the best checkpoint and the plateau schedule: on test images (or
  # training ones) the test accuracy would no longer be of unseen images.
  for where, variant in [('', {})] + SPLIT_SWEEPS:
    config = override(_load(name), **variant)
    splits = {
        'training': config.data.train_split,
        'validation': config.data.eval_split,
        'test': config.data.test_split,
    }
    ranges = {role: _ranges(config, split) for role, split in splits.items()}
    label = f'{name} {where} {variant}' if where else name
    for role, found in ranges.items():
      images = sum(stop - start for _, start, stop in found)
      assert images, f'{label}: {role} {splits[role]!r} is empty'
    for a, b in itertools.combinations(splits, 2):
      shared = _shared(ranges[a], ranges[b])
      assert not shared, (
          f'{label}: {a} {splits[a]!r} and {b} {splits[b]!r} share {shared} images '
          f'of {config.data.dataset!r}'
      )


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


def _random_like(abstract):
  """numpy arrays of `abstract`'s shapes, positive where BatchNorm divides: numpy, not the
  model's init, so that nothing compiles."""
  rng = np.random.default_rng(1)
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: np.abs(rng.normal(1, 0.1, leaf.shape)).astype(leaf.dtype)
      if path[-1].key in ('var', 'scale')
      else rng.normal(0, 0.05, leaf.shape).astype(leaf.dtype),
      abstract,
  )


def _random_weights(config, directory):
  """Stands in for the converted or trained weights a recipe starts from: random weights
  of the model's shapes, saved as a converted weights directory (a bare base where the
  recipe extracts features with it)."""
  if config.features.enabled:
    config = override(
        config.copy_and_resolve_references(), **{'model.head': None, 'model.head_units': None}
    )
  model = models.create_model(config)
  converted.save(
      directory,
      _random_like(abstract_variables(model, models.input_shape(config))),
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


def _initial_state(exp):
  """A state of the recipe's shapes and optimizer, made on the host: the recipe is in the
  step, and compiling each model's initialisation (exp.init_state) took more CPU than the
  step itself (EfficientNet-B0: 63 s against 28; VGG16: 17 s against 6)."""
  abstract = exp.abstract_state()
  params = _random_like(abstract.params)
  batch_stats = _random_like(abstract.batch_stats)
  state = abstract.replace(
      step=np.zeros((), np.int32),
      params=params,
      batch_stats=batch_stats,
      # config.ema's average starts at the initial weights, as exp.init_state's does
      ema={'params': params, 'batch_stats': batch_stats} if abstract.ema else {},
      opt_state=exp.tx.init(params),
      plateau=exp.plateau.init(params),
      rng=np.asarray(jax.random.PRNGKey(exp.config.seed)),
  )
  return jax.device_put(state, parallel.replicated(exp.mesh))


@pytest.mark.parametrize('name', [c for c in CONFIGS if c not in HARDWARE])
def test_config_trains_one_step_at_a_tiny_size(name, image_folder, tmp_path):
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
  state, metrics, finite = step(_initial_state(exp), parallel.shard_batch(batch, exp.mesh))
  assert bool(finite) and int(state.step) == 1
  assert np.isfinite(metrics.compute()['loss'])
