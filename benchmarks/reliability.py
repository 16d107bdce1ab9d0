"""Kiln under faults and load: every fault test at the size asked, and their figures in one
table (README's "Reliability").

    .venv/bin/python benchmarks/reliability.py [--full] [--seed N]

Runs, with pytest, on the local cluster and real processes:
- tests/integration/test_kill_mid_upload.py: a builder SIGKILLed between two files;
- tests/integration/test_serve_load.py: `kiln serve` under 64 clients, bad and slow ones mixed in;
- tests/e2e/test_operator_faults.py: S3 down mid-upload; the API server restarted in a burst,
  with 409s and 410s injected;
- tests/e2e/test_operator_chaos.py: operator and builder SIGKILLs across many resources.

The default sizes are the tests' own (what CI runs); `--full` is the issue's: 10,000 requests
under load, 30 resources and 10 operator kills in the chaos run. Every test asserts its own
outcome; this script only gathers the rows they print (tests/faults/figures.py) into one table.
Everything shares this machine's cores: the latency figures are bounded by that."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.faults.figures import rows, table  # noqa: E402

TESTS = [
    "tests/integration/test_kill_mid_upload.py",
    "tests/integration/test_serve_load.py::test_64_clients_each_get_their_own_answer_among_bad_and_slow_ones",
    "tests/e2e/test_operator_faults.py",
    "tests/e2e/test_operator_chaos.py",
]
FULL = {
    "KILN_LOAD_REQUESTS": "10000",
    "KILN_CHAOS_RESOURCES": "30",
    "KILN_CHAOS_KILLS": "10",
    "KILN_CHAOS_POD_KILLS": "6",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the issue's sizes, not CI's")
    parser.add_argument("--seed", type=int, help="the chaos run's seed (default: random)")
    args = parser.parse_args()
    env = {**os.environ, **(FULL if args.full else {})}
    if args.seed is not None:
        env["KILN_CHAOS_SEED"] = str(args.seed)
    command = [sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider", *TESTS]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    sys.stdout.write(done.stdout[-6000:])
    found = rows(done.stdout.splitlines())
    print("\n" + table(found))
    if done.returncode != 0:
        print(f"\npytest exited {done.returncode}: a fault test failed (see above)")
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
