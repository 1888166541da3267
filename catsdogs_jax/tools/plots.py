"""Every picture the codebase writes, drawn by matplotlib's Agg backend (no display needed).

Each function takes plain numpy data and a path and writes one PNG; what the
data means is computed elsewhere (train logs, predictions, layers).
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DPI = 100
ORIGINAL_COLOUR = 'tab:blue'  # the augmentation preview's frame around the original


def _figure(*args, **kwargs):
  """`plt.subplots` with constrained layout: it makes room for every title, the figure's too
  (tight_layout lets a suptitle overlap the first row)."""
  return plt.subplots(*args, layout='constrained', **kwargs)


def _save(fig, path: str, title: str = '') -> str:
  if title:
    fig.suptitle(title, wrap=True)  # a grid of one or two tiles is narrower than its title
  fig.savefig(path, dpi=DPI)
  plt.close(fig)
  return path


def grid_shape(n: int, max_columns: int) -> Tuple[int, int]:
  """(rows, columns) for `n` tiles: the fewest empty cells, then the squarest, never taller than
  wide; past max_columns**2 tiles, rows of max_columns."""
  shapes = [
      (math.ceil(n / columns), columns)
      for columns in range(1, max(min(n, max_columns), 1) + 1)
      if math.ceil(n / columns) <= columns
  ]
  if not shapes:
    return math.ceil(n / max_columns), max_columns
  return min(shapes, key=lambda s: (s[0] * s[1] - n, s[1] - s[0]))


def _tiles(n: int, max_columns: int, width: float, height: float, extra: float):
  """A figure of `n` axes laid out by `grid_shape`, `width` x `height` inches each, `extra`
  inches for titles; returns (figure, the first n axes); the axes have no frame and the cells
  past `n` no axes."""
  rows, columns = grid_shape(n, max_columns)
  fig, axes = _figure(
      rows, columns, figsize=(width * columns, height * rows + extra), squeeze=False
  )
  for ax in axes.flat[n:]:
    ax.remove()
  for ax in axes.flat[:n]:
    ax.axis('off')
  return fig, axes.flat[:n]


def _readable_limits(ax, values: Sequence[float], span: float, bounds=(None, None)):
  """Widens the y range to at least `span` (within `bounds`) and turns off matplotlib's offset:
  a flat curve would otherwise get ticks like 0.50075 (or +5e-1 above the axis)."""
  low, high = float(np.nanmin(values)), float(np.nanmax(values))
  if high - low < span:
    middle = (low + high) / 2
    low, high = middle - span / 2, middle + span / 2
    if bounds[0] is not None and low < bounds[0]:
      low, high = bounds[0], bounds[0] + span
    if bounds[1] is not None and high > bounds[1]:
      low, high = bounds[1] - span, bounds[1]
    margin = 0.05 * span
    ax.set_ylim(low - margin, high + margin)
  ax.ticklabel_format(axis='y', useOffset=False, style='plain')


def training_curves(
    rows: List[Dict[str, float]], lr_changes: Sequence[tuple], path: str, title: str = ''
) -> str:
  """Accuracy and loss per epoch, train vs validation; a dotted line where the learning rate changed.

  `lr_changes`: (first epoch at the new rate, new rate) pairs.
  """
  epochs = [r['epoch'] for r in rows]
  fig, axes = _figure(1, 2, figsize=(12, 4.5))
  for ax, metric in zip(axes, ('accuracy', 'loss')):
    train_values = [r[metric] for r in rows]
    val_values = [r[f'val_{metric}'] for r in rows]
    ax.plot(epochs, train_values, 'o-', ms=3, label=f'train {metric}')
    ax.plot(epochs, val_values, 's-', ms=3, label=f'validation {metric}')
    values = train_values + val_values
    if metric == 'accuracy':  # a tenth of the [0, 1] scale at least
      _readable_limits(ax, values, 0.1, bounds=(0.0, 1.0))
    else:  # a tenth of the loss at least
      _readable_limits(ax, values, 0.1 * max(abs(v) for v in values) or 0.1)
    for epoch, lr in lr_changes:
      ax.axvline(epoch - 0.5, color='gray', ls=':', lw=1)
      ax.annotate(
          f'lr {lr:.2g}',
          (epoch - 0.5, 0.98),
          xycoords=('data', 'axes fraction'),
          rotation=90,
          va='top',
          ha='right',
          fontsize=8,
          color='gray',
      )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel('epoch')
    ax.set_ylabel(metric)
    ax.set_title(f'{metric}: train and validation')
    ax.grid(alpha=0.3)
    ax.legend()
  return _save(fig, path, title)


def class_probabilities(
    image: np.ndarray,
    probabilities: Sequence[float],
    class_names: Sequence[str],
    path: str,
    title: str,
) -> str:
  """The image (uint8 [H, W, C]) beside a bar chart of its class probabilities."""
  fig, (picture, ax) = _figure(
      1,
      2,
      figsize=(3.5 + max(4, 1.2 * len(class_names)), 3.5),
      width_ratios=(3.5, max(4, 1.2 * len(class_names))),
  )
  picture.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap='gray')
  picture.axis('off')
  bars = ax.bar(list(class_names), probabilities, color='tab:blue')
  ax.bar_label(bars, fmt='%.4f')
  ax.set_ylim(0, 1.1)
  ax.set_xlabel('class')
  ax.set_ylabel('probability')
  ax.set_title(title, fontsize=9)
  return _save(fig, path)


def image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str,
    suptitle: str = '',
    max_columns: int = 10,
    title_colors: Optional[Sequence[str]] = None,
) -> str:
  """uint8 images ([H, W, 3] or [H, W, 1]) tiled with a title each (`grid_shape`)."""
  fig, axes = _tiles(len(images), max_columns, 2.2, 2.6, 0.5)
  for i, (ax, image, title) in enumerate(zip(axes, images, titles)):
    _show(ax, image)
    ax.set_title(title, fontsize=9, color=title_colors[i] if title_colors else 'black')
  return _save(fig, path, suptitle)


def _show(ax, image: np.ndarray):
  # Small images keep their pixels square and sharp when drawn larger than they are.
  interpolation = 'nearest' if max(image.shape[:2]) < 100 else 'antialiased'
  if image.shape[-1] == 1:  # grey on the 0-255 scale, not stretched to its own range
    ax.imshow(image[..., 0], cmap='gray', vmin=0, vmax=255, interpolation=interpolation)
  else:
    ax.imshow(image, interpolation=interpolation)


def augmentation_preview(
    original: np.ndarray, augmented: Sequence[np.ndarray], path: str, title: str
):
  """The original image, framed and titled 'original', then each augmentation of it, numbered."""
  fig, axes = _tiles(1 + len(augmented), 5, 2.2, 2.4, 0.6)
  for i, (ax, image) in enumerate(zip(axes, [original, *augmented])):
    _show(ax, image)
    if i == 0:
      ax.axis('on')  # the frame marks it
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_color(ORIGINAL_COLOUR)
        spine.set_linewidth(4)
      ax.set_title('original', fontsize=10, color=ORIGINAL_COLOUR, fontweight='bold')
    else:
      ax.set_title(f'augmented {i}', fontsize=10)
  return _save(fig, path, title)


def channel_grid(feature_map: np.ndarray, path: str, title: str, max_columns: int = 16) -> str:
  """Each channel of a [H, W, C] activation as a small image, each scaled to its own range."""
  fig, axes = _tiles(feature_map.shape[-1], max_columns, 1.1, 1.1, 0.6)
  for c, ax in enumerate(axes):
    ax.imshow(feature_map[..., c], cmap='viridis')
  return _save(fig, path, title)


def kernel_tiles(kernels: np.ndarray, path: str, title: str, max_columns: int = 16) -> str:
  """First-layer kernels [k, k, 3 or 1, C] as RGB (or grey) tiles, each scaled to [0, 1]."""
  fig, axes = _tiles(kernels.shape[-1], max_columns, 0.8, 0.8, 0.6)
  for c, ax in enumerate(axes):
    k = kernels[..., c]
    k = (k - k.min()) / max(float(k.max() - k.min()), 1e-12)
    ax.imshow(k[..., 0] if k.shape[-1] == 1 else k, cmap='gray', interpolation='nearest')
  return _save(fig, path, title)


def learning_rate_range(
    lrs: np.ndarray,
    losses: np.ndarray,
    smoothed: np.ndarray,
    suggestions: Dict[str, float],
    path: str,
    lowest_lr: float,
    stopped: str = '',
) -> str:
  """The range test: the whole loss curve against learning rate (log scale), its lowest point,
  where it stopped (divergence), and the suggestions."""
  fig, ax = _figure(figsize=(8, 5))
  ax.plot(lrs, losses, color='lightgray', lw=1, label='loss per step')
  ax.plot(lrs, smoothed, color='tab:blue', lw=2, label='smoothed loss')
  lowest = int(np.argmin(np.abs(lrs - lowest_lr)))
  ax.plot(lrs[lowest], smoothed[lowest], 'o', color='tab:blue', label=f'lowest at {lowest_lr:.2e}')
  if stopped:
    ax.plot(lrs[-1], smoothed[-1], 'x', color='black', ms=9, mew=2, label=f'stopped: {stopped}')
  for (name, lr), color in zip(suggestions.items(), ('tab:red', 'tab:green')):
    ax.axvline(lr, color=color, ls='--', label=f'{name}: {lr:.2e}')
  if not suggestions:
    ax.text(0.5, 0.95, 'no suggestion: the loss never fell', transform=ax.transAxes, ha='center')
  ax.set_xscale('log')
  values = np.concatenate([losses, smoothed])
  if np.nanmin(values) > 0 and np.nanmax(values) > 20 * np.nanmin(values):
    ax.set_yscale('log')  # a blow-up would flatten the part that matters
  ax.set_xlabel('learning rate (log scale)')
  ax.set_ylabel('training loss')
  ax.set_title('Learning-rate range test')
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize='small')
  return _save(fig, path)


def validation_curves(variants: Dict[str, List[Sequence[float]]], path: str) -> str:
  """Validation accuracy per epoch of every variant: the mean over seeds, their range as a band."""
  fig, ax = _figure(figsize=(10, 6))
  for name, seeds in variants.items():
    length = min(len(s) for s in seeds)
    values = np.asarray([s[:length] for s in seeds])
    epochs = np.arange(1, length + 1)
    (line,) = ax.plot(
        epochs,
        values.mean(axis=0),
        lw=1.5,
        label=f'{name} ({len(seeds)} seed{"s" if len(seeds) > 1 else ""})',
    )
    if len(seeds) > 1:
      ax.fill_between(
          epochs, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2
      )
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel('epoch')
  ax.set_ylabel('validation accuracy')
  ax.set_title('Validation accuracy per epoch (mean over seeds; band: min to max)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)
