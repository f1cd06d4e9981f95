"""`pip install .` ships every non-Python file the package reads at run time.

The wheel is built offline from a copy of setup.py and clipdistill/ (so the worktree gets no
build/ or egg-info), then compared with the tree.
"""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _non_python_files(package_dir):
    found = set()
    for root, dirs, files in os.walk(package_dir):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if not name.endswith((".py", ".pyc", ".pyo")):
                rel = os.path.relpath(os.path.join(root, name), os.path.dirname(package_dir))
                found.add(rel.replace(os.sep, "/"))
    return found


def test_wheel_holds_every_data_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(os.path.join(REPO, "setup.py"), src / "setup.py")
    shutil.copytree(
        os.path.join(REPO, "clipdistill"),
        src / "clipdistill",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    expected = _non_python_files(str(src / "clipdistill"))
    # the files the loaders open by path: they must be among the walked ones
    for required in (
        "clipdistill/modeling/clip/model_configs/ViT-T-16-toy.json",
        "clipdistill/testbed/model_configs/CNN-4-testbed.json",
        "clipdistill/testbed/model_configs/ViT-8-testbed.json",
        "clipdistill/data/datasets/class_names/voc20.txt",
    ):
        assert required in expected

    out = tmp_path / "wheel"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
           "--no-index", "-q", "-w", str(out), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if res.returncode != 0 and "No module named pip" in res.stderr:
        pytest.skip("this interpreter has no pip to build the wheel with")
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = list(out.glob("clipdistill-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel: {missing}"
    # and the Python packages themselves (a subpackage without __init__ would be left out)
    assert "clipdistill/modeling/clip/loader.py" in names
    assert "clipdistill/testbed/__init__.py" in names
    assert not any(n.startswith(("tools/", "configs/", "tests/")) for n in names)
