"""The command line end to end, on a generated folder, and its errors."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from catsdogs_jax.training import epoch_log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, timeout=300):
  return subprocess.run(
      [sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
  )


def _folder_flags(folder):
  return [
      f'--config.data.dataset=folder:{folder}',
      '--config.data.train_split=train',
      '--config.data.eval_split=validation',
      '--config.data.test_split=test',
      '--config.data.image_size=48',
      '--config.batch_size=8',
      '--config.log_every_steps=2',
  ]


def test_train_then_evaluate_end_to_end(image_folder, tmp_path):
  workdir = str(tmp_path / 'run')
  result = _main(
      '--config=configs/small_cnn.py',
      f'--workdir={workdir}',
      '--config.num_epochs=2',
      '--config.optimizer.learning_rate=1e-3',
      *_folder_flags(image_folder),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  # What a user sees at start: devices, versions, the parameter table.
  assert 'devices: 4' in result.stderr and 'flax 0.' in result.stderr
  assert 'total parameters: 307,393' in result.stderr
  assert 'images/s' in result.stderr and 'ETA' in result.stderr
  # Our lines only, without absl's prefixes; no third-party notices, no clu report lines.
  assert not re.search(r'^[IW]\d{4} ', result.stderr, re.M), result.stderr[:2000]
  assert 'libtpu' not in result.stderr and 'Setting work unit notes' not in result.stderr
  assert 'config configs/small_cnn.py with ' in result.stderr and 'config.json' in result.stderr

  rows = epoch_log.read_csv(os.path.join(workdir, 'log.csv'))
  assert [r['epoch'] for r in rows] == ['1', '2']
  assert set(epoch_log.CSV_COLUMNS) == set(rows[0])
  assert rows[0]['learning_rate'] == '0.001'  # float32's 0.0010000000474974513, as it means
  assert all(len(v.replace('.', '').lstrip('0')) <= 7 for r in rows for v in r.values())
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  assert os.path.exists(os.path.join(workdir, 'curves.png'))

  result = _main(
      '--config=configs/small_cnn.py',
      f'--workdir={workdir}',
      '--mode=evaluate',
      *_folder_flags(image_folder),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, 'eval_test.json')) as f:
    evaluation = json.load(f)
  assert evaluation['num_images'] == 10 and evaluation['split'] == 'test'
  assert sum(map(sum, evaluation['confusion'])) == 10
  assert 'confusion (rows: true, columns: predicted)' in result.stdout  # results: stdout
  assert 'precision' in result.stdout and set(evaluation['per_class']) == {'cats', 'dogs'}

  # The workdir is enough: its config.json stands in for --config and its overrides.
  os.remove(os.path.join(workdir, 'eval_test.json'))
  result = _main(f'--workdir={workdir}', '--mode=evaluate', '--split=validation')
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, 'eval_validation.json')) as f:
    assert json.load(f)['num_images'] == 10
  # A config file without the run's data flags would read another dataset: refused, named,
  # before any data is touched (no tfds download).
  result = _main('--config=configs/small_cnn.py', f'--workdir={workdir}', '--mode=evaluate')
  assert result.returncode != 0
  error = result.stderr.strip().splitlines()[-1]
  assert error.startswith('error: The config differs from the one') and 'data.dataset' in error
  assert 'data.image_size: 48 -> 150' in error and 'configs/run.py:' in error
  assert not os.path.exists(os.path.join(workdir, 'eval_test.json'))
  # Data fields of the run's config changed on purpose: the test photos as the validation split.
  result = _main(
      f'--config=configs/run.py:{workdir}',
      '--config.data.eval_split=test',
      f'--workdir={workdir}',
      '--mode=evaluate',
      '--split=validation',
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, 'eval_validation.json')) as f:
    assert json.load(f)['split'] == 'test'
  # A model field is never changed after training.
  result = _main(
      f'--config=configs/run.py:{workdir}',
      '--config.model.name=vgg16',
      f'--workdir={workdir}',
      '--mode=evaluate',
  )
  assert result.returncode != 0 and "model.name: 'small_cnn' -> 'vgg16'" in result.stderr
  result = _main(f'--workdir={workdir}', '--mode=curves')
  assert result.returncode == 0, result.stderr[-3000:]


def test_summary_needs_no_data_weights_or_workdir():
  result = _main('--config=configs/vgg16_transfer.py', '--mode=summary', timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'block5_conv3' in result.stdout and '(None, 14, 14, 512)' in result.stdout
  assert 'total parameters: 14,764,866 (trainable 50,178, frozen 14,714,688)' in result.stdout
  result = _main('--config=configs/small_cnn.py', '--mode=curves', timeout=120)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      'error: --mode=curves needs --workdir=DIR. (python main.py --help lists the flags)'
  ]
  result = _main('--mode=evaluate', f'--workdir={ROOT}', timeout=120)
  assert result.returncode != 0
  assert f'or a --workdir that training wrote ({ROOT!r} has no config.json)' in result.stderr


def test_unknown_config_field_on_the_command_line_is_an_error(tmp_path):
  result = _main(
      '--config=configs/small_cnn.py',
      f'--workdir={tmp_path}',
      '--config.optimizer.learning_rat=1e-3',
      timeout=120,
  )
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      "error: --config.optimizer.learning_rat: the config has no field 'learning_rat'. Did you "
      'mean "learning_rate" instead of "learning_rat"? (python main.py --help lists every field)'
  ]
  assert not os.listdir(tmp_path)


def test_typo_in_a_config_file_is_an_error(tmp_path):
  path = tmp_path / 'typo.py'
  path.write_text(
      'from configs import default\n\ndef get_config():\n'
      '  config = default.get_config()\n  config.optimizer.learning_rat = 1.0\n'
      '  return config\n'
  )
  result = _main(f'--config={path}', f'--workdir={tmp_path / "run"}', timeout=120)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
      f"error: {path}, line 5: the config has no field 'learning_rat'. Did you mean "
      '"learning_rate" instead of "learning_rat"? (python main.py --help lists every field)'
  ]


@pytest.mark.parametrize(
    'flags, message',
    [
        (['--config.model.name=vgg17'], "Unknown config.model.name 'vgg17'; choose one of"),
        (['--config.optimizer.name=adamax'], "Unknown config.optimizer.name 'adamax'"),
        (['--config.data.image_size=32'], 'config.data.image_size=32 is too small'),
    ],
)
def test_bad_config_values_fail_with_a_message_not_a_traceback(
    image_folder, tmp_path, flags, message
):
  result = _main(
      '--config=configs/small_cnn.py',
      f'--workdir={tmp_path / "run"}',
      *_folder_flags(image_folder),
      *flags,
      timeout=120,
  )
  assert result.returncode == 1
  assert message in result.stderr
  assert 'Traceback' not in result.stderr
