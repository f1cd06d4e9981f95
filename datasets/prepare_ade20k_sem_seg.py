#!/usr/bin/env python
"""ADE20K-150 → ``ADEChallengeData2016/annotations_detectron2`` (0 → 255). See README.md."""

import sys

from clipdistill.data.prepare.ade20k import main_150

if __name__ == "__main__":
    sys.exit(main_150())
