"""Checkpoints that do not restore: damage is set aside, any other error stops the run untouched.

Each kind of damage is made on real Orbax files (what Orbax and TensorStore raise for it
is listed at `checkpointing.damage`); the other errors are injected into the restore call.
"""

import errno
import glob
import os
import shutil

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from catsdogs_jax.runtime import checkpointing
from catsdogs_jax.runtime.workdir_files import WorkdirError
from catsdogs_jax.tools import evaluate
from catsdogs_jax.training import train

from conftest import override, tiny_mlp_config


def _state(step):
  """A small train state of jax arrays, as training saves."""
  rng = np.random.default_rng(step)
  return jax.device_put(
      {
          'params': {
              'w': rng.normal(size=(64, 64)).astype(np.float32),
              'b': np.ones(7, np.float32),
          },
          'step': np.int32(step),
      }
  )


def _abstract():
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), _state(0)
  )


NEWEST = 2


def _checkpoints(workdir, read_only=False):
  config = ml_collections.ConfigDict({'checkpoint': {'best_monitor': 'val_accuracy', 'keep': 5}})
  return checkpointing.Checkpoints(workdir, config, read_only=read_only)


@pytest.fixture
def workdir(tmp_path):
  """A workdir with checkpoints at steps 1 and 2."""
  workdir = str(tmp_path / 'run')
  checkpoints = _checkpoints(workdir)
  for step in (1, NEWEST):
    checkpoints.save(step, _state(step), {'epochs': [step]}, {'val_accuracy': 0.1 * step})
  checkpoints.wait()
  checkpoints.close()
  return workdir


def _snapshot(directory):
  """Every folder, every file's bytes and every link's target under `directory`."""
  snapshot = {}
  for folder, _, names in os.walk(directory):
    snapshot[os.path.relpath(folder, directory) + '/'] = None
    for name in names:
      path = os.path.join(folder, name)
      if os.path.islink(path):
        snapshot[os.path.relpath(path, directory)] = os.readlink(path)
        continue
      with open(path, 'rb') as f:
        snapshot[os.path.relpath(path, directory)] = f.read()
  return snapshot


def _one(step_dir, pattern):
  """The largest file matching `pattern` in a step folder."""
  return max(glob.glob(os.path.join(step_dir, pattern)), key=os.path.getsize)


def _cut_in_half(path):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)


def _flip_byte(path, at=None):
  at = os.path.getsize(path) // 2 if at is None else at
  with open(path, 'r+b') as f:
    f.seek(at)
    byte = f.read(1)[0]
    f.seek(at)
    f.write(bytes([byte ^ 0xFF]))


def _empty(path):
  open(path, 'w').close()


ARRAYS = 'state/ocdbt.process_0/d/*'  # the arrays' compressed chunks
INDEX = 'state/d/*'  # the OCDBT b-tree: where each array's bytes are, and its zarr metadata

# What the damage is, how it is made in the newest step folder, and what the warning says.
DAMAGE = {
    'array file deleted': (lambda d: os.remove(_one(d, ARRAYS)), 'compressed block is empty'),
    'array file cut in half': (lambda d: _cut_in_half(_one(d, ARRAYS)), 'shorter than its index'),
    'array file emptied': (lambda d: _empty(_one(d, ARRAYS)), 'shorter than its index'),
    'index file deleted': (lambda d: os.remove(_one(d, INDEX)), 'a file is missing'),
    'index file cut in half': (lambda d: _cut_in_half(_one(d, INDEX)), 'shorter than its index'),
    'index header changed': (lambda d: _flip_byte(_one(d, INDEX), at=0), 'checksum or length'),
    'manifest deleted': (lambda d: os.remove(f'{d}/state/manifest.ocdbt'), 'a file is missing'),
    'manifest emptied': (lambda d: _empty(f'{d}/state/manifest.ocdbt'), 'checksum or length'),
    'manifest bytes changed': (lambda d: _flip_byte(f'{d}/state/manifest.ocdbt'), 'checksum'),
    '_METADATA emptied': (lambda d: _empty(f'{d}/state/_METADATA'), 'JSONDecodeError'),
    '_METADATA cut in half': (lambda d: _cut_in_half(f'{d}/state/_METADATA'), 'JSONDecodeError'),
    '_METADATA bytes changed': (lambda d: _flip_byte(f'{d}/state/_METADATA'), 'UnicodeDecodeError'),
    'array metadata emptied': (
        lambda d: _empty(f'{d}/state/array_metadatas/process_0'),
        'JSONDecodeError',
    ),
    'history deleted': (lambda d: os.remove(f'{d}/history/metadata'), 'a file is missing'),
    'history emptied': (lambda d: _empty(f'{d}/history/metadata'), 'a JSON file is empty'),
    'history folder removed': (lambda d: shutil.rmtree(f'{d}/history'), 'a file is missing'),
    'state folder removed': (lambda d: shutil.rmtree(f'{d}/state'), 'a file is missing'),
}


@pytest.mark.parametrize('kind', DAMAGE)
def test_each_kind_of_damage_is_set_aside_and_the_step_before_restores(kind, workdir, caplog):
  make, reason = DAMAGE[kind]
  make(os.path.join(workdir, 'checkpoints', str(NEWEST)))
  state, history = _checkpoints(workdir).restore_newest(_abstract())
  assert int(state['step']) == 1 and history == {'epochs': [1]}
  np.testing.assert_array_equal(state['params']['w'], _state(1)['params']['w'])
  assert f'The checkpoint at step {NEWEST} in' in caplog.text and reason in caplog.text, caplog.text
  assert checkpointing.saved_steps(workdir) == [1]
  assert [n.split('.')[0] for n in os.listdir(os.path.join(workdir, 'checkpoints_damaged'))] == [
      str(NEWEST)
  ]


@pytest.mark.parametrize('name', ['_CHECKPOINT_METADATA', 'state/_METADATA', 'state/_sharding'])
def test_files_orbax_restores_without_are_not_damage(name, workdir):
  os.remove(os.path.join(workdir, 'checkpoints', str(NEWEST), name))
  state, _ = _checkpoints(workdir).restore_newest(_abstract())
  assert int(state['step']) == NEWEST
  assert not os.path.exists(os.path.join(workdir, 'checkpoints_damaged'))


def _wrapped_by_orbax(error):
  """What Orbax raises when reading an array raises `error`."""
  try:
    raise error
  except BaseException as e:
    try:
      raise Exception('Encountered error while reading array index: ()') from e
    except Exception as wrapper:
      return wrapper


NOT_DAMAGE = {
    'out of memory': MemoryError(),
    'EIO': OSError(errno.EIO, os.strerror(errno.EIO)),
    'timeout': TimeoutError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT)),
    'stale NFS handle': OSError(errno.ESTALE, os.strerror(errno.ESTALE)),
    'a bug (RuntimeError)': RuntimeError('something is wrong in our code'),
    'a bug (TypeError)': TypeError("unsupported operand type(s) for +: 'int' and 'str'"),
    'Ctrl-C': KeyboardInterrupt(),
    'out of memory in an array read': _wrapped_by_orbax(MemoryError()),
    'Ctrl-C in an array read': _wrapped_by_orbax(KeyboardInterrupt()),
    'EIO in TensorStore': ValueError(
        'UNKNOWN: Error reading "params.w/0.0" in OCDBT database at local file "/x/state/": '
        "Failed to open: /x/state/d/abc: Input/output error [os_error_code='5']"
    ),
    'timeout in TensorStore': ValueError('DEADLINE_EXCEEDED: Error reading "gs://b/x/d/abc"'),
    'a shape mismatch': ValueError(
        'Requested shape: (4000,) is not compatible with the stored shape: (40, 100).'
    ),
}


def _failing_at(step, error):
  restore = ocp.CheckpointManager.restore

  def failing(self, at_step, *args, **kwargs):
    if at_step == step:
      raise error
    return restore(self, at_step, *args, **kwargs)

  return failing


@pytest.mark.parametrize('kind', NOT_DAMAGE)
def test_any_other_error_stops_with_that_error_and_changes_nothing(kind, workdir, monkeypatch):
  error = NOT_DAMAGE[kind]
  before = _snapshot(workdir)
  monkeypatch.setattr(ocp.CheckpointManager, 'restore', _failing_at(NEWEST, error))
  with pytest.raises(type(error)) as raised:
    _checkpoints(workdir).restore_newest(_abstract())
  assert raised.value is error
  assert _snapshot(workdir) == before  # no checkpoints_damaged/, every step where it was


def test_an_os_error_inside_tensorstore_stops_and_changes_nothing(workdir):
  # A symlink loop: a real failing system call (ELOOP) on the read path, as EIO would be.
  path = _one(os.path.join(workdir, 'checkpoints', str(NEWEST)), ARRAYS)
  os.remove(path)
  os.symlink(os.path.basename(path), path)
  before = _snapshot(workdir)
  with pytest.raises(Exception) as raised:  # Orbax's wrapper of TensorStore's error
    _checkpoints(workdir).restore_newest(_abstract())
  assert 'Too many levels of symbolic links' in str(raised.value.__cause__)
  assert _snapshot(workdir) == before


def test_an_error_after_a_damaged_checkpoint_still_changes_nothing(workdir, monkeypatch):
  _cut_in_half(_one(os.path.join(workdir, 'checkpoints', str(NEWEST)), ARRAYS))
  before = _snapshot(workdir)
  monkeypatch.setattr(ocp.CheckpointManager, 'restore', _failing_at(1, MemoryError()))
  with pytest.raises(MemoryError):
    _checkpoints(workdir).restore_newest(_abstract())
  assert _snapshot(workdir) == before  # the damaged step stays: nothing older restored


TENSORSTORE_ERRORS = {  # message: damage?
    # A failed system call is damage only when the file is not there.
    'NOT_FOUND: Error reading x [OS error 2: No such file or directory]': True,
    "NOT_FOUND: Error reading x: No such device [os_error_code='19']": False,
    "FAILED_PRECONDITION: Failed to open x: Device or resource busy [os_error_code='16']": False,
    'FAILED_PRECONDITION: Error reading x [OS error: Input/output error]': False,
    # TensorStore leaves INVALID_ARGUMENT out of the message.
    'Error decoding b-tree node: ZSTD_decompressStream() failed: Data corruption detected': True,
}


@pytest.mark.parametrize('message', TENSORSTORE_ERRORS)
def test_tensorstore_errors_are_classified_by_status_code_and_os_error(message):
  assert bool(checkpointing.damage(ValueError(message))) == TENSORSTORE_ERRORS[message]
  wrapped = _wrapped_by_orbax(ValueError(message))
  assert bool(checkpointing.damage(wrapped)) == TENSORSTORE_ERRORS[message]


def test_orbax_errors_are_classified_by_type():
  assert checkpointing.damage(FileNotFoundError('File /x/history/metadata not found.'))  # no errno
  assert checkpointing.damage(KeyError('Item "state" was not found in the checkpoint.')) is None


# ----------------------------------------------------------------- through training and evaluation


@pytest.fixture(scope='module')
def trained(image_folder, tmp_path_factory):
  """A tiny run of two epochs (checkpoints at steps 3 and 6)."""
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  config = tiny_mlp_config(image_folder, num_epochs=2)
  train.train_and_evaluate(config, workdir)
  return config, workdir


@pytest.fixture
def run_copy(trained, tmp_path):
  config, workdir = trained
  shutil.copytree(workdir, tmp_path / 'run')
  return config, str(tmp_path / 'run')


def test_resuming_stops_on_an_io_error_and_leaves_the_checkpoints_alone(run_copy, monkeypatch):
  config, workdir = run_copy
  before = _snapshot(os.path.join(workdir, 'checkpoints'))
  error = OSError(errno.EIO, os.strerror(errno.EIO))
  monkeypatch.setattr(ocp.CheckpointManager, 'restore', _failing_at(6, error))
  with pytest.raises(OSError) as raised:
    train.train_and_evaluate(override(config, num_epochs=3), workdir)
  assert raised.value is error
  assert _snapshot(os.path.join(workdir, 'checkpoints')) == before
  assert not os.path.exists(os.path.join(workdir, 'checkpoints_damaged'))


def test_evaluation_names_a_damaged_checkpoint_and_raises_other_errors_as_they_are(
    run_copy, monkeypatch
):
  config, workdir = run_copy
  _cut_in_half(_one(os.path.join(workdir, 'checkpoints', '6'), ARRAYS))
  before = _snapshot(workdir)
  with pytest.raises(
      WorkdirError,
      match=r'checkpoint at step 6 in .* is damaged: a file is shorter than its index says',
  ):
    evaluate.restore_for_inference(config, workdir, step=6)
  monkeypatch.setattr(ocp.CheckpointManager, 'restore', _failing_at(3, MemoryError()))
  with pytest.raises(MemoryError):
    evaluate.restore_for_inference(config, workdir, step=3)
  assert _snapshot(workdir) == before  # read only: nothing set aside


def test_evaluation_of_a_damaged_best_checkpoint_falls_back_and_says_which_step(run_copy, caplog):
  config, workdir = run_copy
  best = checkpointing.Checkpoints(workdir, config, read_only=True).best_step()
  other = 3 if best == 6 else 6
  _cut_in_half(_one(os.path.join(workdir, 'checkpoints', str(best)), ARRAYS))
  before = _snapshot(workdir)
  with caplog.at_level('WARNING'):
    restored = evaluate.restore_for_inference(config, workdir)
  assert restored.step == other
  assert f'The best checkpoint (step {best})' in caplog.text
  assert f'using step {other}, the newest that restores' in caplog.text
  assert _snapshot(workdir) == before  # read only: nothing set aside


def test_orbax_expected_warnings_are_left_out_and_other_messages_kept(workdir, tmp_path, caplog):
  from absl import logging as absl_logging

  from catsdogs_jax.weights import loading

  with caplog.at_level('WARNING'):  # Orbax itself says it on a read-only open
    ocp.CheckpointManager(
        os.path.join(workdir, 'checkpoints'),
        options=ocp.CheckpointManagerOptions(read_only=True, create=False),
    ).close()
  assert 'Given directory is read only' in caplog.text
  caplog.clear()
  with caplog.at_level('WARNING'):
    checkpoints = _checkpoints(workdir, read_only=True)
    checkpoints.restore(NEWEST, _abstract())
    checkpoints.close()
    tree = {'params': {'w': np.arange(6, dtype=np.float32)}}
    ocp.PyTreeCheckpointer().save(str(tmp_path / 'converted'), tree)
    np.testing.assert_array_equal(
        loading.restore_numpy(str(tmp_path / 'converted'))['params']['w'], tree['params']['w']
    )
    with checkpointing.expected_orbax_warnings_left_out():
      absl_logging.warning('a warning of another kind')
  for expected in checkpointing.EXPECTED_ORBAX_WARNINGS:
    assert expected not in caplog.text
  assert 'a warning of another kind' in caplog.text
  with caplog.at_level('WARNING'):  # the filter is gone after the block
    absl_logging.warning('Given directory is read only=elsewhere')
  assert 'read only=elsewhere' in caplog.text
