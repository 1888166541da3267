"""Fast feature extraction: the frozen VGG16 base runs once per split, a dense head trains on the cache.

The tutorial's first transfer recipe (about 90% validation): features of the 150 px images
(4x4x512), then Flatten-Dense(256)-Dropout(0.5)-Dense(1), RMSprop 2e-5, batch 20, 30 epochs.
The cache (config.features.cache_dir) is keyed by weights, data, split and size: the second run,
or another head, reads it instead of running the base again. No augmentation: features are
computed once per image.
"""

from configs import default, vgg16_frozen_aug


def get_config():
  config = vgg16_frozen_aug.get_config()
  config.augment = default.get_config().augment  # all off
  config.features.enabled = True
  config.trainable = ()  # only the head exists in the trained model
  return config
