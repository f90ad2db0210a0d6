"""What the benchmarks measure of their processes: the CPU of named threads (the JVM's JIT compiler's share)."""

from __future__ import annotations

import ctypes
import os
import threading
import time

from bench.processes import JIT_THREADS, threads_cpu_seconds

PR_SET_NAME = 15  # prctl(2): the calling thread's name, 15 characters at most


def burning_thread(name: bytes, cpu_s: float, started: threading.Event, stop: threading.Event) -> threading.Thread:
    """A thread named `name` (as Linux names threads) that uses `cpu_s` of CPU, then waits for `stop`."""
    def run() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
        while time.thread_time() < cpu_s:
            pass
        started.set()
        stop.wait(30)

    return threading.Thread(target=run, daemon=True)


def test_only_the_named_threads_cpu_is_counted():
    started, stop = threading.Event(), threading.Event()
    thread = burning_thread(b"C2 CompilerThread0", 0.3, started, stop)
    thread.start()
    try:
        assert started.wait(30)
        jit_s = threads_cpu_seconds([os.getpid()], JIT_THREADS)
        other_s = threads_cpu_seconds([os.getpid()], ("no such thread",))
    finally:
        stop.set()
        thread.join()
    assert 0.25 <= jit_s < 5  # the clock ticks at 1/100 s; the rest of the suite's threads are not named so
    assert other_s == 0


def test_a_process_that_is_gone_counts_nothing():
    assert threads_cpu_seconds([2 ** 22 + 1], ("",)) == 0  # above Linux's largest pid
