"""What the README states as fact, checked against the code."""

import os
import re

import pytest

from catsdogs_jax import defaults, models
from catsdogs_jax.training import config_checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smallest_sizes_table():
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  table = text.split('| model | smallest image size |')[1].split('\n\n')[0]
  rows = {}
  for line in table.splitlines()[2:]:
    names, size = [c.strip() for c in line.strip('|').split('|')]
    for name in re.findall(r'`(\w+)`', names):
      rows[name] = None if size.startswith('any') else int(size)
  return rows


@pytest.mark.parametrize('name', ['small_cnn', 'mnist_cnn', 'alexnet', 'vgg16', 'vgg19'])
def test_the_smallest_image_size_table_is_the_models(name):
  config = defaults.get_config()
  config.model.name = name
  config.data.channels = 1 if name.startswith('mnist') else 3
  model = models.create_model(config)
  smallest = config_checks.smallest_image_size(model, config.data.channels)
  assert _smallest_sizes_table()[name] == smallest
  assert f'{name} {smallest}' in defaults.field_comments()['data.image_size']  # --help says it


@pytest.mark.parametrize(
    'fields', [{'batch_norm': True}, {'pooling': 'avg'}, {'pooling': 'max', 'batch_norm': True}]
)
def test_the_small_cnn_options_keep_its_smallest_image_size(fields):
  config = defaults.get_config()
  for field, value in fields.items():
    config.model[field] = value
  model = models.create_model(config)
  assert _smallest_sizes_table()['small_cnn'] == config_checks.smallest_image_size(model, 3)


def test_every_model_is_in_the_table():
  table = _smallest_sizes_table()
  assert set(models.MODELS) == set(table)
  assert table['resnet18'] is None and table['efficientnet_b0'] is None
