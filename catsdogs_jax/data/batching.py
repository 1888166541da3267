"""What every split's batches share, images or cached features: counts, order, padding.

Each process reads its own part of a split with a per-process batch of
`global batch / processes`. Training takes the same number of full batches on
every process; evaluation pads and masks, and every process yields the same
number of batches, so every example counts once. Epoch `e`'s order is a
function of (seed, e) only.
"""

from typing import Sequence

import numpy as np


def epoch_seed(seed: int, epoch: int) -> int:
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def pad_batch(batch: dict, size: int) -> dict:
  """`batch` padded with zeros to `size` rows, with `mask` 1 on the real ones."""
  n = len(batch['label'])
  mask = np.zeros((size,), np.float32)
  mask[:n] = 1.0
  padded = {
      k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()
  }
  padded['mask'] = mask
  return padded


class Batching:
  """Batch counts of a split read as `examples_per_process` parts of `local_batch` batches."""

  examples_per_process: Sequence[int]
  local_batch: int

  @property
  def steps_per_epoch(self) -> int:
    """Full training batches per epoch (the same on every process)."""
    return min(self.examples_per_process) // self.local_batch

  @property
  def num_eval_batches(self) -> int:
    return -(-max(self.examples_per_process) // self.local_batch)
