"""Helpers of the deployment tests (a module of its own: ``conftest`` is ambiguous as a module
name, tests/conftest.py exists too)."""

import logging
import os

from common import REPO, load_tool  # noqa: F401  (re-exported for the deployment tests)

TOY_CONFIG = os.path.join(REPO, "configs", "segstudent", "segstudent_effb0_toyclip_voc20toy_300.yaml")


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())
