"""PyTorch state dicts against torchvision's own models: VGG16/19 and ResNet-18...152 parity
(VGG at sizes other than 224 through torchvision's adaptive pool), and safe loading."""

import os
import pickle

import jax
import numpy as np
import pytest

from catsdogs_jax import defaults, models
from catsdogs_jax.data import preprocessing
from catsdogs_jax.models import vgg
from catsdogs_jax.weights import converted, loading, pytorch

torch = pytest.importorskip('torch')
torchvision = pytest.importorskip('torchvision')

CLASSES = 3


def _torchvision(name):
  """torchvision's model with seeded random weights, every bias and BatchNorm array random too
  (torchvision starts biases, BatchNorm scales and statistics at 0 or 1), in eval mode."""
  torch.manual_seed(0)
  model = getattr(torchvision.models, name)(weights=None, num_classes=CLASSES)
  generator = torch.Generator().manual_seed(1)

  def uniform(tensor, low, high):
    tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)

  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        uniform(m.weight, 0.5, 1.5)
        uniform(m.bias, -0.2, 0.2)
        uniform(m.running_mean, -0.5, 0.5)
        uniform(m.running_var, 0.5, 1.5)
      elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
        uniform(m.bias, -0.1, 0.1)
    for m in model.modules():  # small residual branches: logits of ResNet-152 stay near 1
      last_bn = {'Bottleneck': 'bn3', 'BasicBlock': 'bn2'}.get(type(m).__name__)
      if last_bn:
        uniform(getattr(m, last_bn).weight, 0.1, 0.3)
  return model.eval()


def _save(state, path):
  """A state dict as torchvision publishes it (.pth), or as .safetensors."""
  if path.endswith('.safetensors'):
    from safetensors.torch import save_file

    save_file(state, path)
  else:
    torch.save(state, path)
  return path


def _convert(state, name, ext, tmp_path):
  """A state dict written to a file, converted and read back as `init_from` reads it."""
  path = _save(state, str(tmp_path / f'{name}.{ext}'))
  metadata = pytorch.convert_torch(path, name, str(tmp_path / 'converted'))
  assert metadata['preprocess'] == 'torch'
  return loading.read(str(tmp_path / 'converted'))


def _fill(state, name, ext, tmp_path):
  """The same file through the converter's reading and mapping only: writing and reading our
  checkpoint, which `_convert` covers, is most of the time a deep ResNet's conversion takes."""
  path = _save(state, str(tmp_path / f'{name}.{ext}'))
  abstract = models.abstract_variables(models.MODELS[name](num_outputs=CLASSES), (224, 224, 3))
  mapping = pytorch.TORCH_MODELS[name].mapping(abstract)
  variables = converted.fill(
      abstract, pytorch.read_torch(path), mapping, ignore=(r'num_batches_tracked$',)
  )
  return loading.LoadedWeights(variables['params'], variables['batch_stats'], {})


def _ours(name, **model_fields):
  """Our model as a config makes it (`create_model`), with CLASSES softmax outputs.

  The plain layer forms: run op by op, they are several times faster here than the CPU
  forms, which compute the same (tests/test_layers.py).
  """
  config = defaults.get_config()
  config.model.name = name
  config.model.layers = 'plain'
  config.loss = 'softmax'
  config.data.num_classes = CLASSES
  for key, value in model_fields.items():
    config.model[key] = value
  return models.create_model(config)


def _max_difference(torch_forward, ours, weights, size, batch=2):
  """Max |ours - torchvision| of the outputs on the same random images (NHWC vs NCHW)."""
  images = np.random.default_rng(size).integers(0, 256, (batch, size, size, 3)).astype(np.float32)
  inputs = np.asarray(preprocessing.torch(images))
  threads = torch.get_num_threads()
  # On inputs this small, threads mostly wait for each other: 2 s instead of 0.1 s for
  # ResNet-152 on 2 busy cores.
  torch.set_num_threads(1)
  try:
    with torch.no_grad():
      expected = torch_forward(torch.from_numpy(inputs.transpose(0, 3, 1, 2).copy())).numpy()
  finally:
    torch.set_num_threads(threads)
  if expected.ndim == 4:
    expected = expected.transpose(0, 2, 3, 1)
  variables = {'params': weights.params}
  if weights.batch_stats:
    variables['batch_stats'] = weights.batch_stats
  got = np.asarray(ours.apply(variables, inputs))
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
  return float(np.abs(got - expected).max())


@pytest.mark.parametrize(
    'size, out',
    [
        ((3, 3), (7, 7)),  # VGG at 112 px: bins repeat rows
        ((4, 4), (7, 7)),  # 150 px
        ((5, 5), (7, 7)),  # 160 px: overlapping bins
        ((7, 7), (7, 7)),  # 224 px: the identity
        ((8, 8), (7, 7)),  # 256 px
        ((1, 1), (7, 7)),
        ((9, 4), (7, 7)),
        ((13, 10), (3, 5)),
    ],
)
def test_adaptive_avg_pool_is_torchs(size, out):
  x = np.random.default_rng(0).standard_normal((2, *size, 5)).astype(np.float32)
  expected = torch.nn.functional.adaptive_avg_pool2d(
      torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), out
  )
  got = np.asarray(jax.jit(vgg.adaptive_avg_pool, static_argnums=1)(x, out))
  np.testing.assert_allclose(got, expected.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
  if size == out:
    np.testing.assert_array_equal(got, x)


def test_vgg_top_flattens_the_map_unless_adaptive_pool_is_set():
  fc1 = lambda model: models.abstract_variables(model, (150, 150, 3))['params']['fc1']['kernel']
  assert fc1(_ours('vgg16')).shape == (4 * 4 * 512, 4096)  # Keras' Flatten
  assert fc1(_ours('vgg16', adaptive_pool=(7, 7))).shape == (7 * 7 * 512, 4096)


def test_torchvision_vgg16_parity_at_sizes_other_than_224(tmp_path):
  model = _torchvision('vgg16')
  weights = _convert(model.state_dict(), 'vgg16', 'pth', tmp_path)
  assert weights.metadata['num_classes'] == CLASSES and weights.metadata['image_size'] == 224
  assert weights.metadata['adaptive_pool'] == [7, 7]  # what the top needs at other sizes
  # fc1 at 224 px (a 7x7 map, nothing pooled): torchvision flattens (C, H, W), we (H, W, C).
  features = torch.randn(2, 512, 7, 7, generator=torch.Generator().manual_seed(2))
  with torch.no_grad():
    expected = model.classifier[0](torch.flatten(features, 1)).numpy()
  fc1 = weights.params['fc1']
  got = features.numpy().transpose(0, 2, 3, 1).reshape(2, -1) @ fc1['kernel'] + fc1['bias']
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
  ours = _ours('vgg16', adaptive_pool=tuple(weights.metadata['adaptive_pool']))
  for size in (112, 160):  # 3x3 and 5x5 maps, pooled to 7x7: repeated and overlapping bins
    _max_difference(model, ours, weights, size, batch=1)


def test_torchvision_vgg19_convolutions_without_the_top(tmp_path):
  # The top maps as VGG16's does (tested above); a file without it converts without it.
  model = _torchvision('vgg19')
  state = {k: v for k, v in model.state_dict().items() if not k.startswith('classifier.')}
  weights = _convert(state, 'vgg19', 'safetensors', tmp_path)
  assert not weights.metadata['include_top'] and 'adaptive_pool' not in weights.metadata
  _max_difference(model.features, _ours('vgg19', include_top=False), weights, 64)


@pytest.mark.parametrize(
    'name, ext, size, batch, convert',
    [
        ('resnet18', 'pth', 64, 2, _convert),
        ('resnet34', 'safetensors', 64, 2, _fill),
        ('resnet50', 'safetensors', 32, 2, _convert),
        ('resnet101', 'pth', 32, 2, _fill),
        ('resnet152', 'pth', 32, 2, _fill),
    ],
)
def test_torchvision_resnet_parity(name, ext, size, batch, convert, tmp_path):
  model = _torchvision(name)
  weights = convert(model.state_dict(), name, ext, tmp_path)
  if convert is _convert:
    assert weights.metadata['num_classes'] == CLASSES and 'adaptive_pool' not in weights.metadata
  _max_difference(model, _ours(name), weights, size, batch)


class _Payload:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, 'w'))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
  marker = str(tmp_path / 'pwned')
  path = str(tmp_path / 'evil.pth')
  with open(path, 'wb') as f:
    pickle.dump({'conv1.weight': _Payload(marker)}, f)
  with pytest.raises(converted.ConversionError, match='Refused to load'):
    pytorch.convert_torch(path, 'resnet50', str(tmp_path / 'out'))
  assert not os.path.exists(marker)


def test_wrong_architecture_lists_what_differs(tmp_path):
  state = torchvision.models.resnet50(weights=None).state_dict()
  path = _save(state, str(tmp_path / 'resnet50.pth'))
  with pytest.raises(
      converted.ConversionError,
      match=r'in the file but not in the model: layer1\.0\.bn3\.bias, .*\(\d+ in all\)',
  ):
    pytorch.convert_torch(path, 'resnet34', str(tmp_path / 'out'))


def test_a_run_from_torchvision_vgg_weights_pools_as_they_need():
  from catsdogs_jax import defaults
  from catsdogs_jax.training import experiment

  config = defaults.get_config()
  config.model.name, config.init_from = 'vgg16', 'pretrained:vgg16_torchvision'
  metadata = {'model': 'vgg16', 'adaptive_pool': [7, 7], 'preprocess': 'torch'}
  resolved = experiment._with_preprocessing_of(config, loading.LoadedWeights({}, {}, metadata))
  assert resolved.model.adaptive_pool == (7, 7) and config.model.adaptive_pool is None
  assert resolved.data.preprocess == 'torch'
  # Weights of another model, or a pool the config sets itself, are left alone.
  config.model.name = 'vgg19'
  assert (
      experiment._with_preprocessing_of(
          config, loading.LoadedWeights({}, {}, metadata)
      ).model.adaptive_pool
      is None
  )
