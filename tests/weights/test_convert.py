"""Converted weights: parity with Keras, the load contract, preprocessing bound to weights, freezing."""

import os

import jax
import numpy as np
import pytest

from catsdogs_jax import models
from catsdogs_jax.data import preprocessing
from catsdogs_jax.runtime import parallel
from catsdogs_jax.training import experiment
from catsdogs_jax.training.steps import make_train_step
from catsdogs_jax.weights import converted, keras_h5, loading

from conftest import ROOT, tiny_config, write_keras_h5

SIZE = 64  # 2x2x512 before fc1: the flatten order matters


def _keras_vgg16(tmp_path, include_top, classes=5):
  """A randomly initialised Keras VGG16 and its legacy .h5 weight file, as Keras 2 wrote it."""
  keras = pytest.importorskip('keras')
  keras.utils.set_random_seed(0)
  model = keras.applications.VGG16(
      weights=None,
      include_top=include_top,
      input_shape=(SIZE, SIZE, 3),
      classes=classes,
      classifier_activation=None,
  )
  return model, write_keras_h5(model, tmp_path / f'vgg16_{"top" if include_top else "notop"}.h5')


@pytest.mark.parametrize('include_top', [True, False])
def test_keras_vgg16_parity_with_preprocessing(tmp_path, include_top):
  keras_model, path = _keras_vgg16(tmp_path, include_top)
  metadata = keras_h5.convert_keras_h5(path, 'vgg16', str(tmp_path / 'converted'))
  assert metadata['preprocess'] == 'caffe' and metadata['include_top'] == include_top
  params = loading.read(str(tmp_path / 'converted')).params
  model = models.MODELS['vgg16'](num_outputs=metadata['num_classes'] or 1, include_top=include_top)
  images = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3)).astype(np.float32)
  from keras.applications import vgg16 as keras_vgg16

  expected = keras_model.predict(keras_vgg16.preprocess_input(images.copy()), verbose=0)
  ours = model.apply({'params': params}, preprocessing.caffe(images))
  np.testing.assert_allclose(
      np.asarray(ours), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
  )


def test_not_a_keras_file_and_a_mismatched_file_are_named(tmp_path):
  h5py = pytest.importorskip('h5py')
  plain = str(tmp_path / 'plain.h5')
  with h5py.File(plain, 'w') as f:
    f.create_dataset('x', data=np.zeros(3))
  with pytest.raises(converted.ConversionError, match='not a Keras weight file'):
    keras_h5.convert_keras_h5(plain, 'vgg16', str(tmp_path / 'out'))
  _, path = _keras_vgg16(tmp_path, include_top=False)
  with pytest.raises(
      converted.ConversionError,
      match=r'missing in the file: block3_conv4/0, block3_conv4/1, block4_conv4/0',
  ):
    keras_h5.convert_keras_h5(path, 'vgg19', str(tmp_path / 'out19'))


@pytest.fixture
def converted_top(tmp_path):
  _, path = _keras_vgg16(tmp_path, include_top=True)
  keras_h5.convert_keras_h5(path, 'vgg16', str(tmp_path / 'converted'))
  return str(tmp_path / 'converted')


def _vgg_config(image_folder, converted, **fields):
  return tiny_config(
      image_folder,
      loss='softmax',
      init_from=converted,
      **{
          'data.image_size': SIZE,
          'model.name': 'vgg16',
          'optimizer.name': 'sgd',
          'optimizer.learning_rate': 1e-3,
          **fields,
      },
  )


def test_init_from_loads_everything_but_dont_load_and_binds_preprocessing(
    image_folder, converted_top, tmp_path
):
  config = _vgg_config(image_folder, converted_top)
  with pytest.raises(loading.WeightsError, match=r'different shapes: predictions/bias file \(5,\)'):
    experiment.build(config, str(tmp_path / 'a'))
  config.dont_load = ('^predictions/',)
  exp = experiment.build(config, str(tmp_path / 'b'))
  assert exp.config.data.preprocess == 'caffe'  # bound to the weights, not 1/255
  state = jax.device_get(exp.init_state())
  loaded = loading.read(converted_top).params
  np.testing.assert_array_equal(
      state.params['block3_conv2']['kernel'], loaded['block3_conv2']['kernel']
  )
  assert state.params['predictions']['kernel'].shape == (4096, 2)
  config.data.preprocess = 'rescale'  # overridable
  assert experiment.build(config, str(tmp_path / 'c')).config.data.preprocess == 'rescale'


def test_frozen_base_stays_bit_identical_and_has_no_optimizer_state(
    image_folder, converted_top, tmp_path
):
  config = _vgg_config(
      image_folder,
      converted_top,
      dont_load=('^predictions/',),
      trainable=('^predictions/',),
      **{'optimizer.momentum': 0.9},
  )
  exp = experiment.build(config, str(tmp_path))
  state = exp.init_state()
  before = jax.device_get(state.params)
  step = parallel.jit_train_step(make_train_step(exp.model, exp.tx, exp.config), exp.mesh)
  batch = next(exp.pipeline(config.data.train_split).train_epoch(0))
  for _ in range(2):
    state, _, finite = step(state, parallel.shard_batch(batch, exp.mesh))
  assert bool(finite)
  after = jax.device_get(state.params)
  for name in before:
    same = all(np.array_equal(before[name][k], after[name][k]) for k in before[name])
    assert same == (name != 'predictions'), name
  momentum = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
  assert sum(np.size(x) for x in momentum) == 4096 * 2 + 2  # the head's trace only


def test_keras_1_weight_names_and_the_command_line(tmp_path):
  """The published VGG16 files name arrays 'block1_conv1_W_1:0' (Keras 1): only order counts."""
  import subprocess
  import sys

  h5py = pytest.importorskip('h5py')
  _, path = _keras_vgg16(tmp_path, include_top=False)
  layers = keras_h5.read_keras_h5(path)
  old_style = str(tmp_path / 'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5')
  with h5py.File(old_style, 'w') as f:
    f.attrs['layer_names'] = [b'input_1'] + [n.encode() for n in layers]
    f.create_group('input_1').attrs['weight_names'] = []
    for name, (kernel, bias) in layers.items():
      group = f.create_group(name)
      group.attrs['weight_names'] = [f'{name}_W_1:0'.encode(), f'{name}_b_1:0'.encode()]
      group.create_dataset(f'{name}_W_1:0', data=kernel)
      group.create_dataset(f'{name}_b_1:0', data=bias)
  root = ROOT
  result = subprocess.run(
      [
          sys.executable,
          '-m',
          'catsdogs_jax.weights.convert',
          '--format=keras_h5',
          '--model=vgg16',
          f'--input={old_style}',
          f'--output={tmp_path / "cli"}',
      ],
      cwd=root,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  weights = loading.read(str(tmp_path / 'cli'))
  params, metadata = weights.params, weights.metadata
  assert metadata['file'] == os.path.basename(old_style) and len(metadata['sha256']) == 64
  np.testing.assert_array_equal(params['block5_conv3']['kernel'], layers['block5_conv3'][0])
  bad = subprocess.run(
      [
          sys.executable,
          '-m',
          'catsdogs_jax.weights.convert',
          '--format=keras_h5',
          '--model=vgg19',
          f'--input={old_style}',
          f'--output={tmp_path / "bad"}',
      ],
      cwd=root,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert bad.returncode != 0 and 'missing in the file: block3_conv4/0' in bad.stderr
