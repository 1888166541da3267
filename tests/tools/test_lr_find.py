"""The range test's advice: only rates inside the tested range, before the loss diverged."""

import numpy as np
import pytest

from catsdogs_jax.tools import lr_find

LRS = np.logspace(-7, 1, 120)
LOG = np.log10(LRS)


def test_a_loss_that_never_falls_gets_no_suggestion_and_says_why():
  flat = 0.6931 + 0.02 * np.clip(LOG + 3, 0, None) ** 2  # flat, then rising
  found = lr_find.suggestions(LRS, flat)
  assert found.rates == {}
  assert found.warning.startswith('the smoothed loss never fell')
  assert 'lr_find.min_lr' in found.warning


def test_a_recovery_after_divergence_is_not_the_steepest_descent():
  i = np.arange(len(LRS))
  loss = 0.7 - 0.5 / (1 + np.exp(-(i - 45) / 5))  # falls around index 45 (1e-4)...
  loss[76:96] = loss[75] + 0.2 * np.arange(1, 21)  # ...lowest at 75 (1e-2), then blows up...
  loss[96:] = loss[95] - 0.15 * np.arange(1, 25)  # ...and falls back fast, not below the lowest
  found = lr_find.suggestions(LRS, loss)
  assert LRS[30] < found.rates['steepest'] < LRS[60]
  assert found.lowest_lr == LRS[75]
  assert found.rates['minimum/10'] == pytest.approx(LRS[75] / 10)
  assert found.warning == ''


def test_minimum_over_ten_below_the_tested_range_is_left_out():
  loss = np.concatenate([np.linspace(1.0, 0.5, 15), 0.5 + 0.1 * np.arange(1, 106)])
  found = lr_find.suggestions(LRS, loss)  # lowest at index 14: 1e-7 x 10^0.94
  assert found.lowest_lr == LRS[14]
  assert 'minimum/10' not in found.rates and 'below the tested range' in found.warning
  assert LRS[12] <= found.rates['steepest'] <= LRS[14]
