"""Run the reference's evaluation loop (tuned-lens 0.2.0) with both lens types; prints its wall time.

Runs inside the reference's venv (see eval_speed.py). Its CLI cannot parse ``--lens_types``
(simple_parsing rejects every Literal value there), so the list is set after parsing.
Usage: python reference_eval.py OUT_JSON <the reference's `eval` arguments>
"""

import json
import resource
import sys
import time

from simple_parsing import ArgumentParser, ConflictResolution
from tuned_lens.__main__ import Main

parser = ArgumentParser(conflict_resolution=ConflictResolution.EXPLICIT)
parser.add_arguments(Main, dest="prog")
command = parser.parse_args(["eval", *sys.argv[2:]]).prog.command
command.lens_types = ["logit", "tuned"]
started = time.perf_counter()
command.execute()
wall = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
with open(sys.argv[1], "w") as handle:
    json.dump({"wall_s": wall, "peak_rss_mib": peak}, handle)
print(f"reference eval: {wall:.1f} s, peak RSS {peak:.0f} MiB")
