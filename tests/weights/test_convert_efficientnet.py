"""EfficientNet-B0 from Keras: parity on random weights (BatchNorm statistics included), preprocessing."""

import numpy as np
import pytest

from catsdogs_jax import models
from catsdogs_jax.data import preprocessing
from catsdogs_jax.weights import converted, keras_h5, loading

from conftest import write_keras_h5


def _keras_efficientnet(tmp_path, include_top, size, classes=7):
  """A Keras EfficientNetB0 with every array random (BatchNorm statistics too), as legacy .h5."""
  keras = pytest.importorskip('keras')
  keras.utils.set_random_seed(0)
  model = keras.applications.EfficientNetB0(
      weights=None,
      include_top=include_top,
      input_shape=(size, size, 3),
      classes=classes,
      classifier_activation=None,
  )
  rng = np.random.default_rng(1)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      c = layer.gamma.shape[0]
      layer.set_weights(
          [
              rng.uniform(0.5, 1.5, c),
              rng.normal(0, 0.2, c),
              rng.normal(0, 0.2, c),
              rng.uniform(0.5, 1.5, c),
          ]
      )
    elif layer.name.endswith(('se_reduce', 'se_expand')) or layer.name == 'predictions':
      kernel, bias = layer.get_weights()
      layer.set_weights([kernel, rng.normal(0, 0.2, bias.shape)])
  return model, write_keras_h5(
      model, tmp_path / f'efficientnetb0{"" if include_top else "_notop"}.h5'
  )


@pytest.mark.parametrize('include_top, size', [(True, 64), (False, 71)])
def test_keras_efficientnet_b0_parity(tmp_path, include_top, size):
  keras_model, path = _keras_efficientnet(tmp_path, include_top, size)
  metadata = keras_h5.convert_keras_h5(path, 'efficientnet_b0', str(tmp_path / 'converted'))
  # An untrained Keras model normalises with mean 0, variance 1 after Rescaling(1/255).
  assert metadata['preprocess'] == 'rescale' and metadata['include_top'] == include_top
  assert metadata['num_classes'] == (7 if include_top else None)
  weights = loading.read(str(tmp_path / 'converted'))
  params, batch_stats = weights.params, weights.batch_stats
  model = models.MODELS['efficientnet_b0'](
      num_outputs=metadata['num_classes'] or 1, include_top=include_top
  )
  images = np.random.default_rng(0).integers(0, 256, (2, size, size, 3)).astype(np.float32)
  expected = keras_model.predict(images, verbose=0)
  ours = np.asarray(
      model.apply({'params': params, 'batch_stats': batch_stats}, preprocessing.rescale(images))
  )
  assert ours.shape == expected.shape
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_efficientnet_preprocessing_is_read_from_the_normalization_layer():
  layers = {
      'normalization': [
          np.array(preprocessing.TORCH_MEAN),
          np.array(preprocessing.TORCH_STD),
          np.array(0),
      ]
  }
  # The published ImageNet files: mean and, by Keras' known slip, the stddev as "variance".
  assert keras_h5._keras_normalization(layers) == 'torch'
  layers['normalization'][1] = np.square(preprocessing.TORCH_STD)
  assert keras_h5._keras_normalization(layers) == 'torch'
  layers['normalization'][0] = np.array([0.5, 0.5, 0.5])
  with pytest.raises(
      converted.ConversionError, match=r"'normalization' has mean \[0.5, 0.5, 0.5\]"
  ):
    keras_h5._keras_normalization(layers)
  with pytest.raises(converted.ConversionError, match='Expected one Normalization layer'):
    keras_h5._keras_normalization({})


def test_a_vgg_file_is_not_taken_for_efficientnet(tmp_path):
  """Converting with the wrong --model fails naming the missing layers."""
  keras = pytest.importorskip('keras')
  model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
  path = write_keras_h5(model, tmp_path / 'vgg16.h5')
  with pytest.raises(converted.ConversionError, match='Expected one Normalization layer'):
    keras_h5.convert_keras_h5(path, 'efficientnet_b0', str(tmp_path / 'out'))
