"""Child process for the crash tests: appends deterministic rows and acknowledges commits.

Row ``i`` holds ``x = i`` (every element) and ``y = i``. After every commit the writer prints
``ACK <rows>`` and flushes, so the parent knows which rows were acknowledged as durable.
Run as ``python -m tests.crash_writer PATH SEED``.
"""

from __future__ import annotations

import sys

import numpy as np

import memshard as ms

SAMPLE_SHAPE = (5, 7)
FIELDS = {"x": ("float32", SAMPLE_SHAPE), "y": ("int64", ())}
#: Small shards so that the writer rolls over often.
SHARD_BYTES = 23 * (4 * 35 + 8)


def rows(start: int, count: int) -> dict[str, np.ndarray]:
    """The deterministic content of rows ``start .. start + count``."""
    index = np.arange(start, start + count)
    x = np.broadcast_to(index[:, None, None], (count, *SAMPLE_SHAPE)).astype(np.float32)
    return {"x": x, "y": index}


def main(path: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    writer = ms.append(path)
    print(f"START {writer.rows}", flush=True)
    while True:
        for _ in range(int(rng.integers(1, 4))):
            count = int(rng.integers(1, 60))
            if rng.random() < 0.2:
                for _ in range(count):
                    row = rows(writer.rows, 1)
                    writer.append({"x": row["x"][0], "y": int(row["y"][0])})
            else:
                writer.extend(rows(writer.rows, count))
        if rng.random() < 0.1:
            writer.close()
            print(f"ACK {writer.committed_rows}", flush=True)
            writer = ms.append(path)
        else:
            writer.commit()
            print(f"ACK {writer.committed_rows}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
