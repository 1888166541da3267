"""Exact evaluation of a state on a split, and of a workdir's best checkpoint."""

import json
import os
from typing import Any, Dict, Optional

import jax
import numpy as np
from absl import logging

from catsdogs_jax import experiment, parallel
from catsdogs_jax.steps import make_eval_step


def run_eval(eval_step, state, pipeline, mesh) -> Dict[str, Any]:
  """Loss, accuracy and confusion matrix over every image of `pipeline` exactly once."""
  total = None
  for batch in parallel.prefetch_to_mesh(pipeline.eval_batches(), mesh):
    metrics = eval_step(state, batch)
    total = metrics if total is None else total.merge(metrics)
  result = jax.device_get(total.compute())
  confusion = np.asarray(result['confusion'])
  return {'loss': float(result['loss']), 'accuracy': float(result['accuracy']),
          'confusion': confusion.tolist(), 'num_images': int(confusion.sum())}


def format_result(result: Dict[str, Any], class_names) -> str:
  lines = [f'images {result["num_images"]}  loss {result["loss"]:.4f}  '
           f'accuracy {result["accuracy"]:.4f}', 'confusion (rows: true, columns: predicted)']
  width = max(len(n) for n in class_names) + 2
  lines.append(' ' * width + ''.join(f'{n:>{width}}' for n in class_names))
  for name, row in zip(class_names, result['confusion']):
    lines.append(f'{name:<{width}}' + ''.join(f'{v:>{width}}' for v in row))
  return '\n'.join(lines)


def evaluate_checkpoint(config, workdir: str, split: str = 'test',
                        step: Optional[int] = None) -> Dict[str, Any]:
  """Evaluates the best checkpoint of `workdir` (or `step`) on a split; writes eval_<split>.json."""
  from catsdogs_jax.input_pipeline import config_splits
  splits = config_splits(config)
  if split not in splits:
    raise ValueError(f'Unknown split {split!r}; choose one of {", ".join(splits)}.')
  exp = experiment.build(config, workdir, read_only=True)
  config = exp.config
  step = exp.checkpoints.best_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {workdir!r}: train first '
                            f'(python main.py --config=... --workdir={workdir}).')
  state, _ = exp.checkpoints.restore(step, exp.abstract_state())
  eval_step = parallel.jit_eval_step(make_eval_step(exp.model, config), exp.mesh)
  result = run_eval(eval_step, state, exp.pipeline(splits[split]), exp.mesh)
  result.update(split=splits[split], step=int(step), class_names=list(exp.info.class_names))
  logging.info('evaluation of step %d on %s:\n%s', step, splits[split],
               format_result(result, exp.info.class_names))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f'eval_{split}.json'), 'w') as f:
      json.dump(result, f, indent=1)
  return result
