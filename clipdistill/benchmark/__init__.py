"""Speed benchmark of the student, the CLIP teacher and every registered segmenter
(``tools/benchmark.py``; results in ``docs/BENCHMARKS.md``)."""

from .core import (
    BENCHMARK_TARGETS,
    FLOP_CONVENTION,
    INFERENCE_FIELDS,
    TRAINING_FIELDS,
    BenchmarkTarget,
    PeakMemory,
    count_flops,
    format_table,
    register_benchmark_target,
    registered_segmenters,
    run_benchmark,
)

__all__ = [
    "BENCHMARK_TARGETS",
    "FLOP_CONVENTION",
    "INFERENCE_FIELDS",
    "TRAINING_FIELDS",
    "BenchmarkTarget",
    "PeakMemory",
    "count_flops",
    "format_table",
    "register_benchmark_target",
    "registered_segmenters",
    "run_benchmark",
]
