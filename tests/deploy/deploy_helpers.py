"""Helpers of the deployment tests (a module of its own: ``conftest`` is ambiguous as a module
name, tests/conftest.py exists too)."""

import importlib.util
import logging
import os

from common import REPO

TOY_CONFIG = os.path.join(REPO, "configs", "voc_toy.yaml")


def load_tool(name: str):
    """``tools/<name>.py`` imported as a module (its ``main(argv)`` runs in-process)."""
    path = os.path.join(REPO, "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"clipdistill_tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())
