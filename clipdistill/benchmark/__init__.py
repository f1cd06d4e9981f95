"""Speed benchmark of segmenters (each built from its own config) and of the CLIP teacher
(``tools/benchmark.py``, ``docs/BENCHMARKS.md``), and the accuracy + cost comparison of several
segmenters (``tools/compare.py``, ``docs/COMPARISON.md``)."""

from .compare import Entry, format_markdown, parse_entry, run_comparison, write_comparison
from .core import (
    BENCHMARK_TARGETS,
    FLOP_CONVENTION,
    INFERENCE_FIELDS,
    TRAINING_FIELDS,
    BenchmarkTarget,
    PeakMemory,
    count_flops,
    format_table,
    inference_params,
    register_benchmark_target,
    run_benchmark,
    segmenter_target,
    vocabulary_sweep,
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
    "inference_params",
    "register_benchmark_target",
    "run_benchmark",
    "segmenter_target",
    "Entry",
    "parse_entry",
    "run_comparison",
    "format_markdown",
    "write_comparison",
    "vocabulary_sweep",
]
