"""Run the reference's evaluation loop (tuned-lens 0.2.0) with both lens types; prints its times.

Runs inside the reference's venv (see eval_speed.py). Its CLI cannot parse ``--lens_types``
(simple_parsing rejects every Literal value there), so the list is set after parsing. Records the
whole run (after the imports) and the loop alone: from the creation of its progress bar over the
batches to the bar's close (forward passes and every lens and layer; model, lens and data loading
excluded).
Usage: python reference_eval.py OUT_JSON <the reference's `eval` arguments>
"""

import json
import resource
import sys
import time

import tuned_lens.scripts.eval_loop as eval_loop
from simple_parsing import ArgumentParser, ConflictResolution
from tuned_lens.__main__ import Main

marks = {}


class TimedProgress(eval_loop.tqdm):
    """The loop's progress bar, noting when the loop starts and ends."""

    def __init__(self, *args, **kwargs):
        marks["loop_start"] = time.perf_counter()
        super().__init__(*args, **kwargs)

    def close(self):
        marks.setdefault("loop_end", time.perf_counter())
        super().close()


eval_loop.tqdm = TimedProgress

parser = ArgumentParser(conflict_resolution=ConflictResolution.EXPLICIT)
parser.add_arguments(Main, dest="prog")
command = parser.parse_args(["eval", *sys.argv[2:]]).prog.command
command.lens_types = ["logit", "tuned"]
started = time.perf_counter()
command.execute()
wall = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
with open(sys.argv[1], "w") as handle:
    loop = marks["loop_end"] - marks["loop_start"]
    json.dump({"wall_s": wall, "loop_s": loop, "peak_rss_mib": peak}, handle)
print(f"reference eval: {wall:.1f} s (loop {loop:.1f} s), peak RSS {peak:.0f} MiB")
