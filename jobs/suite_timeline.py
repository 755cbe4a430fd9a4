"""Where the test suite's wall time goes, per pytest-xdist worker, from a timeline the suite wrote.

    FERSNET_TEST_TIMELINE=/tmp/timeline.jsonl python -m pytest -q     # tests/conftest.py writes it
    python jobs/suite_timeline.py /tmp/timeline.jsonl

Prints, per worker: when it started and ended its first and last test, its time in tests (setup + call +
teardown) and the gaps between them, then its files by time, longest first. The suite's wall time is the
slower worker's end; time cut from the faster worker's files shortens nothing until the two swap.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("timeline", help="the JSON lines FERSNET_TEST_TIMELINE named")
    p.add_argument("--top", type=int, default=12, help="files listed per worker")
    args = p.parse_args()
    with open(args.timeline) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    if not lines:
        raise SystemExit(f"{args.timeline}: no test phases recorded")
    t0 = min(r["start"] for r in lines)
    by_worker = defaultdict(list)
    for r in lines:
        by_worker[r["worker"]].append(r)
    for worker, rows in sorted(by_worker.items()):
        rows.sort(key=lambda r: r["start"])
        start, end = rows[0]["start"] - t0, max(r["start"] + r["s"] for r in rows) - t0
        busy = sum(r["s"] for r in rows)
        files: dict[str, float] = defaultdict(float)
        for r in rows:
            files[r["test"].split("::")[0]] += r["s"]
        print(f"{worker}: {start:.0f} s to {end:.0f} s, {busy:.0f} s in tests, {end - start - busy:.0f} s between")
        for name, s in sorted(files.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"  {s:7.1f} s  {name}")
        slow = sorted(rows, key=lambda r: -r["s"])[:5]
        for r in slow:
            print(f"    {r['s']:6.1f} s  {r['phase']:8} {r['test']}  (at {r['start'] - t0:.0f} s)")


if __name__ == "__main__":
    main()
