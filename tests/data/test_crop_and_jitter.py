"""Random resized crop and colour jitter: parity with torchvision, identity at the defaults."""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from catsdogs_jax.data import augment
from catsdogs_jax.training import config_checks
from configs import default, small_cnn_aug

from conftest import SHARED_DATA, override

HERE = os.path.dirname(os.path.abspath(__file__))
IDENTITY = dict(
    theta=0.0, tx=0.0, ty=0.0, shear=0.0, zx=1.0, zy=1.0, flip_horizontal=False, flip_vertical=False
)


def _photo(size=(72, 64)):
  """A real photo (W x H), float32 0-255, [H, W, 3]."""
  path = os.path.join(SHARED_DATA, 'train', 'cats', 'cat.1.jpg')
  if not os.path.exists(path):
    pytest.skip('the shared cats_and_dogs_small photos are not here')
  with Image.open(path) as im:
    return np.asarray(im.convert('RGB').resize(size, Image.BILINEAR), np.float32)


def _chw(image):
  torch = pytest.importorskip('torch')
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0)))


def _hwc(tensor):
  return np.moveaxis(tensor.numpy(), 0, -1)


def _augment_config(**fields):
  return override(default.get_config(), **{f'augment.{k}': v for k, v in fields.items()}).augment


# ----- identity at the defaults


def test_new_fields_at_their_defaults_keep_todays_augmentation_bit_for_bit():
  # Written by the augmentation code before the crop and the jitter existed (jitted, on a CPU).
  before = np.load(os.path.join(HERE, 'augment_before_crop_and_jitter.npz'))
  for fill_mode in ('nearest', 'constant'):
    cfg = override(small_cnn_aug.get_config(), **{'augment.fill_mode': fill_mode}).augment
    assert cfg.crop_scale is None and cfg.brightness == cfg.contrast == cfg.saturation == 0
    run = jax.jit(lambda k, x, cfg=cfg: augment.augment_batch(k, x, cfg))
    np.testing.assert_array_equal(
        np.asarray(run(jax.random.PRNGKey(0), before['images'])), before[fill_mode]
    )
  params = augment.random_parameters(jax.random.PRNGKey(0), 2, 16, 16, cfg)
  assert 'crop' not in params


def test_each_new_field_alone_turns_augmentation_on():
  assert not augment.is_enabled(default.get_config().augment)
  for field, value in (
      ('crop_scale', (0.08, 1.0)),
      ('brightness', 0.2),
      ('contrast', 0.2),
      ('saturation', 0.2),
  ):
    assert field in augment.RANDOM_FIELDS
    assert augment.is_enabled(_augment_config(**{field: value})), field


# ----- random resized crop


@pytest.mark.parametrize(
    'box',
    [
        (0, 0, 64, 72),  # the whole image
        (10, 7, 40, 33),  # inside, upsampled
        (0, 20, 64, 52),  # touching top, bottom and right
        (30, 0, 34, 9),  # a thin box in the corner
    ],
)
def test_crop_matches_torchvision_resized_crop_on_a_photo(box):
  functional = pytest.importorskip('torchvision.transforms.v2.functional')
  image = _photo()
  h, w = image.shape[:2]
  expected = _hwc(
      functional.resized_crop(
          _chw(image),
          *box,
          size=[h, w],
          interpolation=functional.InterpolationMode.BILINEAR,
          antialias=False,
      )
  )
  params = {k: jnp.asarray(v) for k, v in IDENTITY.items()}
  params['crop'] = jnp.asarray(box, jnp.int32)
  ours = np.asarray(
      augment.transform_image(jnp.asarray(image), augment.affine_matrix(params, h, w), 'nearest')
  )
  # torchvision clamps samples to the box, we read the half pixel beyond it: only the outputs
  # that sample within half a pixel of the box's edge differ.
  inside = _inside(box, h, w)
  np.testing.assert_allclose(ours[inside], expected[inside], atol=2e-3)
  assert np.abs(ours - expected).mean() < 1.0  # grey levels


def _inside(box, height, width):
  """The outputs whose bilinear samples lie inside the box (no clamping at its edges)."""
  edges = []
  for box_size, size in ((box[2], height), (box[3], width)):
    margin = math.ceil(0.5 * size / box_size - 0.5)  # sample (o + 0.5) * box / size - 0.5 < 0
    edges.append(slice(margin, size - margin))
  return tuple(edges)


def test_crop_acts_before_the_flip_in_the_same_matrix():
  functional = pytest.importorskip('torchvision.transforms.v2.functional')
  image = _photo()
  h, w = image.shape[:2]
  box = (5, 12, 41, 37)
  expected = _hwc(
      functional.horizontal_flip(
          functional.resized_crop(
              _chw(image),
              *box,
              size=[h, w],
              interpolation=functional.InterpolationMode.BILINEAR,
              antialias=False,
          )
      )
  )
  params = {k: jnp.asarray(v) for k, v in {**IDENTITY, 'flip_horizontal': True}.items()}
  params['crop'] = jnp.asarray(box, jnp.int32)
  ours = np.asarray(
      augment.transform_image(jnp.asarray(image), augment.affine_matrix(params, h, w), 'nearest')
  )
  inside = _inside(box, h, w)
  np.testing.assert_allclose(ours[inside], expected[inside], atol=2e-3)


def _torchvision_boxes(n, height, width, scale, ratio):
  torch = pytest.importorskip('torch')
  transforms = pytest.importorskip('torchvision.transforms')
  torch.manual_seed(0)
  image = torch.zeros(1, height, width)
  return np.array(
      [transforms.RandomResizedCrop.get_params(image, scale, ratio) for _ in range(n)], np.int64
  )


@pytest.mark.parametrize(
    'height, width, scale, ratio',
    [
        (150, 150, (0.08, 1.0), (3 / 4, 4 / 3)),  # torchvision's defaults
        (48, 64, (0.6, 1.0), (0.5, 2.0)),  # large boxes: many attempts miss, some fall back
    ],
)
def test_crop_boxes_are_drawn_as_torchvision_draws_them(height, width, scale, ratio):
  stats = pytest.importorskip('scipy.stats')
  n = 6000
  theirs = _torchvision_boxes(n, height, width, scale, ratio)
  ours = np.asarray(
      augment.random_crop_boxes(jax.random.PRNGKey(0), n, height, width, scale, ratio)
  ).astype(np.int64)
  for boxes in (ours, theirs):
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
  area = lambda b: b[:, 2] * b[:, 3] / (height * width)
  log_aspect = lambda b: np.log(b[:, 3] / b[:, 2])
  # Where the box sits in the room it has (0: top / left, 1: bottom / right).
  place = lambda b, i, size: b[:, i] / np.maximum(size - b[:, 2 + i], 1)
  for name, f in (
      ('area', area),
      ('log aspect', log_aspect),
      ('row place', lambda b: place(b, 0, height)),
      ('column place', lambda b: place(b, 1, width)),
  ):
    assert stats.ks_2samp(f(ours), f(theirs)).pvalue > 1e-3, name
  # The configured ranges, up to rounding the sides to pixels.
  slack = 2.0 / min(height, width)
  assert scale[0] - 2 * slack < area(ours).min() and area(ours).max() <= 1.0
  assert np.log(ratio[0]) - 4 * slack < log_aspect(ours).min()
  assert log_aspect(ours).max() < np.log(ratio[1]) + 4 * slack
  whole = (0, 0, height, width)  # drawn, or the fallback when no attempt fits
  assert np.mean((ours == whole).all(1)) == pytest.approx(
      np.mean((theirs == whole).all(1)), abs=0.01
  )


def test_crop_falls_back_to_torchvisions_centre_crop():
  # No box of the whole area has an aspect ratio in [2, 3] on a square: every draw falls back.
  theirs = _torchvision_boxes(20, 50, 50, (1.0, 1.0), (2.0, 3.0))
  ours = np.asarray(
      augment.random_crop_boxes(jax.random.PRNGKey(0), 20, 50, 50, (1.0, 1.0), (2, 3))
  )
  np.testing.assert_array_equal(ours, theirs)
  assert tuple(theirs[0]) == (12, 0, 25, 50)


# ----- colour jitter


def _torchvision_adjustment(name):
  functional = pytest.importorskip('torchvision.transforms.v2.functional')
  return getattr(functional, f'adjust_{name}')


@pytest.mark.parametrize('name', augment.COLOUR_FIELDS)
@pytest.mark.parametrize('factor', [0.0, 0.35, 1.0, 1.6])
@pytest.mark.parametrize('channels', [3, 1])
def test_colour_adjustments_match_torchvision(name, factor, channels):
  image = _photo((40, 32))
  if channels == 1:
    image = image[..., :1]
  expected = _hwc(_torchvision_adjustment(name)(_chw(image / 255.0), factor))
  ours = augment.COLOUR_ADJUSTMENTS[name](jnp.asarray(image), factor)
  np.testing.assert_allclose(np.asarray(ours) / 255.0, expected, atol=2e-6)


def test_jitter_applies_its_adjustments_in_the_drawn_order():
  image = _photo((40, 32))
  factors = {'brightness': 1.5, 'contrast': 0.4, 'saturation': 1.8}
  names = list(factors)
  for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0]):
    expected = _chw(image / 255.0)
    for i in order:
      expected = _torchvision_adjustment(names[i])(expected, factors[names[i]])
    ours = augment.jitter_image(
        jnp.asarray(image), {k: jnp.float32(v) for k, v in factors.items()}, jnp.asarray(order)
    )
    np.testing.assert_allclose(np.asarray(ours) / 255.0, _hwc(expected), atol=2e-6)


def test_jitter_factors_and_orders_are_drawn_as_color_jitter_draws_them():
  n = 20_000
  cfg = _augment_config(brightness=0.4, contrast=1.5, saturation=0.2)
  p = jax.device_get(augment.random_colour_parameters(jax.random.PRNGKey(0), n, cfg))
  for name, low, high in (
      ('brightness', 0.6, 1.4),
      ('contrast', 0.0, 2.5),
      ('saturation', 0.8, 1.2),
  ):
    f = p['factors'][name]
    assert (
        low <= f.min() < low + 0.01 * (high - low) and high - 0.01 * (high - low) < f.max() <= high
    )
    assert abs(f.mean() - (low + high) / 2) < 0.01 * (high - low)
  orders, counts = np.unique(p['order'], axis=0, return_counts=True)
  assert len(orders) == math.factorial(3) and counts.min() > n / 6 * 0.9  # every order, as often
  only_contrast = augment.random_colour_parameters(
      jax.random.PRNGKey(0), 4, _augment_config(contrast=0.3)
  )
  assert list(only_contrast['factors']) == ['contrast']  # the enabled adjustments only


def test_jitter_alone_does_not_resample_and_stays_in_range():
  images = np.random.default_rng(0).integers(1, 256, (6, 12, 12, 3), dtype=np.uint8)
  cfg = _augment_config(brightness=0.5)
  out = np.asarray(
      jax.jit(lambda k, x: augment.augment_batch(k, x, cfg))(jax.random.PRNGKey(0), images)
  )
  assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255
  unclipped = out < 255
  ratios = [
      np.unique(np.round(o[u] / x[u], 4))
      for o, x, u in zip(out, images.astype(np.float32), unclipped)
  ]
  assert all(len(r) == 1 and 0.5 <= r[0] <= 1.5 for r in ratios)  # one factor per image
  assert len({r[0] for r in ratios}) == 6


def test_crop_and_jitter_draw_per_example_and_per_key():
  cfg = _augment_config(crop_scale=(0.2, 1.0), brightness=0.3, contrast=0.3, saturation=0.3)
  images = np.repeat(np.random.default_rng(0).integers(0, 256, (1, 20, 20, 3), np.uint8), 4, 0)
  run = jax.jit(lambda k, x: augment.augment_batch(k, x, cfg))
  a = np.asarray(run(jax.random.PRNGKey(1), images))
  np.testing.assert_array_equal(a, np.asarray(run(jax.random.PRNGKey(1), images)))
  assert not np.allclose(a, np.asarray(run(jax.random.PRNGKey(2), images)))
  assert len({a[i].tobytes() for i in range(4)}) == 4
  assert 0 <= a.min() and a.max() <= 255


# ----- config checks


@pytest.mark.parametrize(
    'field, value, message',
    [
        (
            'augment.crop_scale',
            (0.5, 0.2),
            r'crop_scale=\(0.5, 0.2\) must be .*0 < min <= max <= 1',
        ),
        ('augment.crop_scale', (0.0, 1.0), r'crop_scale=\(0.0, 1.0\) must be'),
        ('augment.crop_scale', (0.5, 1.5), r'crop_scale=\(0.5, 1.5\) must be'),
        ('augment.crop_scale', (0.5,), r'crop_scale=\(0.5,\) must be \(min, max\)'),
        ('augment.crop_ratio', (2.0, 1.0), r'crop_ratio=\(2.0, 1.0\) must be .*0 < min <= max'),
        ('augment.crop_ratio', (0.0, 1.0), r'crop_ratio=\(0.0, 1.0\) must be'),
        ('augment.brightness', -0.1, r'config.augment.brightness must be >= 0, got -0.1'),
        ('augment.contrast', -1.0, r'config.augment.contrast must be >= 0'),
        ('augment.saturation', -0.5, r'config.augment.saturation must be >= 0'),
    ],
)
def test_invalid_crop_and_jitter_settings_are_named(field, value, message):
  config = override(default.get_config(), **{field: value})
  with pytest.raises(config_checks.ConfigError, match=message) as raised:
    config_checks.validate_config(config, num_devices=4)
  assert '\n' not in str(raised.value)


def test_valid_crop_and_jitter_settings_pass():
  config = override(
      default.get_config(),
      **{
          'augment.crop_scale': (0.08, 1.0),
          'augment.crop_ratio': (0.5, 2.0),
          'augment.brightness': 0.4,
          'augment.contrast': 0.4,
          'augment.saturation': 0.4,
      },
  )
  config_checks.validate_config(config, num_devices=4)
