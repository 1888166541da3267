"""PyTorch state dicts (torchvision key names): parity of VGG16 and ResNet-50, and safe loading."""

import os
import pickle

import numpy as np
import pytest

from catsdogs_jax import models
from catsdogs_jax.data import preprocessing
from catsdogs_jax.weights import converted, loading, pytorch

torch = pytest.importorskip('torch')
nn = torch.nn


class TorchVGG16(nn.Module):
  """torchvision.models.vgg16's layout and state-dict keys."""

  def __init__(self, classes):
    super().__init__()
    layers, channels = [], 3
    for n, width in zip((2, 2, 3, 3, 3), (64, 128, 256, 512, 512)):
      for _ in range(n):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        channels = width
      layers.append(nn.MaxPool2d(2, 2))
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(4096, 4096),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(4096, classes),
    )

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class TorchBottleneck(nn.Module):

  def __init__(self, inplanes, planes, stride, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet50(nn.Module):
  """torchvision.models.resnet50's layout and state-dict keys."""

  def __init__(self, classes):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    inplanes = 64
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
      layer = []
      for j in range(blocks):
        stride = 2 if i > 1 and j == 0 else 1
        downsample = None
        if j == 0:
          downsample = nn.Sequential(
              nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
          )
        layer.append(TorchBottleneck(inplanes, planes, stride, downsample))
        inplanes = planes * 4
      setattr(self, f'layer{i}', nn.Sequential(*layer))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(2048, classes)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(1, 5):
      x = getattr(self, f'layer{i}')(x)
    return self.fc(torch.flatten(self.avgpool(x), 1))


def _randomise_batchnorm(module):
  generator = torch.Generator().manual_seed(0)
  for m in module.modules():
    if isinstance(m, nn.BatchNorm2d):
      for tensor, low, high in (
          (m.weight.data, 0.5, 1.5),
          (m.bias.data, -0.2, 0.2),
          (m.running_mean, -0.5, 0.5),
          (m.running_var, 0.5, 1.5),
      ):
        tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)


def _compare(torch_model, path, model_name, size, tmp_path):
  metadata = pytorch.convert_torch(path, model_name, str(tmp_path / 'converted'))
  assert metadata['preprocess'] == 'torch'
  weights = loading.read(str(tmp_path / 'converted'))
  params, stats = weights.params, weights.batch_stats
  ours = models.MODELS[model_name](num_outputs=metadata['num_classes'], include_top=True)
  images = np.random.default_rng(0).integers(0, 256, (2, size, size, 3)).astype(np.float32)
  inputs = np.asarray(preprocessing.torch(images))
  with torch.no_grad():
    expected = torch_model.eval()(torch.from_numpy(inputs.transpose(0, 3, 1, 2).copy())).numpy()
  variables = {'params': params, **({'batch_stats': stats} if stats else {})}
  got = np.asarray(ours.apply(variables, inputs))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_torchvision_vgg16_parity_including_fc1_row_order(tmp_path):
  torch.manual_seed(0)
  model = TorchVGG16(classes=3)
  path = str(tmp_path / 'vgg16.pth')
  torch.save(model.state_dict(), path)
  _compare(model, path, 'vgg16', 224, tmp_path)


def test_torchvision_resnet50_parity_from_safetensors(tmp_path):
  from safetensors.torch import save_file

  torch.manual_seed(0)
  model = TorchResNet50(classes=10)
  _randomise_batchnorm(model)
  path = str(tmp_path / 'resnet50.safetensors')
  save_file(model.state_dict(), path)
  _compare(model, path, 'resnet50', 64, tmp_path)


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
  torch.manual_seed(0)
  path = str(tmp_path / 'resnet50.pth')
  torch.save(TorchResNet50(classes=10).state_dict(), path)
  with pytest.raises(
      converted.ConversionError,
      match=r'in the file but not in the model: layer1\.0\.bn3\.bias, .*\(\d+ in all\)',
  ):
    pytorch.convert_torch(path, 'resnet34', str(tmp_path / 'out'))
