"""Training curves of a workdir: accuracy and loss per epoch from its log.csv, as curves.png."""

import math
import os
from typing import Dict, List

import jax
from absl import logging

from catsdogs_jax.tools import plots
from catsdogs_jax.training import epoch_log, train

CURVES_PNG = 'curves.png'


def learning_rate_changes(rows: List[Dict[str, float]]) -> List[tuple]:
  """(epoch, new rate) for every epoch whose rate differs from the one before.

  log.csv holds the rate of each epoch's last step, so the change took effect
  during or at the start of that epoch.
  """
  return [
      (row['epoch'], row['learning_rate'])
      for prev, row in zip(rows, rows[1:])
      if not math.isclose(prev['learning_rate'], row['learning_rate'], rel_tol=1e-6)
  ]


def write_curves(workdir: str) -> str:
  """Reads `workdir/log.csv` and writes `workdir/curves.png`; returns its path."""
  log = os.path.join(workdir, epoch_log.LOG_CSV)
  if not os.path.exists(log):
    raise FileNotFoundError(
        f'No {epoch_log.LOG_CSV} in {workdir!r}: train first, or pass the workdir of a run.'
    )
  rows = [{k: float(v) for k, v in row.items()} for row in epoch_log.read_csv(log)]
  if not rows:
    raise FileNotFoundError(f'{log} has no finished epoch yet.')
  return plots.training_curves(
      rows,
      learning_rate_changes(rows),
      os.path.join(workdir, CURVES_PNG),
      title=os.path.basename(os.path.abspath(workdir)),
  )


class WriteCurves(train.Hook):
  """A train-loop hook: curves.png once training ends (main.py and sweeps add it)."""

  def end(self, loop):
    if jax.process_index() == 0 and loop.history.epochs:
      logging.info('wrote %s', write_curves(loop.exp.workdir))
