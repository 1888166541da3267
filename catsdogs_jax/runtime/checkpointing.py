"""Orbax checkpoints of a workdir: the last N epochs plus the best, with the run's history.

Each checkpoint holds two items: `state` (the TrainState pytree) and `history`
(JSON: one row per finished epoch and why training stopped), so that log.csv,
early stopping and "already finished" are all restored with the weights.
"""

import contextlib
import dataclasses
import errno
import glob
import json
import logging as std_logging
import os
import re
import shutil
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from catsdogs_jax.runtime import distributed
from catsdogs_jax.runtime.workdir_files import WorkdirError

STATE, HISTORY = 'state', 'history'
CHECKPOINTS_DIR = 'checkpoints'  # in a workdir: one folder per saved step
TMP_MARKER = '.orbax-checkpoint-tmp'  # how Orbax names a save still in progress
DAMAGED_DIR = 'checkpoints_damaged'  # checkpoints that did not restore, kept for inspection

# Orbax warns on every read-only open and on a converted-weights pytree (which has no
# checkpoint metadata); both are what this project asks for, so they are not the user's to read.
EXPECTED_ORBAX_WARNINGS = (
    'Given directory is read only',
    'read_only=True, setting save_interval_steps=0',
    'Metadata file does not exist',
)


@contextlib.contextmanager
def expected_orbax_warnings_left_out():
  """Within it, Orbax's EXPECTED_ORBAX_WARNINGS are not logged; every other message is.

  A filter on the `absl` logger (Orbax logs through absl), added for the block only, so
  research scripts that import this module see Orbax's logging unchanged elsewhere.
  """

  def keep(record) -> bool:
    message = record.getMessage()
    return not any(warning in message for warning in EXPECTED_ORBAX_WARNINGS)

  logger = std_logging.getLogger('absl')
  logger.addFilter(keep)  # a new function each time, so nested blocks each remove their own
  try:
    yield
  finally:
    logger.removeFilter(keep)


class DamagedCheckpointError(WorkdirError):
  """A checkpoint whose files are missing, cut short or corrupt (see `damage`)."""

  def __init__(self, step: int, directory: str, reason: str):
    super().__init__(f'The checkpoint at step {step} in {directory} is damaged: {reason}.')
    self.step, self.reason = step, reason


# TensorStore raises ValueError for every status, its message starting with the
# status code's name; these codes describe the bytes on disk.
_TENSORSTORE_DAMAGE = {
    'NOT_FOUND': 'a file is missing',
    'OUT_OF_RANGE': 'a file is shorter than its index says',
    'DATA_LOSS': 'a checksum or length check failed',
    'FAILED_PRECONDITION': 'a compressed block is empty or cut short',
}


def _unwrapped(error: BaseException) -> BaseException:
  """The error itself: Orbax wraps whatever an array read raises in a bare Exception."""
  while type(error) is Exception and error.__cause__ is not None:
    error = error.__cause__
  return error


def damage(error: BaseException) -> Optional[str]:
  """Why `error`, raised restoring a checkpoint, shows its files damaged; None if it does not.

  Damage is what reading the same bytes again would raise again, so the
  checkpoint can be set aside (what Orbax 0.12 and TensorStore 0.1 raise):
  - a file or item folder missing: FileNotFoundError, or TensorStore's
    NOT_FOUND; a missing array file inside the OCDBT store reads as empty:
    FAILED_PRECONDITION ('Truncated Zstd-compressed stream');
  - a file cut short: OUT_OF_RANGE (a byte range past the end of the file);
  - bytes changed: DATA_LOSS (a checksum or header of the manifest or index),
    or an index block that does not decompress: INVALID_ARGUMENT, whose code
    TensorStore leaves out of the message ('Error decoding b-tree node');
  - a JSON file (_METADATA, array_metadatas, history) empty, cut or with bad
    bytes: JSONDecodeError, UnicodeDecodeError.
  Anything else says nothing about the files: MemoryError, an OSError other
  than ENOENT (EIO, a timeout, a stale NFS handle), also one TensorStore
  reports ([os_error_code='5'], whatever its status code), a shape or tree
  mismatch and other errors of our code, KeyboardInterrupt.
  """
  error = _unwrapped(error)
  if isinstance(error, FileNotFoundError):
    return 'a file is missing'
  if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)):
    return 'a JSON file is empty, cut short or corrupt'
  if type(error) is not ValueError:
    return None
  text = str(error)
  code = re.match(r'([A-Z_]+): ', text)
  code = code.group(1) if code else 'INVALID_ARGUMENT'  # the one code its ValueErrors leave out
  # A failed system call, noted as [os_error_code='5'] (or [OS error 5: ...] in
  # other TensorStore versions): damage only when the file is not there.
  os_error = re.search(r"os_error_code='(\d+)'|\[OS error:? ?(\d*)", text)
  if os_error:
    # Without a number ([OS error: ...]), NOT_FOUND stands for ENOENT alone.
    number = int(os_error.group(1) or os_error.group(2) or errno.ENOENT)
    return 'a file is missing' if code == 'NOT_FOUND' and number == errno.ENOENT else None
  if code == 'INVALID_ARGUMENT':
    return 'a compressed block does not decode' if 'Error decoding ' in text else None
  return _TENSORSTORE_DAMAGE.get(code)


def _summary(error: BaseException) -> str:
  """The error's type and first line, without TensorStore's long spec annotations."""
  error = _unwrapped(error)
  text = (str(error).splitlines() or [''])[0].split(' [tensorstore_spec')[0]
  return f'{type(error).__name__}: {text[:300]}'


def monitor_mode(metric: str) -> str:
  """'max' for accuracies, 'min' for losses."""
  return 'max' if 'accuracy' in metric else 'min'


def _fields_added_since(directory: str, abstract_state) -> Dict[str, Any]:
  """The fields of the state that its checkpoint in `directory` predates, when each is empty.

  A field added to the TrainState that is empty when its option is off (config.ema: {})
  leaves the tree of older checkpoints as it was: those restore with it empty. A missing
  field with leaves is not restorable; Orbax then names the mismatch.
  """
  if not dataclasses.is_dataclass(abstract_state):
    return {}
  handler = ocp.StandardCheckpointHandler()
  try:
    saved = set(handler.metadata(epath.Path(directory)).keys())
  finally:
    handler.close()
  missing = {
      f.name: getattr(abstract_state, f.name)
      for f in dataclasses.fields(abstract_state)
      if f.name not in saved
  }
  return missing if not jax.tree.leaves(list(missing.values())) else {}


def has_checkpoints(workdir: str) -> bool:
  directory = os.path.join(workdir, CHECKPOINTS_DIR)
  return os.path.isdir(directory) and bool(os.listdir(directory))


def saved_steps(workdir: str) -> List[int]:
  """Steps whose checkpoint folder was committed, read from the disk (no Orbax manager)."""
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, CHECKPOINTS_DIR)) if n.isdigit())


class Checkpoints:
  """The checkpoints of one workdir (`workdir/checkpoints/<step>`)."""

  def __init__(self, workdir: str, config, read_only: bool = False):
    self.workdir = os.path.abspath(workdir)
    monitor = config.checkpoint.best_monitor
    mode = monitor_mode(monitor)
    best_fn = lambda metrics: metrics[monitor]
    policy = policies.AnyPreservationPolicy(
        [
            policies.LatestN(n=config.checkpoint.keep),
            policies.BestN(
                get_metric_fn=best_fn,
                reverse=(mode == 'min'),
                n=1,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    self.directory = os.path.join(self.workdir, CHECKPOINTS_DIR)
    self.read_only = read_only
    if not read_only and jax.process_index() == 0:
      for path in glob.glob(os.path.join(self.directory, f'*{TMP_MARKER}*')):
        logging.warning(
            'Removing %s: a checkpoint a crash left half-written (never restored).', path
        )
    with expected_orbax_warnings_left_out():  # the options warn too, when read_only
      options = ocp.CheckpointManagerOptions(
          best_fn=best_fn,
          best_mode=mode,
          preservation_policy=policy,
          create=not read_only,
          read_only=read_only,
          cleanup_tmp_directories=not read_only,
      )
      self.manager = ocp.CheckpointManager(
          self.directory, options=options, item_names=(STATE, HISTORY)
      )

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def best_step(self) -> Optional[int]:
    return self.manager.best_step()

  def all_steps(self) -> List[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, history: Dict[str, Any], metrics: Dict[str, float]):
    """A checkpoint of `step`, written in the background (`wait` for it); never over another."""
    if step in self.manager.all_steps():  # Orbax would skip it and keep the old one, silently
      raise WorkdirError(
          f'{self.directory} already holds a checkpoint at step {step}: train in a '
          'new workdir, or resume this one with the same command.'
      )
    with self._disk_full_is_clear():
      self.manager.save(
          step,
          args=ocp.args.Composite(
              **{STATE: ocp.args.StandardSave(state), HISTORY: ocp.args.JsonSave(history)}
          ),
          metrics=metrics,
      )

  @contextlib.contextmanager
  def _disk_full_is_clear(self):
    """A full disk while saving: the unfinished save is removed, and the error says so.

    Saves run in the background, so the failure may surface at the next save.
    """
    try:
      yield
    except Exception as e:  # Orbax and TensorStore wrap the OSError in their own types
      if 'No space left on device' not in str(e) and getattr(e, 'errno', None) != errno.ENOSPC:
        raise
      try:
        self.manager.wait_until_finished()  # let background threads settle before cleaning up
      except Exception:  # the same failure again
        pass
      for path in glob.glob(os.path.join(self.directory, f'*{TMP_MARKER}*')):
        shutil.rmtree(path, ignore_errors=True)
      usage = shutil.disk_usage(self.directory)
      intact = saved_steps(self.workdir)
      raise WorkdirError(
          f'The disk holding {self.directory} is full ({usage.free / 2**20:.1f} MiB free of '
          f'{usage.total / 2**20:.1f} MiB) while saving a checkpoint; the unfinished save was '
          'removed. '
          + (
              f'The checkpoint at step {intact[-1]} is intact: free space (or lower '
              'config.checkpoint.keep) and run the same command again to resume '
              'from it.'
              if intact
              else 'Free space and run the same command again.'
          )
      ) from e

  def restore_newest(self, abstract_state) -> Optional[Tuple[Any, Dict[str, Any]]]:
    """(state, history) of the newest checkpoint that restores; None when there is none.

    A damaged one (see `damage`) is skipped with a warning naming it, and moved
    aside to `checkpoints_damaged/` once an older one has restored, so that
    training can write that step again. When checkpoints exist but none
    restores, this fails and changes nothing; so does any other error (out of
    memory, a failing disk or network file system, a bug), which is raised as it is.
    """
    failures, damaged = [], []
    for step in reversed(self.all_steps()):
      try:
        restored = self.restore(step, abstract_state)
      except DamagedCheckpointError as e:
        failures.append(f'step {step}: {e.reason}')
        damaged.append(step)
        logging.warning(
            'The checkpoint at step %d in %s does not restore: %s; trying the one before it.',
            step,
            self.directory,
            e.reason,
        )
        continue
      self._set_aside(damaged)
      return restored
    if failures:
      raise WorkdirError(
          f'No checkpoint in {self.directory} restores ({"; ".join(failures)}). '
          'Nothing was changed; move the checkpoints away to start afresh.'
      )
    return None

  def _set_aside(self, steps):
    if self.read_only or not steps:
      return
    if jax.process_index() == 0:  # every process found the same ones damaged
      aside = os.path.join(self.workdir, DAMAGED_DIR)
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        target = os.path.join(aside, f'{step}.{time.strftime("%Y%m%d-%H%M%S")}')
        shutil.move(os.path.join(self.directory, str(step)), target)
        logging.warning('Moved the damaged checkpoint at step %d to %s.', step, target)
    distributed.barrier('damaged checkpoints set aside')
    self.manager.reload()

  def restore(self, step: int, abstract_state) -> Tuple[Any, Dict[str, Any]]:
    """Restores `step` into the structure, dtypes and shardings of `abstract_state`.

    Raises DamagedCheckpointError when the files of `step` are damaged; any other
    error as it is.
    """
    try:
      for item in (STATE, HISTORY):  # Orbax says KeyError for a missing one, as a bug would
        os.stat(os.path.join(self.directory, str(step), item))
      added = _fields_added_since(os.path.join(self.directory, str(step), STATE), abstract_state)
      target = abstract_state
      if added:  # restored into the fields the checkpoint has; the others are empty
        target = {
            f.name: getattr(abstract_state, f.name)
            for f in dataclasses.fields(abstract_state)
            if f.name not in added
        }
      with expected_orbax_warnings_left_out():
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(target), HISTORY: ocp.args.JsonRestore()}
            ),
        )
      if added:
        restored = {**restored, STATE: type(abstract_state)(**restored[STATE], **added)}
    except Exception as e:
      reason = damage(e)
      if reason is None:
        raise
      raise DamagedCheckpointError(step, self.directory, f'{reason} ({_summary(e)})') from e
    return restored[STATE], restored[HISTORY]

  def wait(self):
    with self._disk_full_is_clear():
      self.manager.wait_until_finished()

  def close(self):
    self.manager.close()
