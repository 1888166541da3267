"""Image folders as they are found in the wild: listing, labels, and skipping what cannot be read.

Two layouts:
- split folders, `ROOT/<split>/<label>/.../<image>` (Keras' flow_from_directory);
- flat, Kaggle's `ROOT/cat.123.jpg`, `ROOT/dog.45.jpg`: labels from the file
  names, and a deterministic per-class train/validation/test split.

Every file is checked once, before training: files that are not images, empty
or hidden, and images that neither TensorFlow nor Pillow can decode (truncated
or corrupt) are skipped with one summary warning per split. Images only Pillow
reads (TIFF, ...) are converted once to PNG in memory. A split with no usable
image is an error, and so is a file or folder that cannot be read at all
(permissions, I/O errors): skipping those would train on part of the data.
"""

import collections
import dataclasses
import functools
import glob
import io
import os
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp', '.webp', '.tif', '.tiff')
FLAT_SPLITS = ('train', 'validation', 'test')
FLAT_NAME = re.compile(r'^([A-Za-z][A-Za-z_-]*)\.[^.]+\.[A-Za-z]+$')  # cat.123.jpg
FLAT_SPLIT_SEED = 0  # fixed: the test set must not change with config.seed


class DataError(ValueError):
  """A dataset that cannot be used; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class FolderSplit:
  paths: np.ndarray  # str, one per usable image
  labels: np.ndarray  # int32
  inline: np.ndarray  # bytes: PNG re-encodings of images only Pillow reads, else b''
  skipped: Dict[str, Tuple[str, ...]]  # kind -> paths


SLICE = re.compile(r'^(?P<split>[^\[\]]+)\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\]$')


def parse_split(split: str) -> Tuple[str, str, str]:
  """'train[:10%]' -> ('train', '', '10%'): a folder split with a tfds-style slice."""
  match = SLICE.match(split)
  if not match:
    return split, '', ''
  return match['split'], match['start'] or '', match['stop'] or ''


def _bound(text: str, n: int):
  if not text:
    return None
  return int(round(float(text[:-1]) / 100 * n)) if text.endswith('%') else int(text)


def _slice_per_class(pairs, start: str, stop: str):
  """The slice applies within each class, so that '[:32]' keeps 32 of each, in file order."""
  by_label = collections.defaultdict(list)
  for path, label in pairs:
    by_label[label].append((path, label))
  out = []
  for label in sorted(by_label):
    items = by_label[label]
    out.extend(items[_bound(start, len(items)) : _bound(stop, len(items))])
  return out


def is_flat(root: str, split: str) -> bool:
  """No `split` sub-folder but images named label.N.ext at the top: Kaggle's layout."""
  split = parse_split(split)[0]
  if os.path.isdir(os.path.join(root, split)):
    return False
  return any(FLAT_NAME.match(f) for f in os.listdir(root))


def _unreadable_folder(error: OSError):
  raise DataError(
      f'Cannot list folder {error.filename!r} ({error.strerror or error}); make it readable '
      '(permissions, mount) or move it out of the dataset, and run again.'
  ) from error


def _walk(directory: str) -> List[str]:
  """Every file under `directory`, sub-folders included, in a fixed order."""
  found = []
  # os.walk skips folders it cannot list unless told otherwise: a silent loss of images.
  for dirpath, dirnames, filenames in os.walk(directory, onerror=_unreadable_folder):
    dirnames.sort()
    found.extend(os.path.join(dirpath, f) for f in sorted(filenames))
  return found


def _kind(path: str) -> str:
  """Why a file is not even a candidate image, or '' when it is one."""
  name = os.path.basename(path)
  if name.startswith('.') or any(p.startswith('.') for p in path.split(os.sep)[-3:-1]):
    return 'hidden file'
  if not name.lower().endswith(IMAGE_EXTENSIONS):
    return 'not an image file'
  try:
    if os.path.getsize(path) == 0:
      return 'empty file'
  except OSError:  # a dangling link, a vanished file: the decode check names the reason
    pass
  return ''


def class_names(root: str, split: str) -> Tuple[str, ...]:
  """Label names, sorted (cats=0, dogs=1, as Keras numbers them)."""
  split = parse_split(split)[0]
  if is_flat(root, split):
    names = {FLAT_NAME.match(f).group(1).lower() for f in os.listdir(root) if FLAT_NAME.match(f)}
    return tuple(sorted(names))
  split_dir = os.path.join(root, split)
  if not os.path.isdir(split_dir):
    present = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    raise DataError(
        f'Dataset folder {root!r} has no split folder {split!r} (found: '
        f'{", ".join(present) or "nothing"}). Expected split/label/image, or set '
        'config.data.train_split / eval_split / test_split to the folder names you have.'
    )
  return tuple(
      sorted(
          d
          for d in os.listdir(split_dir)
          if os.path.isdir(os.path.join(split_dir, d)) and not d.startswith('.')
      )
  )


def _candidates(root: str, split: str, names: Sequence[str], fractions):
  """(path, label) candidates of a split, and the files skipped by name alone."""
  skipped = collections.defaultdict(list)
  pairs = []
  if is_flat(root, split):
    if split not in FLAT_SPLITS:
      raise DataError(
          f'{root!r} is a flat folder (label.N.jpg); its splits are '
          f'{", ".join(FLAT_SPLITS)}, not {split!r}.'
      )
    by_label = collections.defaultdict(list)
    for path in (os.path.join(root, f) for f in sorted(os.listdir(root))):
      if os.path.isdir(path):
        continue
      kind = _kind(path)
      match = FLAT_NAME.match(os.path.basename(path))
      if not kind and not match:
        kind = 'no label in file name'
      if kind:
        skipped[kind].append(path)
      elif match.group(1).lower() in names:
        by_label[match.group(1).lower()].append(path)
    bounds = np.cumsum([0.0, *fractions])
    index = FLAT_SPLITS.index(split)
    for label, name in enumerate(names):
      files = sorted(by_label[name])
      order = np.random.default_rng(FLAT_SPLIT_SEED).permutation(len(files))
      lo, hi = (int(round(b * len(files))) for b in bounds[index : index + 2])
      pairs.extend((files[i], label) for i in sorted(order[lo:hi]))
    return pairs, skipped
  for label, name in enumerate(names):
    class_dir = os.path.join(root, split, name)
    for path in _walk(class_dir) if os.path.isdir(class_dir) else []:
      kind = _kind(path)
      if kind:
        skipped[kind].append(path)
      else:
        pairs.append((path, label))
  return pairs, skipped


def _tensorflow_decodable(paths: Sequence[str]) -> np.ndarray:
  """Which files tf.io.decode_image reads, checked in parallel by tf.data."""
  ds = tf.data.Dataset.from_tensor_slices((np.asarray(paths), np.arange(len(paths))))
  decode = lambda p, i: tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False)
  ds = ds.map(
      lambda p, i: tf.size(decode(p, i), tf.int64) * 0 + i,
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=False,
  ).ignore_errors()
  ok = np.zeros(len(paths), bool)
  for i in ds.as_numpy_iterator():
    ok[i] = True
  return ok


def _pillow_png(path: str) -> bytes:
  """The image re-encoded as PNG by Pillow, or b'' when Pillow cannot decode it either.

  Reading the file fails with OSError (permissions, I/O), which propagates.
  """
  # Pillow reports undecodable data as OSError too (UnidentifiedImageError, 'image
  # file is truncated'), so the file is read first: a failure there is the file
  # system's, one while decoding the bytes in memory is the image's.
  with open(path, 'rb') as f:
    data = f.read()
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      buffer = io.BytesIO()
      image.convert('RGB').save(buffer, format='PNG')
      return buffer.getvalue()
  except Exception:  # Pillow raises many types for broken data (OSError, SyntaxError, ...)
    return b''


def _usable(paths: List[str], labels: List[int], skipped) -> FolderSplit:
  """The paths TensorFlow or Pillow can decode; the others go to `skipped`."""
  inline = [b''] * len(paths)
  keep = np.ones(len(paths), bool)
  unreadable = []
  if paths:
    for i in np.flatnonzero(~_tensorflow_decodable(paths)):  # TensorFlow fails on both kinds
      try:
        inline[i] = _pillow_png(paths[i])
      except OSError as e:
        unreadable.append((paths[i], e))
        continue
      if not inline[i]:
        keep[i] = False
        skipped['corrupt or truncated image'].append(paths[i])
  if unreadable:
    path, e = unreadable[0]
    raise DataError(
        f'Cannot read {len(unreadable)} image file(s), e.g. {path!r} '
        f'({type(e).__name__}: {e.strerror or e}); make them readable (permissions, disk) '
        'or move them out of the dataset, and run again.'
    ) from e
  return FolderSplit(
      paths=np.asarray(paths, dtype=object)[keep],
      labels=np.asarray(labels, np.int32)[keep],
      inline=np.asarray(inline, dtype=object)[keep],  # object: no padding to the longest
      skipped={k: tuple(v) for k, v in skipped.items()},
  )


# Listing (and with verify, decoding) a folder is slow; a run reads each split a few times.
@functools.lru_cache(maxsize=16)
def read_split(
    root: str,
    split: str,
    names: Tuple[str, ...],
    verify: bool = True,
    fractions: Tuple[float, ...] = (0.8, 0.1, 0.1),
) -> FolderSplit:
  """The usable images of one split (`train`, or sliced per class: `train[:10%]`)."""
  base, start, stop = parse_split(split)
  pairs, skipped = _candidates(root, base, names, fractions)
  if start or stop:
    pairs = _slice_per_class(pairs, start, stop)
  paths, labels = [p for p, _ in pairs], [label for _, label in pairs]
  if verify:
    result = _usable(paths, labels, skipped)
  else:
    result = FolderSplit(
        np.asarray(paths, dtype=object),
        np.asarray(labels, np.int32),
        np.asarray([b''] * len(paths), dtype=object),
        {k: tuple(v) for k, v in skipped.items()},
    )
  _report(root, split, names, result, sum(1 for b in result.inline if b))
  if not len(result.paths):
    raise DataError(
        f'Split {split!r} of {root!r} holds no usable image (looked for '
        f'{", ".join(IMAGE_EXTENSIONS)}; skipped: {_summary(result.skipped) or "nothing"}).'
    )
  return result


def read_files(specs: Sequence[str]) -> FolderSplit:
  """Images named by files, globs or folders (searched recursively), unlabelled (label 0).

  Each spec must match something; files that are not images, or that nothing
  decodes, are skipped with a warning.
  """
  paths, skipped = [], collections.defaultdict(list)
  for spec in specs:
    spec = os.path.expanduser(spec)
    if os.path.isdir(spec):
      found = _walk(spec)
    elif os.path.isfile(spec):
      found = [spec]
    else:
      found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
    if not found:
      raise DataError(f'{spec!r} is not an image file, a folder or a glob that matches files.')
    for path in found:
      kind = _kind(path)
      if kind:
        skipped[kind].append(path)
      elif path not in paths:
        paths.append(path)
  result = _usable(paths, [0] * len(paths), skipped)
  if result.skipped:
    logging.warning(
        'skipped %d files (%s), e.g. %s',
        sum(map(len, result.skipped.values())),
        _summary(result.skipped),
        ', '.join(v[0] for v in result.skipped.values()),
    )
  if not len(result.paths):
    raise DataError(
        f'No usable image in {", ".join(specs)} (looked for '
        f'{", ".join(IMAGE_EXTENSIONS)}; skipped: {_summary(result.skipped)}).'
    )
  return result


def _summary(skipped: Dict[str, Tuple[str, ...]]) -> str:
  return ', '.join(f'{k}: {len(v)}' for k, v in sorted(skipped.items()))


def _report(root, split, names, result: FolderSplit, converted: int):
  if result.skipped:
    examples = [v[0] for _, v in sorted(result.skipped.items())]  # one of each kind
    total = sum(len(v) for v in result.skipped.values())
    logging.warning(
        '%s/%s: skipped %d files (%s), e.g. %s',
        root,
        split,
        total,
        _summary(result.skipped),
        ', '.join(examples),
    )
  if converted:
    logging.info(
        '%s/%s: %d images that TensorFlow cannot decode were converted by Pillow.',
        root,
        split,
        converted,
    )
  counts = np.bincount(result.labels, minlength=len(names))
  for name, count in zip(names, counts):
    if count == 0:
      logging.warning('%s/%s: class %r has no usable image.', root, split, name)
