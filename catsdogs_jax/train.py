"""The training loop: epochs of jitted steps, validation, callbacks and checkpoints."""

import math
import os
import time
from typing import Any, Dict

import jax
from absl import logging
from clu import metric_writers, periodic_actions

from catsdogs_jax import (callbacks, checkpointing, curves, experiment, metrics as metrics_lib,
                          optimizers, parallel, preemption, summary)
from catsdogs_jax.evaluate import run_eval
from catsdogs_jax.steps import make_eval_step, make_train_step

PARTIAL = 'partial_epoch'   # history key of a checkpoint taken in the middle of an epoch


class NonFiniteLossError(FloatingPointError):
  pass


def _restore_or_init(exp: experiment.Experiment):
  """(state, history, (train metrics, finite) of a partial epoch or None) to start from."""
  restored = exp.checkpoints.restore_newest(exp.abstract_state())
  if restored is None:
    return exp.init_state(), checkpointing.new_history(), None
  state, history = restored
  logging.info('resuming from the checkpoint at step %d in %s', int(state.step), exp.workdir)
  partial = history.pop(PARTIAL, None)
  if partial is None:
    return state, history, None
  return state, history, (metrics_lib.from_json(partial['metrics'], metrics_lib.TrainMetrics.empty()),
                          partial['finite'])


def _save_partial_epoch(exp, state, history, metrics, finite, step: int):
  """A checkpoint in the middle of an epoch, with what the epoch's log row needs so far."""
  partial = {**history, PARTIAL: {'step': step, 'metrics': metrics_lib.to_json(metrics),
                                  'finite': bool(finite)}}
  exp.checkpoints.save(step, state, partial, metrics=None)
  exp.checkpoints.wait()


def _resume_message(signal_name: str, step: int, steps_per_epoch: int, workdir: str) -> str:
  epoch, into = divmod(step, steps_per_epoch)
  where = (f'epoch {epoch + 1}, step {into} of {steps_per_epoch}' if into
           else f'the end of epoch {epoch}')
  return (f'{signal_name} received: stopped after step {step} ({where}) with a checkpoint in '
          f'{workdir}. Run the same command again to resume from it.')


def _finished(history: Dict[str, Any], num_epochs: int) -> bool:
  return bool(history['stop_reason']) or len(history['epochs']) >= num_epochs


def _check_health(config, metrics, finite, carry: int, step: int, epoch: int,
                  learning_rate: float):
  """Stops on a non-finite step ('stop'), or on too many skipped steps in a row ('skip').

  `carry`: skips in a row at the end of the previous epochs.
  """
  causes = (f'(epoch {epoch}, learning rate {learning_rate:.3g}). Likely causes: a learning '
            'rate too high for this model (try --mode=lr_find), unnormalised inputs (check '
            'config.preprocess), or bad images. Earlier checkpoints are kept.')
  if config.nan_policy == 'stop':
    if not bool(finite):
      raise NonFiniteLossError(f'Non-finite loss or gradients before step {step} {causes}')
    return
  skipped = jax.device_get(metrics.skipped.compute())
  in_a_row = max(int(skipped['longest']), carry + int(skipped['leading']))
  if in_a_row >= config.max_skipped_steps:
    raise NonFiniteLossError(
        f'{in_a_row} steps in a row had a non-finite loss or gradients and were skipped '
        f'(config.max_skipped_steps={config.max_skipped_steps}); stopped before step {step} '
        + causes)


def _skips_in_a_row(metrics, carry: int) -> int:
  """Skipped steps in a row at the end of this epoch (and the ones before it)."""
  skipped = jax.device_get(metrics.skipped.compute())
  return int(skipped['trailing']) + (carry if int(skipped['every']) else 0)


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """Trains (or resumes) in `workdir`; returns the history of finished epochs."""
  exp = experiment.build(config, workdir)
  try:
    return _train(exp, workdir)
  finally:
    exp.checkpoints.close()   # waits for a save in flight, also when training failed
    exp.release()


def _train(exp: experiment.Experiment, workdir: str) -> Dict[str, Any]:
  config = exp.config   # resolved: e.g. preprocess 'auto' -> the init_from weights' own
  state, history, partial = _restore_or_init(exp)
  if _finished(history, config.num_epochs):
    # A run killed between its last checkpoint and the log still gets its full log.
    if jax.process_index() == 0:
      callbacks.write_csv(os.path.join(workdir, callbacks.LOG_CSV), history['epochs'])
    logging.info('Training in %s is already finished (%d epochs%s); nothing to do. Use '
                 '--mode=evaluate, or raise --config.num_epochs to train further.',
                 workdir, len(history['epochs']),
                 f'; {history["stop_reason"]}' if history['stop_reason'] else '')
    return history

  train_data, val_data = exp.pipeline(config.train_split), exp.pipeline(config.eval_split)
  assert train_data.steps_per_epoch == exp.steps_per_epoch
  train_step = parallel.jit_train_step(make_train_step(exp.model, exp.tx, config), exp.mesh)
  eval_step = parallel.jit_eval_step(make_eval_step(exp.model, config), exp.mesh)
  plateau_update = jax.jit(lambda s, value: exp.plateau.update(0.0, s, value=value)[1])

  spe, total_steps = exp.steps_per_epoch, exp.steps_per_epoch * config.num_epochs
  step = int(state.step)
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0, asynchronous=False)
  if step == 0:
    writer.write_hparams(summary.hparams(config))
  report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                           every_steps=config.log_every_steps)
  progress = callbacks.Progress(total_steps, config.batch_size, step)

  def checked_lr(state, metrics, finite, carry, step, epoch):
    """The learning rate of the last step, after stopping on non-finite steps."""
    lr = float(optimizers.learning_rate(exp.schedule, step - 1, state.plateau))
    _check_health(config, metrics, finite, carry, step, epoch, lr)
    return lr

  with preemption.Guard() as guard:
    for epoch in range(step // spe, config.num_epochs):
      epoch_start, epoch_first_step = time.time(), step
      # A run resumed in the middle of an epoch continues that epoch's running metrics.
      metrics, finite = partial if partial and step > epoch * spe else (None, None)
      partial, carry = None, history.get('skips_in_a_row', 0)
      batches = train_data.train_epoch(epoch, skip_batches=step - epoch * spe)
      for batch in parallel.prefetch_to_mesh(batches, exp.mesh):
        state, step_metrics, step_finite = train_step(state, batch)
        metrics = step_metrics if metrics is None else metrics.merge(step_metrics)
        finite = step_finite if finite is None else finite & step_finite
        step += 1
        report(step)
        if step % config.log_every_steps == 0:  # the only per-step host sync
          lr = checked_lr(state, metrics, finite, carry, step, epoch + 1)
          running = metrics.compute()
          progress.log(epoch + 1, config.num_epochs, step, float(running['loss']),
                       float(running['accuracy']))
          writer.write_scalars(step, {'train_loss': running['loss'],
                                      'train_accuracy': running['accuracy'], 'learning_rate': lr})
        # At an epoch's end, validate and save it first.
        if step % spe and guard.stop(sync_point=step % config.log_every_steps == 0):
          checked_lr(state, metrics, finite, carry, step, epoch + 1)   # never checkpoint a NaN state
          _save_partial_epoch(exp, state, history, metrics, finite, step)
          raise preemption.Preempted(_resume_message(guard.received, step, spe, workdir))

      lr = checked_lr(state, metrics, finite, carry, step, epoch + 1)
      train = jax.device_get(metrics.compute())
      val = run_eval(eval_step, state, val_data, exp.mesh)
      seconds = time.time() - epoch_start
      row = {'epoch': epoch + 1, 'step': step, 'loss': float(train['loss']),
             'accuracy': float(train['accuracy']), 'val_loss': val['loss'],
             'val_accuracy': val['accuracy'], 'learning_rate': lr,
             'skipped_steps': int(train['skipped']['total']), 'seconds': round(seconds, 3),
             'images_per_second': round((step - epoch_first_step) * config.batch_size / seconds, 2)}
      history['epochs'].append(row)
      history['skips_in_a_row'] = _skips_in_a_row(metrics, carry)
      logging.info('epoch %d/%d: loss %.4f accuracy %.4f val_loss %.4f val_accuracy %.4f '
                   '(%d images) lr %.3g, %.1fs', epoch + 1, config.num_epochs, row['loss'],
                   row['accuracy'], row['val_loss'], row['val_accuracy'], val['num_images'], lr,
                   seconds)
      if config.schedule.name == 'plateau':
        state = state.replace(plateau=plateau_update(
            state.plateau, optimizers.plateau_value(config, row)))
      if config.early_stopping.enabled:
        es = config.early_stopping
        history['stop_reason'] = callbacks.early_stopping_reason(
            history['epochs'], es.monitor, es.patience, es.min_delta)
      val_metrics = {'val_loss': row['val_loss'], 'val_accuracy': row['val_accuracy']}
      if not all(math.isfinite(v) for v in val_metrics.values()):
        # Kept as a latest checkpoint, never picked as the best one.
        logging.warning('non-finite validation metrics %s at step %d', val_metrics, step)
        val_metrics = None
      exp.checkpoints.save(step, state, history, metrics=val_metrics)
      if jax.process_index() == 0:
        callbacks.write_csv(os.path.join(workdir, callbacks.LOG_CSV), history['epochs'])
      writer.write_scalars(step, {k: row[k] for k in ('loss', 'accuracy', 'val_loss',
                                                      'val_accuracy', 'learning_rate')})
      writer.flush()
      if history['stop_reason']:
        logging.info('%s', history['stop_reason'])
        break
      if guard.stop(sync_point=True):
        exp.checkpoints.wait()
        raise preemption.Preempted(_resume_message(guard.received, step, spe, workdir))

  exp.checkpoints.wait()
  writer.close()
  if jax.process_index() == 0 and history['epochs']:
    logging.info('wrote %s', curves.write_curves(workdir))
  best = exp.checkpoints.best_step()
  logging.info('training finished: %d epochs, best checkpoint at step %s (by %s)',
               len(history['epochs']), best, config.checkpoint.best_monitor)
  return history
