"""ResNet-50 from scratch on GPUs: configs/resnet50.py with bfloat16 compute and a global batch of 1024.

config.half_precision computes activations and gradients in bfloat16 while parameters,
optimizer state, BatchNorm statistics and the loss stay float32: safe for training from
scratch (bfloat16 keeps float32's range, so no loss scaling), and tensor cores run it
about twice as fast. 1024 = 128 per GPU on 8 GPUs (one host, or 8 hosts x 1); on 64
GPUs use --config.batch_size=8192 --config.optimizer.learning_rate=3.2 (0.1 x batch/256,
with the same 5 warm-up epochs). See "Several GPUs and several hosts" in the README.
"""

from configs import resnet50


def get_config():
  config = resnet50.get_config()
  config.half_precision = True
  config.batch_size = 1024
  config.optimizer.learning_rate = 0.1 * config.batch_size / 256
  return config
