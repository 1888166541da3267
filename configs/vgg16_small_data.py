"""VGG16 from scratch on the tutorials' 2,000 training images, at 50 px, with augmentation.

Where the small CNN's tutorial has one model of 3.5 million parameters, this asks what
VGG16 (33.6 million at 50 px: Flatten is 1x1x512) does with the same 2,000 images and the
same augmentation and dropout. He initialisation: VGG16 has no BatchNorm, and Glorot shrinks
the signal over 13 ReLU layers. Adam 1e-5: at 1e-4 the network collapsed to one class within
a few epochs and stayed there (validation 0.50 from epoch 6 to 16, docs/results/vgg16_small_data_50px);
the 50 px tutorial's 1e-6 was for 20,000 images in batches of 256 and barely moves in 63 steps an epoch.
20 epochs: about 45 minutes on 2 CPU cores.
"""

from configs import small_cnn_aug


def get_config():
  config = small_cnn_aug.get_config()  # augmentation, dropout 0.5, batch 32, sigmoid
  config.model.name = 'vgg16'
  config.model.kernel_init = 'he_normal'
  config.data.image_size = 50
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-5
  config.num_epochs = 20
  return config
