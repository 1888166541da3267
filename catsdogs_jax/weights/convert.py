"""The convert command: a published weight file into the form `config.init_from` reads.

  python -m catsdogs_jax.weights.convert --format=keras_h5 --model=vgg16 \
      --input=vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 --output=weights/vgg16_keras_notop
  python -m catsdogs_jax.weights.convert --pretrained=efficientnet_lite0 [--input=FILE]

Formats: `keras_h5.py` and `pytorch.py`; the directory written: `converted.py`.
"""

import os

from absl import app, flags

from catsdogs_jax.weights import converted, pretrained


def _define_flags():
  """The command line's flags, defined only when this module runs as the program."""
  flags.DEFINE_enum('format', 'keras_h5', list(pretrained.CONVERTERS), 'Format of the weight file.')
  flags.DEFINE_string(
      'model',
      'vgg16',
      'Our model name (keras_h5: vgg16, vgg19, efficientnet_b0; '
      'torch: vgg16, vgg19, resnet18..152, efficientnet_b0, '
      'efficientnet_lite0..2).',
  )
  flags.DEFINE_string('input', None, 'The weight file.')
  flags.DEFINE_string('output', None, 'Directory to write the converted weights to.')
  flags.DEFINE_string(
      'pretrained',
      None,
      'A published weight set (catsdogs_jax.models.'
      'WEIGHT_SETS): checks --input (default: its package file or a download) '
      'against its checksum and converts it into the cache that '
      'init_from="pretrained:NAME" reads; --format, --model, --output unused.',
  )


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  if not (FLAGS.pretrained or (FLAGS.input and FLAGS.output)):
    raise SystemExit('error: give --input and --output (or --pretrained=NAME).')
  if FLAGS.input and not os.path.isfile(FLAGS.input):
    raise SystemExit(f'error: --input={FLAGS.input} is not a file.')
  try:
    if FLAGS.pretrained:
      ws = pretrained.weight_set(FLAGS.pretrained)
      print(pretrained.convert_into_cache(ws, FLAGS.input or pretrained.source_file(ws)))
    else:
      pretrained.CONVERTERS[FLAGS.format](FLAGS.input, FLAGS.model, FLAGS.output)
  except (converted.ConversionError, pretrained.PretrainedError) as e:
    raise SystemExit(f'error: {e}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
