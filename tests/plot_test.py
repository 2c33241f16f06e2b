#!/usr/bin/python3
"""bench/plot.py on a small bnorm_bench JSON written here: the medians it
picks, the ratio table, the time against oneDNN's fastest path, and a chart
that matplotlib renders (python3-matplotlib; skipped without it)."""
import importlib.util
import json
import os
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = importlib.util.spec_from_file_location("plot", os.path.join(HERE, "..", "bench", "plot.py"))
plot = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(plot)


def row(name, real_time, ratio, aggregate=None, error=False):
    b = {"name": name + "/manual_time", "real_time": real_time, "ratio_to_copy": ratio,
         "run_type": "aggregate" if aggregate else "iteration"}
    if aggregate:
        b["name"] += "_" + aggregate
        b["aggregate_name"] = aggregate
    if error:
        b["error_occurred"] = True
    return b


BENCHMARKS = [
    # An iteration row and its median: the median wins.
    row("forward_training/2x3x4x4/NCHW/bnorm_AVX2", 90.0, 1.0),
    row("forward_training/2x3x4x4/NCHW/bnorm_AVX2", 100.0, 1.1, "median"),
    row("forward_training/2x3x4x4/NCHW/bnorm_AVX2", 7.0, 0.1, "stddev"),
    row("forward_training/2x3x4x4/NCHW/onednn_plain", 400.0, 4.0, "median"),
    row("forward_training/2x3x4x4/NCHW/onednn_nChw16c", 80.0, 0.9, "median"),
    row("forward_training/2x3x4x4/NHWC/bnorm_AVX2", 120.0, 1.2, "median"),
    row("forward_training/2x3x4x4/NHWC/onednn_plain", 240.0, 2.4, "median"),
    # Rows that failed are left out.
    row("backward/2x3x4x4/NCHW/bnorm_AVX2", 1.0, 0.01, "median", error=True),
    row("forward_inference/2x3x4x4/NCHW/bnorm_AVX2", 50.0, 0.95, "median"),
]


class PlotTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, "run.json")
        with open(self.path, "w") as f:
            json.dump({"context": {"host_name": "box", "bnorm_threads": 2},
                       "benchmarks": BENCHMARKS}, f)

    def tearDown(self):
        self.dir.cleanup()

    def test_load_takes_medians_and_skips_errors(self):
        ratios, label = plot.load(self.path)
        self.assertEqual(label, "box, 2 threads")
        self.assertEqual(ratios[("forward_training", "2x3x4x4", "NCHW", "bnorm_AVX2")], 1.1)
        self.assertNotIn(("backward", "2x3x4x4", "NCHW", "bnorm_AVX2"), ratios)
        times, _ = plot.load(self.path, "real_time")
        self.assertEqual(times[("forward_training", "2x3x4x4", "NHWC", "onednn_plain")], 240.0)

    def test_table(self):
        ratios, _ = plot.load(self.path)
        times, _ = plot.load(self.path, "real_time")
        lines = plot.table(ratios, times).splitlines()
        self.assertEqual(
            lines[0],
            "| op | shape | NCHW bnorm_AVX2 | NCHW onednn_nChw16c | NCHW onednn_plain | "
            "NCHW bnorm / oneDNN best (time) | NHWC bnorm_AVX2 | NHWC onednn_plain | "
            "NHWC bnorm / oneDNN best (time) |")
        # Ops in the suite's order; NCHW against the faster of oneDNN's two
        # paths (100 / 80), NHWC against its plain path (120 / 240).
        self.assertEqual(lines[2:], [
            "| forward_inference | 2x3x4x4 | 0.95 |  |  |  |  |  |  |",
            "| forward_training | 2x3x4x4 | 1.10 | 0.90 | 4.00 | 1.25 | 1.20 | 2.40 | 0.50 |",
        ])

    def test_chart(self):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            self.skipTest("python3-matplotlib not installed")
        out = os.path.join(self.dir.name, "chart.png")
        plot.chart([plot.load(self.path)], out)
        with open(out, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")


if __name__ == "__main__":
    unittest.main()
