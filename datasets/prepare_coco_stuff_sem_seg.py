#!/usr/bin/env python
"""COCO-Stuff-164k → ``coco/stuffthingmaps_detectron2`` (171 classes). See datasets/README.md."""

import sys

from clipdistill.data.prepare.coco_stuff import main

if __name__ == "__main__":
    sys.exit(main())
