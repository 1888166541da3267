"""What the pictures show: lines where the logged values are, one tile per channel or kernel, the
augmentation preview's tiles, and TensorBoard's scalars and HParams.

A picture is read back from its PNG. The figure plots.py saved it from is kept
(`saved_figures`) only to place things in the PNG: matplotlib's own transforms
map data (an epoch, an accuracy) to pixels and back, and the axes' and the
legend's boxes say where to look.
"""

import contextlib
import os
import re

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib import colors as mcolors
from PIL import Image

from catsdogs_jax.data import augment, folders
from catsdogs_jax.data.input_pipeline import ImagePipeline
from catsdogs_jax.tools import compare, curves, evaluate, layer_views, plots, preview
from catsdogs_jax.training import epoch_log, train
from configs import default, small_cnn_aug

from conftest import override, tiny_config, tiny_mlp_config

# ----------------------------------------------------------------- reading pictures


@contextlib.contextmanager
def saved_figures():
  """{file name: figure} of every PNG plots.py writes inside the block (figures stay readable)."""
  saved, original = {}, plots._save

  def save(fig, path, title=''):
    written = original(fig, path, title)
    saved[os.path.basename(path)] = fig
    return written

  plots._save = save
  try:
    yield saved
  finally:
    plots._save = original


def pixels_of(path, fig):
  """The PNG's RGB pixels; the PNG is the whole figure, so its transforms place things in it.

  Every title (the figure's, each axes') is whole in it: none runs off an edge.
  """
  with Image.open(path) as image:
    assert image.format == 'PNG'
    pixels = np.asarray(image.convert('RGB'))
  assert pixels.shape[:2] == (round(fig.bbox.height), round(fig.bbox.width))
  titles = [fig._suptitle, *fig.texts, *(ax.title for ax in fig.axes)]
  titles = list({id(t): t for t in titles if t is not None and t.get_text()}.values())
  for text in titles:
    box = text.get_window_extent()
    assert box.x0 >= 0 and box.y0 >= 0, text.get_text()
    assert box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, text.get_text()
  # Nothing overlaps a title: another title, or any axes' drawing area (a tile, a plot).
  for i, text in enumerate(titles):
    box = text.get_window_extent().padded(-1)
    for other in titles[i + 1 :]:
      assert not box.overlaps(other.get_window_extent()), (text.get_text(), other.get_text())
    for ax in fig.axes:
      assert not box.overlaps(ax.get_window_extent()), (text.get_text(), ax)
  return pixels


def to_pixel(ax, x, y):
  """(row, column) in the PNG of the data point (x, y) of `ax`."""
  column, up = ax.transData.transform((x, y))
  return ax.figure.bbox.height - up, column


def to_data(ax, row, column):
  """The data point (x, y) of `ax` at the centre of the PNG's pixel (row, column)."""
  return ax.transData.inverted().transform((column + 0.5, ax.figure.bbox.height - row - 0.5))


def box_of(artist, fig, margin=0):
  """(row0, row1, column0, column1) an artist covers in the PNG, shrunk by `margin` pixels."""
  box = artist.get_window_extent()
  height = fig.bbox.height
  return (
      int(np.ceil(height - box.y1)) + margin,
      int(np.floor(height - box.y0)) - margin,
      int(np.ceil(box.x0)) + margin,
      int(np.floor(box.x1)) - margin,
  )


def near(pixels, colour, tolerance=40.0):
  """Where the pixels are within `tolerance` (RGB, 0-255) of a matplotlib colour."""
  rgb = np.asarray(mcolors.to_rgb(colour)) * 255
  return np.linalg.norm(pixels.astype(np.float32) - rgb, axis=-1) < tolerance


def inside(ax, pixels):
  """A mask of the plotting area of `ax` (within its frame), its legend left out."""
  fig = ax.figure
  mask = np.zeros(pixels.shape[:2], bool)
  r0, r1, c0, c1 = box_of(ax, fig, margin=2)
  mask[r0:r1, c0:c1] = True
  if ax.get_legend() is not None:
    r0, r1, c0, c1 = box_of(ax.get_legend(), fig, margin=-2)
    mask[r0:r1, c0:c1] = False
  return mask


def legend_colours(ax):
  """{label: colour} of the legend of `ax`: which line is which series."""
  legend = ax.get_legend()
  return {t.get_text(): h.get_color() for t, h in zip(legend.get_texts(), legend.legend_handles)}


def line_rows(mask, column, width=1):
  """The median row of a line's pixels in the columns around `column` (None: not drawn there)."""
  column = int(round(column))
  rows = np.nonzero(mask[:, column - width : column + width + 1])[0]
  return float(np.median(rows)) if len(rows) else None


def assert_line_follows(ax, pixels, colour, xs, ys, tolerance=0.015):
  """The line of `colour` passes through every (x, y), within `tolerance` of the y range."""
  mask = inside(ax, pixels) & near(pixels, colour)
  low, high = ax.get_ylim()
  for x, y in zip(xs, ys):
    row = line_rows(mask, to_pixel(ax, x, y)[1])
    assert row is not None, f'no {colour} line at x={x}'
    drawn = to_data(ax, row, to_pixel(ax, x, y)[1])[1]
    assert abs(drawn - y) < tolerance * (high - low), (colour, x, y, drawn)
  return mask


def tiles_of(fig):
  """The axes that show a picture (tiles beyond the count are blank and have none)."""
  return [ax for ax in fig.axes if ax.get_images()]


def cell_colours(ax, pixels, shape):
  """The PNG's colour at the centre of each of the [H, W] cells an image of `shape` is drawn as."""
  h, w = shape
  out = np.zeros((h, w, 3), np.uint8)
  for i in range(h):
    for j in range(w):
      row, column = to_pixel(ax, j, i)  # imshow puts cell (i, j) at x=j, y=i
      out[i, j] = pixels[int(row), int(column)]
  return out


def affine_fit(values, shown):
  """(slope, worst residual) of the shown intensities as a linear function of the values."""
  values, shown = np.ravel(values).astype(np.float64), np.ravel(shown).astype(np.float64)
  design = np.stack([values, np.ones_like(values)], axis=1)
  (slope, offset), *_ = np.linalg.lstsq(design, shown, rcond=None)
  return slope, float(np.abs(design @ (slope, offset) - shown).max())


# ----------------------------------------------------------------- a trained run


@pytest.fixture(scope='module')
def trained_run(image_folder, tmp_path_factory):
  """(config, workdir) of the MNIST CNN (one 5x5 convolution) trained 3 epochs on 16 px images."""
  config = tiny_mlp_config(
      image_folder,
      num_epochs=3,
      **{'model.name': 'mnist_cnn', 'optimizer.name': 'sgd', 'optimizer.learning_rate': 0.006},
  )
  workdir = str(tmp_path_factory.mktemp('trained'))
  train.train_and_evaluate(config, workdir)
  return config, workdir


# ----------------------------------------------------------------- curves


def log_rows(epochs=8):
  return [
      {
          'epoch': e,
          'step': 10 * e,
          'loss': 1 / e,
          'accuracy': 0.5 + e / 20,
          'val_loss': 1.2 / e,
          'val_accuracy': 0.5 + e / 25,
          'learning_rate': 1e-3 if e < 4 else 1e-4 if e < 7 else 1e-5,
          'seconds': 1.0,
          'images_per_second': 10.0,
      }
      for e in range(1, epochs + 1)
  ]


def test_curves_draw_the_logged_values_and_mark_the_learning_rate_changes(tmp_path):
  rows = log_rows()
  epoch_log.write_csv(str(tmp_path / epoch_log.LOG_CSV), rows)
  with saved_figures() as figures:
    path = curves.write_curves(str(tmp_path))
  fig = figures[curves.CURVES_PNG]
  pixels = pixels_of(path, fig)
  panels = {ax.get_ylabel(): ax for ax in fig.axes}
  assert set(panels) == {'accuracy', 'loss'}
  epochs = [r['epoch'] for r in rows]
  for metric, rises in (('accuracy', True), ('loss', False)):
    ax = panels[metric]
    colours = legend_colours(ax)
    assert set(colours) == {f'train {metric}', f'validation {metric}'}
    train_colour, val_colour = colours[f'train {metric}'], colours[f'validation {metric}']
    train_mask = assert_line_follows(ax, pixels, train_colour, epochs, [r[metric] for r in rows])
    val_mask = assert_line_follows(
        ax, pixels, val_colour, epochs, [r[f'val_{metric}'] for r in rows]
    )
    # Between the points too: the train line rises (accuracy) or falls (loss) column by column.
    first, last = (int(to_pixel(ax, e, 0)[1]) for e in (1, 8))
    drawn = [line_rows(train_mask, c, width=0) for c in range(first + 3, last - 3)]
    steps = np.diff([r for r in drawn if r is not None])
    assert len(steps) > 0.9 * (last - first - 6)
    assert (steps <= 1).all() if rises else (steps >= -1).all()  # rows grow downwards
    # The extremes: the highest train pixel is the last epoch's accuracy (the first one's loss).
    rows_drawn, columns = np.nonzero(train_mask)
    top = to_data(ax, rows_drawn.min(), columns[rows_drawn.argmin()])
    expected = (8, rows[-1]['accuracy']) if rises else (1, rows[0]['loss'])
    assert top == pytest.approx(expected, abs=0.02 * np.ptp(ax.get_ylim()) + 0.1)
    # Validation below the train accuracy and above the train loss at every epoch.
    for e in epochs[1:]:
      column = to_pixel(ax, e, 0)[1]
      train_row, val_row = line_rows(train_mask, column), line_rows(val_mask, column)
      assert (val_row > train_row) if rises else (val_row < train_row), e
    # The learning rate changed at epochs 4 and 7: a grey dotted line before each, none elsewhere.
    grey = inside(ax, pixels) & near(pixels, 'gray', tolerance=60)
    r0, r1, _, _ = box_of(ax, fig)
    for x in (1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5):
      c = int(round(to_pixel(ax, x, 0)[1]))
      share = grey[r0:r1, c - 1 : c + 2].any(axis=1).mean()
      assert (share > 0.15) if x in (3.5, 6.5) else (share < 0.02), (metric, x, share)


def test_curves_of_a_trained_run_are_its_log(trained_run):
  config, workdir = trained_run
  rows = epoch_log.read_csv(os.path.join(workdir, epoch_log.LOG_CSV))
  with saved_figures() as figures:
    path = curves.write_curves(workdir)
  fig = figures[curves.CURVES_PNG]
  pixels = pixels_of(path, fig)
  ax = {ax.get_ylabel(): ax for ax in fig.axes}['loss']
  colours = legend_colours(ax)
  epochs = [float(r['epoch']) for r in rows]
  assert_line_follows(ax, pixels, colours['train loss'], epochs, [float(r['loss']) for r in rows])
  assert_line_follows(
      ax, pixels, colours['validation loss'], epochs, [float(r['val_loss']) for r in rows]
  )


# ----------------------------------------------------------------- compare


def _fake_run(workdir, val_accuracy):
  os.makedirs(workdir)
  rows = [
      {
          'epoch': e,
          'step': e,
          'loss': 0.5,
          'accuracy': 0.5,
          'val_loss': 0.5,
          'val_accuracy': v,
          'learning_rate': 1e-3,
          'seconds': 1.0,
          'images_per_second': 10.0,
      }
      for e, v in enumerate(val_accuracy, 1)
  ]
  epoch_log.write_csv(os.path.join(workdir, epoch_log.LOG_CSV), rows)


def test_compare_draws_each_variant_mean_and_the_range_of_its_seeds(tmp_path):
  seeds = [[0.50, 0.58, 0.66, 0.70, 0.74], [0.56, 0.68, 0.72, 0.80, 0.82]]
  for i, values in enumerate(seeds):
    _fake_run(tmp_path / 'runs' / 'two_seeds' / f'seed_{i}', values)
  single = [0.30, 0.36, 0.33, 0.40, 0.38]  # falls at epochs 3 and 5
  _fake_run(tmp_path / 'runs' / 'one_seed', single)
  with saved_figures() as figures:
    _, out = compare.compare([str(tmp_path / 'runs' / '*')])
  fig = figures[compare.COMPARE_PNG]
  pixels = pixels_of(os.path.join(out, compare.COMPARE_PNG), fig)
  (ax,) = fig.axes
  colours = legend_colours(ax)
  assert set(colours) == {'two_seeds (2 seeds)', 'one_seed (1 seed)'}
  epochs = range(1, 6)
  assert_line_follows(ax, pixels, colours['two_seeds (2 seeds)'], epochs, np.mean(seeds, axis=0))
  assert_line_follows(ax, pixels, colours['one_seed (1 seed)'], epochs, single)
  # The band: the line's colour at 20% on white, from the lower seed to the higher one.
  area = inside(ax, pixels)
  band_of = lambda colour: area & near(
      pixels, 0.8 * np.ones(3) + 0.2 * np.asarray(mcolors.to_rgb(colour)), tolerance=12
  )
  band = band_of(colours['two_seeds (2 seeds)'])
  low, high = ax.get_ylim()
  for e, lower, upper in zip(epochs, np.min(seeds, axis=0), np.max(seeds, axis=0)):
    # Beside the epoch's grid line, and inside the band's ends.
    column = int(round(to_pixel(ax, e, 0)[1])) + (-2 if e == 5 else 2)
    rows = np.nonzero(band[:, column])[0]
    drawn_upper, drawn_lower = (to_data(ax, r, column)[1] for r in (rows.min(), rows.max()))
    assert abs(drawn_upper - upper) < 0.02 * (high - low), (e, drawn_upper, upper)
    assert abs(drawn_lower - lower) < 0.02 * (high - low), (e, drawn_lower, lower)
  # One seed, no band: that light colour only at the line's antialiased edges, no rows of it.
  assert _tallest_run(band) > 20 and _tallest_run(band_of(colours['one_seed (1 seed)'])) < 4


def _tallest_run(mask):
  """The most pixels of `mask` one above the other in a column."""
  tallest = 0
  for column in mask.T:
    edges = np.diff(np.concatenate([[0], column.astype(np.int8), [0]]))
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    tallest = max(tallest, int((ends - starts).max(initial=0)))
  return tallest


# ----------------------------------------------------------------- inside the network


def test_feature_maps_show_every_channel_of_the_layer(trained_run, image_folder):
  config, workdir = trained_run
  image = os.path.join(image_folder, 'test', 'dogs', 'dogs.0.jpg')
  with saved_figures() as figures:
    (path,) = layer_views.write_feature_maps(config, workdir, ['conv1'], [image])
  fig = figures[os.path.basename(path)]
  pixels = pixels_of(path, fig)
  restored = evaluate.restore_for_inference(config, workdir)
  files = folders.read_files([image])
  pipeline = ImagePipeline(restored.exp.config, 'one', restored.exp.info.class_names, files=files)
  maps = layer_views.layer_activations(
      restored.exp.model,
      restored.exp.config,
      {'params': restored.state.params},
      next(pipeline.eval_batches())['image'][:1],
      ['conv1'],
  )
  fmap = np.asarray(maps['conv1'][0])  # [12, 12, 64]
  tiles = tiles_of(fig)
  assert len(tiles) == fmap.shape[-1] == 64
  # viridis, back to the value it shows: the nearest of its 256 colours.
  palette = colormaps['viridis'](np.linspace(0, 1, 256))[:, :3] * 255
  shown = []
  for ax in tiles:
    cells = cell_colours(ax, pixels, fmap.shape[:2]).astype(np.float32)
    distance = np.linalg.norm(cells[:, :, None] - palette, axis=-1)
    assert distance.min(axis=-1).max() < 3  # every cell is a viridis colour
    shown.append(distance.argmin(axis=-1) / 255)
  shown = np.stack(shown, axis=-1)
  assert len({tuple(s.ravel().round(2)) for s in np.moveaxis(shown, -1, 0)}) > 32  # not copies
  live = [c for c in range(64) if np.ptp(fmap[..., c]) > 1e-6]
  assert len(live) > 16
  for c in range(64):
    if c in live:  # each tile is its own channel, scaled to its own range
      slope, residual = affine_fit(fmap[..., c], shown[..., c])
      assert slope > 0 and residual < 2 / 255, c
      assert shown[..., c].min() < 1 / 255 and shown[..., c].max() > 254 / 255, c
    else:  # a channel ReLU zeroed is one colour
      assert np.ptp(shown[..., c]) == 0, c


def test_filters_show_every_kernel_of_the_first_convolution(trained_run):
  config, workdir = trained_run
  with saved_figures() as figures:
    path = layer_views.write_filters(config, workdir)
  fig = figures[layer_views.FILTERS_PNG]
  pixels = pixels_of(path, fig)
  kernel = np.asarray(
      evaluate.restore_for_inference(config, workdir).state.params['conv1']['kernel']
  )
  assert kernel.shape == (5, 5, 3, 64)
  tiles = tiles_of(fig)
  assert len(tiles) == 64
  shown = np.stack([cell_colours(ax, pixels, (5, 5)) for ax in tiles], axis=-1)  # [5, 5, 3, 64]
  assert len({shown[..., c].tobytes() for c in range(64)}) == 64  # no two tiles alike
  for c in range(64):
    # RGB as the kernel's input channels, one scale per kernel spanning black to white.
    slope, residual = affine_fit(kernel[..., c], shown[..., c])
    assert slope > 0 and residual < 1.5, c
    assert shown[..., c].min() <= 1 and shown[..., c].max() >= 254, c
  # And the title names the layer, the count and the size.
  assert re.match(r'conv1: 64 kernels 5x5 \(step 9\)', fig._suptitle.get_text())


# ----------------------------------------------------------------- TensorBoard


def test_tensorboard_has_the_run_hyperparameters_and_the_logged_scalars(trained_run):
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.plugins.hparams import metadata
  from tensorflow import make_ndarray

  config, workdir = trained_run
  events = event_accumulator.EventAccumulator(workdir, size_guidance={event_accumulator.TENSORS: 0})
  events.Reload()
  content = events.PluginTagToContent(metadata.PLUGIN_NAME)
  assert list(content) == [metadata.SESSION_START_INFO_TAG]
  hparams = metadata.parse_session_start_info_plugin_data(
      content[metadata.SESSION_START_INFO_TAG]
  ).hparams
  assert hparams['optimizer.learning_rate'].number_value == pytest.approx(0.006)
  assert hparams['optimizer.name'].string_value == 'sgd'
  assert hparams['model.name'].string_value == 'mnist_cnn'
  assert hparams['data.image_size'].number_value == 16
  assert hparams['data.cache'].bool_value is True
  assert hparams['data.dataset'].string_value == config.data.dataset
  written = {
      tag: {e.step: float(make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)}
      for tag in events.Tags()['tensors']
      if not tag.startswith('_hparams_')
  }
  rows = epoch_log.read_csv(os.path.join(workdir, epoch_log.LOG_CSV))
  assert [int(r['step']) for r in rows] == [3, 6, 9]
  for tag, column in (
      ('train/loss', 'loss'),
      ('train/accuracy', 'accuracy'),
      ('val/loss', 'val_loss'),
      ('val/accuracy', 'val_accuracy'),
      ('train/images_per_second', 'images_per_second'),
  ):
    assert written[tag] == pytest.approx(
        {int(r['step']): float(r[column]) for r in rows}, rel=1e-5, abs=1e-6
    ), tag
  # Every log_every_steps (2) steps: the running values and the learning rate.
  assert sorted(written['train/learning_rate']) == [2, 4, 6, 8]
  assert list(written['train/learning_rate'].values()) == pytest.approx([0.006] * 4)
  # The running loss at an epoch's last step is that epoch's loss (step 6: epoch 2).
  assert written['train/running_loss'][6] == pytest.approx(float(rows[1]['loss']), abs=1e-6)


# ----------------------------------------------------------------- the augmentation preview


def _source(height=20, width=24):
  """An image unlike its mirror and its shifts: a ramp in each channel plus a bright corner."""
  y, x = np.mgrid[:height, :width]
  image = np.stack([10 * x, 12 * y, 5 * x + 6 * y], axis=-1)
  image[:4, :5] = 250
  return image.astype(np.uint8)


def _augment(**fields):
  return override(default.get_config(), **{f'augment.{k}': v for k, v in fields.items()}).augment


def test_preview_shows_the_source_then_each_augmentation_of_it():
  image = _source()
  # Flips only: every augmented copy is the image or its mirror, and both are drawn.
  augmented = preview.augmented_copies(image, _augment(horizontal_flip=True), num=8, seed=0)
  assert augmented.shape == (8, *image.shape) and augmented.dtype == np.uint8
  mirrored = [np.array_equal(t, image[:, ::-1]) for t in augmented]
  assert all(m or np.array_equal(t, image) for m, t in zip(mirrored, augmented))
  assert 0 < sum(mirrored) < 8
  # Whole-pixel shifts, nearest pixel outside: each copy is the image moved sideways.
  augmented = preview.augmented_copies(
      image, _augment(width_shift_range=4.0, interpolation='nearest'), num=8, seed=0
  )
  shifts = []
  for tile in augmented:
    moved = [
        s for s in range(-5, 6) if np.array_equal(tile, image[:, np.clip(np.arange(24) - s, 0, 23)])
    ]
    assert len(moved) == 1
    shifts += moved
  assert len(set(shifts)) > 2
  # The tutorial's settings: no copy is the image or another copy, each is still the image
  # resampled (its colours between the image's own, as smooth as it), not blank.
  augmented = preview.augmented_copies(image, small_cnn_aug.get_config().augment, num=8, seed=0)
  roughness = lambda t: np.abs(np.diff(t, axis=0)).mean() + np.abs(np.diff(t, axis=1)).mean()
  flat = [t.astype(np.float32) for t in augmented]
  for i, tile in enumerate(flat):
    assert np.abs(tile - image).mean() > 5
    assert all(np.abs(tile - other).mean() > 2 for other in flat[i + 1 :])
    assert (tile >= image.min(axis=(0, 1))).all() and (tile <= image.max(axis=(0, 1))).all()
    assert roughness(tile) < 3 * roughness(image.astype(np.float32))
    assert tile.std() > 20


def test_preview_writes_the_first_training_image_marked_then_its_augmentations(
    image_folder, tmp_path
):
  config = tiny_config(image_folder)
  config.augment = small_cnn_aug.get_config().augment
  with saved_figures() as figures:
    path = preview.write_preview(config, str(tmp_path), num=5)
  fig = figures[preview.PREVIEW_FILE]
  pixels = pixels_of(path, fig)
  first = next(ImagePipeline(config, 'train', ('cats', 'dogs')).eval_batches())['image'][0]
  expected = [first, *preview.augmented_copies(first, config.augment, num=5, seed=config.seed)]
  tiles = tiles_of(fig)
  assert len(tiles) == len(fig.axes) == 6  # 2 rows of 3: no empty cell
  assert len({round(ax.get_position().y0, 3) for ax in tiles}) == 2
  assert [ax.get_title() for ax in tiles] == ['original'] + [f'augmented {i}' for i in range(1, 6)]
  # Each tile shows its image, every pixel of it (48 px drawn at about 200 px, nearest pixel;
  # the original's edge pixels lie under its frame).
  for ax, image in zip(tiles, expected):
    shown = cell_colours(ax, pixels, (48, 48))
    np.testing.assert_allclose(shown[1:-1, 1:-1], image[1:-1, 1:-1], atol=2)
  assert all(np.abs(t.astype(np.float32) - first).mean() > 2 for t in expected[1:])
  # The original is framed in its colour (the 2 pixel rows above and below it); the
  # augmentations are not.
  for ax, framed in zip(tiles, [True] + [False] * 5):
    r0, r1, c0, c1 = box_of(ax, fig)
    edges = np.concatenate([pixels[r0 - 3 : r0 - 1, c0:c1], pixels[r1 + 1 : r1 + 3, c0:c1]])
    share = near(edges, plots.ORIGINAL_COLOUR, tolerance=30).mean()
    assert share > 0.95 if framed else share == 0, share
  # The title says the size and the settings.
  assert fig._suptitle.get_text() == (
      'Augmentation at 48x48 px: rotation 40, width shift 0.2, height shift 0.2, shear 0.2, '
      'zoom 0.2, horizontal flip; fill nearest'
  )
  assert augment.is_enabled(config.augment)


# ----------------------------------------------------------------- layout


@pytest.mark.parametrize(
    'count, shape',
    [
        (1, (1, 1)),
        (3, (1, 3)),
        (4, (2, 2)),
        (6, (2, 3)),
        (7, (1, 7)),
        (9, (3, 3)),
        (13, (2, 7)),
        (16, (4, 4)),
        (100, (10, 10)),
        (128, (8, 16)),
        (512, (32, 16)),
    ],
)
def test_grids_have_as_few_empty_cells_as_their_width_allows(count, shape):
  max_columns = 16 if count > 100 else 10
  assert plots.grid_shape(count, max_columns) == shape


def test_a_grid_of_16_is_4_by_4_with_readable_titles_that_overlap_nothing(tmp_path):
  images = [np.full((30, 30, 3), 16 * i, np.uint8) for i in range(16)]
  titles = [f'cats/dogs\nloss {i + 0.123:.3g} p 0.{i:03d}' for i in range(16)]
  with saved_figures() as figures:
    path = plots.image_grid(images, titles, str(tmp_path / 'grid.png'), suptitle='Top 16 ' * 12)
  fig = figures['grid.png']
  pixels = pixels_of(path, fig)  # no title overlaps another or a tile
  tiles = tiles_of(fig)
  assert len(tiles) == len(fig.axes) == 16
  rows = sorted({round(ax.get_position().y0, 3) for ax in tiles})
  columns = sorted({round(ax.get_position().x0, 3) for ax in tiles})
  assert len(rows) == len(columns) == 4
  assert all(t.title.get_fontsize() >= 9 for t in tiles)
  # The figure's title is above the first row, each tile shows its grey.
  top_row = min(box_of(ax, fig)[0] for ax in tiles)
  assert box_of(fig._suptitle, fig)[1] < top_row
  for ax, image in zip(tiles, images):
    r0, r1, c0, c1 = box_of(ax, fig)
    np.testing.assert_allclose(pixels[(r0 + r1) // 2, (c0 + c1) // 2], image[0, 0], atol=2)


def test_flat_curves_get_plain_ticks_and_a_tenth_of_the_scale(tmp_path):
  rows = log_rows(3)
  for row in rows:  # accuracy stuck at chance, the loss at log 2
    row.update(accuracy=0.5, val_accuracy=0.5005, loss=0.6931, val_loss=0.69315)
  epoch_log.write_csv(str(tmp_path / epoch_log.LOG_CSV), rows)
  with saved_figures() as figures:
    path = curves.write_curves(str(tmp_path))
  fig = figures[curves.CURVES_PNG]
  pixels_of(path, fig)
  for ax, span in zip(fig.axes, (0.1, 0.069)):
    low, high = ax.get_ylim()
    assert high - low >= span
    assert ax.yaxis.get_offset_text().get_text() == ''
    ticks = [t.get_text() for t in ax.get_yticklabels() if low <= t.get_position()[1] <= high]
    assert len(ticks) >= 3 and all(len(t.split('.')[-1]) <= 3 for t in ticks), ticks
  accuracy = {ax.get_ylabel(): ax for ax in fig.axes}['accuracy']
  assert accuracy.get_ylim()[0] < 0.5 < accuracy.get_ylim()[1] <= 1.05
