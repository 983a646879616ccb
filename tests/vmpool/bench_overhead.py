"""Per-program overhead of run_program on a warm sandbox (not a test; run it by hand):

    .venv/bin/python tests/vmpool/bench_overhead.py [N]
"""

import statistics
import sys
import time

from vmpool import Limits, LocalSandbox


def main(n: int) -> None:
    started = time.perf_counter()
    with LocalSandbox.create("bwrap") as sandbox:
        print("sandbox start + hello: %.1f ms" % ((time.perf_counter() - started) * 1000))
        limits = Limits()
        for _ in range(20):  # warm-up
            sandbox.run_program("pass", limits)
        for label, code in [("pass", "pass"), ("import math, re, collections", "import math, re, collections"),
                            ("print + small loop", "print(sum(i * i for i in range(1000)))")]:
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                result = sandbox.run_program(code, limits)
                times.append(time.perf_counter() - t0)
                assert result.status == "ok", result
            times.sort()
            print("%-30s median %.2f ms  p90 %.2f ms  mean %.2f ms  (n=%d)" % (
                label, statistics.median(times) * 1000, times[int(n * 0.9)] * 1000,
                statistics.mean(times) * 1000, n))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
