"""Every config field explained where it is defined, and listed by `main.py --help`."""

import os
import subprocess
import sys

from flax import traverse_util

from catsdogs_jax import defaults

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_field_has_its_comment():
  comments = defaults.field_comments()
  fields = traverse_util.flatten_dict(defaults.get_config().to_dict(), sep='.')
  assert [k for k in fields if not comments.get(k)] == []
  assert comments['optimizer.weight_decay'] and comments['data.image_size'].startswith(
      'images are resized'
  )
  # A comment continued on the lines below its field stays with that field.
  assert 'a corrupt file then fails mid-epoch' in comments['data.verify_images']
  assert 'mid-epoch' not in comments['data.flat_split_fractions']


def test_help_lists_the_config_fields_with_defaults_and_meaning():
  result = subprocess.run(
      [sys.executable, 'main.py', '--help'], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  lines = result.stdout.splitlines()
  assert '  optimizer.*: optimisation' in lines
  assert any(line.startswith("    data.dataset='cats_vs_dogs'  a tfds name") for line in lines)
  assert any(line.startswith('    optimizer.learning_rate=0.0001  ') for line in lines)
  assert lines.index('  data.*: data (config.data.*: what the input pipeline reads, and how)') < (
      lines.index('  optimizer.*: optimisation')
  )
