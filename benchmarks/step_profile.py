"""Where a train step's time goes on the CPU: each kind of XLA operation, and each oneDNN call.

  python benchmarks/step_profile.py [--model=vgg16] [--layers=onednn] [--dtype=float32] [--steps=3]
      [--json=FILE]

Builds the step `train_step.py` times (the same models, image sizes, batches and optimisers),
runs it under JAX's profiler and reads the trace (an XPlane protobuf, parsed with the schema
TensorFlow installs). Prints the step's time untraced and traced, then the time per step of
each kind of operation XLA ran, summed over the threads that ran them (names without their
numbers, so that the fusions of one kind add up), and, for each oneDNN call, its pass,
shapes, time and GFLOP/s against a float32 matmul measured in the same run. The measurement that decides
what to move into oneDNN next: an operation that takes little of the step gains little.
"""

import collections
import glob
import json
import os
import re
import sys
import tempfile

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from roofline import matmul_gflops, timed  # noqa: E402
from train_setups import SETUPS, benchmark_config, project_step  # noqa: E402

flags.DEFINE_enum('model', 'vgg16', list(SETUPS), "the model, at train_step.py's size and batch")
flags.DEFINE_string('layers', 'onednn', 'layer forms (config.model.layers)')
flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'compute dtype')
flags.DEFINE_integer('steps', 3, 'traced steps (after two warm-up steps)')
flags.DEFINE_string('json', None, 'write the results here as JSON')
FLAGS = flags.FLAGS

_SHAPE = re.compile(r'(?:f32|bf16)\[([\d,]+)\]')


def _shape(dims: str):
  return tuple(int(v) for v in dims.split(','))


def onednn_calls(hlo_text: str) -> dict:
  """{HLO name: (pass, output shape, operand shapes)} of the oneDNN custom calls in `hlo_text`.

  A call with several results (the kernel-and-bias gradient, a tuple) is named by its first.
  """
  from catsdogs_jax.models import onednn  # imports JAX: only after the restart in main()

  call = re.compile(
      r'%(?P<name>\S+) = (?P<out>\([^)]*\)|\S+) custom-call\(.*custom_call_target="'
      + re.escape(onednn.TARGET_PREFIX)
      + r'(?P<pass>\w+)", operand_layout_constraints=\{(?P<operands>.*?)\}, api_version'
  )
  calls = {}
  for line in hlo_text.splitlines():
    match = call.search(line)
    if match:
      out = _shape(_SHAPE.search(match['out']).group(1))
      operands = [_shape(s) for s in _SHAPE.findall(match['operands'])]
      calls[match['name']] = (match['pass'], out, operands)
  return calls


def call_flops(kind: str, out, operands) -> int:
  """Multiply-adds x 2 of one oneDNN call: every pass does the forward's."""
  a, b = operands
  y, w = {
      'forward': (out, b),
      'input_grad': (a, b),
      'kernel_grad': (b, out),
      'kernel_bias_grad': (b, out),
  }[kind]
  n, oh, ow, o = y
  kh, kw, c_per_group, _ = w
  return 2 * n * oh * ow * o * kh * kw * c_per_group


def instruction_names(hlo_text: str) -> set:
  """The names of every instruction in the compiled HLO module `hlo_text`."""
  return set(re.findall(r'^\s*(?:ROOT )?%(\S+) = ', hlo_text, re.MULTILINE))


def thunk_times(trace_dir: str, instructions: set):
  """{operation name: total ms} over the threads that ran them, and {name: count}, from the trace.

  XLA runs a step's operations on its intra-op threads and on the client thread that
  started the step, so every thread counts; events not named for an instruction of the
  step (thread-pool and executor markers, other executables) do not.
  """
  try:
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
  except ImportError as error:
    raise SystemExit(
        f"reading the trace needs TensorFlow's protobuf schema ({error}): pip install -e ."
    )
  space = xplane_pb2.XSpace()
  with open(glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True)[0], 'rb') as f:
    space.ParseFromString(f.read())
  total, count = collections.Counter(), collections.Counter()
  for plane in space.planes:
    names = {key: m.name for key, m in plane.event_metadata.items()}
    for line in plane.lines:
      for event in line.events:
        name = names.get(event.metadata_id, '')
        if name in instructions:
          total[name] += event.duration_ps / 1e9
          count[name] += 1
  return total, count


def main(_):
  from catsdogs_jax.runtime import host_memory

  host_memory.restart_with_huge_pages()  # as main.py does
  import jax
  import jax.numpy as jnp

  roofline = matmul_gflops()
  config = benchmark_config(FLAGS.model)
  config.half_precision = FLAGS.dtype == 'bfloat16'
  train_step, state, batch = project_step(config, FLAGS.layers)
  step = lambda s, b: train_step(s, b)[0]
  hlo_text = train_step.lower(state, batch).compile().as_text()
  calls = onednn_calls(hlo_text)
  # The step donates its state: each timing gets a copy.
  untraced = timed(step, (jax.tree.map(jnp.copy, state), batch), FLAGS.steps)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir):
      traced = timed(step, (state, batch), FLAGS.steps)
    total, count = thunk_times(trace_dir, instruction_names(hlo_text))
  per_step = FLAGS.steps + 2  # timed() runs two warm-up steps inside the trace too
  kinds, kind_count = collections.Counter(), collections.Counter()
  for name, ms in total.items():
    kind = re.sub(r'\.\d+$', '', name)
    kinds[kind] += ms / per_step
    kind_count[kind] += count[name] / per_step
  busy = sum(kinds.values())
  print(
      f'{FLAGS.model} {config.data.image_size} px, batch {config.batch_size}, {FLAGS.layers} layers, '
      f'{FLAGS.dtype}: {untraced * 1e3:.1f} ms per step ({traced * 1e3:.1f} traced); '
      f'operations {busy:.1f} ms per step over the threads; float32 matmul {roofline:.0f} GFLOP/s'
  )
  print(f'{"ms/step":>8} {"share":>6} {"count":>6}  operation')
  for kind, ms in kinds.most_common(15):
    print(f'{ms:8.1f} {ms / busy:6.1%} {kind_count[kind]:6.1f}  {kind}')
  rows = []
  for name, (kind, out, operands) in calls.items():
    ms = total.get(name, 0.0) / per_step
    flops = call_flops(kind, out, operands)
    rows.append(
        {
            'call': name,
            'pass': kind,
            'output': out,
            'operands': operands,
            'ms': ms,
            'gflops': flops / ms / 1e6 if ms else None,
        }
    )
  rows.sort(key=lambda r: -r['ms'])
  if rows:
    print(f'\n{"ms/step":>8} {"GFLOP/s":>8} {"roofline":>8}  oneDNN call: pass, output <- operands')
  for r in rows:
    gflops = r['gflops'] or 0.0
    operands = ', '.join('x'.join(map(str, s)) for s in r['operands'])
    output = 'x'.join(map(str, r['output']))
    print(
        f'{r["ms"]:8.1f} {gflops:8.0f} {gflops / roofline:8.0%}  {r["pass"]}: {output} <- {operands}'
    )
  result = {
      'model': FLAGS.model,
      'layers': FLAGS.layers,
      'dtype': FLAGS.dtype,
      'ms_per_step': untraced * 1e3,
      'ms_per_step_traced': traced * 1e3,
      'roofline_gflops': roofline,
      'operations_ms_per_step': dict(kinds.most_common()),
      'onednn_calls': rows,
  }
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  app.run(main)
