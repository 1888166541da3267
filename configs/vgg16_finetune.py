"""Fine-tuning VGG16 from block5_conv1 on, starting from the vgg16_frozen_aug run's best checkpoint.

RMSprop 1e-5, augmentation, 100 epochs (the tutorial reached 93-97% test). `init_from` is that
run's workdir; everything loads (no dont_load), and block5 plus the head train.
"""

from configs import vgg16_frozen_aug


def get_config():
  config = vgg16_frozen_aug.get_config()
  config.init_from = 'runs/vgg16_frozen_aug'
  config.dont_load = ()
  config.trainable = ('^block5_', '^head_')
  config.optimizer.learning_rate = 1e-5
  config.num_epochs = 100
  return config
