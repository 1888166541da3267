"""PyTorch state dicts (torchvision, timm, EfficientNet-PyTorch; .pth or .safetensors) to our
parameter trees."""

import dataclasses
import re
from typing import Callable, Dict, Optional, Tuple

import numpy as np
from flax import traverse_util

from catsdogs_jax.weights.converted import ConversionError, Mapping, unchanged, write


def _conv_kernel(w):
  return np.transpose(w, (2, 3, 1, 0))  # torch OIHW -> flax HWIO


def _dense_kernel(w):
  return np.transpose(w)  # torch (out, in) -> flax (in, out)


def _fc1_kernel(w):
  """torchvision flattens (C, H, W) after its 7x7 pool, we flatten (H, W, C): permute rows."""
  out_features, in_features = w.shape
  w = w.reshape(out_features, 512, -1)
  kernel = np.empty((w.shape[2], 512, out_features), w.dtype)
  # In blocks of outputs: one transpose of VGG's whole 4096 x 25088 matrix is 2-4x slower.
  for start in range(0, out_features, 64):
    kernel[..., start : start + 64] = w[start : start + 64].transpose(2, 1, 0)
  return kernel.reshape(in_features, out_features)


def torch_vgg_mapping(abstract_variables) -> Mapping:
  """torchvision VGG keys: features.<i> for convs (relu and pool between), classifier.0/3/6."""
  mapping, index = {}, 0
  names = [n for n in abstract_variables['params'] if n.startswith('block')]
  for block in sorted({n.split('_')[0] for n in names}):
    convs = sorted(n for n in names if n.startswith(block + '_'))
    for name in convs:
      mapping[('params', name, 'kernel')] = (f'features.{index}.weight', _conv_kernel)
      mapping[('params', name, 'bias')] = (f'features.{index}.bias', unchanged)
      index += 2  # conv, relu
    index += 1  # max-pool
  for name, i, kernel in (
      ('fc1', 0, _fc1_kernel),
      ('fc2', 3, _dense_kernel),
      ('predictions', 6, _dense_kernel),
  ):
    if name in abstract_variables['params']:
      mapping[('params', name, 'kernel')] = (f'classifier.{i}.weight', kernel)
      mapping[('params', name, 'bias')] = (f'classifier.{i}.bias', unchanged)
  return mapping


def torch_efficientnet_mapping(abstract_variables) -> Mapping:
  """EfficientNet-PyTorch keys (lukemelas' layout, also the Lite weight packages').

  _conv_stem/_bn0, then _blocks.N (numbered through all stages) with _expand_conv/_bn0,
  _depthwise_conv/_bn1, _se_reduce, _se_expand, _project_conv/_bn2; _conv_head/_bn1, _fc.
  """
  layers = {
      'stem_conv': '_conv_stem',
      'stem_bn': '_bn0',
      'top_conv': '_conv_head',
      'top_bn': '_bn1',
      'predictions': '_fc',
  }
  parts = {
      'expand_conv': '_expand_conv',
      'expand_bn': '_bn0',
      'dwconv': '_depthwise_conv',
      'bn': '_bn1',
      'se_reduce': '_se_reduce',
      'se_expand': '_se_expand',
      'project_conv': '_project_conv',
      'project_bn': '_bn2',
  }
  blocks = sorted(
      {
          m.group(1, 2)
          for name in abstract_variables['params']
          if (m := re.fullmatch(r'block(\d+)([a-z])_.*', name))
      },
      key=lambda b: (int(b[0]), b[1]),
  )
  for n, (stage, letter) in enumerate(blocks):
    for ours, theirs in parts.items():
      layers[f'block{stage}{letter}_{ours}'] = f'_blocks.{n}.{theirs}'
  return _torch_layer_mapping(abstract_variables, lambda path: layers[path[0]])


_TORCH_LEAVES = {
    ('params', 'kernel'): 'weight',
    ('params', 'bias'): 'bias',
    ('params', 'scale'): 'weight',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}


def _torch_layer_mapping(abstract_variables, module_key: Callable) -> Mapping:
  """Every leaf mapped to `<module_key(our module path)>.<torch leaf name>`, kernels transposed."""
  mapping = {}
  for path, leaf in traverse_util.flatten_dict(abstract_variables).items():
    module = module_key(path[1:-1])
    transform = unchanged
    if path[-1] == 'kernel':
      transform = _conv_kernel if len(leaf.shape) == 4 else _dense_kernel
    mapping[path] = (f'{module}.{_TORCH_LEAVES[(path[0], path[-1])]}', transform)
  return mapping


def _torch_module_key(path: Tuple[str, ...]) -> str:
  """Our module path -> torchvision's: layer1_0/downsample_conv -> layer1.0.downsample.0."""
  parts = []
  for p in path:
    if re.fullmatch(r'layer\d+_\d+', p):
      parts.extend(p.split('_'))
    else:
      parts.append({'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}.get(p, p))
  return '.'.join(parts)


def torch_resnet_mapping(abstract_variables) -> Mapping:
  """torchvision / timm ResNet keys; BatchNorm scale/bias/mean/var from weight/bias/running_*."""
  return _torch_layer_mapping(abstract_variables, _torch_module_key)


def read_torch(path: str) -> Dict[str, np.ndarray]:
  """A state dict from .safetensors, or from .pth/.pt loaded as data only (never unpickling code)."""
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file

    return load_file(path)
  try:
    import torch
  except ImportError as e:
    raise ConversionError(
        'Reading .pth files needs PyTorch: pip install torch '
        '(or convert the file to .safetensors elsewhere).'
    ) from e
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # UnpicklingError for code in the pickle, others for broken files
    raise ConversionError(
        f'Refused to load {path!r}: it is not a plain tensor file that torch.load(..., '
        f'weights_only=True) accepts ({type(e).__name__}: {str(e)[:200]}).'
    ) from e
  for wrapper in ('state_dict', 'model'):
    if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
      state = state[wrapper]
  return {k: v.float().numpy() for k, v in state.items() if hasattr(v, 'numpy')}


@dataclasses.dataclass(frozen=True)
class TorchLayout:
  """How one family's PyTorch state dicts map to our model."""

  mapping: Callable  # abstract variables -> Mapping
  top_key: str  # the classifier's weight: present when the file has its top
  preprocess: str = 'torch'  # what the family's published ImageNet weights expect
  top_image_size: Optional[int] = None  # the image size a flattened top was built for
  # The model's adaptive_pool that the top needs at other image sizes (weights.json records it).
  top_adaptive_pool: Optional[Tuple[int, int]] = None


# torchvision's VGG pools the last map to 7x7 (AdaptiveAvgPool2d) before its classifier.
_VGG = TorchLayout(
    torch_vgg_mapping, 'classifier.6.weight', top_image_size=224, top_adaptive_pool=(7, 7)
)


_RESNET = TorchLayout(torch_resnet_mapping, 'fc.weight')


TORCH_MODELS = {
    'vgg16': _VGG,
    'vgg19': _VGG,
    **{f'resnet{n}': _RESNET for n in (18, 34, 50, 101, 152)},
    # lukemelas' EfficientNet-PyTorch B0 (ImageNet mean/std) and the TensorFlow Lite
    # checkpoints copied into its layout ((x - 127) / 128, as TensorFlow trained them).
    'efficientnet_b0': TorchLayout(torch_efficientnet_mapping, '_fc.weight'),
    **{
        f'efficientnet_lite{n}': TorchLayout(
            torch_efficientnet_mapping, '_fc.weight', preprocess='inception'
        )
        for n in (0, 1, 2)
    },
}


def convert_torch(
    path: str,
    model: str,
    output: str,
    preprocess: Optional[str] = None,
    metadata: Optional[Dict] = None,
) -> Dict:
  """Converts a torchvision / timm / EfficientNet-PyTorch state dict (.pth or .safetensors).

  `preprocess` overrides the family's usual preprocessing (TorchLayout.preprocess);
  `metadata` is recorded beside the converter's own fields.
  """
  if model not in TORCH_MODELS:
    raise ConversionError(
        f'No PyTorch converter for {model!r}; choose one of ' f'{", ".join(TORCH_MODELS)}.'
    )
  layout = TORCH_MODELS[model]
  tensors = read_torch(path)
  include_top = layout.top_key in tensors
  num_classes = int(tensors[layout.top_key].shape[0]) if include_top else None
  image_size = layout.top_image_size if include_top else None
  if include_top and layout.top_adaptive_pool:
    metadata = {'adaptive_pool': list(layout.top_adaptive_pool), **(metadata or {})}
  return write(
      path,
      output,
      'torch',
      model,
      include_top,
      num_classes,
      image_size,
      tensors,
      layout.mapping,
      ignore=(r'num_batches_tracked$',),
      preprocess=preprocess or layout.preprocess,
      extra=metadata,
  )
