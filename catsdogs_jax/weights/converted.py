"""The on-disk form of converted weights, and the strict filling every converter shares.

A converted directory holds `params/` (an Orbax checkpoint of the Flax
parameters) and `weights.json`: the model, whether it has its top, the number
of classes, the image size the top was built for, where the weights came from
and the preprocessing they were trained with. Load it with
`config.init_from=DIR` (`catsdogs_jax.weights.loading`).
"""

import hashlib
import json
import os
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

from catsdogs_jax import models

WEIGHTS_FILE = 'weights.json'


PARAMS_DIR = 'params'


class ConversionError(ValueError):
  """A weight file that does not fit the model; the message lists what differs."""


Mapping = Dict[Tuple[str, ...], Tuple[str, Callable]]  # our path -> (source key, transform)


def fill(
    abstract_variables, tensors: Dict[str, np.ndarray], mapping: Mapping, ignore: Sequence[str] = ()
):
  """Our variables filled from a flat source dict; fails listing missing, extra, misshapen."""
  ours = traverse_util.flatten_dict(abstract_variables)
  unmapped = sorted('/'.join(p) for p in set(ours) - set(mapping))
  missing = sorted({src for src, _ in mapping.values() if src not in tensors})
  used = {src for src, _ in mapping.values()}
  extra = sorted(k for k in tensors if k not in used and not any(re.search(i, k) for i in ignore))
  out, wrong = {}, []
  for path, (src, transform) in mapping.items():
    if src in tensors:
      value = np.asarray(transform(tensors[src]), np.float32)
      if value.shape != tuple(ours[path].shape):
        wrong.append(
            f'{src} -> {"/".join(path)}: file {tuple(tensors[src].shape)}, '
            f'model {tuple(ours[path].shape)}'
        )
      out[path] = value
  if unmapped or missing or extra or wrong:
    raise ConversionError(
        '\n'.join(
            ['The weight file does not match the model:']
            + mismatch_lines(missing, extra, wrong, unmapped)
        )
    )
  return traverse_util.unflatten_dict(out)


def mismatch_lines(
    missing: Sequence[str], extra: Sequence[str], wrong: Sequence[str], unmapped: Sequence[str] = ()
) -> List[str]:
  """The lines of a "does not match" message: what is missing, extra, unmapped, misshapen."""
  return (
      ([f'  missing in the file: {_listing(missing)}'] if missing else [])
      + ([f'  in the file but not in the model: {_listing(extra)}'] if extra else [])
      + ([f'  model parameters with no source: {_listing(unmapped)}'] if unmapped else [])
      + ([f'  different shapes: {_listing(wrong, "; ")}'] if wrong else [])
  )


def _listing(items: Sequence[str], sep: str = ', ', most: int = 12) -> str:
  shown = sep.join(items[:most])
  return shown + (f'{sep}... ({len(items)} in all)' if len(items) > most else '')


def unchanged(x):
  return x


def write(
    path,
    output,
    source,
    model,
    include_top,
    num_classes,
    image_size,
    tensors,
    mapping_fn,
    ignore,
    preprocess: str,
    extra: Optional[Dict],
) -> Dict:
  """Fills `model`'s variables from `tensors` through `mapping_fn`, saves them with metadata."""
  flax_model = models.MODELS[model](num_outputs=num_classes or 1, include_top=include_top)
  abstract = models.abstract_variables(flax_model, (image_size or 224, image_size or 224, 3))
  variables = fill(abstract, tensors, mapping_fn(abstract), ignore)
  metadata = {
      'model': model,
      'include_top': include_top,
      'num_classes': num_classes,
      'image_size': image_size,
      'preprocess': preprocess,
      'source': source,
      'file': os.path.basename(path),
      'sha256': file_digest(path),
      **(extra or {}),
  }
  save(output, variables, metadata)
  return metadata


def file_digest(path: str, algorithm: str = 'sha256') -> str:
  """The hex digest of a file ('sha256', 'md5', ...), read in chunks."""
  digest = hashlib.new(algorithm)
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def save(output: str, variables, metadata: Dict):
  """Writes `output/params` ({'params', 'batch_stats'}) and `output/weights.json`."""
  output = os.path.abspath(output)
  os.makedirs(output, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(output, PARAMS_DIR), dict(variables), force=True)
  checkpointer.wait_until_finished()
  with open(os.path.join(output, WEIGHTS_FILE), 'w') as f:
    json.dump(metadata, f, indent=1)
  count = sum(x.size for x in jax.tree.leaves(variables['params']))
  logging.info(
      'wrote %s: %s, %d parameters, preprocessing %r',
      output,
      metadata['model'],
      count,
      metadata['preprocess'],
  )
