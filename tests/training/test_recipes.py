"""The transfer-learning recipes end to end on real photos, with random 'pretrained' weights."""

import os

import numpy as np
import pytest

from catsdogs_jax.tools import evaluate
from catsdogs_jax.training import train
from catsdogs_jax.training.config_checks import ConfigError
from catsdogs_jax.weights import keras_h5
from configs import vgg16_finetune, vgg16_frozen_aug, vgg16_transfer

from conftest import SHARED_DATA, override, write_keras_h5

pytestmark = pytest.mark.skipif(
    not os.path.isdir(SHARED_DATA), reason='cats_and_dogs_small is absent'
)


@pytest.fixture(scope='module')
def keras_notop(tmp_path_factory):
  """A randomly initialised Keras VGG16 base, written and converted as the real file would be."""
  keras = pytest.importorskip('keras')
  directory = tmp_path_factory.mktemp('weights')
  keras.utils.set_random_seed(0)
  model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
  path = write_keras_h5(model, directory / 'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5')
  keras_h5.convert_keras_h5(path, 'vgg16', str(directory / 'vgg16_keras_notop'))
  return str(directory / 'vgg16_keras_notop')


def _small(config, init_from):
  """The recipe on 16 + 8 + 8 photos per class at 32 px: a few steps."""
  return override(
      config,
      batch_size=8,
      num_epochs=1,
      init_from=init_from,
      log_every_steps=2,
      **{
          'data.dataset': f'folder:{os.path.abspath(SHARED_DATA)}',
          'data.train_split': 'train[:16]',
          'data.eval_split': 'validation[:8]',
          'data.test_split': 'test[:8]',
          'data.image_size': 32,
      },
  )


def test_transfer_recipes_run_end_to_end(keras_notop, tmp_path):
  transfer = _small(vgg16_transfer.get_config(), keras_notop)
  history = train.train_and_evaluate(transfer, str(tmp_path / 'transfer'))
  assert len(history.epochs) == 1 and np.isfinite(history.epochs[0]['loss'])
  result = evaluate.evaluate_checkpoint(transfer, str(tmp_path / 'transfer'))
  assert result['num_images'] == 16

  frozen = _small(vgg16_frozen_aug.get_config(), keras_notop)
  train.train_and_evaluate(frozen, str(tmp_path / 'frozen_aug'))

  finetune = _small(vgg16_finetune.get_config(), str(tmp_path / 'frozen_aug'))
  history = train.train_and_evaluate(finetune, str(tmp_path / 'finetune'))
  assert len(history.epochs) == 1

  # Fine-tuning started from the frozen run: block1 still equals the converted weights.
  from catsdogs_jax.weights import loading

  converted = loading.read(keras_notop).params
  finetuned = loading.read(str(tmp_path / 'finetune'))
  tuned, metadata = finetuned.params, finetuned.metadata
  np.testing.assert_array_equal(
      tuned['block1_conv1']['kernel'], converted['block1_conv1']['kernel']
  )
  assert not np.array_equal(tuned['block5_conv3']['kernel'], converted['block5_conv3']['kernel'])
  assert metadata['preprocess'] == 'caffe'  # carried from the converted Keras weights


def test_feature_extraction_caches_and_reuses_features(keras_notop, tmp_path, monkeypatch):
  from catsdogs_jax.data import feature_cache
  from configs import vgg16_features

  config = _small(vgg16_features.get_config(), keras_notop)
  config.features.cache_dir = str(tmp_path / 'cache')
  extractions, extract = [], feature_cache.extract
  monkeypatch.setattr(
      feature_cache, 'extract', lambda *a, **k: extractions.append(1) or extract(*a, **k)
  )
  first = train.train_and_evaluate(config, str(tmp_path / 'first'))
  assert len(extractions) == 2  # train and validation, once each
  assert len(os.listdir(tmp_path / 'cache')) == 2
  second = train.train_and_evaluate(config, str(tmp_path / 'second'))
  assert len(extractions) == 2  # read back, not recomputed
  strip = lambda h: [
      {k: v for k, v in r.items() if k not in ('seconds', 'images_per_second')} for r in h.epochs
  ]
  assert strip(first) == strip(second)  # the same head training
  result = evaluate.evaluate_checkpoint(config, str(tmp_path / 'second'))
  assert result['num_images'] == 16
  # Cached features are of the unmirrored images: test-time flipping cannot apply.
  with pytest.raises(ConfigError, match='eval_flip would be ignored'):
    train.train_and_evaluate(override(config, eval_flip=True), str(tmp_path / 'third'))
  assert not os.path.exists(tmp_path / 'third' / 'log.csv')
