"""tfds datasets through the pipeline the trainer uses: slices, process splits, decoding, downloads.

A tiny builder defined here is prepared for real (no download: its examples are
generated), so split sizes, slicing and `tfds.even_splits` are tfds' own. The
configs' own datasets (`cats_vs_dogs`, `mnist`) are read with
`tfds.testing.mock_data`, which yields `num_examples` random examples for any
split (slices included) and takes split sizes only from metadata files: those are
written here, and only whole splits are read from it.
"""

import os

import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds

from catsdogs_jax.data import input_pipeline
from configs import mnist_cnn, small_cnn

from conftest import override

NUM_EXAMPLES = 50


class CatsdogsJaxTiny(tfds.core.GeneratorBasedBuilder):
  """50 PNGs of varying size: red cats, blue dogs, green = 5 * the example's index."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
            {
                'image': tfds.features.Image(shape=(None, None, 3), encoding_format='png'),
                'label': tfds.features.ClassLabel(names=['cat', 'dog']),
            }
        ),
    )

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i in range(NUM_EXAMPLES):
      label = i % 2
      image = np.zeros((12 + i % 5, 14 + i % 7, 3), np.uint8)
      image[..., 0 if label == 0 else 2] = 200
      image[..., 1] = 5 * i
      yield i, {'image': image, 'label': label}


def _config(data_dir, **overrides):
  config = small_cnn.get_config()  # the cats/dogs configs' tfds fields and splits
  config.data.dataset, config.data.data_dir = 'catsdogs_jax_tiny', str(data_dir)
  config.data.image_size, config.batch_size, config.data.cache = 8, 8, False
  return override(config, **overrides)


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  input_pipeline.describe(_config(data_dir))  # prepares it, as a first run does
  return data_dir


def _examples(pipeline):
  """(index, label) of every real example of the eval batches, and the batches."""
  batches = list(pipeline.eval_batches())
  images = np.concatenate([b['image'][b['mask'] == 1] for b in batches])
  labels = np.concatenate([b['label'][b['mask'] == 1] for b in batches])
  ids = [int(round(float(np.median(im[..., 1])) / 5)) for im in images]
  return ids, labels, batches


def test_slices_of_the_only_split_count_and_cover_it_like_tfds(tiny_dir):
  config = _config(tiny_dir)
  assert (config.data.train_split, config.data.eval_split, config.data.test_split) == (
      'train[:80%]',
      'train[80%:90%]',
      'train[90%:]',
  )
  info = input_pipeline.describe(config)
  assert info.class_names == ('cat', 'dog')
  assert info.num_examples == {'train': 40, 'validation': 5, 'test': 5}
  seen = []
  for role, split in input_pipeline.config_splits(config).items():
    pipe = input_pipeline.ImagePipeline(config, split, info.class_names, 0, 1)
    ids, _, _ = _examples(pipe)
    assert len(ids) == pipe.num_examples == info.num_examples[role]
    seen.extend(ids)
  assert sorted(seen) == list(range(NUM_EXAMPLES))  # disjoint, and nothing missing


def test_two_processes_read_the_split_once_between_them(tiny_dir):
  config = _config(tiny_dir)
  split = 'train[:90%]'  # 45 examples: 23 + 22
  whole, _, _ = _examples(input_pipeline.ImagePipeline(config, split, ('cat', 'dog'), 0, 1))
  parts, batch_counts = [], []
  for index in range(2):
    pipe = input_pipeline.ImagePipeline(config, split, ('cat', 'dog'), index, 2)
    assert pipe.examples_per_process == [23, 22] and pipe.local_batch == 4
    ids, _, batches = _examples(pipe)
    assert len(ids) == pipe.num_examples
    parts.append(ids)
    batch_counts.append(len(batches))
  assert not set(parts[0]) & set(parts[1])
  assert sorted(parts[0] + parts[1]) == sorted(whole)  # tfds' stored order, not generation order
  assert len(set(whole)) == 45
  assert batch_counts == [6, 6]  # the processes step together


@pytest.mark.parametrize('channels', [3, 1])
def test_images_decode_to_the_configured_size_and_channels(tiny_dir, channels):
  config = _config(tiny_dir, **{'data.channels': channels, 'data.image_size': 6})
  pipe = input_pipeline.ImagePipeline(config, 'train[:80%]', ('cat', 'dog'), 0, 1)
  batches = list(pipe.train_epoch(0))
  assert len(batches) == pipe.steps_per_epoch == 5
  for batch in batches:
    assert batch['image'].shape == (8, 6, 6, channels) and batch['image'].dtype == np.uint8
    assert set(batch['label'].tolist()) <= {0, 1}
  if channels == 3:  # the label is the colour: red cats, blue dogs
    _, labels, batches = _examples(pipe)
    images = np.concatenate([b['image'][b['mask'] == 1] for b in batches])
    assert (images[..., 0].mean(axis=(1, 2)) > 150).tolist() == (labels == 0).tolist()
    assert (images[..., 2].mean(axis=(1, 2)) > 150).tolist() == (labels == 1).tolist()


def test_cached_and_uncached_decoding_give_the_same_batches(tiny_dir):
  # tfds hands over the encoded image (SkipDecoding); the pipeline decodes it, once with cache.
  batches = {}
  for cache in (False, True):
    pipe = input_pipeline.ImagePipeline(
        _config(tiny_dir, **{'data.cache': cache}), 'train[80%:]', ('cat', 'dog'), 0, 1
    )
    batches[cache] = list(pipe.eval_batches())
  assert len(batches[False]) == len(batches[True]) == 2
  for plain, cached in zip(batches[False], batches[True]):
    for key in ('image', 'label', 'mask'):
      np.testing.assert_array_equal(plain[key], cached[key])


def _write_metadata(name, data_dir, num_train, num_test=None):
  """dataset_info.json for `name` with these split sizes, where mock_data looks for it."""
  builder = tfds.builder(name, data_dir=str(data_dir))
  splits = [tfds.core.SplitInfo(name='train', shard_lengths=[num_train], num_bytes=0)]
  if num_test:
    splits.append(tfds.core.SplitInfo(name='test', shard_lengths=[num_test], num_bytes=0))
  builder.info.set_splits(tfds.core.SplitDict(splits))
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)


@pytest.mark.parametrize(
    'module, name, shape, classes',
    [(small_cnn, 'cats_vs_dogs', (10, 10, 3), 2), (mnist_cnn, 'mnist', (12, 12, 1), 10)],
)
def test_the_configs_datasets_decode_with_their_real_features(
    tmp_path, module, name, shape, classes
):
  config = module.get_config()
  assert config.data.dataset == name
  config.data.data_dir = str(tmp_path)
  config.data.image_size, config.data.channels = shape[0], shape[2]
  config.data.train_split = config.data.eval_split = config.data.test_split = 'train'
  config.batch_size = 4
  _write_metadata(name, tmp_path, 12)
  with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
    info = input_pipeline.describe(config)
    assert len(info.class_names) == classes and info.num_examples['train'] == 12
    pipe = input_pipeline.ImagePipeline(config, 'train', info.class_names, 0, 1)
    batches = list(pipe.eval_batches())
  assert len(batches) == 3 and all(b['mask'].all() for b in batches)
  for batch in batches:
    assert batch['image'].shape == (4, *shape) and batch['image'].dtype == np.uint8
    assert ((batch['label'] >= 0) & (batch['label'] < classes)).all()


def _cats_vs_dogs_unprepared(tmp_path):
  config = small_cnn.get_config()
  config.data.data_dir = str(tmp_path)
  return config


@pytest.fixture
def reachable(monkeypatch):
  """The download hosts answer: tfds' own download runs (and fails as each test makes it)."""
  monkeypatch.setattr(input_pipeline, '_unreachable_download_hosts', lambda *args: ())


def test_no_network_fails_in_seconds_before_tfds_retries(tmp_path, monkeypatch):
  for variable in input_pipeline.PROXY_VARIABLES:
    monkeypatch.delenv(variable, raising=False)
  tried = []

  def no_route(address, timeout=None):
    tried.append(address)
    raise OSError(101, 'Network is unreachable')

  def download_and_prepare(self, *args, **kwargs):
    raise AssertionError('tfds must not start downloading')

  monkeypatch.setattr(input_pipeline.socket, 'create_connection', no_route)
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', download_and_prepare)
  with pytest.raises(input_pipeline.DataError) as error:
    input_pipeline.describe(_cats_vs_dogs_unprepared(tmp_path))
  assert tried == [('download.microsoft.com', 443)]
  message = str(error.value)
  assert message.startswith(
      "Could not download tfds dataset 'cats_vs_dogs': no connection to download.microsoft.com:443"
  )
  assert '--config.data.dataset=folder:PATH' in message and '\n' not in message
  assert not os.path.exists(os.path.join(str(tmp_path), 'cats_vs_dogs'))  # nothing half-made
  # Behind a proxy a direct connection proves nothing: tfds' own download runs.
  monkeypatch.setenv('HTTPS_PROXY', 'http://proxy:3128')
  with pytest.raises(AssertionError, match='must not start downloading'):
    input_pipeline.describe(_cats_vs_dogs_unprepared(tmp_path))


def test_no_internet_is_one_line_that_says_what_to_do(tmp_path, monkeypatch, reachable):
  # What tfds raised here without a network, after about 3 minutes of retries.
  offline = requests.exceptions.ConnectionError(
      "HTTPSConnectionPool(host='download.microsoft.com', port=443): Max retries exceeded\n"
      '(Caused by NameResolutionError("Failed to resolve \'download.microsoft.com\'"))'
  )

  def download_and_prepare(self, *args, **kwargs):
    raise offline

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', download_and_prepare)
  with pytest.raises(input_pipeline.DataError) as error:
    input_pipeline.describe(_cats_vs_dogs_unprepared(tmp_path))
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith("Could not download tfds dataset 'cats_vs_dogs' (no internet access? ")
  assert 'ConnectionError' in message and 'download.microsoft.com' in message
  assert '--config.data.dataset=folder:PATH' in message
  manual = os.path.join(str(tmp_path), 'downloads', 'manual')
  assert f'place the official {input_pipeline.CATS_VS_DOGS_ZIP} in {manual}/' in message
  assert error.value.__cause__ is offline


def test_an_http_error_is_a_download_failure_too(tmp_path, monkeypatch, reachable):
  def download_and_prepare(self, *args, **kwargs):
    raise tfds.download.DownloadError('Failed to get url https://x/y.zip. HTTP code: 404.')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', download_and_prepare)
  with pytest.raises(input_pipeline.DataError, match=r'Could not download .*HTTP code: 404'):
    input_pipeline.describe(_cats_vs_dogs_unprepared(tmp_path))


def test_other_failures_while_preparing_are_not_called_download_failures(
    tmp_path, monkeypatch, reachable
):
  full = OSError(28, 'No space left on device')

  def download_and_prepare(self, *args, **kwargs):
    raise full

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', download_and_prepare)
  with pytest.raises(OSError) as error:
    input_pipeline.describe(_cats_vs_dogs_unprepared(tmp_path))
  assert error.value is full
