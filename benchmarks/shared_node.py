"""Each CPU engine `kiln optimize` built, alone and beside CPU hogs, under each thread
setting: which runtimes and schedulers degrade gracefully on a shared node.

    .venv/bin/python benchmarks/shared_node.py [OUT] [--hogs 0 2] [--threads 2 1]
        [--batch-sizes 1 8] [--engines NAME ...] [--rounds 6] [--seconds 1.0]

OUT is a `kiln optimize --output` folder (default `out/lipsync`, what `make demo` writes).
Every (engine, threads, OpenMP wait policy) is a worker process of its own, started once, with
its engine loaded the way `kiln serve` loads it; the OpenMP policy must be set before the
runtime starts, hence processes. Rounds are interleaved: in each round every worker measures
one window in turn, order rotated, so a slow spell of the machine lands on all of them. The
hogs (busy-loop processes) run for the hogged half of the rounds only, alternating with idle
rounds, so "alone" and "beside N hogs" are measured in the same run too. Figures: median
samples/s over the rounds with the 95 % interval of the median, and beside hogs the share of
its alone throughput it kept (the fair share on 2 CPUs with 2 hogs is about a half)."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# How idle pool threads wait: `spin` is each runtime's default (libgomp's OpenMP threads and
# ONNX Runtime's intra-op pool spin a while before sleeping); `passive` sleeps at once
# (OMP_WAIT_POLICY=PASSIVE; ONNX Runtime's session.intra_op.allow_spinning=0, which Kiln
# sets since this measured it free alone and 1.5x beside hogs). OpenVINO's
# TBB workers have no such setting, so it is measured once.
POLICIES = ("spin", "passive")
DEFAULT_ENGINES = (
    "aotinductor-cpu-fp32",
    "onnxruntime-cpu-fp32",
    "openvino-cpu-fp32",
    "openvino-cpu-int8",
)


@dataclass
class Worker:
    label: str
    process: subprocess.Popen[str]

    def measure(self, batch: int, seconds: float) -> float:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps({"batch": batch, "seconds": seconds}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.label}: worker exited")
        return float(json.loads(line)["throughput"])


def start_worker(out: Path, candidate: str, threads: int, policy: str) -> Worker:
    env = dict(os.environ)
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    command = [sys.executable, __file__, "--worker", str(out), candidate, str(threads), policy]
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    assert process.stdout is not None
    ready = process.stdout.readline()  # the engine is loaded
    if not ready:
        raise RuntimeError(f"{candidate}: worker failed to start")
    return Worker(f"{candidate} t={threads} omp={policy}", process)


def worker_main(out: Path, candidate: str, threads: int, policy: str) -> None:
    """Load `candidate` as `kiln serve` would, then answer measurement requests on stdin."""
    from kiln.builder.feeds import random_feeds
    from kiln.runtime import ort_runner
    from kiln.serve.loading import check_servable, fetch_artifact, from_output_dir, open_runner
    from kiln.storage.objects import Storage

    kiln_options = ort_runner.session_options  # Kiln's: spinning off

    def with_policy(count: int | None) -> object:
        options = kiln_options(count)
        options.add_session_config_entry(ort_runner.SPINNING, "0" if policy == "passive" else "1")
        return options

    ort_runner.session_options = with_policy  # type: ignore[assignment]

    model, targets = from_output_dir(out)
    target = next(t for t in targets if t.name == "cpu")
    served = check_servable(model, target.model_copy(update={"selected": candidate}), None)
    cache = Path(tempfile.gettempdir()) / "kiln-shared-node"
    artifact = fetch_artifact(Storage(), served.candidate.artifact or "", cache)
    runner = open_runner(served, artifact, threads)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        ask = json.loads(line)
        runner.prepare(random_feeds(model.spec.inputs, ask["batch"], seed=0))
        runner.run()  # the switch from another batch size is not what is measured
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < ask["seconds"]:
            runner.run()
            runs += 1
        elapsed = time.perf_counter() - started
        print(json.dumps({"throughput": runs * ask["batch"] / elapsed}), flush=True)


def burn() -> None:
    while True:
        pass


def engines(out: Path, wanted: list[str]) -> list[str]:
    """Those of `wanted` the CPU target built, servable and through their gates."""
    status = json.loads((out / "status.json").read_text())
    target = next(t for t in status["targets"] if t["name"] == "cpu")
    servable = ("aotinductor", "onnxruntime", "openvino")
    return [
        c["name"]
        for c in target["candidates"]
        if c["name"] in wanted
        and c["state"] == "OK"
        and c["backend"] in servable
        and (c.get("accuracy") or {}).get("passed")
        and c.get("artifact")
    ]


def median_interval_text(values: list[float]) -> str:
    from kiln.builder.stats import median_interval

    iv = median_interval(values)
    return f"{iv.median:7.1f} [{iv.low:.1f}-{iv.high:.1f}]"


def measure(args: argparse.Namespace) -> dict[tuple[str, int, int], list[float]]:
    """(worker label, batch, hogs) -> samples/s per round."""
    workers = [
        start_worker(args.out, name, threads, policy)
        for name in engines(args.out, args.engines)
        for threads in args.threads
        for policy in (POLICIES[:1] if name.startswith("openvino") else POLICIES)
    ]
    results: dict[tuple[str, int, int], list[float]] = {}
    try:
        for index in range(args.rounds * len(args.hogs)):
            hogs = args.hogs[index % len(args.hogs)]
            burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(hogs)]
            for burner in burners:
                burner.start()
            try:
                shift = index % len(workers)
                for worker in workers[shift:] + workers[:shift]:
                    for batch in args.batch_sizes:
                        value = worker.measure(batch, args.seconds)
                        results.setdefault((worker.label, batch, hogs), []).append(value)
            finally:
                for burner in burners:
                    burner.terminate()
                    burner.join()
    finally:
        for worker in workers:
            worker.process.terminate()
    return results


def report(results: dict[tuple[str, int, int], list[float]], args: argparse.Namespace) -> None:
    from kiln.builder.stats import median

    for batch in args.batch_sizes:
        print(f"\nbatch {batch}: samples/s, median [95 % interval] over {args.rounds} rounds")
        header = "".join(f"{f'{h} hogs':>26}" for h in args.hogs)
        print(f"  {'engine, threads, OpenMP wait policy':<46}{header}   kept")
        labels = sorted({label for label, b, _ in results if b == batch})
        for label in labels:
            cells = [results[(label, batch, h)] for h in args.hogs]
            kept = median(cells[-1]) / median(cells[0]) if median(cells[0]) else 0.0
            row = "".join(f"{median_interval_text(c):>26}" for c in cells)
            print(f"  {label:<46}{row}   {kept:5.0%}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(ROOT))
        worker_main(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=ROOT / "out" / "lipsync")
    parser.add_argument("--hogs", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--engines", nargs="+", default=list(DEFAULT_ENGINES))
    parser.add_argument("--rounds", type=int, default=6, help="per hog count")
    parser.add_argument("--seconds", type=float, default=1.0, help="one window")
    args = parser.parse_args()
    args.out = args.out.resolve()
    report(measure(args), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
