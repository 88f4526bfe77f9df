"""On a CPU, freed activations go back to the OS instead of fragmenting glibc's heap."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Frees a 12 MiB tensor (which lifts glibc's threshold for mapping blocks by themselves to that
# size), then fills forty more with a small tensor after each that stays (the pattern of a
# step's activations) and frees the forty; prints the anonymous memory the process still holds.
PROGRAM = textwrap.dedent(
    """
    import sys
    import torch
    from training.engine.modeling import return_large_frees_to_the_os

    def anonymous_mib():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024

    if sys.argv[1] == "on":
        assert return_large_frees_to_the_os()
    block = 3 * 2**20  # float32 elements: 12 MiB
    torch.ones(block).sum()
    before = anonymous_mib()
    kept, freed = [], []
    for _ in range(40):
        freed.append(torch.ones(block))
        kept.append(torch.ones(2**16))  # 256 KiB
    freed.clear()
    print(anonymous_mib() - before)
    """
)


def _held_mib(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True
    )
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_large_tensors_do_not_stay_in_the_process() -> None:
    assert _held_mib("off") > 300  # 480 MiB freed, kept by the heap
    assert _held_mib("on") < 50


CHOICE = textwrap.dedent(
    """
    import torch
    from training.engine.modeling import return_large_frees_to_the_os

    small = torch.nn.Linear(512, 512)
    big = torch.nn.utils.skip_init(torch.nn.Linear, 2**15, 2**13, bias=False)  # 1 GiB, untouched
    print(return_large_frees_to_the_os(small), return_large_frees_to_the_os(big))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_only_bases_of_a_gib_or_more_change_the_allocator() -> None:
    """A small model's job keeps glibc's faster default; a big one's gets the fixed threshold."""
    done = subprocess.run(
        [sys.executable, "-c", CHOICE], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "True"]
