"""clu metric collections computed inside the jitted steps (masked, so padding never counts)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics


@flax.struct.dataclass
class ConfusionMatrix(metrics.Metric):
  """Counts [true class, predicted class]; padded examples have mask 0."""

  counts: jnp.ndarray

  @classmethod
  def from_model_output(cls, *, labels, predictions, num_classes, mask, **_):
    one_hot_true = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32)
    one_hot_pred = jax.nn.one_hot(predictions, num_classes, dtype=jnp.int32)
    one_hot_true = one_hot_true * mask.astype(jnp.int32)[:, None]
    return cls(counts=one_hot_true.T @ one_hot_pred)

  def merge(self, other):
    return type(self)(counts=self.counts + other.counts)

  def compute(self):
    return self.counts


@flax.struct.dataclass
class SkippedSteps(metrics.Metric):
  """Updates skipped for a non-finite loss: the total, and the runs of consecutive skips.

  Merging keeps, for the span of steps merged so far, the skips at its start
  (`leading`) and end (`trailing`), the longest run inside it, and whether
  every step was skipped: enough to know the longest run across any merges.
  """

  total: jnp.ndarray
  leading: jnp.ndarray
  trailing: jnp.ndarray
  longest: jnp.ndarray
  every: jnp.ndarray

  @classmethod
  def from_model_output(cls, *, skipped, **_):
    s = jnp.asarray(skipped, jnp.int32)
    return cls(total=s, leading=s, trailing=s, longest=s, every=s)

  @classmethod
  def empty(cls):
    zero = jnp.zeros((), jnp.int32)
    return cls(total=zero, leading=zero, trailing=zero, longest=zero, every=zero + 1)  # identity

  def merge(self, other):
    return type(self)(
        total=self.total + other.total,
        leading=self.leading + other.leading * self.every,
        trailing=other.trailing + self.trailing * other.every,
        longest=jnp.maximum(
            jnp.maximum(self.longest, other.longest), self.trailing + other.leading
        ),
        every=self.every * other.every,
    )

  def compute(self):
    return {
        'total': self.total,
        'leading': self.leading,
        'trailing': self.trailing,
        'longest': self.longest,
        'every': self.every,
    }


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  """Averages over the examples of applied steps (`mask`: 0 on a skipped step's examples).

  The loss is the one trained (smoothed, mixed targets); under mixup / CutMix an example's
  accuracy counts against its dominant label (lam >= 1/2: its own, else its partner's).
  """

  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Average.from_output('accuracy')
  skipped: SkippedSteps


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Average.from_output('accuracy')
  confusion: ConfusionMatrix


def to_json(collection) -> list:
  """A metrics collection's leaves as exact JSON numbers (float32 and int32 fit a double)."""
  return [[np.asarray(x).item(), str(np.asarray(x).dtype)] for x in jax.tree.leaves(collection)]


def from_json(leaves: list, like):
  """The collection saved by `to_json`, in the structure of `like` (e.g. `TrainMetrics.empty()`)."""
  return jax.tree.unflatten(
      jax.tree.structure(like), [jnp.asarray(value, dtype) for value, dtype in leaves]
  )
