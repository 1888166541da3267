"""VGG16 from scratch on GPUs: configs/vgg16.py with bfloat16 compute and the VGG paper's batch of 256.

bfloat16 activations and gradients, float32 parameters, optimizer state and loss
(config.half_precision): safe from scratch, about twice as fast on tensor cores. The paper
trained with batch 256 and learning rate 0.01, which this keeps (32 per GPU on 8 GPUs).
"""

from configs import vgg16


def get_config():
  config = vgg16.get_config()
  config.half_precision = True
  config.batch_size = 256
  return config
