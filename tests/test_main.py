"""The command line end to end, on a generated folder, and its errors."""

import glob
import json
import os
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

  rows = epoch_log.read_csv(os.path.join(workdir, 'log.csv'))
  assert [r['epoch'] for r in rows] == ['1', '2']
  assert set(epoch_log.CSV_COLUMNS) == set(rows[0])
  assert float(rows[0]['learning_rate']) == pytest.approx(1e-3)
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
  assert 'confusion (rows: true, columns: predicted)' in result.stderr
  assert 'precision' in result.stderr and set(evaluation['per_class']) == {'cats', 'dogs'}


def test_summary_needs_no_data_weights_or_workdir():
  result = _main('--config=configs/vgg16_transfer.py', '--mode=summary', timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'block5_conv3' in result.stdout and '(None, 14, 14, 512)' in result.stdout
  assert 'total parameters: 14,764,866 (trainable 50,178, frozen 14,714,688)' in result.stdout
  result = _main('--config=configs/small_cnn.py', '--mode=curves', timeout=120)
  assert result.returncode != 0 and '--mode=curves needs --workdir' in result.stderr


def test_unknown_config_field_on_the_command_line_is_an_error(tmp_path):
  result = _main(
      '--config=configs/small_cnn.py',
      f'--workdir={tmp_path}',
      '--config.optimizer.learning_rat=1e-3',
      timeout=120,
  )
  assert result.returncode != 0
  assert 'learning_rat' in result.stderr
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
  assert 'learning_rat' in result.stderr and 'locked' in result.stderr


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
