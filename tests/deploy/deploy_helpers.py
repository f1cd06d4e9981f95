"""Helpers of the deployment tests (a module of its own: ``conftest`` is ambiguous as a module
name, tests/conftest.py exists too)."""

import logging

from common import REPO, TOY_CONFIG, load_tool  # noqa: F401  (re-exported for the deployment tests)


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())
