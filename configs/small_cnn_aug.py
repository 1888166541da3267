"""The tutorial's second small CNN: augmentation (ImageDataGenerator settings) and dropout 0.5.

Batch 32, RMSprop 1e-4, 100 epochs. Reference: about 80-82% validation accuracy
on the 2,000-image protocol.
"""

from configs import small_cnn


def get_config():
  config = small_cnn.get_config()
  config.augment.rotation_range = 40.0
  config.augment.width_shift_range = 0.2
  config.augment.height_shift_range = 0.2
  config.augment.shear_range = 0.2
  config.augment.zoom_range = 0.2
  config.augment.horizontal_flip = True
  config.augment.fill_mode = 'nearest'
  config.model.dropout_rate = 0.5
  config.batch_size = 32
  config.num_epochs = 100
  return config
