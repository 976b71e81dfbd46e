#!/usr/bin/env python3
"""A callgrind profile as folded stacks for inferno-flamegraph (scripts/profile-miss uses it).

    python3 scripts/callgrind_folded.py callgrind.out.1 > profile.folded

Callgrind records costs per caller-callee edge, not whole stacks. The stacks are rebuilt from
the roots down: an edge's cost is exact, and a callee's share of it is split among the callee's
own callees in the proportions of its whole-run profile (as gprof does), so frames deeper than
one call are approximate. Recursion is cut at the first repeat. Python 3 standard library only.
"""

import re
import sys
from collections import defaultdict

COMPRESSED = re.compile(r"\((\d+)\)(?:\s+(.*))?")


def read(path: str):
    """Self cost per function and inclusive cost per call edge."""
    names: dict[str, str] = {}
    self_cost: dict[str, int] = defaultdict(int)
    calls: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def name(spec: str) -> str:
        m = COMPRESSED.match(spec)
        if m:
            if m.group(2) is not None:
                names[m.group(1)] = m.group(2)
            spec = names.get(m.group(1), m.group(1))
        return re.sub(r"\s*\[[^\]]*\]$", "", spec).replace(";", ",")

    function = callee = None
    call_cost_next = False
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("fn="):
                function = name(line[3:])
            elif line.startswith("cfn="):
                callee = name(line[4:])
            elif line.startswith("calls="):
                call_cost_next = True
            elif line and (line[0].isdigit() or line[0] in "+-*"):
                fields = line.split()
                cost = int(fields[1]) if len(fields) > 1 else 0
                if call_cost_next:
                    calls[function][callee] += cost
                    call_cost_next = False
                else:
                    self_cost[function] += cost
    return self_cost, calls


def folded(self_cost, calls):
    inclusive_of: dict[str, int] = {}

    def inclusive(fn: str) -> int:
        if fn not in inclusive_of:
            inclusive_of[fn] = self_cost[fn] + sum(c for k, c in calls[fn].items() if k != fn)
        return inclusive_of[fn]

    called = {k for edges in calls.values() for k in edges}
    roots = [f for f in set(self_cost) | set(calls) if f not in called]
    out: dict[str, float] = defaultdict(float)

    def walk(fn: str, cost: float, stack: list[str]) -> None:
        total = inclusive(fn)
        if total <= 0 or cost < 1:
            return
        share = cost / total
        stack = stack + [fn]
        key = ";".join(stack)
        if len(stack) > 60:
            out[key] += cost
            return
        out[key] += self_cost[fn] * share
        for callee, c in calls[fn].items():
            if callee == fn:
                continue
            if callee in stack:
                out[key + ";" + callee] += c * share
            else:
                walk(callee, c * share, stack)

    sys.setrecursionlimit(10_000)
    for root in roots:
        walk(root, inclusive(root), [])
    return out


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    for stack, cost in folded(*read(sys.argv[1])).items():
        if cost >= 1:
            print(f"{stack} {int(cost)}")


if __name__ == "__main__":
    main()
