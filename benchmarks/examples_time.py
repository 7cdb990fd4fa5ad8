"""How long `optimlab claims --examples` takes: wall and CPU seconds per example and for the whole set.

    PYTHONPATH=src python benchmarks/examples_time.py

The budget is a minute on 2 cores for the whole set. On a loaded machine the wall time stretches while the CPU
time stays put, so both are printed, with the load average.
"""

from __future__ import annotations

import os
import time


def main() -> None:
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    from optimlab.lab.examples import catalogue  # the imports are part of the bill
    from optimlab.lab.examples.core import run_example

    imported = time.perf_counter() - start_wall
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; imports {imported:.1f} s")
    print(f"{'example':<22} {'wall s':>7} {'cpu s':>7}")
    for example in catalogue():
        wall, cpu = time.perf_counter(), time.process_time()
        run_example(example)
        print(f"{example.id:<22} {time.perf_counter() - wall:>7.1f} {time.process_time() - cpu:>7.1f}")
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    print(f"{'whole set':<22} {wall:>7.1f} {cpu:>7.1f}")


if __name__ == "__main__":
    main()
