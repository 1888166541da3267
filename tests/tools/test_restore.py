"""A trained run from its workdir alone: config.json read back, the model and its variables."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from catsdogs_jax.runtime import workdir_files
from catsdogs_jax.tools import evaluate
from catsdogs_jax.training import train

from conftest import tiny_mlp_config

SIZE = 16


@pytest.fixture(scope='module')
def trained(image_folder, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('restore') / 'run')
  config = tiny_mlp_config(
      image_folder, SIZE, **{'optimizer.learning_rate': 3e-3, 'frozen': ('^nothing$',)}
  )
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_read_run_config_is_the_config_that_trained(trained):
  config, workdir = trained
  read = workdir_files.read_run_config(workdir)
  assert read.to_dict() == config.copy_and_resolve_references().to_dict()
  # JSON lists come back as the tuples the fields hold; the config stays locked.
  assert read.frozen == ('^nothing$',) and isinstance(read.data.flat_split_fractions, tuple)
  with pytest.raises(AttributeError):
    read.optimizer.lerning_rate = 1.0


def test_restore_from_the_workdir_alone_predicts_as_evaluation_does(trained):
  config, workdir = trained
  run = evaluate.restore(workdir)
  assert run.config.optimizer.learning_rate == pytest.approx(3e-3)
  assert run.step == run.exp.checkpoints.best_step() > 0
  pipeline = run.exp.pipeline('test')
  batch = next(iter(pipeline.eval_batches()))
  logits = run.model.apply(run.variables, run.preprocess(batch['image']), train=False)
  expected = evaluate.predictions(run.exp, run.state, pipeline).probabilities
  real = int(batch['mask'].sum())
  np.testing.assert_allclose(jax.nn.softmax(logits)[:real], expected[:real], rtol=1e-5, atol=1e-6)


def test_a_config_json_this_code_cannot_read_names_the_field(trained, tmp_path):
  _, workdir = trained
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  saved['optimizer']['lerning_rate'] = 0.1
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  with pytest.raises(workdir_files.WorkdirError, match=r'has field optimizer\.lerning_rate=0\.1'):
    workdir_files.read_run_config(str(tmp_path))


def test_fields_added_since_a_run_are_at_their_defaults(trained, tmp_path):
  """A run from before a field existed had its default: that is no difference to refuse."""
  config, workdir = trained
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  del saved['model']['layers'], saved['augment']['interpolation'], saved['eval_flip']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  workdir_files.check_after_training_config(str(tmp_path), config, {})  # model.* would be refused
  read = workdir_files.read_run_config(str(tmp_path))
  assert read.to_dict() == config.copy_and_resolve_references().to_dict()
  # A changed model field is still refused, by name.
  changed = config.copy_and_resolve_references()
  changed.model.dropout_rate = 0.5
  with pytest.raises(workdir_files.WorkdirError, match=r'model\.dropout_rate: 0\.0 -> 0\.5'):
    workdir_files.check_after_training_config(str(tmp_path), changed, {})


class _Unlabelled:
  """A pipeline of new photos: images and the padding mask, no labels."""

  def __init__(self, batches):
    self.batches = batches

  def eval_batches(self):
    return iter(self.batches)


def test_predictions_need_no_labels(trained):
  _, workdir = trained
  run = evaluate.restore(workdir)
  labelled = list(run.exp.pipeline('test').eval_batches())
  unlabelled = [{k: v for k, v in b.items() if k != 'label'} for b in labelled]
  got = evaluate.predictions(run.exp, run.state, _Unlabelled(unlabelled))
  expected = evaluate.predictions(run.exp, run.state, _Unlabelled(labelled))
  np.testing.assert_array_equal(got.probabilities, expected.probabilities)
  assert not got.labels.any() and not got.losses.any()


def test_a_folder_of_test_photos_alone_is_evaluated_beside_the_run_s_own_result(
    trained, image_folder, tmp_path
):
  """Training writes the classes and split sizes it read, so other photos need no training split;
  their result is named after them, beside the run's own, and compare shows both."""
  from catsdogs_jax.data.folders import DataError
  from catsdogs_jax.tools import compare, shifted

  config, workdir = trained
  with open(os.path.join(workdir, workdir_files.DATASET_FILE)) as f:
    assert json.load(f) == {
        'class_names': ['cats', 'dogs'],
        'num_examples': {'train': 24, 'validation': 10, 'test': 10},
    }
  own = evaluate.evaluate_checkpoint(config, workdir, 'test')
  with open(os.path.join(workdir, 'eval_test.json')) as f:
    own_file = f.read()
  closer = str(tmp_path / 'closer')  # closer/test/{cats,dogs}: no train or validation folder
  shifted.write_shifted_split(os.path.join(image_folder, 'test'), closer, shifted.SHIFTS['closer'])
  other = config.copy_and_resolve_references()
  other.data.dataset = f'folder:{closer}'
  result = evaluate.evaluate_checkpoint(other, workdir, 'test')
  assert sum(map(sum, result['confusion'])) == 10 and result['dataset'] == f'folder:{closer}'
  with open(os.path.join(workdir, 'eval_test@closer.json')) as f:
    assert json.load(f)['accuracy'] == result['accuracy']
  with open(os.path.join(workdir, 'eval_test.json')) as f:
    assert f.read() == own_file  # the run's own result is untouched
  rows, _ = compare.compare([workdir], out_dir=str(tmp_path / 'compared'))
  assert rows[0]['test_accuracy_mean'] == own['accuracy']
  assert rows[0]['test_accuracy@closer_mean'] == result['accuracy']
  assert 'test acc (closer)' in (tmp_path / 'compared' / 'compare.md').read_text()
  assert 'test_accuracy@closer_mean' in (tmp_path / 'compared' / 'compare.csv').read_text()
  # A run from before dataset.json still reads the training split, and says it is missing.
  old = tmp_path / 'old_run'
  shutil.copytree(workdir, old)
  os.remove(old / workdir_files.DATASET_FILE)
  with pytest.raises(DataError, match=r"has no split folder 'train'"):
    evaluate.evaluate_checkpoint(other, str(old), 'test')
