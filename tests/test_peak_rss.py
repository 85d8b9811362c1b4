"""summary.json's peak memory is the run's own, even when a large process started it."""

import resource
import subprocess
import sys

from whetstone.train.device import peak_rss_mb

CHILD = "from whetstone.train.device import peak_rss_mb; print(peak_rss_mb())"


def test_a_child_reports_its_own_peak_not_its_parents():
    ballast = bytearray(1024 * 2**20)  # 1 GiB resident in this process: the parent
    ballast[::4096] = b"\x01" * len(ballast[::4096])
    parent_peak = peak_rss_mb()
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    child_peak = float(out.stdout)
    del ballast
    assert parent_peak > 1024
    assert 10 < child_peak < parent_peak - 512  # torch and whetstone imported, but not the parent's gigabyte
    # ru_maxrss, which Linux carries across fork and exec, would have reported the parent's peak:
    inherited = subprocess.run([sys.executable, "-c", "import resource; print(resource.getrusage("
                                "resource.RUSAGE_SELF).ru_maxrss / 1024)"], capture_output=True, text=True)
    assert float(inherited.stdout) >= 1024
    assert peak_rss_mb() <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + 1
