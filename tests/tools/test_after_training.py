"""After training: per-class metrics, predictions, top losses, pictures, summary, lr_find."""

import csv
import hashlib
import json
import os
import re
import types

import jax
import numpy as np
import pytest
from PIL import Image

from catsdogs_jax import models
from catsdogs_jax.data.folders import DataError
from catsdogs_jax.models import abstract_variables, summary
from catsdogs_jax.tools import curves, evaluate, layer_views, lr_find, predict
from catsdogs_jax.tools import summary as summary_tool
from catsdogs_jax.training import epoch_log, experiment, train
from catsdogs_jax.training.config_checks import ConfigError
from catsdogs_jax.training.optimizers import is_frozen
from catsdogs_jax.training.steps import make_predict_step
from configs import (
    efficientnet_b0_transfer,
    efficientnet_lite0_finetune,
    resnet50,
    small_cnn,
    vgg16,
    vgg16_finetune,
)

from conftest import override, tiny_config, tiny_mlp_config

# isort: split
# Reading pictures back: the helpers of test_pictures.py, beside this file.
from test_pictures import (
    box_of,
    inside,
    log_rows,
    near,
    pixels_of,
    saved_figures,
    tiles_of,
    to_data,
    to_pixel,
)

SIZE = 16


def _png_size(path):
  with Image.open(path) as image:
    assert image.format == 'PNG'
    return image.size


# ----------------------------------------------------------------- per-class metrics


def test_per_class_precision_recall_f1_on_a_hand_made_confusion():
  metrics = evaluate.per_class_metrics([[8, 2], [1, 9]], ['cats', 'dogs'])
  cats, dogs = metrics['cats'], metrics['dogs']
  assert cats['precision'] == pytest.approx(8 / 9) and cats['recall'] == pytest.approx(0.8)
  assert cats['f1'] == pytest.approx(2 * (8 / 9) * 0.8 / (8 / 9 + 0.8))
  assert dogs['precision'] == pytest.approx(9 / 11) and dogs['recall'] == pytest.approx(0.9)
  assert (cats['support'], dogs['support']) == (10, 10)
  # A class never predicted, and one never seen: 0, not NaN.
  never = evaluate.per_class_metrics([[5, 0, 0], [3, 0, 0], [0, 0, 0]], ['a', 'b', 'c'])
  assert never['b'] == {'precision': 0.0, 'recall': 0.0, 'f1': 0.0, 'support': 3}
  assert never['c']['support'] == 0 and never['a']['precision'] == pytest.approx(5 / 8)
  table = evaluate.format_result(
      {
          'num_images': 20,
          'loss': 0.3,
          'accuracy': 0.85,
          'confusion': [[8, 2], [1, 9]],
          'per_class': metrics,
      },
      ['cats', 'dogs'],
  )
  assert 'precision' in table and '0.8889' in table and '0.9000' in table


# ----------------------------------------------------------------- a model whose answer is forced


def _colour_folder(root, colours):
  """One solid-colour PNG per (name, rgb): resizing keeps the colour exactly."""
  os.makedirs(root, exist_ok=True)
  for name, rgb in colours.items():
    Image.fromarray(np.full((20, 30, 3), rgb, np.uint8)).save(os.path.join(root, f'{name}.png'))
  return str(root)


def _forced_config(folder, loss):
  return tiny_mlp_config(folder, SIZE, loss=loss)


SCALE = 8.0


def _forced_workdir(config, workdir):
  """A checkpoint whose logit for 'dogs' is SCALE * (mean blue - mean red) of the image."""
  exp = experiment.build(config, str(workdir))
  state = exp.init_state()
  params = jax.device_get(state.params)
  hidden = np.zeros_like(params['hidden']['kernel'])
  pixel = np.zeros((SIZE, SIZE, 3), np.float32)
  pixel[..., 2], pixel[..., 0] = 1.0 / SIZE**2, -1.0 / SIZE**2
  hidden[:, 0], hidden[:, 1] = pixel.ravel(), -pixel.ravel()  # relu(b - r), relu(r - b)
  logits = np.zeros_like(params['logits']['kernel'])
  if config.loss == 'sigmoid':
    logits[0, 0], logits[1, 0] = SCALE, -SCALE
  else:
    logits[0, 1], logits[1, 0] = SCALE, SCALE
  params = {
      'hidden': {'kernel': hidden, 'bias': np.zeros_like(params['hidden']['bias'])},
      'logits': {'kernel': logits, 'bias': np.zeros_like(params['logits']['bias'])},
  }
  state = state.replace(
      params=jax.device_put(params, jax.tree.map(lambda x: x.sharding, state.params))
  )
  exp.checkpoints.save(
      1, state, train.History().to_json(), metrics={'val_loss': 0.0, 'val_accuracy': 1.0}
  )
  exp.checkpoints.wait()
  return str(workdir)


def _p_dog(rgb):
  return 1 / (1 + np.exp(-SCALE * (rgb[2] - rgb[0]) / 255))


COLOURS = {
    '12': (10, 20, 250),
    '3': (250, 30, 40),
    'mixed.7': (120, 90, 140),
    'grey': (128, 128, 128),
}


@pytest.mark.parametrize('loss', ['sigmoid', 'softmax'])
def test_predict_writes_the_forced_labels_and_probabilities(image_folder, tmp_path, loss, caplog):
  config = _forced_config(image_folder, loss)
  workdir = _forced_workdir(config, tmp_path / 'run')
  photos = _colour_folder(tmp_path / 'photos', COLOURS)
  with saved_figures() as figures:
    out = predict.predict_images(config, workdir, [photos], kaggle=True, pictures=True)
  # Files named after the input folder.
  with open(os.path.join(workdir, 'predictions_photos.csv')) as f:
    rows = {os.path.basename(r['path']).rsplit('.', 1)[0]: r for r in csv.DictReader(f)}
  assert len(out['paths']) == len(rows) == 4
  for name, rgb in COLOURS.items():
    p = _p_dog(rgb)
    row = rows[name]
    assert float(row['dogs']) == pytest.approx(p, abs=2e-6)
    assert float(row['cats']) == pytest.approx(1 - p, abs=2e-6)
    assert row['label'] == ('dogs' if p > 0.5 else 'cats')
    assert float(row['probability']) == pytest.approx(max(p, 1 - p), abs=2e-6)
  with open(os.path.join(workdir, 'submission_photos.csv')) as f:
    kaggle = list(csv.reader(f))
  assert kaggle[0] == ['id', 'label']
  assert {r[0]: float(r[1]) for r in kaggle[1:]} == pytest.approx(
      {
          '12': _p_dog(COLOURS['12']),
          '3': _p_dog(COLOURS['3']),
          '7': _p_dog(COLOURS['mixed.7']),
          'grey': 0.5,
      },
      abs=2e-6,
  )
  # The grid: each image titled with its row of the CSV.
  fig = figures['predictions_photos.png']
  pixels = pixels_of(os.path.join(workdir, 'predictions_photos.png'), fig)
  tiles = tiles_of(fig)
  assert len(tiles) == 4
  for ax in tiles:
    prediction, file_name = ax.get_title().split('\n')
    name = file_name.rsplit('.', 1)[0]
    label, probability = prediction.split()
    assert label == rows[name]['label']
    assert float(probability) == pytest.approx(float(rows[name]['probability']), abs=5e-5)
    r0, r1, c0, c1 = box_of(ax, fig)
    np.testing.assert_allclose(pixels[(r0 + r1) // 2, (c0 + c1) // 2], COLOURS[name], atol=2)
  assert sorted(ax.get_title().split('\n')[1] for ax in tiles) == sorted(
      os.path.basename(p) for p in out['paths']
  )

  # One image, given as a glob: files of their own (the folder's stay), the bar chart too, beside
  # the image, each bar as high as its probability.
  glob = os.path.join(photos, '1*.png')
  with saved_figures() as figures:
    one = predict.predict_images(config, workdir, [glob], pictures=True)
  assert list(map(os.path.basename, one['paths'])) == ['12.png']
  name = predict.output_name([glob])
  assert re.fullmatch(r'photos_1_.png-[0-9a-f]{6}', name)
  with open(os.path.join(workdir, f'predictions_{name}.csv')) as f:
    assert [r['path'] for r in csv.DictReader(f)] == list(one['paths'])
  with open(os.path.join(workdir, 'predictions_photos.csv')) as f:
    assert len(list(csv.DictReader(f))) == 4
  fig = figures[f'prediction_{name}.png']
  picture, ax = fig.axes
  assert [t.get_text() for t in ax.get_xticklabels()] == ['cats', 'dogs']
  assert ax.get_title() == f'12.png: dogs {_p_dog(COLOURS["12"]):.4f}'
  pixels = pixels_of(os.path.join(workdir, f'prediction_{name}.png'), fig)
  r0, r1, c0, c1 = box_of(picture, fig, margin=3)
  np.testing.assert_allclose(pixels[r0:r1, c0:c1].reshape(-1, 3).mean(0), COLOURS['12'], atol=2)
  assert box_of(picture, fig)[3] < box_of(ax, fig)[2]  # side by side
  bars = inside(ax, pixels) & near(pixels, ax.patches[0].get_facecolor(), tolerance=20)
  zero_row = to_pixel(ax, 0, 0)[0]
  for i, p in enumerate([1 - _p_dog(COLOURS['12']), _p_dog(COLOURS['12'])]):
    column = int(round(to_pixel(ax, i, 0)[1]))
    filled = np.nonzero(bars[:, column])[0]
    height = to_data(ax, filled.min(), column)[1] if len(filled) else 0.0
    assert height == pytest.approx(p, abs=0.01), (i, p)
    assert not len(filled) or filled.max() >= zero_row - 4  # from the axis up (the frame aside)
  # The grid of that one image: its title wraps to the narrow figure.
  (ax,) = tiles_of(figures[f'predictions_{name}.png'])
  assert ax.get_title() == 'dogs 0.9995\n12.png'
  pixels_of(os.path.join(workdir, f'predictions_{name}.png'), figures[f'predictions_{name}.png'])
  # The same input again: its files are replaced, and the log says so.
  with caplog.at_level('WARNING'):
    predict.predict_images(config, workdir, [glob])
  assert f'replacing {os.path.join(workdir, f"predictions_{name}.csv")}' in caplog.text


@pytest.mark.parametrize(
    'specs, name',
    [
        (['runs/photos/'], 'photos'),
        (['~/test1'], 'test1'),
        (['a b/c&d'], 'c_d'),
    ],
)
def test_outputs_are_named_after_the_inputs(specs, name):
  assert predict.output_name(specs) == name


def test_different_inputs_never_share_output_names(tmp_path):
  photo = tmp_path / 'cat.12.jpg'
  photo.write_bytes(b'')
  assert predict.output_name([str(photo)]) == 'cat.12'
  names = {
      predict.output_name(s)
      for s in (['x/*.jpg'], ['x/?.jpg'], ['x', 'y'], ['y', 'x'], ['x'], ['a' * 80], ['a' * 81])
  }
  assert len(names) == 7


def test_evaluate_names_unvalidated_checkpoints_and_the_step_flag(image_folder, tmp_path):
  config = _forced_config(image_folder, 'sigmoid')
  with pytest.raises(FileNotFoundError, match=r'No checkpoint in .*train first'):
    evaluate.restore_for_inference(config, str(tmp_path / 'empty'))
  exp = experiment.build(config, str(tmp_path / 'run'))
  exp.checkpoints.save(3, exp.init_state(), train.History().to_json(), metrics=None)
  exp.checkpoints.wait()
  exp.checkpoints.close()
  with pytest.raises(FileNotFoundError, match=r'No validated checkpoint .*steps \[3\].*--step=3'):
    evaluate.restore_for_inference(config, str(tmp_path / 'run'))
  assert evaluate.restore_for_inference(config, str(tmp_path / 'run'), step=3).step == 3
  with pytest.raises(FileNotFoundError, match=r'No checkpoint at step 4 .*steps \[3\]'):
    evaluate.restore_for_inference(config, str(tmp_path / 'run'), step=4)


def test_predict_refuses_paths_without_images_before_building_the_model(tmp_path):
  config = tiny_config(str(tmp_path / 'no-such-data'))
  with pytest.raises(DataError, match='missing.jpg.*not an image file, a folder or a glob'):
    predict.predict_images(config, str(tmp_path / 'run'), [str(tmp_path / 'missing.jpg')])
  (tmp_path / 'notes.txt').write_text('not an image')
  with pytest.raises(DataError, match='No usable image.*not an image file: 1'):
    predict.predict_images(config, str(tmp_path / 'run'), [str(tmp_path / 'notes.txt')])
  with pytest.raises(ConfigError, match='--images'):
    predict.predict_images(config, str(tmp_path / 'run'), [])


def test_kaggle_csv_needs_a_dog_class():
  assert predict.dog_index(['Cat', 'Dog']) == 1 and predict.kaggle_id('test1/1234.jpg') == '1234'
  with pytest.raises(ConfigError, match=r"probability of \"dog\".*\['cars', 'planes'\]"):
    predict.dog_index(['cars', 'planes'])


def test_evaluate_reports_per_class_metrics_and_the_top_losses(tmp_path):
  data = tmp_path / 'data'
  for split in ('train', 'validation', 'test'):
    _colour_folder(
        data / split / 'cats', {f'c{i}': (200 - 40 * i, 40, 60 + 50 * i) for i in range(4)}
    )
    _colour_folder(
        data / split / 'dogs', {f'd{i}': (200 - 60 * i, 40, 90 + 60 * i) for i in range(3)}
    )
  config = _forced_config(str(data), 'softmax')
  config.batch_size = 4  # 7 test images: the last batch is padded
  workdir = _forced_workdir(config, tmp_path / 'run')
  with saved_figures() as figures:
    result = evaluate.evaluate_checkpoint(config, workdir, 'test', top_losses=4)
  # cats c0,c1 (red) right, c2,c3 (blue) wrong; dogs d0 wrong, d1,d2 right.
  assert result['confusion'] == [[2, 2], [1, 2]]
  assert result['per_class']['cats']['precision'] == pytest.approx(2 / 3)
  assert result['per_class']['dogs']['recall'] == pytest.approx(2 / 3)
  with open(os.path.join(workdir, 'eval_test.json')) as f:
    assert json.load(f)['per_class'] == result['per_class']
  # Test-time flipping writes its own file beside the plain one (this model is mirror-blind).
  flipped = evaluate.evaluate_checkpoint(
      override(config.copy_and_resolve_references(), eval_flip=True), workdir, 'test'
  )
  with open(os.path.join(workdir, 'eval_test_flip.json')) as f:
    assert json.load(f)['eval_flip'] is True
  with open(os.path.join(workdir, 'eval_test.json')) as f:
    assert json.load(f)['eval_flip'] is False
  assert flipped['confusion'] == result['confusion']

  restored = evaluate.restore_for_inference(config, workdir)
  exp, state = restored.exp, restored.state
  predicted = evaluate.predictions(exp, state, exp.pipeline('test'), keep_images=4)
  probs, losses, labels = predicted.probabilities, predicted.losses, predicted.labels
  top = [(t.loss, t.index, t.image) for t in predicted.top_losses]
  assert list(labels) == [0, 0, 0, 0, 1, 1, 1]
  assert [i for _, i, _ in top] == list(np.argsort(-losses, kind='stable')[:4])
  assert [loss for loss, _, _ in top] == pytest.approx(
      -np.log(probs[np.arange(7), labels])[np.argsort(-losses, kind='stable')[:4]], rel=1e-4
  )
  assert top[0][2].shape == (SIZE, SIZE, 3)
  # The picture: c3, d0, c2 (wrong, titles in red), then d1 (right, the least sure), in that order.
  fig = figures['top_losses_test.png']
  pixels = pixels_of(os.path.join(workdir, 'top_losses_test.png'), fig)
  tiles = tiles_of(fig)
  assert len(tiles) == 4
  names = ['cats', 'dogs']
  for ax, (loss, index, image) in zip(tiles, top):
    labels_line, numbers = ax.get_title().split('\n')
    assert labels_line == f'{names[np.argmax(probs[index])]}/{names[labels[index]]}'
    shown_loss, shown_p = map(float, re.fullmatch(r'loss (\S+) p (\S+)', numbers).groups())
    assert shown_loss == pytest.approx(loss, rel=1e-2)
    assert shown_p == pytest.approx(probs[index].max(), abs=1e-3)
    r0, r1, c0, c1 = box_of(ax, fig)
    np.testing.assert_allclose(pixels[(r0 + r1) // 2, (c0 + c1) // 2], image[0, 0], atol=2)
    r0, r1, c0, c1 = box_of(ax.title, fig)
    red = near(pixels[r0:r1, c0:c1], 'red', tolerance=80).sum()
    assert (red > 20) if np.argmax(probs[index]) != labels[index] else (red == 0), (index, red)
  assert [t.get_title().split('\n')[0] for t in tiles] == [
      'dogs/cats',
      'cats/dogs',
      'dogs/cats',
      'dogs/dogs',
  ]


def test_eval_flip_averages_the_logits_of_an_image_and_its_mirror(tmp_path):
  config = tiny_mlp_config(str(tmp_path), SIZE, loss='softmax')
  model = models.create_model(config)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((1, SIZE, SIZE, 3), np.float32))
  state = types.SimpleNamespace(params=variables['params'], batch_stats={}, ema={})
  images = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
  plain = make_predict_step(model, config)
  flip = make_predict_step(model, override(config.copy_and_resolve_references(), eval_flip=True))
  batch = lambda x: {'image': x, 'label': np.zeros(len(x), np.int32)}
  p, mirrored = (plain(state, batch(x))['probabilities'] for x in (images, images[:, :, ::-1]))
  assert np.abs(p - mirrored).max() > 1e-3  # the model itself tells an image from its mirror
  # Softmax of the mean logits = normalised geometric mean of the two probabilities.
  expected = np.sqrt(p * mirrored)
  expected /= expected.sum(axis=1, keepdims=True)
  both = flip(state, batch(images))['probabilities']
  np.testing.assert_allclose(both, expected, rtol=1e-5)
  np.testing.assert_allclose(
      flip(state, batch(images[:, :, ::-1]))['probabilities'], both, rtol=1e-6
  )


# ----------------------------------------------------------------- curves


def test_curves_mark_learning_rate_changes_and_write_a_png(tmp_path):
  rows = log_rows()
  assert curves.learning_rate_changes(rows) == [(4, 1e-4), (7, 1e-5)]
  epoch_log.write_csv(str(tmp_path / epoch_log.LOG_CSV), rows)
  assert _png_size(curves.write_curves(str(tmp_path))) == (1200, 450)
  with pytest.raises(FileNotFoundError, match='No log.csv'):
    curves.write_curves(str(tmp_path / 'elsewhere'))


# ----------------------------------------------------------------- summary


@pytest.mark.parametrize(
    'module,size,total,stats,first_row',
    [
        (small_cnn, 150, 3_453_121, 0, ('conv1', '(None, 148, 148, 32)', '896')),
        (vgg16, 224, 138_357_544, 0, ('block1_conv1', '(None, 224, 224, 64)', '1,792')),
        (resnet50, 224, 25_557_032, 53_120, ('conv1', '(None, 112, 112, 64)', '9,408')),
    ],
)
def test_summary_has_the_spec_totals_and_keras_like_rows(module, size, total, stats, first_row):
  config = module.get_config()
  config.data.image_size = size
  if module is vgg16 or module is resnet50:
    config.data.num_classes, config.loss = 1000, 'softmax'
  text = summary_tool.config_summary(config)
  assert (
      f'total parameters: {total:,} (trainable {total:,}, frozen 0); BatchNorm statistics: '
      f'{stats:,}' in text
  )
  lines = text.splitlines()
  assert lines[3].split() == [first_row[0], *first_row[1].split(), first_row[2]]
  rows = [line.split() for line in lines[3:-2]]
  assert sum(int(r[-1].replace(',', '')) for r in rows) == total


def test_summary_splits_trainable_and_frozen():
  config = vgg16_finetune.get_config()
  text = summary_tool.config_summary(config)
  assert 'total parameters: 16,812,353 (trainable 9,177,089, frozen 7,635,264)' in text
  config = efficientnet_b0_transfer.get_config()
  model = models.create_model(config)
  shape = (config.data.image_size,) * 2 + (3,)
  text = summary.model_summary(
      model, abstract_variables(model, shape), shape, frozen=lambda path: is_frozen(path, config)
  )
  assert 'frozen 4,007,548' in text and 'Keras counts them as non-trainable' in text
  # train_from: block6a_expand_conv and everything after it train: block6a 224,160 + block6b-d
  # 3 x 476,160 + block7a 605,440 + top_conv 409,600 + top_bn 2,560 + head 1,281.
  text = summary_tool.config_summary(efficientnet_lite0_finetune.get_config())
  assert 'total parameters: 3,372,289 (trainable 2,671,521, frozen 700,768)' in text


# ----------------------------------------------------------------- inside the network


def test_feature_maps_are_the_layer_outputs_and_bad_layers_are_refused(
    make_config, tmp_path, image_folder
):
  config = make_config()
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  restored = evaluate.restore_for_inference(config, workdir)
  exp, state = restored.exp, restored.state
  images = exp.pipeline('test').eval_batches().__next__()['image'][:2]
  maps = layer_views.layer_activations(
      exp.model, exp.config, {'params': state.params}, images, ['conv1']
  )
  kernel, bias = (np.asarray(state.params['conv1'][k]) for k in ('kernel', 'bias'))
  x = images.astype(np.float32) / 255
  expected = (
      jax.lax.conv_general_dilated(
          x, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
      )
      + bias
  )
  np.testing.assert_allclose(maps['conv1'], np.maximum(expected, 0), atol=1e-5)

  image = os.path.join(image_folder, 'test', 'dogs', 'dogs.0.jpg')
  written = layer_views.write_feature_maps(config, workdir, ['conv2'], [image])
  assert [os.path.basename(p) for p in written] == ['feature_maps_conv2_dogs.0.png']
  assert _png_size(written[0]) == (880, 940)  # 64 channels: 8 rows of 8
  with pytest.raises(ConfigError, match="no layer 'block1_conv2'.*conv1, conv2, conv3, conv4"):
    layer_views.write_feature_maps(config, workdir, ['block1_conv2'], [image])
  with pytest.raises(ConfigError, match=r"'dense1' outputs \(None, 512\), not a feature map"):
    layer_views.write_feature_maps(config, workdir, ['dense1'], [image])

  path = layer_views.write_filters(config, workdir)
  assert _png_size(path) == (640, 380)  # 32 kernels: 4 rows of 8


# ----------------------------------------------------------------- lr_find


def _files(workdir):
  found = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        found[os.path.relpath(path, workdir)] = hashlib.sha256(f.read()).hexdigest()
  return found


def test_lr_find_suggests_a_rate_that_trains_and_leaves_the_workdir_alone(image_folder, tmp_path):
  config = tiny_mlp_config(
      image_folder, **{'lr_find.num_steps': 60, 'lr_find.min_lr': 1e-6, 'lr_find.max_lr': 1.0}
  )
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(
      override(config.copy_and_resolve_references(), **{'optimizer.learning_rate': 1e-6}), workdir
  )
  before = _files(workdir)
  result = lr_find.range_test(config, workdir)
  after = _files(workdir)
  assert set(after) - set(before) == {lr_find.LR_FIND_PNG, lr_find.LR_FIND_JSON}
  assert {k: after[k] for k in before} == before  # checkpoints, log, config untouched
  assert _png_size(os.path.join(workdir, lr_find.LR_FIND_PNG)) == (800, 500)
  lrs = np.asarray(result['learning_rates'])
  np.testing.assert_allclose(lrs[[0, 1]], [1e-6, 1e-6 * 1e6 ** (1 / 59)], rtol=1e-5)

  suggested = result['suggestions']['steepest']
  assert 1e-6 < suggested < 1.0
  # A short run at the suggested rate, from a fresh start, lowers the training loss.
  short = override(
      config.copy_and_resolve_references(),
      **{'optimizer.learning_rate': suggested, 'num_epochs': 4},
  )
  history = train.train_and_evaluate(short, str(tmp_path / 'short'))
  losses = [row['loss'] for row in history.epochs]
  assert losses[-1] < 0.8 * losses[0], (suggested, losses)


def test_lr_find_settings_are_checked():
  config = small_cnn.get_config()
  config.lr_find.min_lr = 20.0  # above max_lr
  with pytest.raises(ConfigError, match='min_lr < max_lr'):
    summary_tool.config_summary(config)
