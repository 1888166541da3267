"""Shifted copies of a test split: the same photos framed closer, at low resolution or recompressed.

A model is only as good as it is on photos unlike its training set's. Evaluating a
copy of the test split under a simple, known shift measures that, beside plain test
accuracy:

  python -m catsdogs_jax.tools.shifted --source=DATA/test --dest=runs/shifted --shift=closer
  python main.py --workdir=runs/x --mode=evaluate \\
      --config=configs/run.py:runs/x --config.data.dataset=folder:runs/shifted/closer

Each shift is a pure function of a photo (Pillow, no randomness), so two copies are
identical and a result can be re-run. The copy keeps the split's `label/` folders
under `test/`, so the command above reads it as the run's test split.
"""

import dataclasses
import io
import os
from typing import Callable, Dict, List, Optional

from PIL import Image

from catsdogs_jax.registry import lookup


@dataclasses.dataclass(frozen=True)
class Shift:
  """One way to change a photo; the steps apply in this order, each when set."""

  crop: float = (
      1.0  # keep the centred square-ish box of this fraction of each side (closer framing)
  )
  max_side: Optional[int] = None  # downscale so the longer side is at most this (box filter)
  jpeg_quality: Optional[int] = None  # re-encode as JPEG at this quality (1-95)
  description: str = ''

  def apply(self, image: Image.Image) -> Image.Image:
    image = image.convert('RGB')
    if self.crop < 1.0:
      w, h = image.size
      cw, ch = max(1, round(w * self.crop)), max(1, round(h * self.crop))
      left, top = (w - cw) // 2, (h - ch) // 2
      image = image.crop((left, top, left + cw, top + ch))
    if self.max_side and max(image.size) > self.max_side:
      scale = self.max_side / max(image.size)
      size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
      image = image.resize(size, Image.Resampling.BOX)
    if self.jpeg_quality is not None:
      buffer = io.BytesIO()
      image.save(buffer, format='JPEG', quality=self.jpeg_quality)
      buffer.seek(0)
      image = Image.open(buffer)
      image.load()
    return image


# --shift -> its Shift. The photos of cats_and_dogs_small are about 350-500 px per side.
SHIFTS: Dict[str, Shift] = {
    'closer': Shift(
        crop=0.6, description='centre crop of 60% of each side: the animal framed closer'
    ),
    'low_resolution': Shift(max_side=48, description='longer side 48 px, then resized as usual'),
    'jpeg_q10': Shift(jpeg_quality=10, description='JPEG re-compression at quality 10'),
}


def get_shift(name: str) -> Shift:
  return lookup(SHIFTS, name, '--shift')


def write_shifted_split(
    source: str, dest: str, shift: Shift, progress: Optional[Callable[[int], None]] = None
) -> List[str]:
  """Writes every image of `source/<label>/` shifted into `dest/test/<label>/` (PNG, lossless
  after the shift, so nothing but the shift changes them); returns the written paths.

  Refuses a `dest` that already holds files: a copy is never mixed with an older one.
  """
  from catsdogs_jax.data import folders

  if not os.path.isdir(source):
    raise FileNotFoundError(
        f'{source!r} is not a folder: pass the split folder itself (e.g. DATA/test), whose '
        'sub-folders are the labels.'
    )
  labels = sorted(d for d in os.listdir(source) if os.path.isdir(os.path.join(source, d)))
  if not labels:
    raise FileNotFoundError(f'{source!r} has no label folders (e.g. {source}/cats/).')
  target = os.path.join(dest, 'test')
  if os.path.isdir(target) and os.listdir(target):
    raise FileExistsError(
        f'{target!r} already holds files; remove it or choose another --dest (an old copy is '
        'never overwritten).'
    )
  written = []
  for label in labels:
    os.makedirs(os.path.join(target, label), exist_ok=True)
    names = sorted(os.listdir(os.path.join(source, label)))
    for name in names:
      if not name.lower().endswith(folders.IMAGE_EXTENSIONS):
        continue
      with Image.open(os.path.join(source, label, name)) as image:
        shifted = shift.apply(image)
      path = os.path.join(target, label, os.path.splitext(name)[0] + '.png')
      shifted.save(path)
      written.append(path)
      if progress is not None:
        progress(len(written))
  return written


def main(argv):
  from absl import flags

  del argv
  FLAGS = flags.FLAGS
  names = FLAGS.shift or list(SHIFTS)
  for name in names:
    shift = get_shift(name)
    dest = os.path.join(FLAGS.dest, name)
    written = write_shifted_split(FLAGS.source, dest, shift)
    print(f'{name}: {len(written)} images in {dest}/test ({shift.description})')


if __name__ == '__main__':
  from absl import app, flags

  flags.DEFINE_string('source', None, 'A split folder (label sub-folders), e.g. DATA/test.')
  flags.DEFINE_string('dest', None, 'Where the copies go: DEST/<shift>/test/<label>/.')
  flags.DEFINE_multi_enum('shift', [], list(SHIFTS), 'Shifts to write (default: all).')
  flags.mark_flags_as_required(['source', 'dest'])
  app.run(main)
