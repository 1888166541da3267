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


# The smoothed loss must fall by this fraction of its start before any rate is suggested.
MIN_FALL = 0.02


@dataclasses.dataclass
class Suggestions:
  """What the range test suggests; rates only where the loss fell, inside the tested range."""

  rates: Dict[str, float]  # 'steepest', 'minimum/10' (each only where it means something)
  lowest_lr: float  # the learning rate at the smoothed loss's minimum
  warning: str = ''  # why a suggestion is missing


def suggestions(lrs: np.ndarray, smoothed: np.ndarray) -> Suggestions:
  """'steepest': the fastest fall of the smoothed loss per log-lr before its minimum;
  'minimum/10': the rate at the minimum over 10, if that was tested.

  Points after the minimum are left out: there the loss has diverged, and a fall
  after a blow-up (a recovery) is no advice.
  """
  if len(lrs) < 5:
    raise ConfigError(
        f'The loss diverged after {len(lrs)} steps of the range test, already at learning '
        f'rate {lrs[-1]:.2e}: lower config.lr_find.min_lr.'
    )
  skip = max(len(lrs) // 10, 1)  # the first points are the moving average's warm-up
  lowest = skip + int(np.argmin(smoothed[skip:]))
  start = smoothed[skip]
  if lowest == skip or start - smoothed[lowest] < MIN_FALL * abs(start):
    return Suggestions(
        {},
        float(lrs[lowest]),
        f'the smoothed loss never fell (from {start:.4g}, lowest {smoothed[lowest]:.4g}) between '
        f'{lrs[0]:.1e} and {lrs[-1]:.1e}: no learning rate to suggest. Check the data and '
        'config.data.preprocess, or widen lr_find.min_lr / lr_find.max_lr.',
    )
  slope = np.gradient(smoothed[: lowest + 1], np.log10(lrs[: lowest + 1]))
  rates = {'steepest': float(lrs[skip + int(np.argmin(slope[skip:]))])}
  warning = ''
  if lrs[lowest] / 10 >= lrs[0]:
    rates['minimum/10'] = float(lrs[lowest] / 10)
  else:
    warning = (
        f'minimum / 10 ({lrs[lowest] / 10:.1e}) is below the tested range: lower '
        'lr_find.min_lr to see it.'
    )
  return Suggestions(rates, float(lrs[lowest]), warning)


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
  suggested = suggestions(lrs, smoothed)
  result = {
      'suggestions': suggested.rates,
      'lowest_loss_lr': suggested.lowest_lr,
      'warning': suggested.warning,
      'steps': len(lrs),
      'stopped': stop or f'reached max_lr after {len(lrs)} steps',
      'learning_rates': lrs.tolist(),
      'losses': losses.tolist(),
      'smoothed_losses': smoothed.tolist(),
  }
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    plots.learning_rate_range(
        lrs,
        losses,
        smoothed,
        suggested.rates,
        os.path.join(workdir, LR_FIND_PNG),
        suggested.lowest_lr,
        stop,
    )
    with open(os.path.join(workdir, LR_FIND_JSON), 'w') as f:
      json.dump(result, f, indent=1)
  names = {'steepest': 'steepest descent', 'minimum/10': 'minimum / 10'}
  advice = '; '.join(f'{rate:.2e} ({names[k]})' for k, rate in suggested.rates.items())
  logging.info(
      'learning-rate range test: %d steps from %.1e to %.1e (%s). %s Wrote %s and %s.',
      len(lrs),
      lrs[0],
      lrs[-1],
      result['stopped'],
      f'Suggested learning rate: {advice}.' if advice else 'No suggestion.',
      os.path.join(workdir, LR_FIND_PNG),
      LR_FIND_JSON,
  )
  if suggested.warning:
    logging.warning('learning-rate range test: %s', suggested.warning)
  return result
