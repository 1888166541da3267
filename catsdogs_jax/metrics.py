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
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  accuracy: metrics.Average.from_output('accuracy')


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
  return jax.tree.unflatten(jax.tree.structure(like),
                            [jnp.asarray(value, dtype) for value, dtype in leaves])
