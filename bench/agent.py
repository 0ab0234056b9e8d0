"""The agent as a process: start to first decision, decision latency at 30 fps, peak memory.

Runs the real command, `maskgate agent --source synthetic --no-mqtt`, in fresh processes:

- start: from launching the process to its first decision (walk-up played as fast as possible);
- latency: the walk-up played in real time at 30 fps as a camera would (`--realtime`), repeated
  --runs times; each decision's latency runs from the person's first sighting to the decision;
- memory: the peak resident set size of those processes.

    .venv/bin/python bench/agent.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stats import percentile  # bench/stats.py

MASKGATE = str(Path(sys.executable).parent / "maskgate")
DECISION = re.compile(r"track \d+: (\w+) .* after (\d+) ms")


def agent_env(folder: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "MASKGATE_DATABASE_URL": f"sqlite:///{folder / 'bench.sqlite'}",
        "MASKGATE_PATHS__SNAPSHOTS": str(folder / "snapshots"),
    }
    subprocess.run([MASKGATE, "db", "upgrade"], env=env, check=True, capture_output=True)
    return env


def start_to_first_decision(env: dict[str, str]) -> float:
    started = time.perf_counter()
    process = subprocess.Popen(
        [MASKGATE, "agent", "--source", "synthetic", "--no-mqtt"], env=env, stdout=subprocess.PIPE, text=True
    )
    first = None
    for line in process.stdout:
        if first is None and DECISION.search(line):
            first = time.perf_counter() - started
    process.wait()
    if first is None:
        raise RuntimeError("the agent made no decision")
    return first


def realtime_latencies(env: dict[str, str]) -> list[tuple[str, int]]:
    result = subprocess.run(
        [MASKGATE, "agent", "--source", "synthetic", "--no-mqtt", "--realtime"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return [(action, int(ms)) for action, ms in DECISION.findall(result.stdout)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="real-time walk-ups (three people each)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        env = agent_env(Path(folder))
        starts = [start_to_first_decision(env) for _ in range(3)]
        decisions = [d for _ in range(args.runs) for d in realtime_latencies(env)]
    latencies = [ms for _, ms in decisions]
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    actions = " ".join(action for action, _ in decisions)
    p95 = percentile(latencies, 95)
    runs = f"{len(decisions)} decisions in {args.runs} real-time runs at 30 fps"
    print(f"\nagent on the synthetic walk-up ({runs})")
    print(f"decisions:                      {actions}")
    start = f"median {statistics.median(starts):.2f}, max {max(starts):.2f}"
    print(f"start to first decision (s):    {start}  (goal <= 3)")
    latency = f"p50 {statistics.median(latencies):.0f}, p95 {p95:.0f}"
    print(f"decision latency (ms):          {latency}  (goal p95 <= 250)")
    print(f"peak RSS of an agent (MB):      {peak_mb:.0f}  (goal <= 400)")


if __name__ == "__main__":
    main()
