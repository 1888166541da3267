"""Learning-rate range test (Smith 2015; fastai's lr_find): which learning rates make the loss fall.

From a copy of the initial state, trains `config.lr_find.num_steps` steps while
the learning rate grows exponentially from `min_lr` to `max_lr`, and stops
early once the smoothed loss diverges. Nothing is saved to the workdir but the
plot and the numbers: its checkpoints and logs are never touched.
"""

import dataclasses
import itertools
import json
import os
from typing import Any, Dict

import jax
import numpy as np
import optax
from absl import logging

from catsdogs_jax.runtime import parallel
from catsdogs_jax.tools import plots
from catsdogs_jax.training import experiment, optimizers
from catsdogs_jax.training.config_checks import ConfigError
from catsdogs_jax.training.steps import make_train_step
from catsdogs_jax.training.train_state import make_init_fn

LR_FIND_PNG = 'lr_find.png'
LR_FIND_JSON = 'lr_find.json'


def smooth(losses: np.ndarray, beta: float) -> np.ndarray:
  """Bias-corrected exponential moving average (as fastai and Adam's first moment)."""
  avg, out = 0.0, []
  for i, loss in enumerate(losses, start=1):
    avg = beta * avg + (1 - beta) * loss
    out.append(avg / (1 - beta**i))
  return np.asarray(out)


def suggestions(lrs: np.ndarray, smoothed: np.ndarray) -> Dict[str, float]:
  """'steepest': where the smoothed loss falls fastest per log-lr; 'minimum/10'."""
  if len(lrs) < 5:
    raise ConfigError(
        f'The loss diverged after {len(lrs)} steps of the range test, already at learning '
        f'rate {lrs[-1]:.2e}: lower config.lr_find.min_lr.'
    )
  slope = np.gradient(smoothed, np.log10(lrs))
  skip = max(len(lrs) // 10, 1)  # the first points are the moving average's warm-up
  steepest = skip + int(np.argmin(slope[skip:]))
  return {'steepest': float(lrs[steepest]), 'minimum/10': float(lrs[int(np.argmin(smoothed))] / 10)}


def _endless(data, mesh):
  """Training batches, epoch after epoch."""
  for epoch in itertools.count():
    yield from parallel.prefetch_to_mesh(data.train_epoch(epoch), mesh)


def range_test(config, workdir: str) -> Dict[str, Any]:
  """Runs the test; writes lr_find.png and lr_find.json to `workdir`; returns the numbers."""
  exp = experiment.build(config, workdir, read_only=True)
  config, lf = exp.config, exp.config.lr_find
  schedule = optax.exponential_decay(
      lf.min_lr, transition_steps=lf.num_steps - 1, decay_rate=lf.max_lr / lf.min_lr
  )
  tx, _ = optimizers.create_optimizer(config, exp.steps_per_epoch, schedule=schedule)
  exp = dataclasses.replace(
      exp, tx=tx, init_fn=make_init_fn(exp.model, tx, exp.plateau, exp.input_shape)
  )
  state = exp.init_state()  # a fresh copy (init_from's weights, if any), never a checkpoint
  train_step = parallel.jit_train_step(make_train_step(exp.model, tx, config), exp.mesh)
  data = exp.pipeline(config.data.train_split)
  lrs, losses, best, stop = [], [], np.inf, ''
  for batch in itertools.islice(_endless(data, exp.mesh), lf.num_steps):
    lrs.append(float(schedule(len(lrs))))
    state, metrics, finite = train_step(state, batch)
    losses.append(float(metrics.compute()['loss']))  # this test's measurement: one sync a step
    if not bool(finite) or not np.isfinite(losses[-1]):
      lrs.pop(), losses.pop()  # the plot and the suggestions need finite points
      stop = 'non-finite loss'
      break
    current = smooth(np.asarray(losses), lf.smoothing)[-1]
    best = min(best, current)
    if current > lf.diverge_factor * best:
      stop = f'smoothed loss above {lf.diverge_factor} x its minimum'
      break
  lrs, losses = np.asarray(lrs), np.asarray(losses)
  smoothed = smooth(losses, lf.smoothing)
  result = {
      'suggestions': suggestions(lrs, smoothed),
      'steps': len(lrs),
      'stopped': stop or f'reached max_lr after {len(lrs)} steps',
      'learning_rates': lrs.tolist(),
      'losses': losses.tolist(),
      'smoothed_losses': smoothed.tolist(),
  }
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    plots.learning_rate_range(
        lrs, losses, smoothed, result['suggestions'], os.path.join(workdir, LR_FIND_PNG)
    )
    with open(os.path.join(workdir, LR_FIND_JSON), 'w') as f:
      json.dump(result, f, indent=1)
  s = result['suggestions']
  logging.info(
      'learning-rate range test: %d steps from %.1e (%s). Suggested learning rate: '
      '%.2e (steepest descent); %.2e (minimum / 10). Wrote %s and %s.',
      len(lrs),
      lf.min_lr,
      result['stopped'],
      s['steepest'],
      s['minimum/10'],
      os.path.join(workdir, LR_FIND_PNG),
      LR_FIND_JSON,
  )
  return result
