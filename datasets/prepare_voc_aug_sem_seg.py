#!/usr/bin/env python
"""VOC 2012 train-aug (SegmentationClassAug) → VOC-20 masks + trainaug.txt. See README.md."""

import sys

from clipdistill.data.prepare.voc_aug import main

if __name__ == "__main__":
    sys.exit(main())
