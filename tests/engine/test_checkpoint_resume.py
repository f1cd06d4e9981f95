"""Checkpoints are written atomically and resumed exactly: a kill -9 during a checkpoint write
loses nothing, a resume falls back from an unreadable checkpoint to the newest readable one
(naming it), a full disk is one line without a partial file, and a run stopped and resumed ends
with the weights of an uninterrupted run, bit for bit (CPU)."""

import logging
import os
import shutil
import subprocess
import sys
import struct
import uuid
import zipfile

import pytest
import torch

from detectron2.engine import HookBase
from detectron2.modeling import build_model

from clipdistill.engine import SegmenterCheckpointer, Trainer
from clipdistill.engine.checkpoint import UnreadableCheckpointError
from common import fresh_loggers  # noqa: F401  (autouse fixture)
from common import REPO, VOC20_TOY_CONFIG, file_size_limit, load_tool, make_tiny_toy, tiny_cfg
from common import tiny_train_opts

TOY_CFG = VOC20_TOY_CONFIG
train_net = load_tool("train_net")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    _, train, val = make_tiny_toy(root, f"rs{uuid.uuid4().hex[:6]}", num_train=6)
    return root, train, val


def _argv(toy, out, *extra):
    _, train, val = toy
    return ["--config-file", TOY_CFG] + tiny_train_opts(train, val, out, *extra)


def _final_state(out):
    ckpt = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    return ckpt["model"], ckpt["trainer"]["_trainer"]["optimizer"]["state"]


class _Stop(BaseException):
    """Stands for the process dying (not an Exception: nothing handles it on the way out)."""


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(toy, tmp_path, monkeypatch):
    opts = ("SOLVER.MAX_ITER", "5", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.EVAL_PERIOD", "2")
    opts += ("DATALOADER.NUM_WORKERS", "1")  # augmentation in a worker process
    assert train_net.invoke_main(_argv(toy, tmp_path / "a", *opts)) == 0

    class StopAfterStep3(HookBase):
        def after_step(self):
            if self.trainer.iter == 3:  # the last checkpoint is model_0000003.pth's
                raise _Stop()

    build_hooks = Trainer.build_hooks
    monkeypatch.setattr(Trainer, "build_hooks", lambda self: build_hooks(self) + [StopAfterStep3()])
    with pytest.raises(_Stop):
        train_net.invoke_main(_argv(toy, tmp_path / "b", *opts, "SOLVER.CHECKPOINT_PERIOD", "3"))
    monkeypatch.setattr(Trainer, "build_hooks", build_hooks)
    assert not (tmp_path / "b" / "model_final.pth").exists()
    # resume: steps 3 and 4 again, from model_0000002.pth (period 3: iterations 2)
    assert train_net.invoke_main(_argv(toy, tmp_path / "b", *opts, "--resume")) == 0

    model_a, optim_a = _final_state(tmp_path / "a")
    model_b, optim_b = _final_state(tmp_path / "b")
    assert model_a.keys() == model_b.keys()
    for k in model_a:
        assert torch.equal(model_a[k], model_b[k]), k
    for i in optim_a:
        for k in optim_a[i]:
            assert torch.equal(torch.as_tensor(optim_a[i][k]), torch.as_tensor(optim_b[i][k]))


@pytest.fixture
def saved(tmp_path):
    """A tiny student and a checkpointer that saved model_0000000, model_0000001, model_final."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    ck = SegmenterCheckpointer(model, str(tmp_path))
    for name in ("model_0000000", "model_0000001", "model_final"):
        ck.save(name, iteration=int(name[-1]) if name[-1].isdigit() else 2)
        os.utime(tmp_path / f"{name}.pth", ns=(0, len(os.listdir(tmp_path)) * 10**9))
    return model, tmp_path


def test_checkpoints_and_last_checkpoint_are_written_atomically(saved):
    model, out = saved
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    assert not [f for f in os.listdir(out) if f.startswith(".")]
    with file_size_limit(10_000), pytest.raises(OSError) as e:  # a full disk
        SegmenterCheckpointer(model, str(out)).save("model_final")
    assert str(out) in str(e.value)
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no partial file left
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    torch.load(out / "model_final.pth", weights_only=True)  # the previous one, intact


@pytest.fixture
def warnings_of_checkpointer():
    """Messages of the checkpointer's logger (detectron2's setup_logger stops propagation)."""
    import logging

    messages = []

    class Handler(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger = logging.getLogger("fvcore.common.checkpoint")
    handler = Handler(level=logging.WARNING)
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


def test_resume_falls_back_to_the_newest_readable_checkpoint(saved, warnings_of_checkpointer):
    model, out = saved
    log = warnings_of_checkpointer
    data = (out / "model_final.pth").read_bytes()
    (out / "model_final.pth").write_bytes(data[: len(data) // 2])  # as a kill used to leave it
    ck = SegmenterCheckpointer(model, str(out))
    extra = ck.resume_or_load("", resume=True)
    assert ck.resumed_from == str(out / "model_0000001.pth") and extra["iteration"] == 1
    assert any("model_final.pth is unreadable" in m for m in log)
    # an empty last_checkpoint is named too, and the newest readable checkpoint is used
    (out / "last_checkpoint").write_text("")
    log.clear()
    ck = SegmenterCheckpointer(model, str(out))
    ck.resume_or_load("", resume=True)
    assert any("last_checkpoint is empty" in m for m in log)
    assert ck.resumed_from == str(out / "model_0000001.pth")
    # nothing readable at all: an error naming the files
    for f in ("model_0000000.pth", "model_0000001.pth"):
        (out / f).write_text("not a checkpoint")
    with pytest.raises(UnreadableCheckpointError, match="model_0000001.pth"):
        SegmenterCheckpointer(model, str(out)).resume_or_load("", resume=True)


def test_overwriting_an_earlier_runs_checkpoint_is_logged(saved, warnings_of_checkpointer):
    model, out = saved
    ck = SegmenterCheckpointer(model, str(out))
    ck.save("model_final")
    ck.save("model_final")  # its own: silent
    said = [m for m in warnings_of_checkpointer if "Overwriting" in m]
    assert len(said) == 1 and "model_final.pth" in said[0]


KILLER = r"""
import io, os, runpy, signal, sys
import torch

real_save = torch.save


def save_then_die(obj, f, *args, **kwargs):
    # kill -9 in the middle of writing the checkpoint's bytes
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)


torch.save = save_then_die
sys.argv = ["tools/train_net.py"] + sys.argv[1:]
runpy.run_path("tools/train_net.py", run_name="__main__")
"""


def test_kill_9_during_a_checkpoint_write_loses_nothing(toy, tmp_path):
    """The issue's scenario: a finished run is resumed with a larger SOLVER.MAX_ITER, so its
    next write is model_final.pth again, and is killed -9 (a subprocess) while writing it. The
    good model survives, and the next --resume continues from it, saying it overwrites it."""
    root, train, val = toy
    out = tmp_path / "out"
    assert train_net.invoke_main(_argv(toy, out, "SOLVER.MAX_ITER", "2")) == 0
    good = (out / "model_final.pth").read_bytes()

    # the subprocess registers the same images under the default toy name
    datasets = tmp_path / "datasets"
    shutil.copytree(root / "VOC2012", datasets / "voc_toy" / "VOCdevkit" / "VOC2012")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["DETECTRON2_DATASETS"] = str(datasets)
    args = ["--config-file", TOY_CFG] + tiny_train_opts(
        "voc20_toy_sem_seg_train", "voc20_toy_sem_seg_val", out, "SOLVER.MAX_ITER", "4"
    )
    p = subprocess.run(
        [sys.executable, "-c", KILLER] + args + ["--resume"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == -9, p.stdout[-2000:] + p.stderr[-3000:]
    assert (out / "model_final.pth").read_bytes() == good  # not a byte lost
    assert (out / "last_checkpoint").read_text() == "model_final.pth"

    said = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("fvcore.common.checkpoint").addHandler(handler)
    try:
        assert train_net.invoke_main(_argv(toy, out, "SOLVER.MAX_ITER", "4", "--resume")) == 0
    finally:
        logging.getLogger("fvcore.common.checkpoint").removeHandler(handler)
    assert any("Overwriting" in m and "model_final.pth" in m for m in said)
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == 3
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # the killed write's leftover


def test_resume_after_a_kill_before_the_final_write_writes_model_final(toy, tmp_path, monkeypatch):
    """A finished run (2 steps) is extended to 4 and dies after its last periodic checkpoint
    (model_0000003.pth) but before model_final.pth: the old model_final.pth (iteration 1) is
    still there. --resume has nothing left to train, and must still write model_final.pth of
    iteration 3 (not report the stale one)."""
    out = tmp_path / "out"
    assert train_net.invoke_main(_argv(toy, out, "SOLVER.MAX_ITER", "2")) == 0
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 1

    real_save = SegmenterCheckpointer.save

    def die_before_final(self, name, **kwargs):
        if name == "model_final":
            raise _Stop()
        return real_save(self, name, **kwargs)

    opts = ("SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "--resume")
    monkeypatch.setattr(SegmenterCheckpointer, "save", die_before_final)
    with pytest.raises(_Stop):
        train_net.invoke_main(_argv(toy, out, *opts))
    monkeypatch.setattr(SegmenterCheckpointer, "save", real_save)
    assert (out / "model_0000003.pth").exists()
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 1  # stale

    assert train_net.invoke_main(_argv(toy, out, *opts)) == 0
    final = torch.load(out / "model_final.pth", weights_only=True)
    last = torch.load(out / "model_0000003.pth", weights_only=True)
    assert final["iteration"] == 3
    for k in last["model"]:
        assert torch.equal(final["model"][k], last["model"][k]), k
    assert (out / "last_checkpoint").read_text() == "model_final.pth"


def test_a_flipped_byte_in_a_checkpoint_is_found_by_its_checksum(saved, warnings_of_checkpointer):
    """Each checkpoint gets a sha256 beside it (``<name>.pth.sha256``); a checkpoint whose bytes
    no longer match (a flipped bit in a tensor, which torch's loader does not notice) is
    unreadable, and the resume falls back to the newest good one, naming it."""
    model, out = saved
    assert (out / "model_final.pth.sha256").is_file()
    path = out / "model_final.pth"
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:  # the largest tensor's bytes
        info = max(z.infolist(), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack(
        "<HH", data[info.header_offset + 26 : info.header_offset + 30]
    )
    at = info.header_offset + 30 + name_len + extra_len
    data[at + 7] ^= 0x10
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # torch itself loads it silently
    ck = SegmenterCheckpointer(model, str(out))
    extra = ck.resume_or_load("", resume=True)
    assert ck.resumed_from == str(out / "model_0000001.pth") and extra["iteration"] == 1
    assert any("model_final.pth" in m and "sha256" in m for m in warnings_of_checkpointer)
