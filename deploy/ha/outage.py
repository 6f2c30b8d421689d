#!/usr/bin/env python3
"""The write outage a fault caused, from an acknowledgement file (JSON lines
with "t", the client's wall-clock time of the acknowledgement, as written by
sqlload.py and load.py).

usage: outage.py ACKS T_FAULT T_END

Prints one line: the longest time without any acknowledgement among the
gaps that overlap [T_FAULT, T_END] (the gap that starts at the last
acknowledgement before the fault counts whole: the outage a client saw),
then its start and end, and the acknowledgements in the window.
"""

import json
import sys


def main():
    path, t_fault, t_end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    times = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    times.append(float(json.loads(line)["t"]))
                except (ValueError, KeyError):
                    continue  # a line being written as we read
    times.sort()
    before = [t for t in times if t < t_fault]
    inside = [t for t in times if t_fault <= t <= t_end]
    after = [t for t in times if t > t_end]
    # The points that bound gaps overlapping the window.
    points = ([before[-1]] if before else [t_fault]) + inside + ([after[0]] if after else [t_end])
    best, start, end = 0.0, t_fault, t_fault
    for a, b in zip(points, points[1:]):
        if b - a > best:
            best, start, end = b - a, a, b
    print(f"{best:.2f} {start:.3f} {end:.3f} {len(inside)}")


if __name__ == "__main__":
    main()
