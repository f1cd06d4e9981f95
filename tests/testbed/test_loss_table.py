"""tools/loss_table.py's pieces: variants, overrides, aggregation and the table (the runs
themselves are exercised end to end by tests/test_e2e_toy.py)."""

import math

import pytest
import torch

from clipdistill.testbed.loss_table import (
    DENSE_METHOD_KEY,
    aggregate,
    format_table,
    parse_variant,
    read_metrics,
    teacher_overrides,
    transfer_notes,
    variant_overrides,
)
from common import tiny_cfg


def _weights(overrides):
    pairs = dict(zip(overrides[::2], overrides[1::2]))
    return {k.rsplit(".", 1)[1]: v for k, v in pairs.items()}


def test_variants_and_overrides():
    cfg = tiny_cfg()  # voc_toy.yaml: every loss on
    assert variant_overrides(parse_variant("config"), cfg) == []
    w = _weights(variant_overrides(parse_variant("ce+local"), cfg))
    assert w == {
        "CE_WEIGHT": "1.0",
        "GLOBAL_WEIGHT": "0.0",
        "LOCAL_WEIGHT": "1.0",
        "DENSE_WEIGHT": "0.0",
    }
    cfg.MODEL.CLIPDISTILL.LOSS.DENSE_WEIGHT = 0.0  # a loss off in the config gets weight 1
    cfg.MODEL.CLIPDISTILL.LOSS.CE_WEIGHT = 0.5  # an enabled one keeps the config's weight
    ov = variant_overrides(parse_variant("ce+dense"), cfg)
    assert _weights(ov)["DENSE_WEIGHT"] == "1.0" and _weights(ov)["CE_WEIGHT"] == "0.5"
    ov = variant_overrides(parse_variant("ce+dense@sclip"), cfg)
    assert ov[-2:] == [DENSE_METHOD_KEY, "sclip"]
    for bad, msg in (("ce+colour", "unknown losses"), ("ce+global@sclip", "needs the dense")):
        with pytest.raises(ValueError, match=msg):
            parse_variant(bad)


def test_aggregate_and_table(tmp_path):
    runs = [
        {"mIoU-seen": 60.0, "mIoU-unseen": 20.0, "hIoU": 30.0, "mIoU": 55.0},
        {"mIoU-seen": 64.0, "mIoU-unseen": 30.0, "hIoU": 40.0, "mIoU": 59.0},
    ]
    agg = aggregate(runs)
    assert agg["mIoU-unseen"][0] == pytest.approx(25.0)
    assert agg["mIoU-unseen"][1] == pytest.approx(math.sqrt(50.0))  # sample std of 20, 30
    assert agg["hIoU"][2] == 2
    ce = aggregate([{"mIoU-seen": 62.0, "mIoU-unseen": 5.0, "hIoU": 9.0, "mIoU": 54.0}])
    teacher = {"mIoU-seen": 40.0, "mIoU-unseen": 30.0, "hIoU": 34.3, "mIoU": 38.0}
    table = format_table({"ce+dense": agg, "ce": ce}, teacher)
    lines = table.splitlines()
    assert lines[2].startswith("| teacher zero-shot") and "30.0" in lines[2]
    assert "25.0 ± 7.1" in lines[3] and lines[4].startswith("| ce ")
    notes = transfer_notes({"ce+dense": agg, "ce": ce}, teacher)
    assert notes == [
        "- ce+dense: unseen mIoU 25.0 = 83 % of the teacher's, 5.00x the ce-only " "control's"
    ]
    zero = aggregate([{"mIoU-seen": 5.0, "mIoU-unseen": 0.0, "hIoU": 0.0, "mIoU": 4.0}])
    assert transfer_notes({"ce+dense": agg, "ce": zero}, None) == [
        "- ce+dense: unseen mIoU 25.0; the ce-only control's is 0.0"
    ]
    # results are read back from detectron2's evaluation file
    (tmp_path / "inference").mkdir()
    torch.save(dict(runs[0], fwIoU=1.0), tmp_path / "inference" / "sem_seg_evaluation.pth")
    assert read_metrics(str(tmp_path)) == runs[0]
    assert read_metrics(str(tmp_path / "none")) is None


def test_teacher_row_scores_the_students_teacher_clip():
    """The teacher's row is MaskCLIP on the student's teacher CLIP (MODEL.CLIPDISTILL.TEACHER ->
    MODEL.MASKCLIP.CLIP), whole image."""
    from common import TINY_OPTS, VOC20_TOY_CONFIG
    from clipdistill.config import get_clipdistill_cfg

    cfg = tiny_cfg("MODEL.CLIPDISTILL.TEACHER.DENSE_METHOD", "sclip")
    opts = teacher_overrides(cfg)
    student = TINY_OPTS + ["MODEL.CLIPDISTILL.TEACHER.DENSE_METHOD", "sclip"]
    teacher = get_clipdistill_cfg(VOC20_TOY_CONFIG, student + opts)
    assert teacher.MODEL.META_ARCHITECTURE == "MaskCLIP"
    assert teacher.MODEL.MASKCLIP.SLIDE_WINDOW == 0
    t, c = cfg.MODEL.CLIPDISTILL.TEACHER, teacher.MODEL.MASKCLIP.CLIP
    assert (c.NAME, c.WEIGHTS, c.TEMPLATES) == (t.NAME, t.WEIGHTS, t.TEMPLATES)
    assert c.DENSE_METHOD == "sclip"
    # with dense targets, the teacher row sees the images at the side they are computed at
    dense = tiny_cfg(
        "MODEL.CLIPDISTILL.LOSS.DENSE_WEIGHT", "1.0", "MODEL.CLIPDISTILL.TEACHER.DENSE_IMAGE_SIZE", "96"
    )
    assert teacher_overrides(dense)[-4:] == ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96"]
    no_dense = tiny_cfg("MODEL.CLIPDISTILL.LOSS.DENSE_WEIGHT", "0.0")
    assert "INPUT.MIN_SIZE_TEST" not in teacher_overrides(no_dense)


def test_training_progress_reads_detectron2_metric_lines():
    """make toy's progress: the iteration and ETA of a train_net.py log, then its evaluation."""
    from clipdistill.testbed.loss_table import training_progress

    assert training_progress("[d2] Starting training from iteration 0\n") is None
    log = (
        "[12/05 05:20:01 d2.utils.events]:  eta: 0:01:40  iter: 19  total_loss: 3.1  lr: 0.001\n"
        "[12/05 05:20:09 d2.utils.events]:  eta: 0:01:31  iter: 39  total_loss: 2.7  lr: 0.002\n"
    )
    assert training_progress(log) == (40, "0:01:31", "training")
    log += "[12/05 05:22:00 d2.evaluation.evaluator]: Start inference on 40 batches\n"
    assert training_progress(log) == (40, "0:01:31", "evaluating")
    assert training_progress("Start inference on 40 batches") == (0, None, "evaluating")




def test_a_finished_run_is_reused_only_with_the_same_settings(tmp_path, monkeypatch):
    """run_student records its settings; a finished run is reused only when they are the same
    (a rerun with SOLVER.MAX_ITER 12 over a 6-iteration run is an error naming the difference,
    not the 6-iteration results under a 12-iteration label)."""
    import subprocess
    import sys

    from clipdistill.testbed import loss_table
    from clipdistill.utils.errors import UserError
    from common import VOC20_TOY_CONFIG

    calls = []
    real_popen = subprocess.Popen

    def fake_train_net(cmd, **kwargs):  # writes what train_net's evaluation writes
        calls.append(cmd)
        out = cmd[cmd.index("OUTPUT_DIR") + 1]
        os_ = __import__("os")
        os_.makedirs(os_.path.join(out, "inference"), exist_ok=True)
        res = {"mIoU": 1.0, "hIoU": 2.0, "mIoU-seen": 3.0, "mIoU-unseen": 4.0}
        torch.save(res, os_.path.join(out, "inference", "sem_seg_evaluation.pth"))
        return real_popen([sys.executable, "-c", "pass"])  # a child that exits 0

    monkeypatch.setattr(loss_table.subprocess, "Popen", fake_train_net)
    out = str(tmp_path / "ce" / "seed0")
    first = loss_table.run_student(VOC20_TOY_CONFIG, out, ["SOLVER.MAX_ITER", "6"], 0)
    assert first["mIoU"] == 1.0 and len(calls) == 1
    assert loss_table.run_student(VOC20_TOY_CONFIG, out, ["SOLVER.MAX_ITER", "6"], 0) == first
    assert len(calls) == 1  # reused
    with pytest.raises(UserError, match="SOLVER.MAX_ITER"):
        loss_table.run_student(VOC20_TOY_CONFIG, out, ["SOLVER.MAX_ITER", "12"], 0)
    with pytest.raises(UserError, match="seed"):
        loss_table.run_student(VOC20_TOY_CONFIG, out, ["SOLVER.MAX_ITER", "6"], 1)
    assert len(calls) == 1


def test_read_metrics_loads_weights_only_and_names_a_damaged_file(tmp_path):
    from clipdistill.utils.errors import UserError

    (tmp_path / "inference").mkdir()
    path = tmp_path / "inference" / "sem_seg_evaluation.pth"

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    torch.save({"mIoU": Evil()}, path)
    with pytest.raises(UserError, match="sem_seg_evaluation.pth"):
        read_metrics(str(tmp_path))
    assert not (tmp_path / "pwned").exists()
    path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(UserError, match="sem_seg_evaluation.pth"):
        read_metrics(str(tmp_path))


def test_the_last_runs_get_the_cores_the_others_left():
    """--jobs 2 on 2 cores: one thread each while two can run together; the last run of an odd
    count (make toy's annotation-free student) gets both."""
    from clipdistill.testbed.loss_table import threads_per_run

    assert [threads_per_run(left, 2, 2) for left in (3, 2, 1)] == [1, 1, 2]
    assert [threads_per_run(left, 4, 8) for left in (6, 4, 3, 2, 1)] == [2, 2, 2, 4, 8]
    assert threads_per_run(1, 3, 2) == 2 and threads_per_run(3, 3, 2) == 1
