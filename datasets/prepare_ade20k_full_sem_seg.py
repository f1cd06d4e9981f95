#!/usr/bin/env python
"""ADE20K-Full → 847-class uint16 TIFFs and resized images. See datasets/README.md."""

import sys

from clipdistill.data.prepare.ade20k import main_full

if __name__ == "__main__":
    sys.exit(main_full())
