"""Shifted copies of a test split: each shift does what it says to real photos, and nothing else."""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from catsdogs_jax.tools import shifted

from conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(
    not os.path.isdir(SHARED_DATA), reason='cats_and_dogs_small is absent'
)


@pytest.fixture(scope='module')
def split(tmp_path_factory):
  """Three cats and two dogs of the shared test split, and a file that is no image."""
  root = tmp_path_factory.mktemp('split')
  for label, count in (('cats', 3), ('dogs', 2)):
    os.makedirs(root / label)
    names = sorted(os.listdir(os.path.join(SHARED_DATA, 'test', label)))[:count]
    for name in names:
      shutil.copy(os.path.join(SHARED_DATA, 'test', label, name), root / label / name)
  (root / 'cats' / 'notes.txt').write_text('not a photo')
  return str(root)


def _photos(split):
  for label in ('cats', 'dogs'):
    for name in sorted(os.listdir(os.path.join(split, label))):
      if name.endswith('.jpg'):
        with Image.open(os.path.join(split, label, name)) as image:
          yield label, name, np.asarray(image.convert('RGB'))


def _shifted(dest, label, name):
  with Image.open(os.path.join(dest, 'test', label, name[: -len('.jpg')] + '.png')) as image:
    return np.asarray(image)


def test_closer_is_the_centre_crop_of_each_photo(split, tmp_path):
  written = shifted.write_shifted_split(split, str(tmp_path), shifted.get_shift('closer'))
  assert len(written) == 5  # notes.txt skipped
  for label, name, photo in _photos(split):
    h, w = photo.shape[:2]
    ch, cw = round(0.6 * h), round(0.6 * w)
    top, left = (h - ch) // 2, (w - cw) // 2
    np.testing.assert_array_equal(
        _shifted(tmp_path, label, name), photo[top : top + ch, left : left + cw]
    )


def test_low_resolution_keeps_the_colours_at_48_px(split, tmp_path):
  shifted.write_shifted_split(split, str(tmp_path), shifted.get_shift('low_resolution'))
  for label, name, photo in _photos(split):
    small = _shifted(tmp_path, label, name)
    assert max(small.shape[:2]) == 48
    assert small.shape[1] / small.shape[0] == pytest.approx(
        photo.shape[1] / photo.shape[0], rel=0.05
    )
    # A box filter averages: the mean colour stays, the detail goes.
    np.testing.assert_allclose(small.mean(axis=(0, 1)), photo.mean(axis=(0, 1)), atol=2)
    grain = lambda x: np.abs(np.diff(x.astype(np.float32), axis=1)).mean()
    assert grain(small) > grain(photo)  # each pixel now spans many of the photo's


def test_jpeg_recompression_is_visible_and_the_same_every_time(split, tmp_path):
  shift = shifted.get_shift('jpeg_q10')
  shifted.write_shifted_split(split, str(tmp_path / 'a'), shift)
  shifted.write_shifted_split(split, str(tmp_path / 'b'), shift)
  for label, name, photo in _photos(split):
    a, b = _shifted(tmp_path / 'a', label, name), _shifted(tmp_path / 'b', label, name)
    np.testing.assert_array_equal(a, b)
    assert a.shape == photo.shape
    error = np.abs(a.astype(np.float32) - photo).mean()
    assert 2 < error < 20, error  # blocky, still the same photo


def test_a_copy_is_never_written_over_and_bad_sources_are_named(split, tmp_path):
  shifted.write_shifted_split(split, str(tmp_path), shifted.get_shift('closer'))
  with pytest.raises(FileExistsError, match=r'already holds files; remove it'):
    shifted.write_shifted_split(split, str(tmp_path), shifted.get_shift('jpeg_q10'))
  assert len(os.listdir(tmp_path / 'test' / 'cats')) == 3
  with pytest.raises(FileNotFoundError, match=r'is not a folder: pass the split folder'):
    shifted.write_shifted_split(str(tmp_path / 'nowhere'), str(tmp_path / 'x'), shifted.Shift())
  with pytest.raises(FileNotFoundError, match=r'has no label folders'):
    shifted.write_shifted_split(os.path.join(split, 'cats'), str(tmp_path / 'y'), shifted.Shift())
  with pytest.raises(ValueError, match=r"Unknown --shift 'closr'; choose one of: closer, "):
    shifted.get_shift('closr')
