"""Keras-callback equivalents driven by the epoch history: early stopping, CSV log, progress."""

import csv
import os
import sys
import time
from typing import Any, Dict, List, Optional

import jax
import tqdm
from absl import logging

from catsdogs_jax.runtime.checkpointing import monitor_mode

LOG_CSV = 'log.csv'
CSV_COLUMNS = (
    'epoch',
    'step',
    'loss',
    'accuracy',
    'val_loss',
    'val_accuracy',
    'learning_rate',
    'skipped_steps',
    'seconds',
    'images_per_second',
)
TIMING_COLUMNS = ('seconds', 'images_per_second')


def _improved(value: float, best: float, mode: str, min_delta: float) -> bool:
  return value > best + min_delta if mode == 'max' else value < best - min_delta


def early_stopping_reason(
    rows: List[Dict[str, Any]], monitor: str, patience: int, min_delta: float
) -> Optional[str]:
  """Why to stop after the last row, or None: `patience` epochs without improvement."""
  mode = monitor_mode(monitor)
  best_epoch, best = None, None
  for row in rows:
    if best is None or _improved(row[monitor], best, mode, min_delta):
      best_epoch, best = row['epoch'], row[monitor]
  if best_epoch is not None and rows[-1]['epoch'] - best_epoch >= patience:
    return (
        f'early stopping: {monitor} has not improved for {patience} epochs '
        f'(best {best:.4f} at epoch {best_epoch})'
    )
  return None


def write_csv(path: str, rows: List[Dict[str, Any]]):
  """Rewrites log.csv from the history, so it always matches the checkpoint."""
  tmp = path + '.tmp'
  with open(tmp, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: csv_value(row.get(k, 0)) for k in CSV_COLUMNS})  # 0: older logs
  os.replace(tmp, path)


def csv_value(value):
  """Floats to 6 significant digits: what float32 metrics mean (not 9.999999747378752e-05)."""
  return f'{value:.6g}' if isinstance(value, float) else value


def read_csv(path: str) -> List[Dict[str, str]]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


class Progress:
  """Where training stands: a live bar per epoch on a terminal (tqdm: images, images/s, the
  epoch's ETA, loss and accuracy when the host syncs anyway), plain lines every log step
  elsewhere (log files, CI)."""

  def __init__(
      self,
      total_steps: int,
      steps_per_epoch: int,
      batch_size: int,
      start_step: int,
      live: Optional[bool] = None,
  ):
    self.total_steps, self.steps_per_epoch, self.batch_size = (
        total_steps,
        steps_per_epoch,
        batch_size,
    )
    self._t0, self._step0 = time.time(), start_step
    self.live = (sys.stderr.isatty() if live is None else live) and jax.process_index() == 0
    self.bar = None

  def step(self, epoch: int, num_epochs: int, step: int):
    """After each step (no host sync): moves the bar."""
    if not self.live:
      return
    if self.bar is None:
      done = step - 1 - (epoch - 1) * self.steps_per_epoch
      self.bar = tqdm.tqdm(
          total=self.steps_per_epoch,
          initial=done,
          desc=f'epoch {epoch}/{num_epochs}',
          unit='img',
          unit_scale=self.batch_size,
          leave=False,
          dynamic_ncols=True,
          file=sys.stderr,
      )
    self.bar.update(1)

  def line(self, epoch: int, num_epochs: int, step: int, loss: float, accuracy: float) -> str:
    elapsed = time.time() - self._t0
    rate = (step - self._step0) / elapsed if elapsed > 0 else 0.0
    eta = (self.total_steps - step) / rate if rate > 0 else float('nan')
    return (
        f'epoch {epoch}/{num_epochs} step {step}/{self.total_steps} '
        f'loss {loss:.4f} accuracy {accuracy:.4f} | {rate * self.batch_size:.1f} images/s '
        f'| ETA {_duration(eta)}'
    )

  def log(self, epoch: int, num_epochs: int, step: int, loss: float, accuracy: float):
    """Every log step, with values the host has just read."""
    if self.bar is not None:
      self.bar.set_postfix_str(f'loss {loss:.4f} accuracy {accuracy:.4f}', refresh=False)
    elif jax.process_index() == 0 and not self.live:
      logging.info(self.line(epoch, num_epochs, step, loss, accuracy))

  def end_epoch(self):
    if self.bar is not None:
      self.bar.close()
      self.bar = None


def _duration(seconds: float) -> str:
  if seconds != seconds:  # NaN
    return '?'
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'
