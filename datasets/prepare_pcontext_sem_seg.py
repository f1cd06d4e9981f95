#!/usr/bin/env python
"""PASCAL Context ``trainval/*.mat`` → PC-59 PNGs and PC-459 TIFFs. See datasets/README.md."""

import sys

from clipdistill.data.prepare.pcontext import main

if __name__ == "__main__":
    sys.exit(main())
