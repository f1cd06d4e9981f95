"""Helpers of the deployment tests (a module of its own: ``conftest`` is ambiguous as a module
name, tests/conftest.py exists too)."""

import logging

# re-exported for the deployment tests
from common import REPO, VOC20_TOY_CONFIG, load_tool  # noqa: F401


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())
