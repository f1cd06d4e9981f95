"""The benchmark's report: ratios between its rows and the text table ``tools/benchmark.py``
prints."""

import math

__all__ = ["ratios", "format_table"]

#: the row of the teacher's dense path (``targets``)
TEACHER_DENSE = "CLIP teacher dense (encode_image_dense)"


def ratios(result: dict) -> dict:
    """``segmenter_vs_teacher_dense_throughput``: images/s of the config's segmenter (the first
    inference row, ``meta["segmenter"]``) over the teacher's dense path; ``<mode>_vs_ce_step``:
    seconds per training step of each distillation mode over cross-entropy only."""
    out = {}
    rows = {r["name"]: r for r in result["inference"]}
    segmenter = rows.get(result["meta"].get("segmenter"))
    dense = rows.get(TEACHER_DENSE)
    if segmenter and dense:
        out["segmenter_vs_teacher_dense_throughput"] = (
            segmenter["images_per_s"] / dense["images_per_s"]
        )
    train = {r["name"]: r for r in result["training"]}
    if "ce_only" in train:
        for mode in ("distill_cached", "distill_online"):
            if mode in train:
                out[f"{mode}_vs_ce_step"] = (
                    train[mode]["s_per_iter"] / train["ce_only"]["s_per_iter"]
                )
    return out


def _fmt(v, spec):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_table(result: dict) -> str:
    from tabulate import tabulate

    m = result["meta"]
    lines = [
        f"device: {m['device']} ({m['device_name']}), torch {m['torch']}, "
        f"{m['torch_threads']} threads; {m['statistic']} (iters={m['iters']}, "
        f"warmup={m['warmup']}); {m['flop_convention']}",
        "",
        tabulate(
            [
                [
                    r["name"],
                    r["input"],
                    _fmt(r["params_m"], ".2f"),
                    _fmt(r["gflops_per_image"], ".2f"),
                    _fmt(r["latency_ms"], ".1f"),
                    _fmt(r["images_per_s"], ".2f"),
                    _fmt(r["peak_mem_mb"], ".0f"),
                ]
                for r in result["inference"]
            ],
            headers=[
                "inference",
                "input",
                "params (M)",
                "GFLOPs/img (=GMACs)",
                "latency ms",
                "images/s",
                "peak mem MiB",
            ],
        ),
    ]
    if result["training"]:
        lines += [
            "",
            tabulate(
                [
                    [
                        r["name"],
                        r["input"],
                        _fmt(r["s_per_iter"], ".3f"),
                        _fmt(r["peak_mem_mb"], ".0f"),
                        ", ".join(f"{k}={v:.3f}" for k, v in r["losses"].items()),
                    ]
                    for r in result["training"]
                ],
                headers=["training step", "batch", "s/iter", "peak mem MiB", "losses"],
            ),
        ]
    if result.get("cache_warp_ms_per_image") is not None:
        lines += [
            "",
            f"cache: warp of one cached dense map onto a crop: "
            f"{result['cache_warp_ms_per_image']:.2f} ms/image (data-loader side)",
        ]
    if result["ratios"]:
        lines += [""] + [f"{k}: {v:.2f}" for k, v in result["ratios"].items()]
    return "\n".join(lines)
