"""Backbone candidates of a CPU-fast student: latency of the eager student and of its ONNX
fp32 / int8 exports, GMACs and the achieved GMAC/s (GMACs / median latency), at one input size.

The exports are made by the caller (``tools/bench_backbones.py`` with ``clipdistill.deploy``:
the benchmark layer does not import the deploy layer); this module builds each candidate,
counts its MACs and times the runners interleaved (``time_interleaved``), so that a change in
the machine's load affects them alike.
"""

import logging
from typing import Callable, Dict, NamedTuple, Optional, Sequence
import numpy as np
import torch

from detectron2.modeling import build_model

from ..modeling.backbone.timm_backbone import levels_at_strides
from ..utils.timing import summarize, time_interleaved
from .flops import count_flops
from .report import TEACHER_DENSE
from .targets import BENCHMARK_TARGETS

__all__ = [
    "CANDIDATE_BACKBONES",
    "Reference",
    "teacher_dense_reference",
    "backbone_cfg",
    "build_candidate",
    "format_backbone_table",
    "measure_candidate",
]

logger = logging.getLogger(__name__)

#: timm backbones of issue 22 (MODEL.TIMM.NAME); random weights are enough for speed
CANDIDATE_BACKBONES = (
    "efficientnet_b0",
    "efficientnet_lite0",
    "mobilenetv3_large_100",
    "mobilenetv4_conv_small",
    "repvit_m1",
    "fastvit_t8",
    "resnet18d",
)


def backbone_cfg(cfg, name: str):
    """A copy of ``cfg`` with the student's timm backbone ``name`` (its feature levels at strides
    4..32, ``levels_at_strides``), random weights, on the CPU."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.TIMM.NAME = name
    cfg.MODEL.TIMM.OUT_INDICES = levels_at_strides(name)
    cfg.MODEL.TIMM.WEIGHTS = ""
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def build_candidate(cfg, name: str) -> torch.nn.Module:
    """The student of ``cfg`` with the backbone ``name`` (eval mode, CPU)."""
    return build_model(backbone_cfg(cfg, name)).eval()


class Reference(NamedTuple):
    """What the candidates are compared with, timed in the same interleaved rounds: ``run``
    (no argument) does one forward of ``gmacs`` GMACs (e.g. CLIP's dense path at the same size,
    ``tools/bench_backbones.py``)."""

    name: str
    run: Callable[[], object]
    gmacs: Optional[float]


def teacher_dense_reference(cfg, size: int) -> Reference:
    """``cfg``'s CLIP teacher's dense path (``encode_image_dense``) on a ``size x size`` image on
    the CPU, with its GMACs: the reference of ``measure_candidate``."""
    logger.info(f"{TEACHER_DENSE} at {size}x{size} ...")
    module, run, example, _ = BENCHMARK_TARGETS[TEACHER_DENSE].build(
        cfg, torch.device("cpu"), size, 1
    )
    run()  # first call: text embeddings, allocations
    flops = count_flops(module, example)
    return Reference("clip_dense", run, None if flops is None else flops / 1e9)


def measure_candidate(
    module: Callable[[torch.Tensor], torch.Tensor],
    size: int,
    onnx_runners: Optional[Dict[str, Callable[[np.ndarray], object]]] = None,
    runs: int = 10,
    warmup: int = 2,
    flops_module: Optional[torch.nn.Module] = None,
    reference: Optional[Reference] = None,
) -> Dict[str, object]:
    """Median latency of the eager ``module`` (image ``[1, 3, size, size]`` 0..255 -> logits)
    and of each runner in ``onnx_runners`` (same input as numpy), the GMACs of ``flops_module``
    (default ``module``; ``count_flops``: one multiply-add = one flop) and the achieved GMAC/s
    of each runner. With a ``reference``, timed in the same rounds: its latency and GMAC/s
    (``out["reference"]``), each runner's speed-up over it (its median latency over the
    runner's) and each runner's GMAC/s as a fraction of the reference's."""
    x = torch.randint(0, 256, (1, 3, size, size)).float()
    xn = x.numpy()

    def eager():
        with torch.no_grad():
            module(x)

    calls = {"eager": eager}
    for name, run in (onnx_runners or {}).items():
        calls[name] = lambda run=run: run(xn)
    if reference is not None:
        if reference.name in calls:
            raise ValueError(f"reference name {reference.name!r} is also a runner's name")
        calls[reference.name] = reference.run
    times = {k: summarize(v) for k, v in time_interleaved(calls, runs, warmup).items()}
    ref_times = times.pop(reference.name) if reference is not None else None
    flops = count_flops(flops_module or module, x)
    out: Dict[str, object] = {"size": size, "runs": runs, "warmup": warmup, "latency": times}
    out["gmacs"] = None if flops is None else flops / 1e9
    if flops is not None:
        out["gmac_per_s"] = {k: flops / 1e9 / (t["median_ms"] / 1000) for k, t in times.items()}
    if reference is not None:
        ref_ms = ref_times["median_ms"]
        ref_rate = None if reference.gmacs is None else reference.gmacs / (ref_ms / 1000)
        out["reference"] = {
            "name": reference.name,
            "latency": ref_times,
            "gmacs": reference.gmacs,
            "gmac_per_s": ref_rate,
        }
        out["speedup_vs_reference"] = {k: ref_ms / t["median_ms"] for k, t in times.items()}
        if ref_rate and flops is not None:
            out["gmac_per_s_vs_reference"] = {k: v / ref_rate for k, v in out["gmac_per_s"].items()}
    return out


def format_backbone_table(results: Dict[str, dict], names: Sequence[str]) -> str:
    """A markdown table backbone x latency (ms) of each runner, GMACs, GMAC/s; where the results
    have a reference (``measure_candidate``), a second table: its latency and GMAC/s in the same
    rounds, each runner's speed-up over it and its GMAC/s as a percentage of the reference's."""
    runners = []
    for r in results.values():
        runners += [k for k in r.get("latency", {}) if k not in runners]
    head = "| backbone | " + " | ".join(f"{k} ms" for k in runners) + " | GMACs | "
    head += " | ".join(f"{k} GMAC/s" for k in runners) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(runners))]
    for name in names:
        r = results.get(name)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {name} | {r['error']} |")
            continue
        lat = [f"{r['latency'][k]['median_ms']:.1f}" if k in r["latency"] else "" for k in runners]
        g = r.get("gmacs")
        rate = [
            f"{r['gmac_per_s'][k]:.1f}" if g is not None and k in r["latency"] else ""
            for k in runners
        ]
        gm = f"{g:.2f}" if g is not None else "n/a"
        lines.append(f"| {name} | " + " | ".join(lat) + f" | {gm} | " + " | ".join(rate) + " |")
    ref_rows = [n for n in names if "reference" in results.get(n, {})]
    if ref_rows:
        ref = results[ref_rows[0]]["reference"]["name"]
        lines += ["", f"| backbone | {ref} ms (same rounds) | {ref} GMAC/s | "]
        lines[-1] += " | ".join(f"{k} speed-up" for k in runners) + " | "
        lines[-1] += " | ".join(f"{k} GMAC/s % of {ref}'s" for k in runners) + " |"
        lines.append("|" + "---|" * (3 + 2 * len(runners)))
        for name in ref_rows:
            r = results[name]
            rr = r["reference"]
            rate = "n/a" if rr["gmac_per_s"] is None else f"{rr['gmac_per_s']:.1f}"
            up = [
                f"{r['speedup_vs_reference'][k]:.1f}x" if k in r["latency"] else "" for k in runners
            ]
            pct = r.get("gmac_per_s_vs_reference", {})
            pc = [f"{100 * pct[k]:.0f} %" if k in pct else "" for k in runners]
            lines.append(
                f"| {name} | {rr['latency']['median_ms']:.1f} | {rate} | "
                + " | ".join(up)
                + " | "
                + " | ".join(pc)
                + " |"
            )
    return "\n".join(lines)
