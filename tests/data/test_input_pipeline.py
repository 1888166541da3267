"""Input pipeline: exact evaluation, deterministic order, process sharding, bad folders."""

import os

import numpy as np
import pytest

from catsdogs_jax.data import input_pipeline

from conftest import make_image_folder, tiny_config


def _labels_and_masks(pipeline):
  batches = list(pipeline.eval_batches())
  return (
      batches,
      np.concatenate([b['label'] for b in batches]),
      np.concatenate([b['mask'] for b in batches]),
  )


def test_eval_counts_every_image_exactly_once(image_folder):
  config = tiny_config(image_folder, batch_size=4)  # 10 images: batches of 4, 4, 2+2 padding
  pipe = input_pipeline.ImagePipeline(config, 'validation', ('cats', 'dogs'))
  batches, labels, masks = _labels_and_masks(pipe)
  assert [len(b['label']) for b in batches] == [4, 4, 4]
  assert masks.tolist() == [1] * 10 + [0, 0]
  assert labels[:10].tolist() == [0] * 5 + [1] * 5
  assert batches[0]['image'].dtype == np.uint8
  assert batches[0]['image'].shape == (4, 48, 48, 3)


def test_processes_read_disjoint_parts_and_pad_to_equal_batch_counts(image_folder):
  config = tiny_config(image_folder, batch_size=6)  # 10 images, 3 processes of batch 2
  everything = _labels_and_masks(
      input_pipeline.ImagePipeline(
          config, 'validation', ('cats', 'dogs'), process_index=0, process_count=1
      )
  )[0]
  fingerprint = lambda batches: sorted(
      int(x) for b in batches for x in b['image'][b['mask'] == 1].sum(axis=(1, 2, 3))
  )
  parts, batch_counts = [], []
  for index in range(3):
    pipe = input_pipeline.ImagePipeline(
        config, 'validation', ('cats', 'dogs'), process_index=index, process_count=3
    )
    batches, _, masks = _labels_and_masks(pipe)
    batch_counts.append(len(batches))
    assert int(masks.sum()) == pipe.num_examples
    parts.extend(fingerprint(batches))
  assert pipe.examples_per_process == [4, 3, 3]
  assert batch_counts == [2, 2, 2]  # every process steps together
  assert sorted(parts) == fingerprint(everything)  # disjoint, and nothing missing


def test_train_order_depends_only_on_seed_and_epoch(image_folder):
  config = tiny_config(image_folder)
  pipe = input_pipeline.ImagePipeline(config, 'train', ('cats', 'dogs'))
  epoch = lambda p, e, skip=0: [
      b['image'].sum(axis=(1, 2, 3)).tolist() for b in p.train_epoch(e, skip)
  ]
  first = epoch(pipe, 0)
  assert len(first) == pipe.steps_per_epoch == 3
  again = input_pipeline.ImagePipeline(config, 'train', ('cats', 'dogs'))
  assert epoch(again, 0) == first  # a new program sees the same order
  assert epoch(pipe, 1) != first  # the next epoch is reshuffled
  assert epoch(pipe, 0, skip=1) == first[1:]  # resuming mid-epoch
  config.seed = 1
  assert epoch(input_pipeline.ImagePipeline(config, 'train', ('cats', 'dogs')), 0) != first


def test_describe_counts_splits_and_classes(image_folder):
  info = input_pipeline.describe(tiny_config(image_folder))
  assert info.class_names == ('cats', 'dogs')
  assert info.num_examples == {'train': 24, 'validation': 10, 'test': 10}


def test_nested_folders_and_case_are_read_non_images_ignored(tmp_path):
  root = make_image_folder(tmp_path, counts=(('train', 4), ('validation', 2), ('test', 2)))
  nested = os.path.join(root, 'train', 'cats', 'more')
  os.makedirs(nested)
  os.rename(os.path.join(root, 'train', 'cats', 'cats.0.jpg'), os.path.join(nested, 'X.JPG'))
  open(os.path.join(root, 'train', 'dogs', 'notes.txt'), 'w').write('not an image')
  open(os.path.join(root, 'train', 'dogs', '.hidden.jpg'), 'w').write('')
  info = input_pipeline.describe(tiny_config(root))
  assert info.num_examples['train'] == 4


def test_missing_folder_names_the_path_and_layout(tmp_path):
  with pytest.raises(input_pipeline.DataError, match=r'does not exist.*split/label/image'):
    input_pipeline.describe(tiny_config(tmp_path / 'nowhere'))


def test_missing_split_lists_the_splits_found(tmp_path):
  root = make_image_folder(tmp_path, counts=(('train', 4), ('test', 2)))
  with pytest.raises(
      input_pipeline.DataError, match=r"no split folder 'validation' \(found: test, train\)"
  ):
    input_pipeline.describe(tiny_config(root))


def test_empty_split_is_an_error(tmp_path):
  root = make_image_folder(tmp_path, counts=(('train', 4), ('validation', 2), ('test', 2)))
  for name in ('cats', 'dogs'):
    for f in os.listdir(os.path.join(root, 'test', name)):
      os.remove(os.path.join(root, 'test', name, f))
  with pytest.raises(input_pipeline.DataError, match=r"Split 'test' .* holds no usable image"):
    input_pipeline.describe(tiny_config(root))


def test_unprepared_tfds_dataset_says_how_to_use_a_folder(tmp_path):
  config = tiny_config(tmp_path)
  config.data.dataset, config.data.data_dir, config.data.download = (
      'cats_vs_dogs',
      str(tmp_path),
      False,
  )
  with pytest.raises(input_pipeline.DataError) as error:
    input_pipeline.describe(config)
  message = str(error.value)
  assert '--config.data.dataset=folder:PATH' in message
  assert input_pipeline.CATS_VS_DOGS_ZIP in message and 'downloads/manual' in message


def test_unknown_tfds_name_is_an_error(tmp_path):
  config = tiny_config(tmp_path)
  config.data.dataset = 'cats_and_dogz'
  with pytest.raises(input_pipeline.DataError, match="Unknown dataset 'cats_and_dogz'"):
    input_pipeline.describe(config)


def _tfds_config(tmp_path, name):
  config = tiny_config(tmp_path)
  config.data.dataset, config.data.data_dir, config.data.download = name, str(tmp_path), False
  return config


def test_unknown_tfds_name_is_one_line_with_the_close_names(tmp_path):
  with pytest.raises(input_pipeline.DataError) as error:
    input_pipeline.describe(_tfds_config(tmp_path, 'cats_vs_dog'))
  message = str(error.value)
  assert message.startswith("Unknown dataset 'cats_vs_dog': tfds has no dataset of that name")
  assert "(did you mean 'cats_vs_dogs'?)" in message and '\n' not in message


def test_a_folder_named_without_its_prefix_is_told_the_prefix(tmp_path):
  root = make_image_folder(tmp_path / 'images', counts=(('train', 2),))
  with pytest.raises(input_pipeline.DataError) as error:
    input_pipeline.describe(_tfds_config(tmp_path, root))
  message = str(error.value)
  assert message.startswith(f'Unknown dataset {root!r}: not a valid tfds name')
  assert f'pass --config.data.dataset=folder:{root}' in message and '\n' not in message


@pytest.mark.parametrize(
    'name, error, message',
    [
        ('mnist/no_such_config', ValueError, 'BuilderConfig no_such_config not found'),
        ('mnist:9.0.0', AssertionError, 'cannot be loaded at version 9.0.0'),
    ],
)
def test_a_known_dataset_with_a_bad_config_or_version_is_not_unknown(
    tmp_path, name, error, message
):
  with pytest.raises(error, match=message) as raised:
    input_pipeline.describe(_tfds_config(tmp_path, name))
  assert not isinstance(raised.value, input_pipeline.DataError)  # tfds' own error, unchanged
