"""What decoding JPEGs at a reduced libjpeg scale does to accuracy: full-size decodes (the default), drafts
(`data.jpeg_draft`), and drafts with the area resize, the fastest combination (`benchmarks/input_pipeline.py`).

On the modern recipe at 48 px and 20 epochs, the protocol of `modern_ablation.py`, where drafts decode most
photos at 1/4 or 1/8 scale (the strongest reduction any of these sizes gets; 150 px gets 1/2):

  python main.py --config=configs/small_cnn_modern.py --sweep=configs/sweeps/jpeg_decoding.py \
      --sweep_seeds=4 --workdir=runs/jpeg_decoding DATA \
      --config.data.image_size=48 --config.num_epochs=20
  python main.py --mode=compare --workdirs='runs/jpeg_decoding/*' --workdir=docs/results/jpeg_decoding_48px
"""


def get_sweep():
  return [
      {},  # full-size decodes, antialiased bilinear resize
      {'data.jpeg_draft': True},
      {'data.jpeg_draft': True, 'data.resize_method': 'area'},
  ]
