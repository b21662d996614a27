"""Crash harness: kill a writer at every step of append, roll, seal, commit and resume, and
check after each kill that no acknowledged row is lost and that writing resumes.

Each trial runs one or more children (:mod:`tests.fault_writer`) on a dataset in its own
temporary directory. A child is killed with SIGKILL either by fault injection, just before or
just after its K-th file operation, or at a random moment while it writes. After each kill
the parent checks, in process:

- ``memshard.open`` succeeds and ``len(ds)`` is the last acknowledged row count or the count
  of the commit that was in flight (never less, never rows that were not being committed);
- every row ``i`` reads back as ``x = i``, ``y = i`` (in a dataset of ragged or compressed
  fields, as :func:`tests.crash_writer.ragged_rows` or
  :func:`~tests.crash_writer.compressed_rows` says, read by slice, by row and by ``take``);
- every sealed shard file (and a ragged or compressed field's offsets file) loads with
  ``np.load(allow_pickle=False)`` and holds its rows (a compressed field's frames, each
  block decompressed, hold its rows' bytes), and ``ds.verify().ok``;
- stray files (temporary manifests, shard files no manifest names, remains of parts) may
  exist; they are counted;
- the child's :class:`~tests.fault_writer.SyncAudit` saw no manifest published before the data
  and names it refers to were synced, and no commit return before its rename was synced (what a
  power cut, unlike a SIGKILL, would punish).

After the last child, ``memshard.append`` (and ``discard_parts``, which alone removes the
remains of parts) must leave exactly ``manifest.json``, ``.memshard.lock``, the shard table, an
empty ``parts/`` if parts were written, and ``shards/`` holding exactly the files the manifest
names; the parent appends more rows across a shard boundary, commits, closes and reads
everything back.

Kinds of trial:

- ``every-step-before`` / ``every-step-after``: short scripts (:data:`SHORT_PLAN`, then, in
  longer runs, random 3-round scripts), started on a dataset that a crashed writer left with a
  temporary manifest, unnamed shard files and uncommitted bytes in its unsealed shard; one
  trial per file operation of the script (K = 1 .. ops), killed before and after it; and
  :data:`RAGGED_PLAN` and :data:`COMPRESSED_PLAN` likewise, on such datasets of ragged and of
  compressed fields;
- ``random-op``: a longer random script (on a fresh or the crashed dataset, or a fresh one of
  ragged fields whose scripts also write parts), killed at a K drawn uniformly over its whole
  run (a census run counts its operations), before or after;
- ``random-time``: 1-3 writers in a row on the same dataset (of ragged fields, with parts, in
  30 % of the trials), each killed with SIGKILL from the parent after a random number of
  acknowledged commits and further progress lines, so later writers resume from real crash
  leftovers.

Children are forked from a zygote that has imported memshard (``--launcher fork``, the
default; see :class:`Launcher`) or started as ``python -m tests.fault_writer ...``
(``--launcher exec``). Trials run on ``--jobs`` threads, each in its own directory.

Run ``python -m tests.crash_harness --trials N [--jobs 2] [--seed S] [--json PATH]``.
``--races N`` runs the race mode instead (:mod:`tests.race_harness`): N races of each pair of
writers that may meet on one dataset (overwrite and append, create and create, discard and
write_part), each in two real processes, checked for a serial outcome and no lost row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import memshard as ms
from memshard import npyheader
from memshard.blockcodec import BlockCodec
from memshard.blockindex import blocks_of
from memshard.layout import LOCK_NAME, MANIFEST_NAME, MANIFEST_TEMP_PREFIX, PARTS_DIR, SHARDS_DIR
from memshard.manifest import shard_files
from memshard.ragged import Ragged
from memshard.shardtable import TABLE_NAME, Shards, table_dtype
from tests import race_harness
from tests.crash_writer import (
    COMPRESSED_FIELDS,
    COMPRESSED_SHARD_BYTES,
    FIELDS,
    RAGGED_FIELDS,
    RAGGED_SHARD_BYTES,
    SHARD_BYTES,
    batch,
    compressed_rows,
    is_compressed,
    is_ragged,
    ragged_rows,
    rows,
    single_row,
)
from tests.fault_writer import make_plan
from tests.helpers import REPO_ROOT

#: What a crashed writer leaves for the every-step trials: it commits a shard and a part of the
#: next, then appends past the next shard boundary (sealing the unsealed shard, creating new
#: shard files) and is killed just before its second commit renames its temporary manifest.
PREFIX_PLAN = "e30,c,e20,c"
#: The script every-step trials kill at each of its file operations (48 of them): resume from
#: the crash (remove the temporary manifest and unnamed shards, cut the unsealed shard back),
#: append single rows and a batch across a boundary (seal, roll), commit, append across the
#: next boundary and abort, resume again (remove the new shard's files, cut the sealed but
#: uncommitted shard back), close (seal and commit) and reopen.
SHORT_PLAN = "a3,e20,c,e18,x,e2,r"
#: Shards of about 28,000 rows, so that one field's batch can pass the appender's 1 MiB write
#: buffer and go straight to the file while appending (bytes past the committed end of an
#: unsealed shard whose header still states the committed rows).
BIG_SHARD_BYTES = 4 << 20
#: On a fresh dataset of big shards: batches written through while appending, commit, more
#: written through and aborted (resume cuts the unsealed shard back), then across a boundary.
BIG_PLAN = "e9000,c,e9000,x,e9000,e12000,c"
#: Largest batch of the random-op scripts on big shards.
BIG_MAX_BATCH = 20000
#: The crashed start of the ragged every-step trials (fields of
#: :data:`tests.crash_writer.RAGGED_FIELDS`): a commit of 12 rows in the unsealed shard 0,
#: then rows up to 32 that fill shard 0, give row 17 (larger than a shard) a shard of its
#: own and start shard 2, killed just before the second commit renames its manifest.
RAGGED_PREFIX_PLAN = "e12,c,e20,c"
#: The ragged script (146 operations) killed at each of its file operations: resume from the
#: crash (delete its shard files, make shard 0 writable and cut both files of each ragged
#: field back to the 12 committed rows, checking their prefix checksums); 8 rows that fill
#: shard 0 (sealed on size), give the big row 17 a shard of its own (sealed) and start shard
#: 2 with rows 18 and 19; commit (table records with element counts and offsets checksums;
#: shard 2 unsealed, its values and offsets files with prefix checksums); abort and resume
#: (continue shard 2, cut back); one more row in it; a part of 2 rows committed through the
#: appender with commit_parts, which seals shard 2 first.
RAGGED_PLAN = "e8,c,x,a1,p2"
#: The crashed start of the compressed every-step trials (fields of
#: :data:`tests.crash_writer.COMPRESSED_FIELDS`): a commit of 12 rows in the unsealed shard 0
#: (the zstd field's second block two rows in: a commit mid-block writes them as a short
#: block), then rows up to 32 that fill shard 0 and shard 1 and start shard 2, killed just
#: before the second commit renames its manifest.
COMPRESSED_PREFIX_PLAN = "e12,c,e20,c"
#: The compressed script killed at each of its file operations: resume from the crash (cut
#: the frames and block ends of shard 0 back to its 12 committed rows, checking their prefix
#: checksums); 9 rows that fill shard 0 and start shard 1 (sealed on size, its pending rows
#: flushed as blocks), commit mid-block; 3 single rows, commit (short blocks after short
#: blocks); abort and resume (continue the unsealed shard, cut back); one more row; a part
#: of 2 rows committed through the appender with commit_parts, which seals the open shard.
COMPRESSED_PLAN = "e9,c,a3,c,x,a1,p2"
#: Most rows of the batch the parent appends to a ragged dataset after the crash.
RAGGED_RESUME_ROWS = 40
#: Share of the rounds of random ragged scripts that write and commit a part.
RAGGED_PART_SHARE = 0.2
#: Rounds of the random scripts: random-op children run them whole, random-time children are
#: killed long before the end.
RANDOM_OP_ROUNDS = 6
RANDOM_TIME_ROUNDS = 40
EVERY_STEP_ROUNDS = 3
#: Random-op trials share each script's census between this many trials (on average).
CENSUS_REUSE = 4
CHILD_TIMEOUT = 120
#: Children turn warnings into errors, as the test suite does.
CHILD_ENVIRONMENT = {**os.environ, "PYTHONWARNINGS": "error"}
KINDS = ("every-step-before", "every-step-after", "random-op", "random-time")


# -- trials ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """The dataset a trial starts from: a copy of ``path``, or a fresh empty dataset of the
    writer's fields (:data:`~tests.crash_writer.RAGGED_FIELDS` if ``ragged``,
    :data:`~tests.crash_writer.COMPRESSED_FIELDS` if ``compressed``) with ``shard_bytes``
    shards."""

    path: str | None = None
    shard_bytes: int = SHARD_BYTES
    ragged: bool = False
    compressed: bool = False

    @property
    def fields(self) -> dict[str, Any]:
        """The fields of a fresh dataset of this kind."""
        if self.compressed:
            return COMPRESSED_FIELDS
        return RAGGED_FIELDS if self.ragged else FIELDS

    @property
    def name(self) -> str:
        kind = "-compressed" if self.compressed else "-ragged" if self.ragged else ""
        if self.path is not None:
            return f"crashed{kind}"
        usual = COMPRESSED_SHARD_BYTES if self.compressed else RAGGED_SHARD_BYTES
        if self.shard_bytes == (usual if self.ragged or self.compressed else SHARD_BYTES):
            return f"fresh{kind}"
        return f"fresh{kind}-{self.shard_bytes}B"


#: A fresh dataset of ragged fields.
RAGGED = Start(shard_bytes=RAGGED_SHARD_BYTES, ragged=True)
#: A fresh dataset of compressed fields.
COMPRESSED = Start(shard_bytes=COMPRESSED_SHARD_BYTES, compressed=True)


@dataclass(frozen=True)
class Stage:
    """One child: its plan and how it dies (``kill_at``/``when`` by injection, or
    ``acks``/``extra_lines`` from the parent, or not at all)."""

    plan: str
    kill_at: int | None = None
    when: str = "before"
    #: Random-op: K = 1 + floor(fraction * ops), drawn before the census is known.
    fraction: float | None = None
    acks: int | None = None
    extra_lines: int = 0


@dataclass(frozen=True)
class TrialSpec:
    kind: str
    label: str
    start: Start
    stages: tuple[Stage, ...]
    seed: int  # the parent's own rows after the crash


@dataclass
class ChildRun:
    """What one child's stdout says about the state it died in."""

    returncode: int
    lines: list[str]
    stderr: str = ""
    hung: bool = False  # killed by the watchdog after CHILD_TIMEOUT seconds

    def acknowledged(self, before: int) -> int:
        """The last acknowledged row count (``before`` if the child acknowledged nothing)."""
        acked = before
        for line in self.lines:
            word, _, rest = line.partition(" ")
            if word in ("START", "ACK"):
                acked = int(rest)
        return acked

    def allowed(self, before: int) -> set[int]:
        """Row counts the dataset may hold: the last acknowledged one, or the one being
        committed when the child died."""
        acked, pending = before, None
        for line in self.lines:
            word, _, rest = line.partition(" ")
            if word in ("START", "ACK"):
                acked, pending = int(rest), None
            elif word == "ABORT":
                pending = None
            elif word == "COMMIT":
                pending = int(rest)
        return {acked} if pending is None else {acked, pending}

    def appended(self, before: int) -> int:
        """The most rows the child had appended (an upper bound on the dataset's rows)."""
        most = before
        for line in self.lines:
            word, _, rest = line.partition(" ")
            if word in ("WILL", "COMMIT", "ACK", "START"):
                most = max(most, int(rest))
        return most

    @property
    def kill(self) -> list[str] | None:
        """``[k, when, op, step, target]`` of the injected kill, if there was one."""
        for line in self.lines:
            if line.startswith("KILL "):
                return line.split()[1:]
        return None

    @property
    def done(self) -> int | None:
        for line in self.lines:
            if line.startswith("DONE "):
                return int(line.split()[1])
        return None


@dataclass
class TrialResult:
    kind: str
    label: str
    seconds: float = 0.0
    children: int = 0
    killed: int = 0
    completed: int = 0  # children that finished their script (K past its end)
    committed_rows_lost: int = 0
    unreadable: int = 0
    wrong_length: int = 0
    wrong_rows: int = 0
    load_failures: int = 0
    verify_failures: int = 0
    strays_after_crash: dict[str, int] = field(default_factory=dict)
    strays_after_append: int = 0
    resume_failures: int = 0
    sync_order_violations: int = 0
    child_errors: int = 0
    harness_errors: int = 0
    hits: list[str] = field(default_factory=list)  # "op step when" of injected kills
    problems: list[str] = field(default_factory=list)
    kept: str | None = None

    @property
    def failed(self) -> bool:
        return bool(self.problems)


class Launcher:
    """Starts writer children (:mod:`tests.fault_writer`) with a given command line.

    ``"exec"`` runs ``python -m tests.fault_writer ARGS`` for each child; ``"fork"`` (the
    default) forks each child from a zygote that has imported memshard already (one per
    calling thread, see :func:`tests.fault_writer.serve`), which saves the interpreter start
    and the imports, about 0.4 s of CPU per child. Either way the child is its own process
    and dies by a real SIGKILL.
    """

    def __init__(self, kind: str = "fork") -> None:
        if kind not in ("fork", "exec"):
            raise ValueError(f"launcher must be 'fork' or 'exec', got {kind!r}")
        self.kind = kind
        self._local = threading.local()
        self._zygotes: list[subprocess.Popen[str]] = []
        self._lock = threading.Lock()

    def run(self, argv: Sequence[str], stop: Callable[[str], bool] | None = None) -> ChildRun:
        """Run a child with ``argv``; SIGKILL it as soon as ``stop(line)`` is true for a line
        it printed, or once it has run for ``CHILD_TIMEOUT`` seconds (then ``hung``). Returns
        its return code (``-9`` when killed) and every line it printed."""
        if self.kind == "exec":
            return self._exec(argv, stop)
        return self._fork(argv, stop)

    @staticmethod
    def _watchdog(kill: Callable[[], None]) -> tuple[threading.Timer, threading.Event]:
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            kill()

        timer = threading.Timer(CHILD_TIMEOUT, expire)
        timer.daemon = True
        timer.start()
        return timer, fired

    def _exec(self, argv: Sequence[str], stop: Callable[[str], bool] | None) -> ChildRun:
        with tempfile.TemporaryFile("w+") as errors:
            child = subprocess.Popen(
                [sys.executable, "-m", "tests.fault_writer", *argv],
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
                env=CHILD_ENVIRONMENT,
            )
            assert child.stdout is not None
            timer, hung = self._watchdog(child.kill)  # Popen: not reaped before wait()
            lines = []
            with child.stdout:
                for line in child.stdout:
                    lines.append(line.rstrip("\n"))
                    if stop is not None and stop(lines[-1]):
                        child.kill()
                        stop = None
            child.wait()
            timer.cancel()
            errors.seek(0)
            return ChildRun(child.returncode, lines, errors.read(), hung.is_set())

    def _fork(self, argv: Sequence[str], stop: Callable[[str], bool] | None) -> ChildRun:
        zygote = self._zygote()
        assert zygote.stdin is not None
        assert zygote.stdout is not None
        zygote.stdin.write(json.dumps(list(argv)) + "\n")
        zygote.stdin.flush()
        first = zygote.stdout.readline()
        if not first.startswith("PID "):
            raise RuntimeError(f"the zygote answered {first!r}")
        pid = int(first.split()[1])
        # The zygote reaps the child only at the next request, after EXIT has been read here,
        # so until then the pid is still this child's (a zombie at worst): safe to kill by pid.
        timer, hung = self._watchdog(lambda: os.kill(pid, signal.SIGKILL))
        lines: list[str] = []
        errors: list[str] = []
        while True:
            line = zygote.stdout.readline()
            if not line:
                timer.cancel()
                raise RuntimeError("the zygote died")
            line = line.rstrip("\n")
            if line.startswith("EXIT "):
                timer.cancel()
                code = int(line.split()[1])
                return ChildRun(code, lines, "\n".join(errors), hung.is_set())
            if line.startswith("ERROR "):
                errors.append(line[6:])
                continue
            lines.append(line)
            if stop is not None and stop(line):
                os.kill(pid, signal.SIGKILL)
                stop = None

    def _zygote(self) -> subprocess.Popen[str]:
        zygote: subprocess.Popen[str] | None = getattr(self._local, "zygote", None)
        if zygote is None:
            zygote = subprocess.Popen(
                [sys.executable, "-m", "tests.fault_writer", "--serve"],
                cwd=REPO_ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=CHILD_ENVIRONMENT,
            )
            self._local.zygote = zygote
            with self._lock:
                self._zygotes.append(zygote)
        return zygote

    def close(self) -> None:
        """End the zygotes (closing stdin ends them)."""
        with self._lock:
            zygotes, self._zygotes = self._zygotes, []
        for zygote in zygotes:
            assert zygote.stdin is not None
            assert zygote.stdout is not None
            zygote.stdin.close()
            zygote.wait(timeout=CHILD_TIMEOUT)
            zygote.stdout.close()

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _argv(path: str, plan: str, *extra: str) -> list[str]:
    return [path, "--plan", plan, *extra]


def run_injected(
    launcher: Launcher, path: str, plan: str, kill_at: int | None, when: str
) -> ChildRun:
    """Run a child to its end, or until it kills itself at operation ``kill_at``."""
    extra = ["--kill-at", str(kill_at), "--when", when] if kill_at is not None else []
    return launcher.run(_argv(path, plan, *extra))


def run_census(launcher: Launcher, path: str, plan: str) -> list[list[str]]:
    """Run ``plan`` on ``path`` without a kill and return its file operations, each
    ``[op, step, target]``. ``path`` is changed: pass a scratch copy."""
    run = launcher.run(_argv(path, plan, "--trace"))
    if run.returncode != 0 or run.done is None:
        raise RuntimeError(f"census of {plan!r} failed:\n{run.lines}\n{run.stderr}")
    ops = [line.split()[2:] for line in run.lines if line.startswith("OP ")]
    if run.done != len(ops):
        raise RuntimeError(f"census of {plan!r}: DONE {run.done} after {len(ops)} operations")
    return ops


def run_killed_at_random_time(
    launcher: Launcher, path: str, plan: str, acks: int, extra_lines: int
) -> ChildRun:
    """Run a child and SIGKILL it after ``acks`` ACK lines and ``extra_lines`` more progress
    lines (or let it finish if its script ends first). Progress comes from its stdout only;
    the child runs on while the parent reads, so the kill lands wherever it has got to."""
    seen = {"acks": 0, "after": 0}

    def stop(line: str) -> bool:
        if seen["acks"] >= acks:
            seen["after"] += 1
        if line.startswith("ACK "):
            seen["acks"] += 1
        return seen["acks"] >= acks and seen["after"] >= extra_lines

    return launcher.run(_argv(path, plan), stop)


class Workspace:
    """Where trials run: a scratch directory, the launcher of their children, and the census
    of each (start, plan) pair, computed once on a scratch copy of the start."""

    def __init__(self, scratch: str, launcher: Launcher, keep_failed: bool = False) -> None:
        self.scratch = scratch
        self.launcher = launcher
        self.keep_failed = keep_failed
        self._lock = threading.Lock()
        self._census: dict[tuple[Start, str], Future[list[list[str]]]] = {}

    def ops(self, start: Start, plan: str) -> list[list[str]]:
        """The file operations of ``plan`` run from ``start``, each ``[op, step, target]``."""
        with self._lock:
            entry = self._census.get((start, plan))
            mine = entry is None
            if entry is None:
                entry = self._census[(start, plan)] = Future()
        if mine:
            where = tempfile.mkdtemp(dir=self.scratch, prefix="census-")
            try:
                path = prepare_dataset(where, start)
                entry.set_result(run_census(self.launcher, path, plan))
            except BaseException as exc:
                entry.set_exception(exc)
            finally:
                shutil.rmtree(where, ignore_errors=True)
        return entry.result()


def prepare_dataset(where: str, start: Start) -> str:
    """Make the dataset ``where/d`` as ``start`` says."""
    path = os.path.join(where, "d")
    if start.path is None:
        ms.create(path, fields=start.fields, shard_bytes=start.shard_bytes).close()
    else:
        shutil.copytree(start.path, path)
    return path


def prepare_crashed_base(
    workspace: Workspace, *, ragged: bool = False, compressed: bool = False
) -> str:
    """A dataset a writer left by crashing just before renaming a temporary manifest over
    ``manifest.json``, after it had sealed the committed unsealed shard and started the next
    (with ``ragged``, of :data:`~tests.crash_writer.RAGGED_FIELDS`: see
    :data:`RAGGED_PREFIX_PLAN`; with ``compressed``, of
    :data:`~tests.crash_writer.COMPRESSED_FIELDS`: see :data:`COMPRESSED_PREFIX_PLAN`).
    """
    if compressed:
        start, plan = COMPRESSED, COMPRESSED_PREFIX_PLAN
    else:
        start, plan = (RAGGED, RAGGED_PREFIX_PLAN) if ragged else (Start(), PREFIX_PLAN)
    path = prepare_dataset(tempfile.mkdtemp(dir=workspace.scratch, prefix="base-"), start)
    ops = workspace.ops(start, plan)
    second_replace = [number for number, op in enumerate(ops, 1) if op[0] == "replace"][1]
    run = run_injected(workspace.launcher, path, plan, second_replace, "before")
    if run.returncode != -signal.SIGKILL:
        raise RuntimeError(f"the prefix writer was not killed: {run.lines} {run.stderr}")
    strays = stray_files(path)
    if not (strays["temporary manifests"] and strays["unnamed shard files"]):
        raise RuntimeError(f"the crashed base lacks leftovers: {strays}")
    if not strays["unsealed shards with uncommitted bytes"]:
        raise RuntimeError("the crashed base has no uncommitted bytes in its unsealed shard")
    return path


# -- checks ------------------------------------------------------------------------------------
def stray_files(path: str) -> Counter[str]:
    """Files the committed manifest does not account for."""
    from memshard import manifest as manifest_io

    manifest = manifest_io.load(os.path.join(path, MANIFEST_NAME))
    named = {name.split("/", 1)[1] for name in Shards.of(path, manifest).file_paths()}
    found: Counter[str] = Counter()
    for entry in os.listdir(path):
        if entry.startswith(MANIFEST_TEMP_PREFIX):
            found["temporary manifests"] += 1
        elif entry == PARTS_DIR:
            found["files of parts"] += len(os.listdir(os.path.join(path, PARTS_DIR)))
        elif entry not in (MANIFEST_NAME, LOCK_NAME, SHARDS_DIR, TABLE_NAME):
            found["other files"] += 1
    found["unnamed shard files"] += len(set(os.listdir(os.path.join(path, SHARDS_DIR))) - named)
    table = os.path.join(path, TABLE_NAME)
    committed = manifest.table.records if manifest.table else 0
    record = table_dtype(manifest.fields)
    if os.path.getsize(table) > npyheader.data_offset(record, ()) + committed * record.itemsize:
        found["uncommitted shard table records"] += 1
    if manifest.shards and not manifest.shards[-1].sealed:
        last = manifest.shards[-1]
        files = [
            file
            for name, values in last.files.items()
            for _, file, _ in shard_files(manifest.fields[name], values, last.rows, sealed=False)
        ]
        for file in files:
            size = os.path.getsize(os.path.join(path, file.path))
            if size > file.data_offset + file.nbytes:
                found["unsealed shards with uncommitted bytes"] += 1
                break
    return found


def exact_layout_problems(path: str) -> list[str]:
    """How the directory differs from exactly manifest.json, the lock, the shard table, an
    empty ``parts/`` (if parts were written) and the named shards."""
    from memshard import manifest as manifest_io

    manifest = manifest_io.load(os.path.join(path, MANIFEST_NAME))
    named = {name.split("/", 1)[1] for name in Shards.of(path, manifest).file_paths()}
    problems = []
    top = set(os.listdir(path))
    if PARTS_DIR in top and not os.listdir(os.path.join(path, PARTS_DIR)):
        top.remove(PARTS_DIR)
    if top != {MANIFEST_NAME, LOCK_NAME, SHARDS_DIR, TABLE_NAME}:
        problems.append(f"dataset directory holds {sorted(top)}")
    shards = set(os.listdir(os.path.join(path, SHARDS_DIR)))
    if shards != named:
        problems.append(
            f"shards/ has unnamed {sorted(shards - named)}, lacks {sorted(named - shards)}"
        )
    return problems


def content_problems(ds: ms.Dataset) -> tuple[int, list[str]]:
    """Rows that differ from ``x = i``, ``y = i`` (or from
    :func:`~tests.crash_writer.ragged_rows` or :func:`~tests.crash_writer.compressed_rows`):
    (count, descriptions)."""
    n = len(ds)
    y = ds["y"][:]
    if is_compressed(ds.fields):
        bad = _compressed_rows_wrong(ds)
    elif is_ragged(ds.fields):
        bad = _ragged_rows_wrong(ds)
    else:
        expected = rows(0, n)
        bad = (y != expected["y"]) | (ds["x"][:] != expected["x"]).any(axis=(1, 2))
    count = int(bad.sum())
    if not count:
        return 0, []
    first = int(np.flatnonzero(bad)[0])
    return count, [f"{count} of {n} rows read back wrong, first row {first}: y={y[first]}"]


def _ragged_rows_wrong(ds: ms.Dataset) -> np.ndarray:
    """Which rows of a ragged dataset differ from the expected ones, read by a slice of all
    rows, one by one, and gathered by ``take`` in reverse order."""
    n = len(ds)
    expected = ragged_rows(0, n)
    bad = np.asarray(ds["y"][:] != expected["y"])
    backwards = np.arange(n)[::-1]
    taken = ds.take(backwards)
    for name in ("tokens", "strokes"):
        column, want = ds[name], expected[name]
        bad |= _wrong_rows(column[:], want)
        bad |= _wrong_rows(taken[name], [want[i] for i in backwards])[::-1]
        bad |= np.array([not np.array_equal(column[i], row) for i, row in enumerate(want)], bool)
    return bad


def _compressed_rows_wrong(ds: ms.Dataset) -> np.ndarray:
    """Which rows of a compressed dataset differ from the expected ones, read by a slice of
    all rows, one by one, and gathered by ``take`` in reverse order with threads."""
    n = len(ds)
    expected = compressed_rows(0, n)
    backwards = np.arange(n)[::-1]
    taken = ds.take(backwards, threads=2)
    img = expected["img"]
    bad = np.asarray(ds["y"][:] != expected["y"])
    bad |= (ds["img"][:] != img).any(axis=1)
    bad |= (taken["img"] != img[backwards]).any(axis=1)[::-1]
    bad |= np.array([not np.array_equal(ds["img"][i], img[i]) for i in range(n)], dtype=bool)
    column, want = ds["codes"], expected["codes"]
    bad |= _wrong_rows(column[:], want)
    bad |= _wrong_rows(taken["codes"], [want[i] for i in backwards])[::-1]
    bad |= np.array([not np.array_equal(column[i], row) for i, row in enumerate(want)], bool)
    return bad


def _wrong_rows(got: Ragged, want: list[np.ndarray]) -> np.ndarray:
    """Which rows of ``got`` differ from ``want`` (as many rows)."""
    offsets = np.concatenate(([0], np.cumsum([len(row) for row in want]))).astype(np.int64)
    values = np.concatenate(want) if want else got.values[:0]
    if np.array_equal(got.offsets, offsets) and got.values.shape == values.shape:
        differ = got.values != values
        if differ.ndim > 1:  # rows of the (None, 3) field: an element is a triple
            differ = differ.any(axis=tuple(range(1, differ.ndim)))
        bad = np.zeros(len(want), dtype=bool)
        bad[np.searchsorted(offsets, np.flatnonzero(differ), side="right") - 1] = True
        return bad
    return np.array([not np.array_equal(got[i], row) for i, row in enumerate(want)], dtype=bool)


def _expected_files(fields: dict[str, Any], start: int, count: int) -> dict[str, np.ndarray]:
    """What ``np.load`` must give for each file of a shard holding rows ``start ..
    start + count``, by path suffix (``.x.npy``, and ``.tokens.offsets.npy`` and the like)."""
    content = batch(fields, start, count)
    files = {}
    for name, values in content.items():
        if isinstance(values, list):  # a ragged field: its values and offsets files
            lengths = [len(row) for row in values]
            files[f".{name}.npy"] = np.concatenate(values)
            files[f".{name}.offsets.npy"] = np.concatenate(([0], np.cumsum(lengths)))
        else:
            files[f".{name}.npy"] = np.asarray(values)
    return files


def sealed_file_problems(path: str, ds: ms.Dataset) -> list[str]:
    """Every sealed shard file (and offsets file) must load with np.load and hold its rows."""
    problems = []
    for shard in ds.shards:
        if not shard.sealed:
            continue
        if is_compressed(ds.fields):
            problems += _compressed_file_problems(path, ds, shard)
            continue
        expected = _expected_files(ds.fields, shard.row_offset, shard.rows)
        for suffix, want in expected.items():
            stem = next(iter(shard.files.values())).path.split(".", 1)[0]
            relative = stem + suffix
            try:
                loaded = np.load(os.path.join(path, relative), allow_pickle=False)
            except Exception as exc:
                problems.append(f"np.load({relative}) failed: {type(exc).__name__}: {exc}")
                continue
            if loaded.shape != want.shape or not np.array_equal(loaded, want):
                problems.append(f"{relative}: np.load gives shape {loaded.shape}, wrong rows")
    return problems


def _compressed_file_problems(path: str, ds: ms.Dataset, shard: Any) -> list[str]:
    """A sealed shard of compressed fields: every file loads with np.load; a compressed
    field's offsets hold ``rows + 1`` block ends from 0 to its frames' bytes (and element ends,
    for a ragged one), and each block, decompressed from the loaded frames, holds its rows."""
    problems = []
    content = compressed_rows(shard.row_offset, shard.rows)
    for name, spec in ds.manifest.fields.items():
        file = shard.files[name]
        try:
            values = np.load(os.path.join(path, file.path), allow_pickle=False)
            offsets = None
            if spec.has_offsets:
                offsets = np.load(os.path.join(path, file.offsets_path), allow_pickle=False)
        except Exception as exc:
            problems.append(f"np.load of {file.path} failed: {type(exc).__name__}: {exc}")
            continue
        if offsets is None:
            if not np.array_equal(values, content[name]):
                problems.append(f"{file.path}: np.load gives wrong rows")
            continue
        assert spec.codec is not None
        ends = offsets[:, 1] if spec.ragged else offsets
        if len(ends) != shard.rows + 1 or ends[0] != 0 or ends[-1] != values.size:
            problems.append(f"{file.offsets_path}: block ends {ends[:3]}... {ends[-1:]}")
            continue
        rows = content[name]
        if spec.ragged:
            lengths = [len(row) for row in rows]
            if not np.array_equal(offsets[:, 0], np.concatenate(([0], np.cumsum(lengths)))):
                problems.append(f"{file.offsets_path}: wrong element ends")
                continue
        codec = BlockCodec.of(spec.codec.name, spec.codec.params, spec.numpy_dtype.itemsize)
        blocks = blocks_of(ends)
        for first, stop, start, end in zip(*blocks, strict=True):
            if spec.ragged:
                want = np.concatenate(rows[first:stop]).astype(spec.numpy_dtype).tobytes()
            else:
                want = rows[first:stop].tobytes()
            got = np.empty(len(want), dtype=np.uint8)
            try:
                codec.decompress_into(values[start:end].data, got.data, where=file.path)
            except Exception as exc:
                problems.append(f"{type(exc).__name__}: {exc}")
                break
            if got.tobytes() != want:
                problems.append(f"{file.path}: rows {first} to {stop - 1} decompress wrong")
                break
    return problems


def check_after_crash(path: str, run: ChildRun, before: int, result: TrialResult) -> int | None:
    """Check the dataset a killed child left; return its row count (None if unreadable)."""
    acked, allowed = run.acknowledged(before), run.allowed(before)
    try:
        ds = ms.open(path)
    except Exception as exc:
        result.unreadable += 1
        result.problems.append(f"memshard.open failed: {type(exc).__name__}: {exc}")
        return None
    n = len(ds)
    if n < acked:
        result.committed_rows_lost += acked - n
        result.problems.append(f"{acked - n} committed rows lost: {n} rows, {acked} acknowledged")
    if n not in allowed or n > run.appended(before):
        result.wrong_length += 1
        result.problems.append(f"{n} rows; expected one of {sorted(allowed)}")
    count, problems = content_problems(ds)
    result.wrong_rows += count
    result.problems += problems
    problems = sealed_file_problems(path, ds)
    result.load_failures += len(problems)
    result.problems += problems
    report = ds.verify()
    if not report.ok:
        result.verify_failures += 1
        result.problems += [f"verify: {p.path}: {p.message}" for p in report.problems]
    for kind, count in stray_files(path).items():
        result.strays_after_crash[kind] = result.strays_after_crash.get(kind, 0) + count
    return n


def check_resume(path: str, committed: int, seed: int, result: TrialResult) -> None:
    """``memshard.append`` cleans every leftover; appending, committing and closing work and
    everything reads back."""
    rng = np.random.default_rng(seed)
    try:
        writer = ms.append(path)
    except Exception as exc:
        result.resume_failures += 1
        result.problems.append(f"memshard.append failed: {type(exc).__name__}: {exc}")
        return
    try:
        if writer.committed_rows != committed:
            result.resume_failures += 1
            result.problems.append(
                f"memshard.append sees {writer.committed_rows} rows, not {committed}"
            )
        ms.discard_parts(writer)  # the remains of parts are left to it
        problems = exact_layout_problems(path)
        result.strays_after_append += len(problems)
        result.problems += [f"after memshard.append: {p}" for p in problems]
        fields = list(writer.fields)
        # Across a shard boundary (ragged and compressed shards roll on size, after about 18
        # and 13 rows); those trials, five and seven files a shard, do it once.
        ragged = is_ragged(fields) or is_compressed(fields)
        most = RAGGED_RESUME_ROWS if ragged else 2 * writer.manifest.shard_rows
        for _ in range(1 if ragged else 2):
            writer.append(single_row(fields, writer.rows))
            writer.extend(batch(fields, writer.rows, int(rng.integers(1, most))))
            writer.commit()
        total = writer.rows
        writer.close()
    except Exception as exc:
        writer.abort()
        result.resume_failures += 1
        result.problems.append(f"appending after the crash failed: {type(exc).__name__}: {exc}")
        return
    try:
        ds = ms.open(path)
        problems = [f"{len(ds)} rows, wrote {total}"] if len(ds) != total else []
        problems += content_problems(ds)[1]
        problems += sealed_file_problems(path, ds)
        problems += [f"verify: {p.path}: {p.message}" for p in ds.verify().problems]
        problems += exact_layout_problems(path)
    except Exception as exc:
        problems = [f"reading back failed: {type(exc).__name__}: {exc}"]
    if problems:
        result.resume_failures += 1
        result.problems += [f"after resuming: {p}" for p in problems]


def run_trial(workspace: Workspace, spec: TrialSpec) -> TrialResult:
    """Run one trial in its own directory and check it."""
    result = TrialResult(spec.kind, spec.label)
    started = time.perf_counter()
    where = tempfile.mkdtemp(dir=workspace.scratch, prefix="trial-")
    try:
        path = prepare_dataset(where, spec.start)
        committed = len(ms.open(path))
        alive = True
        for stage in spec.stages:
            run = _run_stage(workspace, path, stage, spec.start)
            result.children += 1
            if run.hung:
                result.child_errors += 1
                result.problems.append(f"child hung for {CHILD_TIMEOUT} s: {run.lines[-5:]}")
            elif run.returncode == -signal.SIGKILL:
                result.killed += 1
                if run.kill is not None:
                    _, when, op, step, _ = run.kill
                    result.hits.append(f"{op} {step} {when}")
            elif run.returncode == 0 and run.done is not None:
                result.completed += 1
            else:
                result.child_errors += 1
                result.problems.append(f"child exited {run.returncode}: {run.stderr[-2000:]}")
            audit = [line for line in run.lines if line.startswith("AUDIT ")]
            result.sync_order_violations += len(audit)
            result.problems += audit
            n = check_after_crash(path, run, committed, result)
            if n is None:
                alive = False
                break
            committed = n
        if alive:
            check_resume(path, committed, spec.seed, result)
    except Exception:
        result.harness_errors += 1
        result.problems.append(traceback.format_exc())
    result.seconds = time.perf_counter() - started
    if result.failed and workspace.keep_failed:
        result.kept = where
    else:
        shutil.rmtree(where, ignore_errors=True)
    return result


def _run_stage(workspace: Workspace, path: str, stage: Stage, start: Start) -> ChildRun:
    launcher = workspace.launcher
    if stage.acks is not None:
        return run_killed_at_random_time(launcher, path, stage.plan, stage.acks, stage.extra_lines)
    kill_at = stage.kill_at
    if stage.fraction is not None:
        kill_at = 1 + math.floor(stage.fraction * len(workspace.ops(start, stage.plan)))
    return run_injected(launcher, path, stage.plan, kill_at, stage.when)


# -- composing a run ---------------------------------------------------------------------------
def every_step_trials(start: Start, plan: str, ops: Sequence[Sequence[str]]) -> list[TrialSpec]:
    """One trial per file operation of ``plan`` (run from ``start``) and per side of it."""
    return [
        TrialSpec(
            kind=f"every-step-{when}",
            label=f"start={start.name} plan={plan} kill-at={k} {when} ({' '.join(ops[k - 1])})",
            start=start,
            stages=(Stage(plan, kill_at=k, when=when),),
            seed=k,
        )
        for when in ("before", "after")
        for k in range(1, len(ops) + 1)
    ]


def random_op_trials(rng: np.random.Generator, count: int, base: str) -> list[TrialSpec]:
    """Random scripts killed at a uniformly drawn operation: from the crashed ``base`` (30 %),
    a fresh dataset (30 %), a fresh one of big shards with big batches (20 %), or a fresh one
    of ragged fields, with parts (20 %)."""
    seeds = [int(s) for s in rng.integers(0, 2**31, max(1, math.ceil(count / CENSUS_REUSE)))]
    trials = []
    for _ in range(count):
        seed = seeds[int(rng.integers(len(seeds)))]
        draw = rng.random()
        if draw < 0.2:
            start = Start(shard_bytes=BIG_SHARD_BYTES)
            plan = make_plan(seed, RANDOM_OP_ROUNDS, max_batch=BIG_MAX_BATCH)
        elif draw < 0.4:
            start = RAGGED
            plan = make_plan(seed, RANDOM_OP_ROUNDS, parts=RAGGED_PART_SHARE)
        else:
            start = Start(base) if draw < 0.7 else Start()
            plan = make_plan(seed, RANDOM_OP_ROUNDS)
        fraction, when = float(rng.random()), ("before", "after")[int(rng.integers(2))]
        trials.append(
            TrialSpec(
                kind="random-op",
                label=f"plan-seed={seed} start={start.name} fraction={fraction:.4f} {when}",
                start=start,
                stages=(Stage(plan, fraction=fraction, when=when),),
                seed=seed,
            )
        )
    return trials


def random_time_trials(rng: np.random.Generator, count: int) -> list[TrialSpec]:
    """1-3 writers in a row, each killed after a random number of commits and progress
    lines, on a fresh dataset (70 %) or a fresh one of ragged fields, with parts (30 %)."""
    trials = []
    for _ in range(count):
        ragged = rng.random() < 0.3
        stages = []
        for _ in range(int(rng.integers(1, 4))):
            seed = int(rng.integers(2**31))
            stages.append(
                Stage(
                    make_plan(seed, RANDOM_TIME_ROUNDS, parts=RAGGED_PART_SHARE if ragged else 0),
                    acks=int(rng.integers(0, 10)),
                    extra_lines=int(rng.integers(0, 8)),
                )
            )
        label = "; ".join(f"acks={s.acks}+{s.extra_lines}" for s in stages)
        start = RAGGED if ragged else Start()
        trials.append(
            TrialSpec("random-time", f"start={start.name} {label}", start, tuple(stages),
                      int(rng.integers(2**31)))
        )  # fmt: skip
    return trials


def compose(
    workspace: Workspace,
    trials: int,
    seed: int,
    base: str,
    jobs: int,
    every_step_share: float = 0.4,
    ragged_base: str | None = None,
    compressed_base: str | None = None,
) -> list[TrialSpec]:
    """About ``trials`` trials: whole every-step groups (:data:`SHORT_PLAN` from the crashed
    ``base``, :data:`BIG_PLAN`, :data:`RAGGED_PLAN` from the crashed ``ragged_base`` and
    :data:`COMPRESSED_PLAN` from the crashed ``compressed_base``, if they fit in ``trials``,
    then random short scripts from ``base`` up to
    ``every_step_share`` of the trials), the rest split between random-op and random-time
    trials."""
    rng = np.random.default_rng(seed)
    specs: list[TrialSpec] = []
    fixed = [(Start(base), SHORT_PLAN), (Start(shard_bytes=BIG_SHARD_BYTES), BIG_PLAN)]
    if ragged_base is not None:
        fixed.append((Start(ragged_base, ragged=True), RAGGED_PLAN))
    if compressed_base is not None:
        fixed.append((Start(compressed_base, compressed=True), COMPRESSED_PLAN))
    scripts = fixed + [
        (Start(base), make_plan(int(s), EVERY_STEP_ROUNDS, max_batch=40))
        for s in rng.integers(0, 2**31, 64)
    ]
    budget = every_step_share * trials
    full = False
    for first in range(0, len(scripts), jobs):
        chunk = scripts[first : first + jobs]
        with ThreadPoolExecutor(jobs) as pool:
            censuses = list(pool.map(lambda script: workspace.ops(*script), chunk))
        for number, ((start, plan), ops) in enumerate(zip(chunk, censuses, strict=True), first):
            group = every_step_trials(start, plan, ops)
            full = len(specs) + len(group) > (trials if number < len(fixed) else budget)
            if full:
                break
            specs += group
        if full:
            break
    rest = trials - len(specs)
    specs += random_op_trials(rng, rest - rest // 2, base) if rest - rest // 2 else []
    specs += random_time_trials(rng, rest // 2)
    return specs


# -- running and summarising -------------------------------------------------------------------
def run_trials(
    workspace: Workspace,
    specs: Sequence[TrialSpec],
    jobs: int,
    *,
    deadline: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[TrialResult]:
    """Run ``specs`` on ``jobs`` threads (each trial's children are processes); trials not
    started by ``deadline`` (a ``time.monotonic()`` value) are skipped."""
    results: list[TrialResult] = []
    lock = threading.Lock()

    def one(spec: TrialSpec) -> TrialResult | None:
        if deadline is not None and time.monotonic() > deadline:
            return None
        result = run_trial(workspace, spec)
        with lock:
            results.append(result)
            if progress is not None:
                progress(len(results), len(specs))
        return result

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, specs))
    return results


def summarize(results: Sequence[TrialResult], seconds: float) -> dict[str, Any]:
    kinds = Counter(r.kind for r in results)
    hits = Counter(h for r in results for h in r.hits)
    strays: Counter[str] = Counter()
    crashes_with: Counter[str] = Counter()
    for r in results:
        strays.update(r.strays_after_crash)
        crashes_with.update(k for k, v in r.strays_after_crash.items() if v)
    times = sorted(r.seconds for r in results) or [0.0]
    return {
        "trials": len(results),
        "trials_by_kind": {kind: kinds.get(kind, 0) for kind in KINDS},
        "every_step_scripts": len(
            {r.label.split(" kill-at=")[0] for r in results if r.kind.startswith("every-step")}
        ),
        "children": sum(r.children for r in results),
        "children_killed": sum(r.killed for r in results),
        "children_finished_before_kill": sum(r.completed for r in results),
        "committed_rows_lost": sum(r.committed_rows_lost for r in results),
        "unreadable_after_crash": sum(r.unreadable for r in results),
        "wrong_row_count_after_crash": sum(r.wrong_length for r in results),
        "rows_read_back_wrong": sum(r.wrong_rows for r in results),
        "sealed_shards_failing_np_load": sum(r.load_failures for r in results),
        "datasets_failing_verify": sum(r.verify_failures for r in results),
        "stray_files_after_next_append": sum(r.strays_after_append for r in results),
        "resume_failures": sum(r.resume_failures for r in results),
        "sync_order_violations": sum(r.sync_order_violations for r in results),
        "child_errors": sum(r.child_errors for r in results),
        "harness_errors": sum(r.harness_errors for r in results),
        "failed_trials": sum(r.failed for r in results),
        "crashes_leaving": dict(crashes_with),
        "strays_seen_after_crash": dict(strays),
        "kills_by_step": dict(Counter(h.split()[1] for r in results for h in r.hits)),
        "kills_by_operation": dict(sorted(hits.items())),
        "seconds_total": round(seconds, 2),
        "seconds_per_trial_mean": round(sum(times) / len(times), 3),
        "seconds_per_trial_median": round(times[len(times) // 2], 3),
        "seconds_per_trial_max": round(times[-1], 3),
        "failures": [
            {"kind": r.kind, "label": r.label, "kept": r.kept, "problems": r.problems[:10]}
            for r in results
            if r.failed
        ][:50],
    }


MUST_BE_ZERO = (
    "committed_rows_lost",
    "unreadable_after_crash",
    "wrong_row_count_after_crash",
    "rows_read_back_wrong",
    "sealed_shards_failing_np_load",
    "datasets_failing_verify",
    "stray_files_after_next_append",
    "resume_failures",
    "sync_order_violations",
    "child_errors",
    "harness_errors",
)


def markdown(summary: dict[str, Any]) -> str:
    lines = ["| metric | value |", "|---|---|", f"| trials | {summary['trials']} |"]
    lines += [f"| trials: {k} | {v} |" for k, v in summary["trials_by_kind"].items()]
    lines.append(f"| scripts killed at every operation | {summary['every_step_scripts']} |")
    for key in ("children", "children_killed", "children_finished_before_kill"):
        lines.append(f"| {key.replace('_', ' ')} | {summary[key]} |")
    for key in MUST_BE_ZERO:
        lines.append(f"| {key.replace('_', ' ')} (must be 0) | {summary[key]} |")
    for what, count in sorted(summary["crashes_leaving"].items()):
        lines.append(f"| trials whose crash left {what} | {count} |")
    for step, count in sorted(summary["kills_by_step"].items()):
        lines.append(f"| injected kills during {step} | {count} |")
    lines.append(
        f"| distinct (operation, step, before/after) killed at | "
        f"{len(summary['kills_by_operation'])} |"
    )
    lines.append(f"| total time | {summary['seconds_total']:.1f} s |")
    lines.append(
        f"| time per trial (mean / median / max) | {summary['seconds_per_trial_mean']:.3f} / "
        f"{summary['seconds_per_trial_median']:.3f} / {summary['seconds_per_trial_max']:.3f} s |"
    )
    return "\n".join(lines)


def harness(
    trials: int,
    *,
    jobs: int = 2,
    seed: int = 0,
    scratch: str | None = None,
    keep_failed: bool = False,
    max_seconds: float | None = None,
    launcher: str = "fork",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Compose and run about ``trials`` trials; return the summary (see :func:`summarize`)."""
    started = time.monotonic()
    deadline = None if max_seconds is None else started + max_seconds
    root = tempfile.mkdtemp(prefix="memshard-crash-", dir=scratch)
    try:
        with Launcher(launcher) as children:
            workspace = Workspace(root, children, keep_failed)
            base = prepare_crashed_base(workspace)
            ragged_base = prepare_crashed_base(workspace, ragged=True)
            compressed_base = prepare_crashed_base(workspace, compressed=True)
            specs = compose(
                workspace, trials, seed, base, jobs,
                ragged_base=ragged_base, compressed_base=compressed_base,
            )  # fmt: skip
            results = run_trials(workspace, specs, jobs, deadline=deadline, progress=progress)
        summary = summarize(results, time.monotonic() - started)
        summary["trials_planned"] = len(specs)
        summary["seed"] = seed
        summary["jobs"] = jobs
        summary["launcher"] = launcher
        return summary
    finally:
        if not keep_failed:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument("--races", type=int, help="race writers instead (tests.race_harness)")
    parser.add_argument("--max-minutes", type=float, help="start no trial after this long")
    parser.add_argument("--keep-failed", action="store_true", help="keep failing datasets")
    parser.add_argument("--tmp", help="directory for the trials' datasets")
    parser.add_argument(
        "--launcher",
        choices=("fork", "exec"),
        default="fork",
        help="fork children from a zygote (fast), or exec a new interpreter for each",
    )
    args = parser.parse_args(None if argv is None else list(argv))
    if args.races is not None:
        race_argv = ["--races", str(args.races), "--seed", str(args.seed)]
        race_argv += [] if args.json is None else ["--json", str(args.json)]
        return race_harness.main(race_argv + ([] if args.tmp is None else ["--tmp", args.tmp]))
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        if done % 100 == 0 or done == total:
            elapsed = time.monotonic() - started
            print(f"{done}/{total} trials, {elapsed:.0f} s", file=sys.stderr, flush=True)

    summary = harness(
        args.trials,
        jobs=args.jobs,
        seed=args.seed,
        scratch=args.tmp,
        keep_failed=args.keep_failed,
        max_seconds=None if args.max_minutes is None else args.max_minutes * 60,
        launcher=args.launcher,
        progress=progress,
    )
    summary["command"] = " ".join(["python -m tests.crash_harness", *sys.argv[1:]])
    print(markdown(summary))
    for failure in summary["failures"]:
        print(f"\nFAILED {failure['kind']} {failure['label']} (kept: {failure['kept']})")
        for problem in failure["problems"]:
            print(f"  {problem}")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if any(summary[key] for key in MUST_BE_ZERO) else 0


if __name__ == "__main__":
    sys.exit(main())
