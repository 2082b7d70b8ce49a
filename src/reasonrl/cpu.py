"""Sharing the CPU: how many threads torch should use while other programs run on the same cores.

Each of torch's parallel CPU ops ends at a barrier where its threads wait for one another. When other programs keep
the cores busy, one of those threads is often descheduled, and every op then waits a scheduler slice for it: a
rollout is tens of thousands of small ops, so the run slows far more than the CPU time it lost (the project saw a
1.3 s step take 11-12 s next to two other torch jobs on 2 cores). With as many threads as there are cores left
free, no op waits for a thread that is not running, and the slowdown stays in proportion to the CPU time others take.

`ThreadGovernor` measures, over each round (generation, rewards and optimizer steps), the CPU time the other
processes of the machine used, from /proc/stat minus this process's own, and sets torch's intra-op threads to the
cores they left free: at least 1, at most what torch started with. On an idle machine it changes nothing. Where
/proc/stat is missing (not Linux) it does nothing.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("reasonrl")

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) seconds of the whole machine since boot, summed over its CPUs; None if unknown."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return (total - idle) / _CLOCK_TICKS, total / _CLOCK_TICKS


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system


class ThreadGovernor:
    """Sets torch's thread count to the cores other processes leave free, measured over each round."""

    def __init__(self, enabled: bool = True):
        import torch

        self.torch = torch
        self.max_threads = torch.get_num_threads()
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.machine_cpus = os.cpu_count() or self.cores
        self.enabled = enabled and self.max_threads > 1 and _cpu_times() is not None
        self.threads = self.max_threads
        self._start = self._sample()

    def _sample(self):
        machine = _cpu_times()
        return None if machine is None else (*machine, _own_seconds())

    def others_cores(self) -> float | None:
        """Cores' worth of CPU time the other processes used since the last call (None when unknown)."""
        now = self._sample()
        start, self._start = self._start, now
        if start is None or now is None:
            return None
        busy, total, own = (a - b for a, b in zip(now, start))
        wall = total / self.machine_cpus  # seconds of wall time the window spanned
        if wall <= 0:
            return None
        return max(0.0, (busy - own) / wall)

    def update(self) -> int:
        """At a round boundary: the thread count for the next round (applied to torch)."""
        others = self.others_cores()
        if not self.enabled or others is None:
            return self.threads
        free = self.cores - others
        threads = max(1, min(self.max_threads, int(free + 0.5)))
        if threads != self.threads:
            logger.info("other processes used %.1f of %d cores over the last round: torch threads %d -> %d", others,
                        self.cores, self.threads, threads)
            self.torch.set_num_threads(threads)
            self.threads = threads
        return threads

    def close(self) -> None:
        """Torch's thread count back to what it was when training started."""
        if self.threads != self.max_threads:
            self.torch.set_num_threads(self.max_threads)
            self.threads = self.max_threads


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
            _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        except (OSError, AttributeError):
            _LIBC = False
    return _LIBC


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Keep glibc's malloc giving every block of `threshold` bytes or more its own memory map, returned to the
    system when it is freed; False (nothing done) where there is no glibc.

    glibc starts there but raises the threshold to the size of each mapped block freed (up to 32 MiB), so after a
    few freed tensors, tensors up to that size come from the heap, whose freed pages stay resident until
    malloc_trim. FSDP frees and reallocates every layer's gathered weights and gradients in each forward and
    backward (and DDP its buckets), so that heap only grows: on a 135M model a micro-step held 1.3 GB more than its
    live tensors (docs/SCALING.md, "Memory per process"). A fixed threshold turns this dynamic growth off."""
    libc = _libc()
    if not libc:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))


MADV_PAGEOUT = 21  # Linux >= 5.4: reclaim these pages now; their contents are kept (re-read or swapped in on use)


def page_out(tensor: torch.Tensor) -> bool:
    """Ask the kernel to reclaim the memory pages wholly inside `tensor`'s bytes (CPU only), for a tensor no longer
    needed whose memory will not be freed soon: a weight that transformers memory-mapped from its safetensors file
    stays resident as long as the file's mapping lives, which is until the last weight of that file is dropped.
    Casting a model's weights one by one would otherwise hold the old and the new copies of all of them at its end.
    MADV_PAGEOUT never changes what the memory holds (a clean file page is dropped and re-read if touched again; a
    written page without swap stays), so this is safe whoever still points at it. Returns whether the kernel took
    the advice; False (and nothing done) off Linux, on an old kernel, or for a tensor under one page."""
    if tensor.device.type != "cpu" or not tensor.is_contiguous() or not _libc():
        return False
    page = 4096
    start = tensor.data_ptr()
    first = -(-start // page) * page
    last = (start + tensor.numel() * tensor.element_size()) // page * page
    if last <= first:
        return False
    return _LIBC.madvise(first, last - first, MADV_PAGEOUT) == 0


def release_freed_memory() -> None:
    """Give memory that torch has freed back to the operating system (glibc's malloc_trim).

    Tensors of a few MB (a rollout's merged weights, a backward's activations) come from malloc's heap; once freed,
    glibc keeps the pages for reuse, so the process's resident size stays at its high-water mark and the next phase
    stacks its own peak on top of memory no one uses. Called between phases; a no-op where there is no glibc."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None
