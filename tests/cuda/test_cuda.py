"""The CUDA code paths (marked ``cuda``: skipped, and reported as skipped, without a GPU;
``scripts/check_gpu.sh`` runs them on a GPU machine):

- every META_ARCH's forward on CUDA;
- one AMP training step of each trainable architecture (SegStudent, SAN, OVSeg), with finite
  losses and gradients;
- the teacher cache built on CUDA and read on CPU;
- the predictor and the export on CUDA;
- ``train_net.py --num-gpus 1`` through NCCL.
"""

import os
import socket
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.utils.events import EventStorage

from common import (
    CONFIGS,
    REPO,
    TINY_OVSEG_OPTS,
    TINY_SAN_OPTS,
    VOC20_TOY_CONFIG,
    random_inputs,
    tiny_cfg,
    tiny_train_opts,
    write_image,
)

#: one small config per architecture clipdistill registers (tiny, offline with the opts)
ARCH_CONFIGS = {
    "SegStudent": (VOC20_TOY_CONFIG, []),
    "SAN": (os.path.join(CONFIGS, "san", "san_toy.yaml"), TINY_SAN_OPTS),
    "OVSeg": (os.path.join(CONFIGS, "ovseg", "ovseg_toy_voc20toy_60.yaml"), TINY_OVSEG_OPTS),
    "MaskCLIP": (os.path.join(CONFIGS, "maskclip", "sclip_toyclip_voc20toy.yaml"), []),
    "CaR": (os.path.join(CONFIGS, "car", "car_toyclip_voc20toy.yaml"), []),
}
TRAINABLE = ["SegStudent", "SAN", "OVSeg"]


def _cfg(arch, *opts):
    path, arch_opts = ARCH_CONFIGS[arch]
    return tiny_cfg("MODEL.DEVICE", "cuda", *arch_opts, *opts, config_file=path)


def _registered_here():
    return sorted(
        name
        for name, cls in META_ARCH_REGISTRY
        if cls.__module__.startswith("clipdistill.")
    )


def test_the_configs_cover_every_registered_architecture():
    """(Runs without CUDA.) The forward test below misses no architecture."""
    assert sorted(ARCH_CONFIGS) == _registered_here()
    for arch, (path, _) in ARCH_CONFIGS.items():
        assert _cfg(arch).MODEL.META_ARCHITECTURE == arch, path


@pytest.mark.cuda
@pytest.mark.parametrize("arch", sorted(ARCH_CONFIGS))
def test_forward_on_cuda(arch):
    model = build_model(_cfg(arch)).eval()
    assert next(model.parameters()).device.type == "cuda"
    inputs = random_inputs([(64, 80), (48, 64)])
    with torch.no_grad():
        outs = model([{"image": x["image"], "height": 32, "width": 40} for x in inputs])
    for out in outs:
        seg = out["sem_seg"]
        assert seg.device.type == "cuda" and seg.shape[-2:] == (32, 40)
        assert torch.isfinite(seg).all()


@pytest.mark.cuda
@pytest.mark.parametrize("arch", TRAINABLE)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_one_amp_training_step(arch, dtype):
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    model = build_model(_cfg(arch)).train()
    params = [p for p in model.parameters() if p.requires_grad]
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == "float16")
    with EventStorage(), torch.autocast("cuda", dtype=getattr(torch, dtype)):
        losses = model(random_inputs([(64, 64), (64, 64)]))
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    scaler.scale(sum(losses.values())).backward()
    opt = torch.optim.SGD(params, lr=0.0)
    scaler.unscale_(opt)
    grads = [p.grad for p in params if p.grad is not None]
    assert grads, "no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.cuda
def test_teacher_cache_built_on_cuda_is_read_on_cpu(tmp_path):
    from clipdistill.data.teacher_cache import TeacherCache, cache_key, dataset_cache_dir
    from clipdistill.data.teacher_cache import image_key
    from clipdistill.engine.teacher_cache import build_teacher_cache, resize_for_teacher
    from clipdistill.modeling.teacher import CLIPTeacher

    rng = np.random.default_rng(0)
    dicts = []
    for i, (h, w) in enumerate([(64, 64), (64, 96), (80, 64)]):
        write_image(str(tmp_path / "img" / f"{i}.png"), rng.integers(0, 256, (h, w, 3), np.uint8))
        write_image(str(tmp_path / "lab" / f"{i}.png"), rng.integers(0, 20, (h, w), np.uint8))
        dicts.append({"file_name": str(tmp_path / "img" / f"{i}.png"),
                      "sem_seg_file_name": str(tmp_path / "lab" / f"{i}.png"),
                      "height": h, "width": w})
    name = f"cuda_cache_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).set(
        stuff_classes=list(MetadataCatalog.get("voc20_sem_seg_train").stuff_classes),
        ignore_label=255, evaluator_type="sem_seg",
    )
    try:
        opts = ["DATASETS.TRAIN", f"('{name}',)",
                "MODEL.CLIPDISTILL.TEACHER_CACHE.DIR", str(tmp_path / "cache"),
                "MODEL.CLIPDISTILL.TEACHER_CACHE.SHARD_SIZE", "2",
                "MODEL.CLIPDISTILL.TEACHER_CACHE.ENABLED", "True",
                "DATALOADER.NUM_WORKERS", "0"]
        res = build_teacher_cache(tiny_cfg("MODEL.DEVICE", "cuda", *opts), name)
        assert res["complete"]
        cpu_cfg = tiny_cfg("MODEL.DEVICE", "cpu", *opts)
        cache = TeacherCache(dataset_cache_dir(str(tmp_path / "cache"), name),
                             cache_key(cpu_cfg, name))
        teacher = CLIPTeacher(cpu_cfg)
        from detectron2.data import detection_utils as utils

        for d in dicts:
            cg, td, hw = cache.get(image_key(d))
            assert cg.device.type == "cpu" and cg.dtype == torch.float16
            img = torch.as_tensor(utils.read_image(d["file_name"], "RGB").transpose(2, 0, 1)
                                  .copy())[None].float()
            online = teacher.encode_image(resize_for_teacher(img, (224, 224)))[0]
            # GPU kernels, then float16 storage of unit vectors
            torch.testing.assert_close(cg.float(), online, atol=5e-3, rtol=0)
    finally:
        DatasetCatalog.remove(name)


@pytest.mark.cuda
def test_predictor_and_export_on_cuda(tmp_path):
    from clipdistill.deploy import SegPredictor
    from clipdistill.deploy import export as E

    names = ["cat", "dog", "sky"]
    predictor = SegPredictor(tiny_cfg("MODEL.DEVICE", "cuda"), class_names=names)
    assert next(predictor.model.parameters()).device.type == "cuda"
    image = np.asarray(random_inputs([(70, 90)])[0]["image"].permute(1, 2, 0))
    res = predictor(image, scores=True)
    assert res.label.shape == (70, 90) and set(np.unique(res.label)) <= {0, 1, 2}

    module = E.ExportableSegmenter(predictor.model, names)
    assert module.text_embeddings.device.type == "cuda"
    example = torch.randint(0, 256, (1, 3, 64, 64), device="cuda").float()
    ts_path = str(tmp_path / "model.ts")
    E.export_torchscript(module, ts_path, example)
    traced = torch.jit.load(ts_path, map_location="cuda")
    with torch.no_grad():
        eager, scripted = module(example), traced(example)
    torch.testing.assert_close(scripted, eager, atol=1e-3, rtol=0)
    # the ONNX export of the CUDA model runs on onnxruntime (CPU provider, the deploy default)
    onnx_path = E.export_onnx(module, str(tmp_path / "model.onnx"), example)
    parity = E.parity_check(predictor.model, {"onnxruntime": E.onnx_runner(
        E.onnx_session(onnx_path))}, [(64, 80)])
    assert parity["onnxruntime"]["max"] <= 1e-3, parity


@pytest.mark.cuda
def test_train_net_one_gpu_through_nccl(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), HF_HUB_OFFLINE="1")
    run = dict(cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    p = subprocess.run([sys.executable, "tools/make_toy_dataset.py", "--dataset", "voc_toy",
                        "--num-train", "4", "--num-val", "2", "--size", "32"], **run)
    assert p.returncode == 0, p.stderr[-3000:]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    # --num-gpus 1: detectron2's launch() runs it in this process, without a process group
    # (it makes one, NCCL on a GPU, for more than one process): AMP training on the GPU
    opts = tiny_train_opts("voc20_toy_sem_seg_train", "voc20_toy_sem_seg_val", out,
                           "MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True")
    p = subprocess.run([sys.executable, "tools/train_net.py", "--config-file", VOC20_TOY_CONFIG,
                        "--num-gpus", "1", "--dist-url", f"tcp://127.0.0.1:{port}"] + opts, **run)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-5000:]
    assert (out / "model_final.pth").exists()
    text = (out / "log.txt").read_text()
    assert "World size: 1" in text
    # the NCCL path of launch() with one GPU: a one-rank NCCL process group and a collective
    # (two ranks cannot share one GPU under NCCL; more GPUs: --num-gpus N on such a machine)
    code = (
        "import torch, torch.distributed as dist\n"
        f"dist.init_process_group('nccl', init_method='tcp://127.0.0.1:{port}', world_size=1, "
        "rank=0)\n"
        "x = torch.ones(4, device='cuda'); dist.all_reduce(x)\n"
        "assert dist.get_backend() == 'nccl' and x.sum().item() == 4\n"
        "dist.destroy_process_group(); print('nccl ok')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], **run)
    assert p.returncode == 0 and "nccl ok" in p.stdout, p.stderr[-3000:]
