"""The MNIST warm-up MLP: 784-1024-10, plain SGD 0.008, L2 on both weight matrices (tutorial: 96.5% test).

The tutorial trained 6,001 steps of batch 256; training here counts whole epochs:
26 epochs of 234 full batches are 6,084 steps. Its L2 term was beta * l2_loss(W)
(sum of squares / 2) per matrix, which is weight_decay = beta on the gradient;
beta = 1e-3, the usual value of that exercise.
"""

from configs import mnist_cnn


def get_config():
  config = mnist_cnn.get_config()
  config.model.name = 'mnist_mlp'
  config.optimizer.name = 'sgd'
  config.optimizer.learning_rate = 0.008
  config.optimizer.momentum = 0.0
  config.optimizer.weight_decay = 1e-3
  config.batch_size = 256
  config.num_epochs = 26
  return config
