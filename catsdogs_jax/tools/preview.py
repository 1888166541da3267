"""A PNG grid of one training image and random augmentations of it, to check the settings by eye."""

import os

import jax
import numpy as np
from absl import logging
from PIL import Image

from catsdogs_jax.data import augment

PREVIEW_FILE = 'augment_preview.png'


def augmentation_grid(
    image: np.ndarray, cfg, num: int = 8, seed: int = 0, columns: int = 3, gap: int = 4
) -> np.ndarray:
  """The original (top left) then `num` augmentations, tiled as a uint8 [H', W', C] grid."""
  batch = np.repeat(image[None], num, axis=0)
  augmented = jax.jit(lambda k, x: augment.augment_batch(k, x, cfg))(
      jax.random.PRNGKey(seed), batch
  )
  tiles = [image] + list(np.clip(np.asarray(augmented), 0, 255).round().astype(np.uint8))
  h, w, c = image.shape
  rows = -(-len(tiles) // columns)
  grid = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, c), 255, np.uint8)
  for i, tile in enumerate(tiles):
    r, col = divmod(i, columns)
    grid[r * (h + gap) : r * (h + gap) + h, col * (w + gap) : col * (w + gap) + w] = tile
  return grid


def write_preview(config, workdir: str, num: int = 8) -> str:
  """Writes `workdir/augment_preview.png` from the first image of the training split."""
  from catsdogs_jax.data import input_pipeline

  info = input_pipeline.describe(config)
  pipeline = input_pipeline.ImagePipeline(config, config.data.train_split, info.class_names)
  image = next(pipeline.eval_batches())['image'][0]
  if not augment.is_enabled(config.augment):
    logging.warning('config.augment has every random transform off: the preview shows copies.')
  grid = augmentation_grid(image, config.augment, num=num, seed=config.seed)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, PREVIEW_FILE)
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
  logging.info('wrote %s (the original, then %d augmentations)', path, num)
  return path
