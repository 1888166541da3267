"""The training loop, top to bottom: restore or start, epochs of jitted steps, validation, hooks.

`train_and_evaluate(config, workdir)` is what `main.py --mode=train` runs:

    exp = experiment.build(config, workdir)       # every check before heavy work
    loop = _restore_or_start(exp)                 # the newest checkpoint, or a fresh state
    for each epoch:
      _train_epoch(loop, ...)                     # the jitted step over the batches
      row = _end_epoch(loop, ...)                 # validation, log row, plateau, early stop, save

Around those points the loop calls its hooks (`Hook`): the progress line and
TensorBoard (`LogProgress`), stopping at a signal with a checkpoint
(`StopOnSignal`), profiling (`Profile`), and any a caller adds: main.py adds
`tools.curves.WriteCurves` (curves.png), research code its own, the
fault-injection runner in benchmarks/ its faults.
"""

import dataclasses
import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
from absl import logging
from clu import metric_writers
from flax import traverse_util

from catsdogs_jax.runtime import parallel, preemption
from catsdogs_jax.training import epoch_log, experiment, optimizers
from catsdogs_jax.training import metrics as metrics_lib
from catsdogs_jax.training.steps import make_eval_step, make_train_step, run_eval


class NonFiniteLossError(FloatingPointError):
  pass


@dataclasses.dataclass
class History:
  """What a checkpoint keeps besides the state: the finished epochs' log rows, and why it stopped."""

  epochs: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
  stop_reason: Optional[str] = None
  # Non-finite steps skipped at the end of the last epoch (nan_policy='skip').
  skips_in_a_row: int = 0
  # A checkpoint in the middle of an epoch: its step, running metrics (JSON) and finiteness.
  partial_epoch: Optional[Dict[str, Any]] = None

  def to_json(self) -> Dict[str, Any]:
    out = {
        'epochs': self.epochs,
        'stop_reason': self.stop_reason,
        'skips_in_a_row': self.skips_in_a_row,
    }
    if self.partial_epoch is not None:
      out['partial_epoch'] = self.partial_epoch
    return out

  @classmethod
  def from_json(cls, saved: Dict[str, Any]) -> 'History':
    return cls(
        epochs=list(saved['epochs']),
        stop_reason=saved.get('stop_reason'),
        skips_in_a_row=saved.get('skips_in_a_row', 0),
        partial_epoch=saved.get('partial_epoch'),
    )

  def finished(self, num_epochs: int) -> bool:
    return bool(self.stop_reason) or len(self.epochs) >= num_epochs


@dataclasses.dataclass
class Loop:
  """Where the loop stands: the run, its state and history, and the running epoch so far."""

  exp: experiment.Experiment
  state: Any
  history: History
  step: int
  epoch: int = 0  # the running epoch, from 0
  metrics: Any = None  # TrainMetrics of the running epoch so far (on the devices)
  finite: Any = None  # every step of the running epoch finite (on the devices)
  carry: int = 0  # skipped steps in a row before the running epoch
  # (time, step) after the epoch's first step returned: throughput leaves out compilation
  timer: Optional[Tuple[float, int]] = None

  @property
  def config(self):
    return self.exp.config

  @property
  def steps_per_epoch(self) -> int:
    return self.exp.steps_per_epoch

  def learning_rate(self) -> float:
    """The last step's learning rate, after stopping on non-finite steps (a host sync)."""
    lr = float(optimizers.learning_rate(self.exp.schedule, self.step - 1, self.state.plateau))
    _check_health(self, lr)
    return lr

  def save(self, val_metrics: Optional[Dict[str, float]], hooks: Sequence['Hook']):
    """A checkpoint of the state and history at this step (written in the background)."""
    self.exp.checkpoints.save(self.step, self.state, self.history.to_json(), metrics=val_metrics)
    for hook in hooks:
      hook.after_save(self)

  def save_partial_epoch(self, hooks: Sequence['Hook']):
    """A checkpoint in the middle of an epoch, with what the epoch's log row needs so far."""
    self.learning_rate()  # never checkpoint a non-finite state
    self.history.partial_epoch = {
        'step': self.step,
        'metrics': metrics_lib.to_json(self.metrics),
        'finite': bool(self.finite),
    }
    self.save(None, hooks)
    self.history.partial_epoch = None
    self.exp.checkpoints.wait()


class Hook:
  """Something to do at fixed points of the loop; override the points you need.

  `after_step` runs after every train step: keep it free of host syncs (reading
  a device value) except every `config.log_every_steps`, as `LogProgress` does.
  """

  def begin(self, loop: Loop):
    """Before the first step (of this process: also after a resume)."""

  def after_step(self, loop: Loop):
    """After each train step; `loop.step` counts it."""

  def after_eval_batch(self, loop: Loop, index: int):
    """After each validation batch is dispatched."""

  def after_save(self, loop: Loop):
    """After a checkpoint of `loop.step` has started writing (it finishes in the background)."""

  def after_epoch(self, loop: Loop, row: Dict[str, Any]):
    """After an epoch's validation and checkpoint; `row` is its log.csv row."""

  def end(self, loop: Loop):
    """After the last epoch (not after an error or a stop at a signal)."""


class LogProgress(Hook):
  """The progress bar (or line) and TensorBoard scalars every log step; the epoch line."""

  def __init__(self, workdir: str, config, steps_per_epoch: int, start_step: int):
    self.config = config
    # TensorBoard only: the terminal gets our own lines. Other processes write nothing.
    writers = [metric_writers.SummaryWriter(workdir)] if jax.process_index() == 0 else []
    self.writer = metric_writers.MultiWriter(writers)
    self.progress = epoch_log.Progress(
        steps_per_epoch * config.num_epochs, steps_per_epoch, config.batch_size, start_step
    )

  def begin(self, loop):
    if loop.step == 0:
      self.writer.write_hparams(hparams(self.config))

  def after_step(self, loop):
    self.progress.step(loop.epoch + 1, self.config.num_epochs, loop.step)
    if loop.step % self.config.log_every_steps:
      return
    lr = loop.learning_rate()  # the only per-step host sync
    running = loop.metrics.compute()
    self.progress.log(
        loop.epoch + 1,
        self.config.num_epochs,
        loop.step,
        float(running['loss']),
        float(running['accuracy']),
    )
    self.writer.write_scalars(
        loop.step,
        {
            'train/running_loss': running['loss'],
            'train/running_accuracy': running['accuracy'],
            'train/learning_rate': lr,
        },
    )

  def after_epoch(self, loop, row):
    self.progress.end_epoch()
    logging.info(
        'epoch %d/%d: loss %.4f accuracy %.4f val_loss %.4f val_accuracy %.4f '
        '(%d images) lr %.3g, %.1fs, %.0f images/s',
        row['epoch'],
        self.config.num_epochs,
        row['loss'],
        row['accuracy'],
        row['val_loss'],
        row['val_accuracy'],
        row['val_images'],
        row['learning_rate'],
        row['seconds'],
        row['images_per_second'],
    )
    self.writer.write_scalars(
        loop.step,
        {
            'train/loss': row['loss'],
            'train/accuracy': row['accuracy'],
            'val/loss': row['val_loss'],
            'val/accuracy': row['val_accuracy'],
            'train/images_per_second': row['images_per_second'],
        },
    )
    self.writer.flush()

  def end(self, loop):
    self.progress.end_epoch()
    self.writer.close()


class StopOnSignal(Hook):
  """SIGTERM / SIGINT (a preemption, Ctrl-C): a checkpoint at the next step, then `Preempted`.

  In the middle of an epoch it saves the running metrics with the state, so the
  resumed epoch's log row is the one an uninterrupted run writes.
  """

  def __init__(self, guard: preemption.Guard, hooks: Sequence[Hook]):
    self.guard, self.hooks = guard, hooks  # `hooks`: told of the checkpoint it saves

  def after_step(self, loop):
    # At an epoch's end the epoch is validated and saved first (after_epoch).
    log_step = loop.step % loop.config.log_every_steps == 0
    if loop.step % loop.steps_per_epoch and self.guard.stop(sync_point=log_step):
      loop.save_partial_epoch(self.hooks)
      raise preemption.Preempted(self._message(loop))

  def after_epoch(self, loop, row):
    # Early stopping ends the run anyway; a signal then changes nothing.
    if not loop.history.stop_reason and self.guard.stop(sync_point=True):
      loop.exp.checkpoints.wait()
      raise preemption.Preempted(self._message(loop))

  def _message(self, loop) -> str:
    epoch, into = divmod(loop.step, loop.steps_per_epoch)
    where = (
        f'epoch {epoch + 1}, step {into} of {loop.steps_per_epoch}'
        if into
        else f'the end of epoch {epoch}'
    )
    return (
        f'{self.guard.received} received: stopped after step {loop.step} ({where}) with a '
        f'checkpoint in {loop.exp.workdir}. Run the same command again to resume from it.'
    )


class Profile(Hook):
  """A profiler trace of the `num_steps` steps after step `first_step`, in the workdir
  (TensorBoard's profile tab reads `plugins/profile/`)."""

  def __init__(self, workdir: str, first_step: int, num_steps: int):
    self.workdir, self.first, self.last = workdir, first_step, first_step + num_steps
    self.running = False

  def after_step(self, loop):
    if loop.step == self.first:  # after compilation, which first_step's steps paid for
      jax.profiler.start_trace(self.workdir)
      self.running = True
    elif self.running and loop.step >= self.last:
      self._stop(loop)

  def end(self, loop):
    self._stop(loop)  # a run shorter than the trace still writes what it has

  def _stop(self, loop):
    if self.running:
      jax.block_until_ready(loop.state)  # the traced steps, not only their dispatch
      jax.profiler.stop_trace()
      self.running = False


def train_and_evaluate(config, workdir: str, hooks: Sequence[Hook] = ()) -> History:
  """Trains (or resumes) in `workdir`; returns the history of finished epochs.

  `hooks` run before the built-in ones at each point (see `Hook`).
  """
  exp = experiment.build(config, workdir)
  try:
    return _train(exp, list(hooks))
  finally:
    exp.checkpoints.close()  # waits for a save in flight, also when training failed
    exp.release()


def _restore_or_start(exp: experiment.Experiment) -> Loop:
  """The loop at the newest checkpoint that restores, or at step 0 with a fresh state."""
  restored = exp.checkpoints.restore_newest(exp.abstract_state())
  if restored is None:
    return Loop(exp, exp.init_state(), History(), step=0)
  state, saved = restored
  history = History.from_json(saved)
  logging.info('resuming from the checkpoint at step %d in %s', int(state.step), exp.workdir)
  loop = Loop(exp, state, history, step=int(state.step))
  loop.epoch = loop.step // exp.steps_per_epoch
  partial, history.partial_epoch = history.partial_epoch, None
  if partial is not None:  # saved in the middle of an epoch: it continues with its metrics
    loop.metrics = metrics_lib.from_json(partial['metrics'], metrics_lib.TrainMetrics.empty())
    loop.finite = partial['finite']
  return loop


def _train(exp: experiment.Experiment, extra_hooks: List[Hook]) -> History:
  config, workdir = exp.config, exp.workdir
  loop = _restore_or_start(exp)
  if loop.history.finished(config.num_epochs):
    # A run killed between its last checkpoint and the log still gets its full log.
    _write_log_csv(loop)
    logging.info(
        'Training in %s is already finished (%d epochs%s); nothing to do. Use '
        '--mode=evaluate, or raise --config.num_epochs to train further.',
        workdir,
        len(loop.history.epochs),
        f'; {loop.history.stop_reason}' if loop.history.stop_reason else '',
    )
    return loop.history

  train_data, val_data = exp.pipeline(config.data.train_split), exp.pipeline(config.data.eval_split)
  assert train_data.steps_per_epoch == exp.steps_per_epoch
  train_step = parallel.jit_train_step(make_train_step(exp.model, exp.tx, config), exp.mesh)
  eval_step = parallel.jit_eval_step(make_eval_step(exp.model, config), exp.mesh)
  plateau_update = jax.jit(lambda s, value: exp.plateau.update(0.0, s, value=value)[1])

  with preemption.Guard() as guard:
    hooks = extra_hooks + [LogProgress(workdir, config, exp.steps_per_epoch, loop.step)]
    if config.profile.num_steps:
      hooks.append(Profile(workdir, config.profile.first_step, config.profile.num_steps))
    hooks.append(StopOnSignal(guard, hooks))
    for hook in hooks:
      hook.begin(loop)
    for loop.epoch in range(loop.epoch, config.num_epochs):
      started, first_step = time.time(), loop.step
      _train_epoch(loop, train_data, train_step, hooks)
      row = _end_epoch(loop, val_data, eval_step, plateau_update, hooks, started, first_step)
      for hook in hooks:
        hook.after_epoch(loop, row)
      if loop.history.stop_reason:
        logging.info('%s', loop.history.stop_reason)
        break

  exp.checkpoints.wait()
  for hook in hooks:
    hook.end(loop)
  logging.info(
      'training finished: %d epochs, best checkpoint at step %s (by %s)',
      len(loop.history.epochs),
      exp.checkpoints.best_step(),
      config.checkpoint.best_monitor,
  )
  return loop.history


def _train_epoch(loop: Loop, train_data, train_step, hooks: Sequence[Hook]):
  """The jitted step over one epoch's batches (from where a resumed run stopped)."""
  spe = loop.steps_per_epoch
  if loop.step == loop.epoch * spe:  # not a resume in the middle of this epoch
    loop.metrics, loop.finite = None, None
  loop.carry = loop.history.skips_in_a_row
  batches = train_data.train_epoch(loop.epoch, skip_batches=loop.step - loop.epoch * spe)
  loop.timer = None
  for batch in parallel.prefetch_to_mesh(batches, loop.exp.mesh):
    loop.state, metrics, finite = train_step(loop.state, batch)
    loop.metrics = metrics if loop.metrics is None else loop.metrics.merge(metrics)
    loop.finite = finite if loop.finite is None else loop.finite & finite
    loop.step += 1
    if loop.timer is None:
      loop.timer = (time.time(), loop.step)
    for hook in hooks:
      hook.after_step(loop)


def _end_epoch(
    loop: Loop,
    val_data,
    eval_step,
    plateau_update,
    hooks: Sequence[Hook],
    started: float,
    first_step: int,
) -> Dict[str, Any]:
  """Validation, the epoch's log row, the plateau schedule, early stopping and the checkpoint."""
  config, history = loop.config, loop.history
  lr = loop.learning_rate()
  train = jax.device_get(loop.metrics.compute())
  timed_since, timed_from = loop.timer or (started, first_step)
  if timed_from == loop.step:  # one step this epoch: nothing to time without its compilation
    timed_since, timed_from = started, first_step
  train_seconds = time.time() - timed_since  # the steps' work is done: their metrics are read
  val = run_eval(
      eval_step,
      loop.state,
      val_data,
      loop.exp.mesh,
      after_batch=lambda i: [hook.after_eval_batch(loop, i) for hook in hooks],
  )
  seconds = time.time() - started
  row = {
      'epoch': loop.epoch + 1,
      'step': loop.step,
      'loss': float(train['loss']),
      'accuracy': float(train['accuracy']),
      'val_loss': val['loss'],
      'val_accuracy': val['accuracy'],
      'learning_rate': lr,
      'skipped_steps': int(train['skipped']['total']),
      'seconds': round(seconds, 3),
      'images_per_second': round(
          (loop.step - timed_from) * config.batch_size / max(train_seconds, 1e-9), 2
      ),
  }
  history.epochs.append(row)
  history.skips_in_a_row = _skips_in_a_row(loop.metrics, loop.carry)
  if config.schedule.name == 'plateau':
    loop.state = loop.state.replace(
        plateau=plateau_update(loop.state.plateau, optimizers.plateau_value(config, row))
    )
  if config.early_stopping.enabled:
    es = config.early_stopping
    history.stop_reason = epoch_log.early_stopping_reason(
        history.epochs, es.monitor, es.patience, es.min_delta
    )
  val_metrics = {'val_loss': row['val_loss'], 'val_accuracy': row['val_accuracy']}
  if not all(math.isfinite(v) for v in val_metrics.values()):
    # Kept as a latest checkpoint, never picked as the best one.
    logging.warning('non-finite validation metrics %s at step %d', val_metrics, loop.step)
    val_metrics = None
  loop.save(val_metrics, hooks)
  _write_log_csv(loop)
  return {**row, 'val_images': val['num_images']}


def _write_log_csv(loop: Loop):
  if jax.process_index() == 0:
    epoch_log.write_csv(os.path.join(loop.exp.workdir, epoch_log.LOG_CSV), loop.history.epochs)


def _check_health(loop: Loop, learning_rate: float):
  """Stops on a non-finite step ('stop'), or on too many skipped steps in a row ('skip')."""
  config, step, epoch = loop.config, loop.step, loop.epoch + 1
  causes = (
      f'(epoch {epoch}, learning rate {learning_rate:.3g}). Likely causes: a learning '
      'rate too high for this model (try --mode=lr_find), unnormalised inputs (check '
      'config.data.preprocess), or bad images. Earlier checkpoints are kept.'
  )
  if config.nan_policy == 'stop':
    if not bool(loop.finite):
      raise NonFiniteLossError(f'Non-finite loss or gradients before step {step} {causes}')
    return
  skipped = jax.device_get(loop.metrics.skipped.compute())
  in_a_row = max(int(skipped['longest']), loop.carry + int(skipped['leading']))
  if in_a_row >= config.max_skipped_steps:
    raise NonFiniteLossError(
        f'{in_a_row} steps in a row had a non-finite loss or gradients and were skipped '
        f'(config.max_skipped_steps={config.max_skipped_steps}); stopped before step {step} '
        + causes
    )


def _skips_in_a_row(metrics, carry: int) -> int:
  """Skipped steps in a row at the end of this epoch (and the ones before it)."""
  skipped = jax.device_get(metrics.skipped.compute())
  return int(skipped['trailing']) + (carry if int(skipped['every']) else 0)


def hparams(config) -> dict:
  """The resolved config as flat scalars, for TensorBoard's HParams dashboard."""
  flat = traverse_util.flatten_dict(config.to_dict(), sep='.')
  return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()}
