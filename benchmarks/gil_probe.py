"""Whether a call releases the GIL, measured so that a busy machine does not blur the answer.

A worker thread makes the call in a loop, raising a flag around each call, while the main
thread spins in Python and adds up the CPU time it spends (its own, ``time.thread_time_ns``)
while the flag is up. A call that holds the GIL stops the main thread for as long as it runs,
so the main thread's share stays a small part of the worker's CPU time inside calls (what
remains is the GIL hand-offs at the edges of each call, a millisecond or two each on a busy
machine); a call that releases it lets the main thread spin alongside, and two runnable
threads get equal shares of the CPU whatever else the machine runs: a share near 1. The
2-thread speed-up, by contrast, also needs two idle cores. Calls should take tens of
milliseconds each for the hand-offs to fade.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

#: The switch interval while probing: the main thread's turns between two calls that hold
#: the GIL stay short.
SWITCH_INTERVAL = 1e-4


def main_share(call: Callable[[], object], seconds: float) -> float:
    """The main thread's CPU time while ``call`` ran in another thread, over that thread's
    CPU time inside ``call`` (calls made for ``seconds``, at least one).

    Example:
        >>> import zlib
        >>> data = zlib.compress(bytes(1 << 22))
        >>> main_share(lambda: zlib.decompress(data), 0.05) > 0
        True
    """
    in_call, finished = threading.Event(), threading.Event()
    worker_ns = [0]
    failed: list[BaseException] = []

    def worker() -> None:
        clock, stop = time.thread_time_ns, time.perf_counter() + seconds
        try:
            while not worker_ns[0] or time.perf_counter() < stop:
                in_call.set()
                start = clock()
                call()
                worker_ns[0] += clock() - start
                in_call.clear()
        except BaseException as error:  # handed to the main thread, which raises it
            failed.append(error)
        finally:
            in_call.clear()
            finished.set()

    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    spun = 0
    try:
        thread = threading.Thread(target=worker)
        thread.start()
        while not finished.is_set():
            if in_call.is_set():
                start = time.thread_time_ns()
                while in_call.is_set():
                    pass
                spun += time.thread_time_ns() - start
        thread.join()
    finally:
        sys.setswitchinterval(previous)
    if failed:
        raise failed[0]
    return spun / max(worker_ns[0], 1)
