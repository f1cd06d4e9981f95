#!/usr/bin/env python
"""VOC 2012 → ``VOCdevkit/VOC2012/annotations_detectron2`` (VOC-20). See README.md."""

import sys

from clipdistill.data.prepare.voc import main

if __name__ == "__main__":
    sys.exit(main())
