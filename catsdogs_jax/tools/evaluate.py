"""Exact evaluation of a state on a split, and of a workdir's best checkpoint."""

import dataclasses
import heapq
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from absl import logging

from catsdogs_jax.data.preprocessing import get_preprocessor
from catsdogs_jax.runtime import checkpointing, parallel, workdir_files
from catsdogs_jax.tools import plots
from catsdogs_jax.training import experiment
from catsdogs_jax.training.config_checks import ConfigError
from catsdogs_jax.training.steps import (
    inference_variables,
    make_eval_step,
    make_predict_step,
    run_eval,
)

TOP_LOSSES_FILE = 'top_losses_{split}.png'


def per_class_metrics(confusion, class_names: Sequence[str]) -> Dict[str, Dict[str, float]]:
  """Precision, recall, F1 and support per class from a [true, predicted] confusion matrix.

  A ratio with nothing to count (no prediction of a class, no image of it) is 0,
  as scikit-learn's `zero_division=0`.
  """
  confusion = np.asarray(confusion, np.int64)
  true_positives = np.diag(confusion)
  ratio = lambda a, b: np.divide(a, b, out=np.zeros(len(a)), where=b > 0)
  precision = ratio(true_positives, confusion.sum(axis=0))
  recall = ratio(true_positives, confusion.sum(axis=1))
  f1 = ratio(2 * precision * recall, precision + recall)
  return {
      name: {'precision': float(p), 'recall': float(r), 'f1': float(f), 'support': int(s)}
      for name, p, r, f, s in zip(class_names, precision, recall, f1, confusion.sum(axis=1))
  }


def format_result(result: Dict[str, Any], class_names) -> str:
  lines = [
      f'images {result["num_images"]}  loss {result["loss"]:.4f}  '
      f'accuracy {result["accuracy"]:.4f}',
      'confusion (rows: true, columns: predicted)',
  ]
  width = max(max(len(n) for n in class_names) + 2, 11)
  lines.append(' ' * width + ''.join(f'{n:>{width}}' for n in class_names))
  for name, row in zip(class_names, result['confusion']):
    lines.append(f'{name:<{width}}' + ''.join(f'{v:>{width}}' for v in row))
  if 'per_class' in result:
    columns = ('precision', 'recall', 'f1', 'support')
    lines.append(' ' * width + ''.join(f'{c:>{width}}' for c in columns))
    for name, m in result['per_class'].items():
      lines.append(
          f'{name:<{width}}'
          + ''.join(f'{m[c]:>{width}.4f}' for c in columns[:3])
          + f'{m["support"]:>{width}}'
      )
  return '\n'.join(lines)


def inference_state(exp, step: Optional[int] = None) -> Tuple[Any, int]:
  """(state, step) of the workdir's best checkpoint (or `step`), read only.

  Without any checkpoint, a config with `init_from` gives its initial state
  (step 0): the pretrained weights, e.g. to look inside ImageNet's VGG16.
  """
  steps = exp.checkpoints.all_steps()
  explicit = step is not None
  step = exp.checkpoints.best_step() if step is None else step
  if step is None:
    if exp.config.init_from and not steps:
      logging.info(
          'no checkpoint in %s: using the weights of init_from=%s',
          exp.workdir,
          exp.config.init_from,
      )
      return exp.init_state(), 0
    if steps:  # saved in the middle of an epoch (a stop, a preemption), or validated to NaN
      raise FileNotFoundError(
          f'No validated checkpoint in {exp.workdir!r}: its checkpoints (steps {steps}) were saved '
          'in the middle of an epoch, or their validation metrics were not finite, so none is '
          'the best. Resume training with the same command to finish the epoch, or pass '
          f'--step={steps[-1]} to use one of them as it is.'
      )
    raise FileNotFoundError(
        f'No checkpoint in {exp.workdir!r}: train first '
        f'(python main.py --config=... --workdir={exp.workdir}).'
    )
  if step not in steps:
    raise FileNotFoundError(
        f'No checkpoint at step {step} in {exp.workdir!r}; there are '
        f'checkpoints at steps {steps}.'
    )
  try:
    state, _ = exp.checkpoints.restore(step, exp.abstract_state())
  except checkpointing.DamagedCheckpointError as e:
    if explicit:
      raise
    # As training does: the newest checkpoint that restores, said out loud (read only:
    # nothing is moved; the next training run sets the damaged one aside).
    for other in reversed([s for s in steps if s != step]):
      try:
        state, _ = exp.checkpoints.restore(other, exp.abstract_state())
      except checkpointing.DamagedCheckpointError:
        continue
      logging.warning(
          'The best checkpoint (step %d) in %s is damaged: %s; using step %d, the newest '
          'that restores.',
          step,
          exp.workdir,
          e.reason,
          other,
      )
      return state, other
    raise
  return state, step


@dataclasses.dataclass
class Restored:
  """A workdir's run built read only, and the state of one of its checkpoints."""

  exp: experiment.Experiment
  state: Any
  step: int  # 0: the init_from weights, before any training

  @property
  def config(self):
    return self.exp.config

  @property
  def model(self):
    return self.exp.model

  @property
  def variables(self) -> Dict[str, Any]:
    """{'params', 'batch_stats'}: `model.apply(variables, images, train=False)`; with
    config.ema, the average of the weights (what validation chose the checkpoint by)."""
    variables = inference_variables(self.state)
    return {'batch_stats': {}, **variables}

  @property
  def preprocess(self) -> Callable:
    """uint8 images [N, H, W, C] -> the model's input, as the run trained it."""
    return get_preprocessor(self.exp.config.data.preprocess)


def restore_for_inference(
    config, workdir: str, step: Optional[int] = None, roles: Optional[Sequence[str]] = ()
) -> Restored:
  """The run of `workdir` (read only) at checkpoint `step` (default: the best); `roles`: the
  splits of config.data the caller reads, checked (None: all; `experiment.build`)."""
  exp = experiment.build(config, workdir, read_only=True, roles=roles)
  return Restored(exp, *inference_state(exp, step))


def restore(workdir: str, step: Optional[int] = None, config=None) -> Restored:
  """A trained run for your own code, from its workdir alone (its config.json, unless `config`).

  run = evaluate.restore('runs/small_cnn')
  logits = run.model.apply(run.variables, run.preprocess(images), train=False)
  """
  config = workdir_files.read_run_config(workdir) if config is None else config
  return restore_for_inference(config, workdir, step)


@dataclasses.dataclass
class TopLoss:
  """One of the images with the largest losses."""

  loss: float
  index: int  # in the pipeline's order
  image: np.ndarray  # [H, W, C] as the model saw it, before preprocessing


@dataclasses.dataclass
class Predictions:
  """Per-image results over a pipeline, in its order."""

  probabilities: np.ndarray  # [N, C]
  losses: np.ndarray  # [N], against the labels (meaningless where they are unknown)
  labels: np.ndarray  # [N]
  top_losses: List[TopLoss]  # by decreasing loss (`keep_images` of them)


def predictions(exp, state, pipeline, keep_images: int = 0) -> Predictions:
  """Per-image probabilities, losses and labels in the pipeline's order.

  With `keep_images` > 0, also the images of the `keep_images` largest losses,
  kept on the fly so the split never sits in memory.
  """
  if jax.process_count() > 1:
    raise ConfigError(
        'Per-image predictions run as a single process; start this mode without jax.distributed.'
    )
  step = parallel.jit_eval_step(make_predict_step(exp.model, exp.config), exp.mesh)
  probs, losses, labels, top, seen = [], [], [], [], 0
  for batch in pipeline.eval_batches():
    out = jax.device_get(step(state, parallel.shard_batch(batch, exp.mesh)))
    real = batch['mask'] > 0
    probs.append(out['probabilities'][real])
    losses.append(out['loss'][real])
    labels.append(batch['label'][real] if 'label' in batch else np.zeros(int(real.sum()), int))
    for i in (np.flatnonzero(real) if keep_images else ()):
      # A min-heap of the largest losses; on equal losses the earlier image stays.
      item = (float(out['loss'][i]), -(seen + int(i)), batch['image'][i])
      (heapq.heappush if len(top) < keep_images else heapq.heappushpop)(top, item)
    seen += int(real.sum())
  top = [
      TopLoss(loss, -neg, image) for loss, neg, image in sorted(top, key=lambda t: (-t[0], -t[1]))
  ]
  return Predictions(np.concatenate(probs), np.concatenate(losses), np.concatenate(labels), top)


def write_top_losses(predicted: Predictions, class_names, path: str, split: str) -> str:
  """A grid of the images the model gets most wrong: predicted/actual, loss, probability."""
  probs, labels, top = predicted.probabilities, predicted.labels, predicted.top_losses
  titles, colors = [], []
  for item in top:
    guess = int(np.argmax(probs[item.index]))
    titles.append(
        f'{class_names[guess]}/{class_names[labels[item.index]]}\n'
        f'loss {item.loss:.3g} p {probs[item.index][guess]:.3f}'
    )
    colors.append('red' if guess != labels[item.index] else 'black')
  return plots.image_grid(
      [item.image for item in top],
      titles,
      path,
      title_colors=colors,
      suptitle=f'Top {len(top)} losses on {split} '
      '(predicted/actual, loss, probability of the prediction)',
  )


def data_tag(config, workdir: str) -> str:
  """'' when config.data.dataset is the one `workdir` trained on; else the other data's name (a
  folder's own name: 'closer' for folder:runs/shifted/closer), which its results are named by."""
  try:
    trained_on = workdir_files.read_run_config(workdir).data.dataset
  except workdir_files.WorkdirError:
    return ''
  dataset = config.data.dataset
  if dataset == trained_on:
    return ''
  if dataset.startswith('folder:'):
    return os.path.basename(os.path.normpath(os.path.expanduser(dataset[len('folder:') :])))
  return dataset.replace('/', '_').replace(':', '_')


def result_file(split: str, eval_flip: bool, tag: str = '') -> str:
  """eval_test.json; eval_test_flip.json with test-time flipping; eval_test@closer.json on
  other data than the run's (`data_tag`)."""
  return f'eval_{split}{"@" + tag if tag else ""}{"_flip" if eval_flip else ""}.json'


def evaluate_checkpoint(
    config, workdir: str, split: str = 'test', step: Optional[int] = None, top_losses: int = 0
) -> Dict[str, Any]:
  """Evaluates the best checkpoint of `workdir` (or `step`) on a split; writes `result_file`.

  With `config.eval_flip` the file is eval_<split>_flip.json, beside the plain result;
  on other data than the run trained on (a shifted copy of its test photos, your
  own), eval_<split>@<name>.json, beside the run's own result.
  """
  from catsdogs_jax.data.input_pipeline import config_splits

  splits = config_splits(config)
  if split not in splits:
    raise ConfigError(f'Unknown split {split!r}; choose one of {", ".join(splits)}.')
  restored = restore_for_inference(config, workdir, step, roles=(split,))
  exp, state, step = restored.exp, restored.state, restored.step
  config, names = exp.config, list(exp.info.class_names)
  pipeline = exp.pipeline(splits[split])
  eval_step = parallel.jit_eval_step(make_eval_step(exp.model, config), exp.mesh)
  result = run_eval(eval_step, state, pipeline, exp.mesh)
  tag = data_tag(config, workdir)
  result.update(
      dataset=config.data.dataset,
      split=splits[split],
      step=int(step),
      run_config_hash=workdir_files.run_config_hash(workdir),
      class_names=names,
      eval_flip=config.eval_flip,
      per_class=per_class_metrics(result['confusion'], names),
  )
  if jax.process_index() == 0:  # a result: stdout, so `> results.txt` keeps it
    where = f'{splits[split]} of {config.data.dataset}' if tag else splits[split]
    print(f'evaluation of step {step} on {where}:\n{format_result(result, names)}')
    path = os.path.join(workdir, result_file(split, config.eval_flip, tag))
    with open(path, 'w') as f:
      json.dump(result, f, indent=1)
    logging.info('wrote %s', path)
  if top_losses:
    predicted = predictions(exp, state, pipeline, keep_images=top_losses)
    if jax.process_index() == 0:
      path = write_top_losses(
          predicted,
          names,
          os.path.join(workdir, TOP_LOSSES_FILE.format(split=f'{split}@{tag}' if tag else split)),
          splits[split],
      )
      logging.info('wrote %s', path)
  return result
