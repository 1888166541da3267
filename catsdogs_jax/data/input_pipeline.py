"""Input pipeline: tfds datasets by name, or image folders (`folder:PATH`), to numpy batches.

With `folders`, the only module that needs TensorFlow. Images are decoded and resized by
tf.data in parallel and shipped as uint8; preprocessing runs on the device
(`catsdogs_jax.data.preprocessing`).

Batch counts, order and padding follow `catsdogs_jax.data.batching`: a resumed run
sees exactly the batches an uninterrupted one would, and evaluation counts
every image once.
"""

import dataclasses
import difflib
import hashlib
import os
import socket
import urllib.error
import urllib.parse
from typing import Dict, Iterator, Optional, Sequence, Tuple

import jax
import numpy as np
import requests
import tensorflow as tf
import tensorflow_datasets as tfds

from catsdogs_jax.data import folders
from catsdogs_jax.data.batching import Batching, epoch_seed, pad_batch
from catsdogs_jax.data.folders import DataError

FOLDER_PREFIX = 'folder:'
CATS_VS_DOGS_ZIP = 'kagglecatsanddogs_5340.zip'


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  class_names: Tuple[str, ...]
  num_examples: Dict[str, int]  # split name -> number of images (all processes)


def keep_tensorflow_off_gpus():
  """JAX owns the accelerators; tf.data needs only the CPU. Call before TensorFlow runs an op
  (main.py does; so does the first pipeline built); afterwards TensorFlow refuses, harmlessly."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TensorFlow already initialised its devices
    pass


def is_folder(dataset: str) -> bool:
  return dataset.startswith(FOLDER_PREFIX)


def config_splits(config) -> Dict[str, str]:
  return {
      'train': config.data.train_split,
      'validation': config.data.eval_split,
      'test': config.data.test_split,
  }


# --------------------------------------------------------------------------- folders


def _folder_root(config) -> str:
  root = os.path.expanduser(config.data.dataset[len(FOLDER_PREFIX) :])
  if not os.path.isdir(root):
    raise DataError(
        f'Dataset folder {root!r} does not exist (config.data.dataset={config.data.dataset!r}). '
        'Expected a folder laid out as split/label/image, e.g. '
        'PATH/train/cats/cat.1.jpg; pass --config.data.dataset=folder:PATH.'
    )
  return root


# --------------------------------------------------------------------------- tfds


# What a failed download raises in tfds: requests' errors (no internet: ConnectionError after
# its retries), tfds' DownloadError (an HTTP status other than 200), urllib's for ftp URLs.
# Anything else while preparing (a full disk, a bad manual zip, a bug) is not a download problem.
DOWNLOAD_ERRORS = (requests.RequestException, tfds.download.DownloadError, urllib.error.URLError)


def _one_line(error: Exception, limit: int = 300) -> str:
  return ' '.join(str(error).split())[:limit]


def _unknown_dataset(name: str, why: str) -> DataError:
  hints = []
  close = difflib.get_close_matches(name.lower(), tfds.list_builders(with_community_datasets=False))
  if close:
    hints.append(f'did you mean {" or ".join(map(repr, close))}?')
  if os.path.isdir(os.path.expanduser(name)):
    hints.append(f'for this folder pass --config.data.dataset={FOLDER_PREFIX}{name}')
  return DataError(
      f'Unknown dataset {name!r}: {why}, and not "{FOLDER_PREFIX}PATH" for an image folder'
      + (f' ({"; ".join(hints)}).' if hints else '.')
  )


def _tfds_builder(config):
  name = config.data.dataset
  try:
    # tfds.builder reports a malformed name (a path, a stray character) as a plain
    # ValueError, as it does a bad config or version of a known one: parse first.
    tfds.core.naming.parse_builder_name_kwargs(name)
  except ValueError:
    raise _unknown_dataset(name, 'not a valid tfds name') from None
  try:
    builder = tfds.builder(name, data_dir=config.data.data_dir)
  except tfds.core.DatasetNotFoundError:
    raise _unknown_dataset(name, 'tfds has no dataset of that name') from None
  if builder.is_prepared():
    return builder
  manual = os.path.join(builder.data_dir_root, 'downloads', 'manual')
  advice = (
      'To train on an image folder instead, pass --config.data.dataset=folder:PATH '
      '(PATH/train/<label>/*.jpg, PATH/validation/..., PATH/test/...).'
  )
  if name == 'cats_vs_dogs':
    advice += (
        f' Or place the official {CATS_VS_DOGS_ZIP} in {manual}/ and run again: '
        'tfds prepares the dataset from it without downloading.'
    )
  if not config.data.download:
    raise DataError(
        f'tfds dataset {name!r} is not prepared in '
        f'{builder.data_dir_root} and config.data.download is False. {advice}'
    )
  unreachable = _unreachable_download_hosts(builder, manual)
  if unreachable:
    raise DataError(
        f'Could not download tfds dataset {name!r}: no connection to '
        f'{", ".join(unreachable)} (no internet access?). {advice}'
    )
  try:
    builder.download_and_prepare()
  except DOWNLOAD_ERRORS as e:
    raise DataError(
        f'Could not download tfds dataset {name!r} (no internet access? {type(e).__name__}: '
        f'{_one_line(e)}). {advice}'
    ) from e
  return builder


PROXY_VARIABLES = ('HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'ALL_PROXY')


def _unreachable_download_hosts(builder, manual_dir: str, timeout: float = 5.0) -> Sequence[str]:
  """The hosts of the dataset's files when none of them answers, else nothing.

  One connection attempt per host, so that no network fails in seconds, not
  after tfds' minutes of retries. Skipped where it cannot judge: behind a proxy,
  with files in the manual folder, or without registered download addresses.
  """
  if any(os.environ.get(v) for v in PROXY_VARIABLES):
    return ()
  if os.path.isdir(manual_dir) and os.listdir(manual_dir):
    return ()
  hosts = set()
  for url in getattr(builder, 'url_infos', None) or {}:
    parsed = urllib.parse.urlsplit(url)
    if parsed.hostname:
      hosts.add((parsed.hostname, parsed.port or (443 if parsed.scheme == 'https' else 80)))
  for host, port in sorted(hosts):
    try:
      socket.create_connection((host, port), timeout=timeout).close()
      return ()
    except OSError:
      continue
  return [f'{host}:{port}' for host, port in sorted(hosts)]


def _tfds_process_split(split: str, index: int, count: int) -> str:
  return split if count == 1 else tfds.even_splits(split, n=count, drop_remainder=False)[index]


def _tfds_num_examples(builder, split: str) -> int:
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError) as e:
    raise DataError(
        f'tfds dataset {builder.name!r} has no split {split!r} '
        f'(available: {", ".join(builder.info.splits)}). ({e})'
    ) from e


# --------------------------------------------------------------------------- describe


def decode_jpeg_draft(data, channels: int, size: int):
  """A JPEG decoded at the largest DCT scale (1, 1/2, 1/4, 1/8) that keeps both sides >= `size`.

  libjpeg scales while it decodes, skipping most of the work (a side of n pixels becomes
  ceil(n / ratio)); `tf.io.decode_jpeg` takes the ratio as a constant, hence one branch each.
  """
  shape = tf.io.extract_jpeg_shape(data)
  short = tf.minimum(shape[0], shape[1])
  ratios = (1, 2, 4, 8)
  # How many of the reductions keep the short side >= size: the index of the largest ratio.
  index = tf.add_n([tf.cast((short + r - 1) // r >= size, tf.int32) for r in ratios[1:]])
  return tf.switch_case(
      index,
      [lambda r=r: tf.io.decode_jpeg(data, channels=channels, ratio=r) for r in ratios],
  )


def describe(
    config, roles: Optional[Sequence[str]] = None, class_names: Optional[Sequence[str]] = None
) -> DatasetInfo:
  """Checks that every split exists and is non-empty; cheap, no decoding.

  `roles` limits the check to some of 'train', 'validation', 'test' (default: all);
  `class_names`, the classes a run trained on, replace a folder's training split as
  their source, so a folder holding only test photos can be evaluated.
  """
  keep_tensorflow_off_gpus()
  splits = config_splits(config)
  if roles is not None:
    splits = {role: splits[role] for role in roles}
  if is_folder(config.data.dataset):
    root = _folder_root(config)
    source = f'the training split {config.data.train_split!r}'
    if class_names is None:
      class_names = folders.class_names(root, config.data.train_split)
      if not class_names:
        raise DataError(f'Split {config.data.train_split!r} of {root!r} has no label folders.')
    else:
      class_names, source = tuple(class_names), 'the run trained on'
    counts = {}
    for role, split in splits.items():
      extra = sorted(set(folders.class_names(root, split)) - set(class_names))
      if extra:
        raise DataError(
            f'Split {split!r} of {root!r} has labels {extra} that {source} lacks '
            f'({list(class_names)}).'
        )
      counts[role] = len(_folder_split(config, split, class_names).paths)
    return DatasetInfo(class_names, counts)
  builder = _tfds_builder(config)
  label = builder.info.features[config.data.label_key]
  counts = {role: _tfds_num_examples(builder, split) for role, split in splits.items()}
  for role, n in counts.items():
    if n == 0:
      raise DataError(f'Split {splits[role]!r} of {config.data.dataset!r} is empty.')
  return DatasetInfo(tuple(label.names), counts)


# --------------------------------------------------------------------------- pipeline


def _folder_split(config, split: str, class_names) -> folders.FolderSplit:
  return folders.read_split(
      _folder_root(config),
      split,
      tuple(class_names),
      config.data.verify_images,
      tuple(config.data.flat_split_fractions),
  )


class ImagePipeline(Batching):
  """One split of a dataset, this process's part of it, as numpy batches."""

  def __init__(
      self,
      config,
      split: str,
      class_names: Sequence[str],
      process_index: Optional[int] = None,
      process_count: Optional[int] = None,
      files: Optional[folders.FolderSplit] = None,
  ):
    """`files` (from `folders.read_files`) replaces the split: images to predict on."""
    self.config = config
    self.split = split
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if config.batch_size % count:
      raise DataError(
          f'config.batch_size={config.batch_size} is not divisible by the {count} processes.'
      )
    self.local_batch = config.batch_size // count
    self._from_path = is_folder(config.data.dataset) or files is not None
    if self._from_path:
      found = files if files is not None else _folder_split(config, split, class_names)
      self.examples_per_process = [len(found.paths[i::count]) for i in range(count)]
      self.fingerprint = hashlib.sha256('\n'.join(found.paths).encode()).hexdigest()
      part = slice(index, None, count)
      self._source = tf.data.Dataset.from_tensor_slices(
          (found.paths[part], found.inline[part], found.labels[part])
      )
    else:
      builder = _tfds_builder(config)
      subsplits = [_tfds_process_split(split, i, count) for i in range(count)]
      self.examples_per_process = [_tfds_num_examples(builder, s) for s in subsplits]
      self.fingerprint = f'{builder.name}:{builder.version}:{split}'  # tfds data is versioned
      ds = builder.as_dataset(
          split=subsplits[index],
          shuffle_files=False,
          decoders={config.data.image_key: tfds.decode.SkipDecoding()},
      )
      self._source = ds.map(
          lambda d: ('', d[config.data.image_key], tf.cast(d[config.data.label_key], tf.int32))
      )
    self.num_examples = self.examples_per_process[index]
    self._decoded = self._source.map(self._decode, num_parallel_calls=tf.data.AUTOTUNE)
    if config.data.cache:
      self._decoded = self._decoded.cache()

  def _decode(self, path, contents, label):
    """`contents` holds the encoded image, or is empty and the image is read from `path`."""
    c = self.config
    data = tf.cond(tf.strings.length(contents) > 0, lambda: contents, lambda: tf.io.read_file(path))
    full = lambda: tf.io.decode_image(data, channels=c.data.channels, expand_animations=False)
    if c.data.jpeg_draft:
      image = tf.cond(
          tf.io.is_jpeg(data),
          lambda: decode_jpeg_draft(data, c.data.channels, c.data.image_size),
          full,
      )
    else:
      image = full()
    image = tf.image.resize(
        image, (c.data.image_size, c.data.image_size), method=c.data.resize_method, antialias=True
    )
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    return {
        'image': tf.ensure_shape(image, (c.data.image_size, c.data.image_size, c.data.channels)),
        'label': label,
    }

  def train_epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[dict]:
    """Shuffled full batches of epoch `epoch`, starting after `skip_batches`."""
    seed = epoch_seed(self.config.seed, epoch)
    if self.config.data.cache:
      ds = self._decoded.shuffle(self.num_examples, seed=seed, reshuffle_each_iteration=False)
    else:
      # Shuffling paths / encoded bytes before decoding keeps the buffer cheap.
      buffer = self.num_examples if self._from_path else self.config.data.shuffle_buffer
      ds = self._source.shuffle(buffer, seed=seed, reshuffle_each_iteration=False)
      ds = ds.map(self._decode, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(self.local_batch, drop_remainder=True).take(self.steps_per_epoch)
    ds = ds.skip(skip_batches).prefetch(tf.data.AUTOTUNE)
    return ds.as_numpy_iterator()

  def eval_batches(self) -> Iterator[dict]:
    """Every example once, in order; padded batches carry `mask` 0 on padding."""
    ds = self._decoded.batch(self.local_batch).prefetch(tf.data.AUTOTUNE)
    yielded = 0
    for batch in ds.as_numpy_iterator():
      yield pad_batch(batch, self.local_batch)
      yielded += 1
    empty = {
        'image': np.zeros(
            (
                0,
                self.config.data.image_size,
                self.config.data.image_size,
                self.config.data.channels,
            ),
            np.uint8,
        ),
        'label': np.zeros((0,), np.int32),
    }
    for _ in range(self.num_eval_batches - yielded):
      yield pad_batch(empty, self.local_batch)
