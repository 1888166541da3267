"""Random affine augmentation on the device, at parity with Keras' ImageDataGenerator.

A pure function of a PRNG key and a batch: per-example parameters are drawn,
composed into one 3x3 matrix per image (rotation, shift, shear, zoom, flips)
and the image is resampled once (nearest or bilinear) with Keras' fill modes.
It runs inside the jitted train step, on whatever device trains.

Semantics follow Keras' `apply_affine_transform` (which calls
`scipy.ndimage.affine_transform`): the matrix maps output pixel coordinates to
input coordinates about the image centre; `theta` rotates content
counter-clockwise, shear is in degrees, zoom factors above 1 zoom out, flips
are applied after the affine part. One deliberate difference: Keras draws its
column shift from `height_shift_range` and its row shift from
`width_shift_range`; here `width_shift_range` moves columns and
`height_shift_range` rows. With equal ranges (as the tutorials use) the two are
the same distribution.
"""

import dataclasses
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp

from catsdogs_jax.registry import lookup

# Config fields that, when all zero / False, make augmentation the identity.
RANDOM_FIELDS = (
    'rotation_range',
    'width_shift_range',
    'height_shift_range',
    'shear_range',
    'zoom_range',
    'horizontal_flip',
    'vertical_flip',
)


def is_enabled(cfg) -> bool:
  return any(bool(cfg[f]) for f in RANDOM_FIELDS)


def random_parameters(key, batch_size: int, height: int, width: int, cfg) -> Dict[str, jnp.ndarray]:
  """Per-example transform parameters, drawn as ImageDataGenerator draws them."""
  keys = jax.random.split(key, 7)
  uniform = lambda k, bound: jax.random.uniform(k, (batch_size,), minval=-bound, maxval=bound)
  shift = lambda k, r, size: uniform(k, r) * (size if r < 1 else 1.0)  # fraction or pixels
  zoom = cfg.zoom_range
  flip = lambda k, on: (jax.random.uniform(k, (batch_size,)) < 0.5) & on
  return {
      'theta': uniform(keys[0], cfg.rotation_range),
      'tx': shift(keys[1], cfg.width_shift_range, width),  # columns
      'ty': shift(keys[2], cfg.height_shift_range, height),  # rows
      'shear': uniform(keys[3], cfg.shear_range),
      'zx': 1.0 + uniform(keys[4], zoom),
      'zy': 1.0 + uniform(keys[5], zoom),
      'flip_horizontal': flip(keys[6], bool(cfg.horizontal_flip)),
      'flip_vertical': flip(jax.random.fold_in(keys[6], 1), bool(cfg.vertical_flip)),
  }


def affine_matrix(params, height: int, width: int) -> jnp.ndarray:
  """[3, 3] map from output (col, row, 1) to input (col, row, 1), as Keras builds it."""
  theta, shear = jnp.deg2rad(params['theta']), jnp.deg2rad(params['shear'])
  one, zero = jnp.ones_like(theta), jnp.zeros_like(theta)
  mat = lambda rows: jnp.stack([jnp.stack(r) for r in rows])
  rotation = mat(
      [
          [jnp.cos(theta), -jnp.sin(theta), zero],
          [jnp.sin(theta), jnp.cos(theta), zero],
          [zero, zero, one],
      ]
  )
  shift = mat([[one, zero, params['tx']], [zero, one, params['ty']], [zero, zero, one]])
  shear_m = mat([[one, -jnp.sin(shear), zero], [zero, jnp.cos(shear), zero], [zero, zero, one]])
  zoom = mat([[params['zx'], zero, zero], [zero, params['zy'], zero], [zero, zero, one]])
  centre = jnp.array([[1.0, 0, (width - 1) / 2], [0, 1.0, (height - 1) / 2], [0, 0, 1.0]])
  uncentre = jnp.array([[1.0, 0, -(width - 1) / 2], [0, 1.0, -(height - 1) / 2], [0, 0, 1.0]])
  # Flips act on the transformed image, i.e. first on the output coordinates.
  flip_h = jnp.where(params['flip_horizontal'], -1.0, 1.0)
  flip_v = jnp.where(params['flip_vertical'], -1.0, 1.0)
  flips = jnp.array(
      [
          [flip_h, 0.0, (1 - flip_h) * (width - 1) / 2],
          [0.0, flip_v, (1 - flip_v) * (height - 1) / 2],
          [0.0, 0.0, 1.0],
      ]
  )
  return centre @ rotation @ shift @ shear_m @ zoom @ uncentre @ flips


def _clip(i, n: int):
  return jnp.clip(i, 0, n - 1)


def _reflect(i, n: int):
  # Half-sample symmetric: d c b a | a b c d | d c b a.
  i = jnp.mod(i, 2 * n)
  return jnp.where(i >= n, 2 * n - 1 - i, i)


def _wrap(c, n: int):
  # scipy's 'wrap' repeats with period n - 1, outside [0, n - 1] only.
  return jnp.where((c < 0) | (c > n - 1), jnp.mod(c, max(n - 1, 1)), c)


@dataclasses.dataclass(frozen=True)
class FillMode:
  """How a fill mode treats points outside the image (scipy's conventions)."""

  index: Callable  # (integer indices, n) -> indices in [0, n)
  coordinates: Optional[Callable] = None  # (coordinates, n) -> coordinates, before interpolating
  constant: bool = False  # points outside [0, n - 1] take cval


# config.augment.fill_mode -> its FillMode. Constant and wrap handle the outside
# before indexing, so their indices only need clipping.
FILL_MODES: Dict[str, FillMode] = {
    'nearest': FillMode(_clip),
    'constant': FillMode(_clip, constant=True),
    'reflect': FillMode(_reflect),
    'wrap': FillMode(_clip, coordinates=_wrap),
}


def _nearest_taps(c):
  return [(jnp.floor(c + 0.5).astype(jnp.int32), 1.0)]


def _bilinear_taps(c):
  low = jnp.floor(c)
  frac = c - low
  low = low.astype(jnp.int32)
  return [(low, 1.0 - frac), (low + 1, frac)]


# config.augment.interpolation -> continuous coordinates -> [(integer indices, weight)].
INTERPOLATIONS: Dict[str, Callable] = {'nearest': _nearest_taps, 'bilinear': _bilinear_taps}


def get_fill_mode(name: str) -> FillMode:
  return lookup(FILL_MODES, name, 'augment.fill_mode')


def get_interpolation(name: str) -> Callable:
  return lookup(INTERPOLATIONS, name, 'augment.interpolation')


def _sample_axis(c, n: int, mode: FillMode, taps: Callable):
  """For continuous coordinates `c` along an axis of size n: (indices, weights) pairs, validity."""
  valid = (c >= 0) & (c <= n - 1) if mode.constant else jnp.ones(c.shape, bool)
  if mode.coordinates is not None:
    c = mode.coordinates(c, n)
  return [(mode.index(i, n), w) for i, w in taps(c)], valid


def transform_image(
    image, matrix, fill_mode: str = 'nearest', cval: float = 0.0, interpolation: str = 'bilinear'
):
  """Resamples one [H, W, C] image through `matrix` (output -> input coordinates)."""
  mode, taps = get_fill_mode(fill_mode), get_interpolation(interpolation)
  height, width = image.shape[:2]
  rows, cols = jnp.meshgrid(
      jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing='ij'
  )
  src = matrix @ jnp.stack([cols.ravel(), rows.ravel(), jnp.ones(rows.size)])
  src_cols, src_rows = src[0].reshape(rows.shape), src[1].reshape(rows.shape)
  row_taps, row_valid = _sample_axis(src_rows, height, mode, taps)
  col_taps, col_valid = _sample_axis(src_cols, width, mode, taps)
  image = image.astype(jnp.float32)
  out = jnp.zeros((height, width, image.shape[-1]), jnp.float32)
  for r, wr in row_taps:
    for c, wc in col_taps:
      out = out + image[r, c] * jnp.expand_dims(wr * wc, -1)
  return jnp.where((row_valid & col_valid)[..., None], out, jnp.float32(cval))


def augment_batch(key, images, cfg):
  """Random affine augmentation of a [B, H, W, C] batch; float32 out, values in the input's range."""
  if not is_enabled(cfg):
    return images
  batch, height, width = images.shape[:3]
  params = random_parameters(key, batch, height, width, cfg)
  matrices = jax.vmap(lambda p: affine_matrix(p, height, width))(params)
  return jax.vmap(lambda im, m: transform_image(im, m, cfg.fill_mode, cfg.cval, cfg.interpolation))(
      images, matrices
  )
