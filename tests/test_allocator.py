"""fmnist.allocator: glibc's malloc set by image size, the user's environment winning, and the
settings taking effect (counted in page faults, in a fresh process each)."""

import json
import os
import platform
import subprocess
import sys

import pytest

from fmnist.allocator import LARGE_SIDE

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc settings")

# Allocates, touches and frees a 20 MiB block ten times; prints the policy set (side 0: glibc's
# defaults kept) and the page faults of the last nine rounds (the first may grow the heap).
CHILD = """
import json, resource, sys
import numpy as np
from fmnist.allocator import tune_malloc_for
policy = tune_malloc_for(int(sys.argv[1])) if sys.argv[1] != "0" else "defaults"
np.ones(20 << 20, dtype=np.uint8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    np.ones(20 << 20, dtype=np.uint8)
print(json.dumps({"policy": policy, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def run_child(side: int, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", CHILD, str(side)], capture_output=True, text=True, check=True,
                         env=clean | env)
    return json.loads(out.stdout)


def test_small_images_reuse_freed_blocks_without_page_faults():
    defaults, result = run_child(0), run_child(67)
    assert result["policy"] == "heap"
    # glibc's defaults trim the heap and fault part of it in again (about 500 faults here)
    assert result["faults"] < min(50, defaults["faults"] / 4), (result, defaults)


def test_large_images_keep_large_blocks_in_mmap_fresh_each_time():
    defaults, result = run_child(0), run_child(LARGE_SIDE)
    assert result["policy"] == "mmap"
    # each block mapped anew: at least one fault per 2 MiB (a huge page) of each, and far more than the defaults
    assert result["faults"] >= 9 * 10 and result["faults"] > 4 * defaults["faults"], (result, defaults)


def test_the_users_malloc_environment_wins():
    assert run_child(67, MALLOC_TRIM_THRESHOLD_="1000000")["policy"] == ""
    assert run_child(227, MALLOC_MMAP_THRESHOLD_="1000000")["policy"] == ""
