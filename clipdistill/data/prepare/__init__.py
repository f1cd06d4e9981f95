"""Dataset preparation logic; the ``datasets/prepare_*.py`` scripts are thin CLIs over it."""
