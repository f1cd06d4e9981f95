"""Speed benchmark of segmenters (each built from its own config) and of the CLIP teacher
(``tools/benchmark.py``, ``docs/BENCHMARKS.md``), and the accuracy + cost comparison of several
segmenters (``tools/compare.py``, ``docs/COMPARISON.md``).

One module per concern: ``targets`` (what is timed), ``flops``, ``memory``, ``training``
(seconds per training step), ``run`` (the driver and the vocabulary sweep), ``agreement`` (label
maps from candidate classes against the full computation), ``report`` (ratios,
table), ``compare``; the timing harness itself is ``clipdistill.utils.timing``.
"""

from .compare import Entry, format_markdown, parse_entry, run_comparison, write_comparison
from .flops import FLOP_CONVENTION, count_flops
from .memory import PeakMemory
from .report import format_table
from .run import (
    INFERENCE_FIELDS,
    TRAINING_FIELDS,
    dataset_sweep_source,
    run_benchmark,
    vocabulary_sweep,
)
from .targets import (
    BENCHMARK_TARGETS,
    BenchmarkTarget,
    inference_params,
    register_benchmark_target,
    segmenter_target,
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
    "dataset_sweep_source",
    "vocabulary_sweep",
]
