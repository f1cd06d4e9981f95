import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test never touches the network


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped, with the reason, where no CUDA device is visible."""
    import pytest
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason="needs CUDA (no CUDA device visible here): run scripts/check_gpu.sh on a GPU "
        "machine"
    )
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
