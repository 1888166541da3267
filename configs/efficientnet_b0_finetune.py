"""Fine-tuning EfficientNet-B0 from the tutorial's `multiply_16` on, from the transfer run's best checkpoint.

The tutorial unfroze every layer from Keras' `multiply_16` on. Keras 2.2 numbered
unnamed layers from 1, and B0 has 16 MBConv blocks with one squeeze-excite
multiply each: `multiply_16` is the last block's, which keras.applications names
`block7a_se_excite`. It has no parameters; the layers after it that do are
`block7a_project_conv`, `block7a_project_bn`, `top_conv`, `top_bn` and the head,
which is what trains here (our layer names are keras.applications').
RMSprop 2e-5, 200 epochs (the tutorial: about 80%).
"""

from configs import efficientnet_b0_transfer


def get_config():
  config = efficientnet_b0_transfer.get_config()
  config.init_from = 'runs/efficientnet_b0_transfer'
  config.dont_load = ()
  config.trainable = ('^block7a_project_', '^top_', '^head_')
  config.num_epochs = 200
  return config
