"""The tools under detectron2's launcher, without CUDA (gloo), as subprocesses:

- ``--num-gpus N`` says once that it runs N CPU processes with gloo, and an error hit by every
  process is printed once (exit status 2);
- two "machines" on this host (``--num-machines 2 --machine-rank 0|1``, one process each) give
  the result of one machine with two processes: training (the final weights), pseudo-labels
  (the label maps) and the teacher cache (the shards).
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from common import REPO, VOC20_TOY_CONFIG, tiny_train_opts
from clipdistill.utils.distributed import describe_launch

CACHED_CONFIG = os.path.join(
    REPO, "configs", "segstudent", "segstudent_effb0_toyclip_voc20toy_300_cached.yaml"
)
TRAIN, VAL = "voc20_toy_sem_seg_train", "voc20_toy_sem_seg_val"
TIMEOUT = 300


def _free_port():
    with socket.socket() as sock:  # other runs may hold detectron2's default port
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    env = dict(
        os.environ,
        DETECTRON2_DATASETS=str(root / "datasets"),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    cmd = [sys.executable, "tools/make_toy_dataset.py", "--dataset", "voc_toy", "--num-train",
           "4", "--num-val", "4", "--size", "32"]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr[-3000:]
    return env


def _run(env, argv, check=True):
    p = subprocess.run([sys.executable] + argv, cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=TIMEOUT)
    if check:
        assert p.returncode == 0, f"{argv}:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"
    return p


def _one_machine(env, tool, args):
    """``tool`` with two processes on one machine."""
    return _run(env, [tool, "--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{_free_port()}"]
                + args)


def _two_machines(env, tool, args):
    """``tool`` as two machines of one process each, both on this host."""
    url = f"tcp://127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, tool, "--num-gpus", "1", "--num-machines", "2", "--machine-rank",
             str(rank), "--dist-url", url] + args,
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in (0, 1)
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT)
            outs.append(out + err)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, log) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"machine {rank}:\n{log[-5000:]}"
    return outs


def _train_args(out):
    return ["--config-file", VOC20_TOY_CONFIG] + tiny_train_opts(
        TRAIN, VAL, out, "DATASETS.TEST", "()", "SEED", "3", "SOLVER.MAX_ITER", "3",
        "SOLVER.IMS_PER_BATCH", "4",  # two images per process: batch norm needs more than one
    )


# ------------------------------------------------------------------ CPU fallback, errors once
def test_describe_launch_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert describe_launch(1) is None
    two = describe_launch(2)
    assert "runs 2 CPU process(es) with gloo" in two and "warning" not in two
    eight = describe_launch(8)
    assert "runs 8 CPU process(es) with gloo" in eight
    assert "warning: more processes than the 2 CPU core(s)" in eight
    assert "(4 in all on 2 machines)" in describe_launch(2, num_machines=2)
    assert "(2 in all on 2 machines)" in describe_launch(1, num_machines=2)


def test_describe_launch_with_too_few_gpus(monkeypatch):
    from clipdistill.utils.errors import ResourceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert describe_launch(2) is None
    with pytest.raises(ResourceError, match="--num-gpus 8: only 2 CUDA device"):
        describe_launch(8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback runs without CUDA")
def test_num_gpus_without_cuda_says_it_once_and_each_error_once(env, tmp_path):
    """The user's command on a CPU machine, with timm's weights to download and no network:
    every process fails to download; one message says what runs, one line says the error."""
    args = _train_args(tmp_path / "out") + ["MODEL.TIMM.WEIGHTS", "timm"]
    p = _run(env, ["tools/train_net.py", "--num-gpus", "2", "--dist-url",
                   f"tcp://127.0.0.1:{_free_port()}"] + args, check=False)
    log = p.stdout + p.stderr
    assert p.returncode == 2, log[-5000:]
    assert log.count("runs 2 CPU process(es) with gloo") == 1, log[-5000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("train_net.py: error:")]
    assert len(errors) == 1, log[-5000:]
    assert "MODEL.TIMM.WEIGHTS" in errors[0] and "test_efficientnet" in errors[0]
    assert "Traceback" not in log, log[-5000:]


# ------------------------------------------------------------------ two machines = one machine
@pytest.fixture(scope="module")
def trained(env, tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    _one_machine(env, "tools/train_net.py", _train_args(root / "one"))
    _two_machines(env, "tools/train_net.py", _train_args(root / "two"))
    return root


def test_training_on_two_machines_equals_two_processes_on_one(trained):
    one = torch.load(trained / "one" / "model_final.pth", map_location="cpu")["model"]
    two = torch.load(trained / "two" / "model_final.pth", map_location="cpu")["model"]
    assert one.keys() == two.keys() and len(one) > 10
    for k in one:
        assert torch.equal(one[k], two[k]), k
    # both logged a world of two processes, one rank per "machine" for the second
    assert "World size: 2" in (trained / "two" / "log.txt").read_text()
    assert (trained / "two" / "log.txt.rank1").exists()


def _labels(folder):
    files = sorted(
        os.path.relpath(os.path.join(r, f), folder)
        for r, _, fs in os.walk(folder) for f in fs if f.endswith(".png")
    )
    return {f: np.asarray(Image.open(os.path.join(folder, f))) for f in files}


def test_pseudo_labels_on_two_machines_equal_two_processes_on_one(env, trained, tmp_path):
    weights = str(trained / "one" / "model_final.pth")
    common = ["--config-file", VOC20_TOY_CONFIG, "--dataset", VAL] + tiny_train_opts(
        TRAIN, VAL, tmp_path / "log"
    ) + ["MODEL.WEIGHTS", weights]
    _one_machine(env, "tools/make_pseudo_labels.py",
                 common[:4] + ["--name", "pl_one", "--output-dir", str(tmp_path / "one")]
                 + common[4:])
    _two_machines(env, "tools/make_pseudo_labels.py",
                  common[:4] + ["--name", "pl_two", "--output-dir", str(tmp_path / "two")]
                  + common[4:])
    one, two = _labels(tmp_path / "one"), _labels(tmp_path / "two")
    assert len(one) == 4 and one.keys() == two.keys()
    for k in one:
        assert np.array_equal(one[k], two[k]), k
    m1 = json.load(open(tmp_path / "one" / "manifest.json"))
    m2 = json.load(open(tmp_path / "two" / "manifest.json"))
    assert [r["file_name"] for r in m1["records"]] == [r["file_name"] for r in m2["records"]]


def test_teacher_cache_on_two_machines_equals_two_processes_on_one(env, tmp_path):
    from safetensors import safe_open

    def args(root):
        return ["--config-file", CACHED_CONFIG, "--dataset", VAL,
                "MODEL.CLIPDISTILL.TEACHER_CACHE.DIR", str(root),
                "MODEL.CLIPDISTILL.TEACHER_CACHE.SHARD_SIZE", "1",
                "DATALOADER.NUM_WORKERS", "0",
                "MODEL.CLIPDISTILL.TEACHER.DENSE_IMAGE_SIZE", "32"]

    log_one = _one_machine(env, "tools/cache_teacher.py", args(tmp_path / "one"))
    logs_two = _two_machines(env, "tools/cache_teacher.py", args(tmp_path / "two"))
    # the shards are split by global rank, whichever machine runs it
    assert "rank 1: voc20_toy_sem_seg_val: computed shards [1, 3]" in log_one.stdout
    assert "rank 0: voc20_toy_sem_seg_val: computed shards [0, 2]" in logs_two[0]
    assert "rank 1: voc20_toy_sem_seg_val: computed shards [1, 3]" in logs_two[1]
    d1, d2 = tmp_path / "one" / VAL, tmp_path / "two" / VAL
    shards = sorted(p.name for p in d1.glob("*.safetensors"))
    assert len(shards) == 4 and shards == sorted(p.name for p in d2.glob("*.safetensors"))
    for name in shards:
        with safe_open(str(d1 / name), "pt") as a, safe_open(str(d2 / name), "pt") as b:
            assert set(a.keys()) == set(b.keys())
            for k in a.keys():
                assert torch.equal(a.get_tensor(k), b.get_tensor(k)), (name, k)
    assert json.load(open(d2 / "manifest.json"))["complete"]
