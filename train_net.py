#!/usr/bin/env python
"""detectron2's projects/DeepLab ``train_net.py``, so the seed's command lines work verbatim.

python train_net.py --config-file configs/Cityscapes-SemanticSegmentation/<name>.yaml --num-gpus 8
python train_net.py --config-file <config> --eval-only MODEL.WEIGHTS /path/to/model_checkpoint
"""

import sys

from atrous.cli.train import cli

if __name__ == "__main__":
    sys.exit(cli())
