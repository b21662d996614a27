"""Race harness: two real writer processes started together on one dataset, many times over,
and after each race a check that the outcome is one that some serial order of the two
operations could have produced, with no committed row lost.

Kinds of race (each child's operation, in its own forked process):

- ``overwrite-append``: ``create(path, overwrite=True)`` writing new rows against
  ``append(path)`` adding rows to the old dataset. Each may fail only with a typed "busy"
  error (``DatasetLockedError``, ``DatasetChangedError``, ``DatasetNotFoundError`` while the
  directory is being swapped); the final dataset is the new one (if the overwrite succeeded),
  possibly followed by the appended rows, or the old one followed by the appended rows.
- ``create-create``: two ``create(path)`` of the same new path. Exactly one succeeds; the
  other fails with ``DatasetExistsError`` and nothing else.
- ``discard-write_part``: ``discard_parts(path)``, called repeatedly, against
  ``write_part(path)`` writing and closing a part. Afterwards the part either commits with
  every row, or (discarded) is refused with a typed ``PartError``; the dataset always opens
  and verifies.

Children start from a pipe (both block reading it until the parent writes), then spin for a
random few microseconds so that the interleavings spread over the operations' whole length.
Run ``python -m tests.race_harness --races N [--seed S] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

import memshard as ms

KINDS = ("overwrite-append", "create-create", "discard-write_part")
FIELDS = {"x": ("int64", ())}
#: Eight rows a shard, so that every writer rolls over shards.
SHARD_BYTES = 64
ROWS = 20
#: A child that has not finished by then has hung.
CHILD_SECONDS = 60.0
#: How many times the discarding child calls ``discard_parts`` in one race.
DISCARD_ROUNDS = 20
#: Largest random delay a child spins for after the start signal.
MAX_JITTER_SECONDS = 0.004
#: Typed errors a child may end with, by operation: anything else is a failure.
ALLOWED_ERRORS = {
    "append": {"DatasetLockedError", "DatasetChangedError", "DatasetNotFoundError"},
    "overwrite": {"DatasetLockedError"},
    "create": {"DatasetExistsError"},
    "write_part": set(),
    "discard": set(),
}


def tagged_rows(tag: int) -> np.ndarray:
    """The rows a writer with ``tag`` writes: each value says who wrote it, and where."""
    return np.arange(ROWS, dtype=np.int64) + tag * 1000


def run_operation(operation: str, path: str, tag: int) -> dict[str, Any]:
    """Do ``operation`` on ``path`` in this process; return what a caller would know."""
    rows = {"x": tagged_rows(tag)}
    if operation == "append":
        with ms.append(path) as writer:
            writer.extend(rows)
    elif operation in ("overwrite", "create"):
        overwrite = operation == "overwrite"
        with ms.create(
            path, FIELDS, shard_bytes=SHARD_BYTES, attrs={"tag": tag}, overwrite=overwrite
        ) as writer:
            writer.extend(rows)
    elif operation == "write_part":
        with ms.write_part(path) as part:
            part.extend(rows)
        return {"part": part.id}
    elif operation == "discard":
        # Again and again, so that some discards meet the part while it is being written.
        removed = []
        for _ in range(DISCARD_ROUNDS):
            removed += ms.discard_parts(path)
        return {"removed": removed}
    else:
        raise ValueError(operation)
    return {}


def _child(operation: str, path: str, tag: int, start_fd: int, result_fd: int, seed: int) -> None:
    outcome: dict[str, Any]
    try:
        os.read(start_fd, 1)
        jitter_until = time.perf_counter() + np.random.default_rng(seed).random() * (
            MAX_JITTER_SECONDS
        )
        while time.perf_counter() < jitter_until:
            pass
        outcome = {"ok": True, **run_operation(operation, path, tag)}
    except ms.MemshardError as exc:
        outcome = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
    except BaseException as exc:
        outcome = {"ok": False, "error": type(exc).__name__, "message": traceback.format_exc()}
    os.write(result_fd, json.dumps(outcome).encode())


def race(operations: tuple[str, str], path: str, seed: int) -> list[dict[str, Any]]:
    """Run the two operations in two forked children released together; their outcomes."""
    start_read, start_write = os.pipe()
    children = []
    for number, operation in enumerate(operations):
        result_read, result_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                os.close(start_write)
                os.close(result_read)
                _child(operation, path, number + 1, start_read, result_write, seed * 2 + number)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(result_write)
        children.append((pid, result_read))
    os.close(start_read)
    os.write(start_write, b"go")
    os.close(start_write)
    return [_collect(pid, result_read) for pid, result_read in children]


def _collect(pid: int, result_read: int) -> dict[str, Any]:
    """Read a child's outcome (the pipe closes when it exits), killing it if it hangs."""
    deadline = time.monotonic() + CHILD_SECONDS
    chunks = []
    while True:
        ready, _, _ = select.select([result_read], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(result_read)
            return {"ok": False, "error": "hang", "message": f"killed after {CHILD_SECONDS} s"}
        chunk = os.read(result_read, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(result_read)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        return {"ok": False, "error": "died", "message": f"wait status {status}"}
    return dict(json.loads(b"".join(chunks)))


def _dataset_state(path: str) -> tuple[int | None, list[int]] | str:
    """``(attrs tag, rows)`` of the dataset at ``path``, or what is wrong with it."""
    try:
        dataset = ms.open(path)
        report = dataset.verify()
        if not report.ok:
            return f"verify failed: {report}"
        return dataset.attrs.get("tag"), [int(value) for value in dataset["x"][:]]
    except Exception as exc:
        return f"cannot open: {type(exc).__name__}: {exc}"


def check_overwrite_append(path: str, outcomes: list[dict[str, Any]]) -> list[str]:
    overwrite, appended = outcomes
    state = _dataset_state(path)
    if isinstance(state, str):
        return [state]
    tag, values = state
    old, new, added = tagged_rows(0).tolist(), tagged_rows(1).tolist(), tagged_rows(2).tolist()
    serial_orders = []
    if overwrite["ok"]:
        serial_orders.append((1, new))  # the append before the overwrite, or failed
        if appended["ok"]:
            serial_orders.append((1, new + added))  # the append after it
    else:
        serial_orders.append((0, old + added if appended["ok"] else old))
    if (tag, values) not in serial_orders:
        return [
            f"final dataset (tag {tag}, {len(values)} rows, first {values[:3]}) is no serial "
            f"order of overwrite={overwrite['ok']}, append={appended['ok']}"
        ]
    return []


def check_create_create(path: str, outcomes: list[dict[str, Any]]) -> list[str]:
    winners = [number + 1 for number, outcome in enumerate(outcomes) if outcome["ok"]]
    if len(winners) != 1:
        return [f"{len(winners)} creates succeeded, expected exactly one"]
    state = _dataset_state(path)
    if isinstance(state, str):
        return [state]
    if state != (winners[0], tagged_rows(winners[0]).tolist()):
        return [f"the dataset is not the winner's: tag {state[0]}, {len(state[1])} rows"]
    return []


def check_discard_write_part(path: str, outcomes: list[dict[str, Any]]) -> list[str]:
    discarded, written = outcomes
    if not written["ok"]:
        return ["write_part failed"]
    try:
        ms.commit_parts(path, [written["part"]], order="given")
        committed = True
    except ms.errors.PartError:
        committed = False
        if written["part"] not in discarded.get("removed", []):
            return ["the part was refused although discard did not report removing it"]
    state = _dataset_state(path)
    if isinstance(state, str):
        return [state]
    expected = tagged_rows(0).tolist() + (tagged_rows(2).tolist() if committed else [])
    if state[1] != expected:
        return [f"after the commit the dataset holds {len(state[1])} rows, not {len(expected)}"]
    return []


PLANS: dict[str, tuple[tuple[str, str], Callable[[str, list[dict[str, Any]]], list[str]]]] = {
    "overwrite-append": (("overwrite", "append"), check_overwrite_append),
    "create-create": (("create", "create"), check_create_create),
    "discard-write_part": (("discard", "write_part"), check_discard_write_part),
}


def one_race(kind: str, scratch: str, seed: int) -> dict[str, Any]:
    """Prepare a directory, race the kind's two operations, check; the race's record."""
    where = tempfile.mkdtemp(prefix=f"{kind}-", dir=scratch)
    path = os.path.join(where, "ds")
    try:
        if kind != "create-create":
            with ms.create(path, FIELDS, shard_bytes=SHARD_BYTES, attrs={"tag": 0}) as writer:
                writer.extend({"x": tagged_rows(0)})
        operations, check = PLANS[kind]
        outcomes = race(operations, path, seed)
        problems = [
            f"{operation} ended with {outcome['error']}: {outcome['message']}"
            for operation, outcome in zip(operations, outcomes, strict=True)
            if not outcome["ok"] and outcome["error"] not in ALLOWED_ERRORS[operation]
        ]
        problems += check(path, outcomes)
        return {"kind": kind, "outcomes": outcomes, "problems": problems}
    finally:
        shutil.rmtree(where, ignore_errors=True)


def harness(races: int, *, seed: int = 0, scratch: str | None = None) -> dict[str, Any]:
    """Run ``races`` races of each kind; the summary (``rows_lost``, ``failures`` are 0 on
    success)."""
    started = time.monotonic()
    root = tempfile.mkdtemp(prefix="memshard-races-", dir=scratch)
    records = []
    try:
        for number in range(races):
            for kind in KINDS:
                records.append(one_race(kind, root, seed * 1_000_003 + number))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    outcomes: Counter[str] = Counter()
    for record in records:
        operations = PLANS[record["kind"]][0]
        pairs = zip(operations, record["outcomes"], strict=True)
        for number, (operation, outcome) in enumerate(pairs):
            result = "ok" if outcome["ok"] else outcome["error"]
            if outcome.get("removed"):
                result += ", removed the part"
            outcomes[f"{record['kind']}: {operation} #{number + 1} {result}"] += 1
    failures = [record for record in records if record["problems"]]
    return {
        "races": len(records),
        "races_by_kind": {kind: races for kind in KINDS},
        "failures": len(failures),
        "problems": [problem for record in failures for problem in record["problems"]][:20],
        "outcomes": dict(sorted(outcomes.items())),
        "seconds": round(time.monotonic() - started, 2),
        "seed": seed,
    }


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| race outcome | count |", "|---|---|"]
    lines += [f"| {what} | {count} |" for what, count in summary["outcomes"].items()]
    lines.append(f"| races run | {summary['races']} |")
    lines.append(
        f"| races with a lost row or a wrong outcome (must be 0) | {summary['failures']} |"
    )
    lines.append(f"| total time | {summary['seconds']:.1f} s |")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--races", type=int, default=100, help="races of each kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument("--tmp", help="directory for the races' datasets")
    args = parser.parse_args(None if argv is None else list(argv))
    summary = harness(args.races, seed=args.seed, scratch=args.tmp)
    summary["command"] = " ".join(["python -m tests.race_harness", *sys.argv[1:]])
    print(markdown(summary))
    for problem in summary["problems"]:
        print(f"FAILED {problem}")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
