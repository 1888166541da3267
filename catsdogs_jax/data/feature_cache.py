"""Fast feature extraction: run the frozen base once per split, cache the features, train the head.

The tutorials' quickest VGG16 recipe. The base's output for every image of a
split is computed once (no augmentation: the same image always gives the same
features) and saved under `config.features.cache_dir`, keyed by the weights,
the data, the split, the image size and the preprocessing, so a second run, or
another head on the same features, reads them back instead of recomputing.
`FeaturePipeline` then serves them exactly as `ImagePipeline` serves images:
the same per-epoch order rule, the same padded and masked evaluation.
"""

import hashlib
import json
import os
from typing import Any, Callable, Iterator

import jax
import numpy as np
from absl import logging
from flax import linen as nn

from catsdogs_jax.data.batching import Batching, epoch_seed, pad_batch
from catsdogs_jax.data.preprocessing import get_preprocessor
from catsdogs_jax.models.heads import apply_head
from catsdogs_jax.runtime import parallel


class HeadModel(nn.Module):
  """The head alone, trained on cached base features."""

  head: str
  num_outputs: int
  head_units: int = 256
  dropout_rate: float = 0.0
  kernel_init: Callable = nn.initializers.glorot_uniform()
  dtype: Any = np.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    return apply_head(
        x,
        self.head,
        self.num_outputs,
        self.head_units,
        self.dropout_rate,
        train,
        self.kernel_init,
        self.dtype,
    )


def cache_key(config, split: str, weights_metadata, data_fingerprint: str) -> str:
  description = {
      'weights': weights_metadata.get('sha256')
      or f'{weights_metadata.get("file")}@{weights_metadata.get("step")}',
      'model': config.model.name,
      'pooling': config.model.pooling,
      'include_top': config.model.include_top,
      'image_size': config.data.image_size,
      'channels': config.data.channels,
      'resize': config.data.resize_method,
      'preprocess': config.data.preprocess,
      'dataset': config.data.dataset,
      'split': split,
      'data': data_fingerprint,
      'process': [jax.process_index(), jax.process_count()],
  }
  return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:24]


def extract(base_model, variables, image_pipeline, mesh, preprocess: str):
  """(features, labels) of every image of this process's part of a split, in order."""
  prep = get_preprocessor(preprocess)
  rep, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  forward = jax.jit(
      lambda v, x: base_model.apply(v, prep(x)), in_shardings=(rep, batch), out_shardings=batch
  )
  variables = jax.device_put(variables, rep)
  chunks, labels = [], []
  for host_batch in image_pipeline.eval_batches():
    out = forward(variables, parallel.shard_batch(host_batch['image'], mesh))
    local = np.concatenate([np.asarray(s.data) for s in out.addressable_shards])
    keep = host_batch['mask'] == 1
    chunks.append(local[keep])
    labels.append(host_batch['label'][keep])
  return np.concatenate(chunks), np.concatenate(labels)


def cached_features(config, split, base_model, variables, image_pipeline, mesh, weights_metadata):
  """The split's features from the cache, computing and saving them the first time."""
  cache_dir = os.path.expanduser(config.features.cache_dir)
  key = cache_key(config, split, weights_metadata, image_pipeline.fingerprint)
  path = os.path.join(cache_dir, f'{key}.npz')
  if os.path.exists(path):
    with np.load(path) as data:
      logging.info('features of %s read from %s', split, path)
      return data['features'], data['labels']
  features, labels = extract(base_model, variables, image_pipeline, mesh, config.data.preprocess)
  os.makedirs(cache_dir, exist_ok=True)
  tmp = f'{path}.{os.getpid()}.tmp.npz'
  np.savez(tmp, features=features, labels=labels)
  os.replace(tmp, path)  # complete or absent
  logging.info('features of %s %s computed and cached in %s', split, features.shape, path)
  return features, labels


class FeaturePipeline(Batching):
  """Cached features served like images: per-epoch shuffles, padded evaluation batches."""

  def __init__(
      self, config, features: np.ndarray, labels: np.ndarray, examples_per_process, local_batch: int
  ):
    self.config, self.features, self.labels = config, features, labels
    self.examples_per_process, self.local_batch = examples_per_process, local_batch
    self.num_examples = len(labels)

  def train_epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[dict]:
    order = np.random.default_rng(epoch_seed(self.config.seed, epoch)).permutation(
        self.num_examples
    )
    for step in range(skip_batches, self.steps_per_epoch):
      rows = order[step * self.local_batch : (step + 1) * self.local_batch]
      yield {'image': self.features[rows], 'label': self.labels[rows]}

  def eval_batches(self) -> Iterator[dict]:
    for i in range(self.num_eval_batches):
      rows = slice(i * self.local_batch, (i + 1) * self.local_batch)
      yield pad_batch({'image': self.features[rows], 'label': self.labels[rows]}, self.local_batch)
