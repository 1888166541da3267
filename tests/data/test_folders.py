"""Messy real-world folders: every kind of bad or odd file is handled on purpose."""

import builtins
import errno
import os

import numpy as np
import pytest
from PIL import Image

from catsdogs_jax.data import folders, input_pipeline

from conftest import make_image_folder, tiny_config


def _save(path, mode='RGB', fmt=None, size=(30, 40), seed=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (*size, 4), dtype=np.uint8)
  image = Image.fromarray(pixels, 'RGBA').convert(mode)
  image.save(path, format=fmt)
  return path


@pytest.fixture
def messy_folder(tmp_path):
  root = make_image_folder(tmp_path, counts=(('train', 8), ('validation', 4), ('test', 4)))
  cats = os.path.join(root, 'train', 'cats')
  good = [
      _save(f'{cats}/gray.jpg', 'L'),
      _save(f'{cats}/cmyk.jpg', 'CMYK'),
      _save(f'{cats}/rgba.png', 'RGBA'),
      _save(f'{cats}/still.gif', 'P'),
      _save(f'{cats}/pillow_only.tiff', 'RGB', 'TIFF'),
      _save(f'{cats}/nested/deeper/UPPER.JPG', 'RGB', 'JPEG'),
  ]
  data = open(os.path.join(cats, 'cats.0.jpg'), 'rb').read()
  with open(os.path.join(cats, 'truncated.jpg'), 'wb') as f:
    f.write(data[: len(data) // 2])
  with open(os.path.join(cats, 'garbage.png'), 'wb') as f:
    f.write(b'this is not a png at all')
  open(os.path.join(cats, 'zero.jpg'), 'wb').close()
  for name in ('notes.txt', 'Thumbs.db', '.DS_Store', '._cats.1.jpg'):
    with open(os.path.join(cats, name), 'wb') as f:
      f.write(b'x')
  for f in os.listdir(os.path.join(root, 'test', 'dogs')):  # an empty class folder
    os.remove(os.path.join(root, 'test', 'dogs', f))
  return root, good


def test_messy_split_keeps_every_decodable_image_and_skips_the_rest(messy_folder, caplog):
  root, good = messy_folder
  with caplog.at_level('WARNING'):
    found = folders.read_split(root, 'train', ('cats', 'dogs'))
  assert len(found.paths) == 8 + len(good)
  assert set(good) <= set(found.paths)
  counts = {kind: len(paths) for kind, paths in found.skipped.items()}
  assert counts == {
      'corrupt or truncated image': 2,
      'empty file': 1,
      'not an image file': 2,
      'hidden file': 2,
  }
  assert 'skipped 7 files' in caplog.text and 'garbage.png' in caplog.text
  assert 'corrupt or truncated image: 2, empty file: 1' in caplog.text
  # Only Pillow reads TIFF: it is carried as PNG bytes, everything else as a path.
  inline = {p for p, b in zip(found.paths, found.inline) if b}
  assert inline == {good[4]}


def test_every_kept_image_reaches_the_model_as_rgb(messy_folder):
  root, good = messy_folder
  config = tiny_config(root, batch_size=4, **{'data.cache': False})
  pipe = input_pipeline.ImagePipeline(config, 'train', ('cats', 'dogs'))
  batches = list(pipe.eval_batches())
  images = np.concatenate([b['image'][b['mask'] == 1] for b in batches])
  assert images.shape == (14, 48, 48, 3)
  paths = list(folders.read_split(root, 'train', ('cats', 'dogs')).paths)
  gray = images[paths.index(good[0])].astype(int)
  assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 1  # grayscale became R = G = B
  # A whole epoch of training batches reads without error.
  assert sum(1 for _ in pipe.train_epoch(0)) == pipe.steps_per_epoch == 3


def test_empty_class_folder_is_a_warning_not_an_error(messy_folder, caplog):
  root, _ = messy_folder
  with caplog.at_level('WARNING'):
    info = input_pipeline.describe(tiny_config(root))
  assert info.num_examples['test'] == 2
  assert "class 'dogs' has no usable image" in caplog.text


def test_split_with_only_unreadable_files_is_an_error(tmp_path):
  root = make_image_folder(tmp_path, counts=(('train', 4), ('validation', 2), ('test', 2)))
  for name in ('cats', 'dogs'):
    directory = os.path.join(root, 'validation', name)
    for f in os.listdir(directory):
      with open(os.path.join(directory, f), 'wb') as out:
        out.write(b'\xff\xd8\xff broken')
  with pytest.raises(
      folders.DataError,
      match=r"Split 'validation' .* no usable image .*corrupt or truncated image: 2",
  ):
    input_pipeline.describe(tiny_config(root))


@pytest.fixture
def flat_folder(tmp_path):
  for i in range(20):
    for name, seed in (('cat', i), ('dog', 100 + i)):
      _save(str(tmp_path / f'{name}.{i}.jpg'), seed=seed)
  (tmp_path / 'readme.txt').write_text('Kaggle dogs vs cats')
  _save(str(tmp_path / '7.jpg'))  # Kaggle's unlabelled test images look so
  return str(tmp_path)


def test_flat_kaggle_layout_labels_from_names_and_a_fixed_split(flat_folder):
  config = tiny_config(flat_folder)
  info = input_pipeline.describe(config)
  assert info.class_names == ('cat', 'dog')
  assert info.num_examples == {'train': 32, 'validation': 4, 'test': 4}
  names = ('cat', 'dog')
  splits = {s: folders.read_split(flat_folder, s, names) for s in folders.FLAT_SPLITS}
  everything = [p for s in splits.values() for p in s.paths]
  assert len(set(everything)) == 40  # disjoint and complete
  for split in splits.values():
    for path, label in zip(split.paths, split.labels):
      assert os.path.basename(path).startswith(names[label])
  assert 'no label in file name' in splits['train'].skipped
  folders.read_split.cache_clear()
  again = folders.read_split(flat_folder, 'test', names)
  assert list(again.paths) == list(splits['test'].paths)  # deterministic


def test_flat_layout_with_an_unknown_split_name(flat_folder):
  config = tiny_config(flat_folder, **{'data.test_split': 'holdout'})
  with pytest.raises(folders.DataError, match="flat folder .* not 'holdout'"):
    input_pipeline.describe(config)


def test_folder_splits_take_tfds_style_slices_per_class(image_folder):
  names = ('cats', 'dogs')
  whole = folders.read_split(image_folder, 'train', names)
  first = folders.read_split(image_folder, 'train[:3]', names)
  rest = folders.read_split(image_folder, 'train[25%:]', names)
  assert np.bincount(first.labels).tolist() == [3, 3]  # 3 of each class
  assert np.bincount(rest.labels).tolist() == [9, 9]  # 12 per class, minus the first 3
  assert set(first.paths) <= set(whole.paths) and not set(first.paths) & set(rest.paths)


@pytest.mark.parametrize(
    'error, reason',
    [
        (PermissionError(errno.EACCES, 'Permission denied'), 'PermissionError: Permission denied'),
        (OSError(errno.EIO, 'Input/output error'), 'OSError: Input/output error'),
    ],
)
def test_a_file_that_cannot_be_read_is_an_error_naming_it(tmp_path, monkeypatch, error, reason):
  root = make_image_folder(tmp_path, counts=(('train', 4), ('validation', 2), ('test', 2)))
  # TensorFlow cannot decode TIFF, so the file reaches Pillow's check, as an unreadable one does.
  locked = _save(os.path.join(root, 'train', 'cats', 'locked.tiff'), fmt='TIFF')
  real_open = builtins.open

  def open_(file, *args, **kwargs):  # root reads any file whatever its mode: fail on purpose
    if os.fspath(file) == locked:
      raise error
    return real_open(file, *args, **kwargs)

  monkeypatch.setattr(builtins, 'open', open_)
  with pytest.raises(folders.DataError) as raised:
    folders.read_split(root, 'train', ('cats', 'dogs'))
  message = str(raised.value)
  assert f'Cannot read 1 image file(s), e.g. {locked!r} ({reason})' in message
  assert 'make them readable' in message and '\n' not in message


def test_a_dangling_link_is_an_error_and_a_corrupt_file_still_a_warning(tmp_path, caplog):
  root = make_image_folder(tmp_path, counts=(('train', 4), ('validation', 2), ('test', 2)))
  with open(os.path.join(root, 'train', 'dogs', 'broken.jpg'), 'wb') as f:
    f.write(b'\xff\xd8\xff broken')
  with caplog.at_level('WARNING'):
    found = folders.read_split(root, 'train', ('cats', 'dogs'))
  assert found.skipped == {'corrupt or truncated image': (f'{root}/train/dogs/broken.jpg',)}
  link = os.path.join(root, 'validation', 'cats', 'gone.jpg')
  os.symlink(os.path.join(root, 'nowhere.jpg'), link)
  with pytest.raises(
      folders.DataError, match=rf"e\.g\. '{link}' \(FileNotFoundError: No such file or directory\)"
  ):
    folders.read_split(root, 'validation', ('cats', 'dogs'))


def test_a_folder_that_cannot_be_listed_is_an_error(tmp_path, monkeypatch):
  root = make_image_folder(tmp_path, counts=(('train', 4), ('validation', 2), ('test', 2)))
  locked = os.path.join(root, 'train', 'dogs')
  real_scandir = os.scandir

  def scandir(path='.'):  # what os.walk lists with; root could list a chmod 000 folder
    if os.fspath(path) == locked:
      raise PermissionError(errno.EACCES, 'Permission denied', locked)
    return real_scandir(path)

  monkeypatch.setattr(os, 'scandir', scandir)
  with pytest.raises(
      folders.DataError, match=rf"Cannot list folder '{locked}' \(Permission denied\)"
  ):
    folders.read_split(root, 'train', ('cats', 'dogs'))
