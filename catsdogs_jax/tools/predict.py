"""Label and probability per image (files, globs or folders), as CSV files and pictures.

Images of any size and format are decoded and resized as in training and go
through the model's own preprocessing (the one bound to its weights).
"""

import csv
import hashlib
import os
import re
from typing import Dict, List, Optional, Sequence

import jax
import numpy as np
from absl import logging
from PIL import Image

from catsdogs_jax.tools import plots
from catsdogs_jax.tools.evaluate import predictions, restore_for_inference
from catsdogs_jax.training.config_checks import ConfigError

# Output files, named after the inputs (`output_name`): predicting other photos never
# overwrites the results of earlier ones.
PREDICTIONS_CSV = 'predictions_{name}.csv'
KAGGLE_CSV = 'submission_{name}.csv'
GRID_PNG = 'predictions_{name}.png'
BARS_PNG = 'prediction_{name}.png'
MAX_GRID = 100
DOG_NAMES = ('dog', 'dogs')


def output_name(specs: Sequence[str]) -> str:
  """The name of what `--images` points at, for file names: a folder's or a file's own name
  ('test1', 'cat.12'); globs and several inputs add a short hash of the exact inputs, so two
  different sets of photos never share a name."""
  parts = []
  for spec in specs:
    path = os.path.normpath(os.path.expanduser(spec))
    base = os.path.basename(path)
    if any(c in base for c in '*?['):
      base = f'{os.path.basename(os.path.dirname(path))}_{base}'
    elif os.path.isfile(path):
      base = os.path.splitext(base)[0]
    parts.append(re.sub(r'[^A-Za-z0-9._-]+', '_', base).strip('._') or 'images')
  name = '+'.join(parts)[:48]
  if len(specs) > 1 or any(c in ''.join(specs) for c in '*?[') or len('+'.join(parts)) > 48:
    digest = hashlib.sha256('\0'.join(specs).encode()).hexdigest()[:6]
    name = f'{name}-{digest}'
  return name


def _replacing(path: str) -> str:
  """`path`, saying so when it replaces an earlier file (the same inputs predicted again)."""
  if os.path.exists(path):
    logging.warning('replacing %s (written earlier for the same --images)', path)
  return path


def kaggle_id(path: str) -> str:
  """Kaggle's test images are `<id>.jpg`: the id is the file's stem (its digits, if any)."""
  stem = os.path.splitext(os.path.basename(path))[0]
  digits = re.findall(r'\d+', stem)
  return digits[-1] if digits else stem


def dog_index(class_names: Sequence[str]) -> int:
  names = [n.lower() for n in class_names]
  for name in DOG_NAMES:
    if name in names:
      return names.index(name)
  raise ConfigError(
      f'The Kaggle CSV gives the probability of "dog", but the classes are '
      f'{list(class_names)}; leave out --kaggle for this model.'
  )


def write_csv(path: str, header: Sequence[str], rows: List[Sequence]) -> str:
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
  return path


def _thumbnail(path: str, size: int = 200) -> np.ndarray:
  with Image.open(path) as image:
    image = image.convert('RGB')
    image.thumbnail((size, size))
    return np.asarray(image)


def write_pictures(paths, probs, class_names, out_dir: str, name: str) -> List[str]:
  """One image: it beside a bar chart of its probabilities. Always: a grid of up to 100 images."""
  labels = probs.argmax(axis=1)
  written = []
  if len(paths) == 1:
    written.append(
        plots.class_probabilities(
            _thumbnail(paths[0]),
            probs[0],
            class_names,
            _replacing(os.path.join(out_dir, BARS_PNG.format(name=name))),
            f'{os.path.basename(paths[0])}: {class_names[labels[0]]} {probs[0, labels[0]]:.4f}',
        )
    )
  shown = range(min(len(paths), MAX_GRID))
  written.append(
      plots.image_grid(
          [_thumbnail(paths[i]) for i in shown],
          [
              f'{class_names[labels[i]]} {probs[i, labels[i]]:.4f}\n{os.path.basename(paths[i])[:24]}'
              for i in shown
          ],
          _replacing(os.path.join(out_dir, GRID_PNG.format(name=name))),
          suptitle=f'Predictions (label, probability) of the first {len(shown)} of {len(paths)} images',
      )
  )
  return written


def predict_images(
    config,
    workdir: str,
    specs: Sequence[str],
    step: Optional[int] = None,
    kaggle: bool = False,
    pictures: bool = False,
) -> Dict[str, np.ndarray]:
  """Predicts every image of `specs`; writes predictions_NAME.csv (and submission_NAME.csv, PNGs),
  NAME from `output_name(specs)`."""
  from catsdogs_jax.data import folders, input_pipeline

  if not specs:
    raise ConfigError('--mode=predict needs --images=PATH (files, globs or folders).')
  files = folders.read_files(specs)  # bad paths fail before the model is built
  restored = restore_for_inference(config, workdir, step)
  exp, state, step = restored.exp, restored.state, restored.step
  names = list(exp.info.class_names)
  if kaggle:
    dog = dog_index(names)
  pipeline = input_pipeline.ImagePipeline(exp.config, 'predict', names, files=files)
  probs = predictions(exp, state, pipeline).probabilities
  paths = [str(p) for p in files.paths]
  labels = probs.argmax(axis=1)
  name = output_name(specs)
  if jax.process_index() == 0:
    for path, label, p in zip(paths, labels, probs):
      print(f'{names[label]} {p[label]:.4f} {path}')
    written = [
        write_csv(
            _replacing(os.path.join(workdir, PREDICTIONS_CSV.format(name=name))),
            ['path', 'label', 'probability', *names],
            [
                [path, names[label], f'{p[label]:.6f}', *(f'{q:.6f}' for q in p)]
                for path, label, p in zip(paths, labels, probs)
            ],
        )
    ]
    if kaggle:
      rows = [[kaggle_id(path), f'{p[dog]:.6f}'] for path, p in zip(paths, probs)]
      if all(r[0].isdigit() for r in rows):
        rows.sort(key=lambda r: int(r[0]))
      path = _replacing(os.path.join(workdir, KAGGLE_CSV.format(name=name)))
      written.append(write_csv(path, ['id', 'label'], rows))
    if pictures:
      written += write_pictures(paths, probs, names, workdir, name)
    logging.info(
        'predicted %d image%s with the checkpoint at step %d; wrote %s',
        len(paths),
        '' if len(paths) == 1 else 's',
        step,
        ', '.join(written),
    )
  return {'paths': np.asarray(paths), 'probabilities': probs, 'labels': labels}
