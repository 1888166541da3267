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

Two torchvision augmentations for training from scratch on little data join them:

- a random resized crop (`crop_scale`, `crop_ratio`), boxes drawn as
  `RandomResizedCrop.get_params` draws them (its 10 attempts, then its centre
  crop). The crop acts first: it is one more factor of the same matrix (output
  pixel -> box pixel, torchvision's half-pixel-centre resize), so the image is
  still resampled once, and the Keras transforms then act on the resized crop.
  Where torchvision clamps samples at the box's edge, the half pixel outside it
  is read from the image (or the fill mode beyond the image).
- colour jitter (`brightness`, `contrast`, `saturation`), ColorJitter's factors
  and operations in a random order per image, on the resampled 0-255 image,
  clipped to [0, 255].
"""

import dataclasses
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp

from catsdogs_jax.registry import lookup

# Config fields of the resampled transforms; all zero / False / None: no resampling.
GEOMETRIC_FIELDS = (
    'rotation_range',
    'width_shift_range',
    'height_shift_range',
    'shear_range',
    'zoom_range',
    'horizontal_flip',
    'vertical_flip',
    'crop_scale',
)
# Colour jitter strengths; all zero: no jitter.
COLOUR_FIELDS = ('brightness', 'contrast', 'saturation')
# Config fields that, when all zero / False / None, make augmentation the identity.
RANDOM_FIELDS = GEOMETRIC_FIELDS + COLOUR_FIELDS


def is_enabled(cfg) -> bool:
  return any(bool(cfg[f]) for f in RANDOM_FIELDS)


def _is_geometric(cfg) -> bool:
  return any(bool(cfg[f]) for f in GEOMETRIC_FIELDS)


def _is_colour(cfg) -> bool:
  return any(bool(cfg[f]) for f in COLOUR_FIELDS)


def random_parameters(key, batch_size: int, height: int, width: int, cfg) -> Dict[str, jnp.ndarray]:
  """Per-example transform parameters, drawn as ImageDataGenerator draws them."""
  keys = jax.random.split(key, 7)
  uniform = lambda k, bound: jax.random.uniform(k, (batch_size,), minval=-bound, maxval=bound)
  shift = lambda k, r, size: uniform(k, r) * (size if r < 1 else 1.0)  # fraction or pixels
  zoom = cfg.zoom_range
  flip = lambda k, on: (jax.random.uniform(k, (batch_size,)) < 0.5) & on
  params = {
      'theta': uniform(keys[0], cfg.rotation_range),
      'tx': shift(keys[1], cfg.width_shift_range, width),  # columns
      'ty': shift(keys[2], cfg.height_shift_range, height),  # rows
      'shear': uniform(keys[3], cfg.shear_range),
      'zx': 1.0 + uniform(keys[4], zoom),
      'zy': 1.0 + uniform(keys[5], zoom),
      'flip_horizontal': flip(keys[6], bool(cfg.horizontal_flip)),
      'flip_vertical': flip(jax.random.fold_in(keys[6], 1), bool(cfg.vertical_flip)),
  }
  if cfg.crop_scale:  # its own key, so the draws above stay those of a config without it
    params['crop'] = random_crop_boxes(
        jax.random.fold_in(key, 2), batch_size, height, width, cfg.crop_scale, cfg.crop_ratio
    )
  return params


def random_crop_boxes(key, batch_size: int, height: int, width: int, scale, ratio, attempts=10):
  """[B, 4] int32 boxes (top, left, height, width), drawn as torchvision's RandomResizedCrop.

  Its `get_params`: an area fraction uniform in `scale`, an aspect ratio (w / h)
  log-uniform in `ratio`, sides rounded; the first of `attempts` draws that fits
  the image wins, placed uniformly inside it; if none fits, the centre crop of
  the whole image clipped to the ratio range. All attempts are drawn at once, so
  shapes stay fixed under jit.
  """
  k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
  shape = (batch_size, attempts)
  area = height * width * jax.random.uniform(k_area, shape, minval=scale[0], maxval=scale[1])
  log_ratio = jnp.log(jnp.asarray(ratio, jnp.float32))
  aspect = jnp.exp(jax.random.uniform(k_ratio, shape, minval=log_ratio[0], maxval=log_ratio[1]))
  w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = jnp.argmax(fits, axis=1)[:, None]
  found = fits.any(axis=1)
  # torchvision's fallback: the whole image, cut to the nearest allowed aspect ratio.
  if width / height < min(ratio):
    fallback_w, fallback_h = width, int(round(width / min(ratio)))
  elif width / height > max(ratio):
    fallback_w, fallback_h = int(round(height * max(ratio))), height
  else:
    fallback_w, fallback_h = width, height
  w = jnp.where(found, jnp.take_along_axis(w, first, 1)[:, 0], fallback_w)
  h = jnp.where(found, jnp.take_along_axis(h, first, 1)[:, 0], fallback_h)
  top = jnp.where(
      found,
      jax.random.randint(k_top, (batch_size,), 0, height - h + 1),
      (height - fallback_h) // 2,
  )
  left = jnp.where(
      found,
      jax.random.randint(k_left, (batch_size,), 0, width - w + 1),
      (width - fallback_w) // 2,
  )
  return jnp.stack([top, left, h, w], axis=-1)


def crop_matrix(box, height: int, width: int) -> jnp.ndarray:
  """[3, 3] map from output (col, row, 1) to the input pixel a box resized to height x width reads.

  As torchvision's resize (half-pixel centres, align_corners=False):
  input = box_start + (output + 0.5) * box_size / size - 0.5.
  """
  top, left, box_h, box_w = (box[i].astype(jnp.float32) for i in range(4))
  sx, sy = box_w / width, box_h / height
  one, zero = jnp.ones_like(sx), jnp.zeros_like(sx)
  return jnp.stack(
      [
          jnp.stack([sx, zero, left + 0.5 * sx - 0.5]),
          jnp.stack([zero, sy, top + 0.5 * sy - 0.5]),
          jnp.stack([zero, zero, one]),
      ]
  )


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
  matrix = centre @ rotation @ shift @ shear_m @ zoom @ uncentre @ flips
  if 'crop' in params:  # the crop first: the transforms above act on the resized box
    matrix = crop_matrix(params['crop'], height, width) @ matrix
  return matrix


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


# ----- colour jitter (torchvision's ColorJitter; images on the 0-255 scale)

_GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma)


def _grey(image):
  """[H, W, C] -> [H, W, 1] luma; a one-channel image is its own."""
  if image.shape[-1] == 1:
    return image
  r, g, b = (image[..., i : i + 1] for i in range(3))
  return r * _GREY_WEIGHTS[0] + g * _GREY_WEIGHTS[1] + b * _GREY_WEIGHTS[2]


def _blend(image, other, factor, bound: float):
  return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, bound)


def adjust_brightness(image, factor, bound: float = 255.0):
  """torchvision's adjust_brightness: scale the pixels (a blend with black)."""
  return jnp.clip(image * factor, 0.0, bound)


def adjust_contrast(image, factor, bound: float = 255.0):
  """torchvision's adjust_contrast: a blend with the mean luma of the image."""
  return _blend(image, jnp.mean(_grey(image)), factor, bound)


def adjust_saturation(image, factor, bound: float = 255.0):
  """torchvision's adjust_saturation: a blend with the image's luma (one channel: unchanged)."""
  if image.shape[-1] == 1:
    return image
  return _blend(image, _grey(image), factor, bound)


# config.augment field -> its adjustment of one [H, W, C] image by a factor.
COLOUR_ADJUSTMENTS: Dict[str, Callable] = {
    'brightness': adjust_brightness,
    'contrast': adjust_contrast,
    'saturation': adjust_saturation,
}


def random_colour_parameters(key, batch_size: int, cfg) -> Dict[str, jnp.ndarray]:
  """ColorJitter's draws per example: each enabled strength s gives a factor uniform in
  [max(0, 1 - s), 1 + s]; 'order' is a random permutation of the enabled adjustments."""
  names = [f for f in COLOUR_FIELDS if cfg[f]]
  keys = jax.random.split(key, len(names) + 1)
  params = {
      name: jax.random.uniform(
          k, (batch_size,), minval=max(0.0, 1.0 - cfg[name]), maxval=1.0 + cfg[name]
      )
      for name, k in zip(names, keys[1:])
  }
  orders = jax.vmap(lambda k: jax.random.permutation(k, len(names)))(
      jax.random.split(keys[0], batch_size)
  )
  return {'factors': params, 'order': orders}


def jitter_image(image, factors: Dict[str, jnp.ndarray], order):
  """Applies the adjustments in `factors` (name -> factor) to one image, `order`[i] the i-th."""
  # One branch per adjustment, numbered as `order` numbers them (a select under vmap).
  branches = [lambda x, n=n: COLOUR_ADJUSTMENTS[n](x, factors[n]) for n in factors]
  for step in range(len(branches)):
    image = jax.lax.switch(order[step], branches, image)
  return image


def augment_batch(key, images, cfg):
  """Random augmentation of a [B, H, W, C] batch; float32 out, values in the input's range.

  The geometric transforms (one resampling), then the colour jitter.
  """
  if not is_enabled(cfg):
    return images
  batch, height, width = images.shape[:3]
  if _is_geometric(cfg):
    params = random_parameters(key, batch, height, width, cfg)
    matrices = jax.vmap(lambda p: affine_matrix(p, height, width))(params)
    images = jax.vmap(
        lambda im, m: transform_image(im, m, cfg.fill_mode, cfg.cval, cfg.interpolation)
    )(images, matrices)
  images = images.astype(jnp.float32)
  if _is_colour(cfg):  # its own key, so the geometric draws stay those of a config without it
    colour = random_colour_parameters(jax.random.fold_in(key, 3), batch, cfg)
    images = jax.vmap(jitter_image)(images, colour['factors'], colour['order'])
  return images
