"""The record of one published weight set; each model file lists its own sets beside it.

A weight set names everything needed to start a model from it without
guessing: where the file comes from (an installed package's file, or an
official URL), the checksum its publisher gives, the format our converter reads,
and how the images it was trained on were prepared. `catsdogs_jax.weights.pretrained`
fetches, checks, converts and caches them (`config.init_from='pretrained:NAME'`).
"""

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class WeightSet:
  name: str  # what init_from='pretrained:NAME' names
  model: str  # our model name (catsdogs_jax.models.MODELS)
  format: str  # converter: 'torch' (.pth) or 'keras_h5'
  file: str  # the file's own name
  checksum: str  # 'sha256:HEX' (whole, or the prefix torchvision publishes) or 'md5:HEX' (Keras)
  preprocess: str  # config.data.preprocess the weights were trained with
  input_size: int  # the image size they were trained and evaluated at
  interpolation: str  # resize method of their evaluation (config.data.resize_method)
  crop_fraction: float  # centre crop of their evaluation (TF and torchvision: 0.875)
  licence: str
  include_top: bool = True  # the file holds the ImageNet classifier
  num_classes: Optional[int] = 1000
  url: Optional[str] = None  # official download address...
  package: Optional[str] = None  # ...or the pip distribution that ships the file
  package_path: Optional[str] = None  # the file inside that distribution

  def __post_init__(self):
    if (self.url is None) == (self.package is None):
      raise ValueError(f'Weight set {self.name!r}: give exactly one of url and package.')
    algorithm, _, digest = self.checksum.partition(':')
    if algorithm not in ('sha256', 'md5') or len(digest) < 8:
      raise ValueError(f'Weight set {self.name!r}: checksum must be "sha256:HEX" or "md5:HEX".')

  @property
  def pip_install(self) -> str:
    return f'pip install {self.package}' if self.package else ''


KERAS_APPLICATIONS = 'https://storage.googleapis.com/tensorflow/keras-applications/'
TORCHVISION = 'https://download.pytorch.org/models/'
