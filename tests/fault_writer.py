"""Child process of the crash harness: runs a fixed writing script and can kill itself with
SIGKILL just before or just after its K-th file operation.

The script is a comma-separated plan of steps, run against an existing dataset (opened with
``memshard.append``, so the run starts on the resume path, cleaning whatever a crashed writer
left):

- ``a<n>``: ``n`` single-row ``Appender.append`` calls;
- ``e<n>``: one ``Appender.extend`` of ``n`` rows;
- ``c``: ``commit()``;
- ``r``: ``close()`` (seal and commit), then reopen with ``memshard.append``;
- ``x``: ``abort()`` (drop the uncommitted rows, leaving their bytes and shard files behind),
  then reopen with ``memshard.append``, which must clean them up and cut the unsealed shard
  back;
- ``p<n>``: write a part of ``n`` rows (``memshard.write_part``, closed) and commit it with
  ``commit_parts`` through the open appender (which seals its open shard and commits it with
  the part's shards).

After the last step the writer closes. Rows are those of :mod:`tests.crash_writer`: row ``i``
holds ``x = i`` and ``y = i`` (or, in a dataset of ragged or compressed fields, the rows of
:func:`tests.crash_writer.ragged_rows` or :func:`~tests.crash_writer.compressed_rows`), and
every batch continues at ``Appender.rows``.

Progress, one flushed line each, so that a parent reading stdout knows where the child was
when it died:

- ``START <rows>``: the dataset was opened (``rows`` committed);
- ``WILL <rows>``: about to append up to ``rows`` rows in all;
- ``COMMIT <rows>``: about to commit (or close) ``rows`` rows;
- ``ACK <rows>``: the commit returned, ``rows`` rows are durable;
- ``ABORT <rows>``: the appender was dropped, the dataset stays at ``rows``;
- ``OP <k> <op> <step> <target>`` (with ``--trace``): the k-th file operation;
- ``KILL <k> <before|after> <op> <step> <target>``: about to SIGKILL itself;
- ``AUDIT <message>``: the commit protocol's sync order was broken (see :class:`SyncAudit`);
- ``AUDITED <n>``, then ``DONE <ops>``: the script finished after ``n`` renames of manifests
  and part records, each checked by the audit, and ``ops`` file operations.

The counted file operations are ``os.write``, ``os.pwrite``, ``os.pwritev``, ``os.fsync``,
``os.replace``, ``os.rename``, ``os.ftruncate``, ``os.unlink`` and
``memshard.durable.fsync_directory`` (one operation; the ``fsync`` inside it is not counted
again). ``<step>`` names the appender
method the operation belongs to (resume, roll, seal, commit, append, and part for a part
writer's lock, final syncs and record), found on the stack.

Run as ``python -m tests.fault_writer PATH (--plan PLAN | --seed S [--rounds R])
[--kill-at K --when before|after] [--trace]``, or as a zygote that forks such children
(``--serve``, see :func:`serve`), which is how the harness starts them by default.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, TextIO

import numpy as np

import memshard as ms
import memshard.durable
from memshard import npyheader
from memshard.layout import PARTS_DIR
from memshard.manifest import offsets_path
from memshard.shardtable import TABLE_NAME, record_dtype, shard_path
from tests.crash_writer import batch, single_row

#: The ``os`` functions counted as file operations.
OS_OPERATIONS = ("write", "pwrite", "pwritev", "fsync", "replace", "rename", "ftruncate", "unlink")
#: The directory fsync, counted as one operation.
DIRECTORY_SYNC = "fsync_directory"
#: Writer functions (of the appender, the part writer and their shard sequence) that name the
#: step an operation belongs to, by qualified or plain name (innermost match wins).
STEPS = {
    "_remove_leftovers": "resume",
    "continue_shard": "resume",
    "_start": "roll",
    "seal_open": "seal",
    "_commit": "commit",
    "write": "append",
    "PartWriter._start": "part",
    "PartWriter.close": "part",
}
WHEN = ("before", "after")


def make_plan(seed: int, rounds: int, max_batch: int = 60, parts: float = 0.0) -> str:
    """A random plan, fixed by ``seed``: ``rounds`` rounds of 1-3 batches of 1-``max_batch``
    rows, each round ending in a commit (70 %), a close and reopen (15 %) or an abort and
    reopen (15 %). With ``parts``, that share of the rounds writes and commits a part first."""
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(rounds):
        if parts and rng.random() < parts:
            steps.append(f"p{int(rng.integers(1, max_batch + 1))}")
        for _ in range(int(rng.integers(1, 4))):
            count = int(rng.integers(1, max_batch + 1))
            steps.append(f"a{min(count, 20)}" if rng.random() < 0.2 else f"e{count}")
        draw = rng.random()
        steps.append("c" if draw < 0.7 else "r" if draw < 0.85 else "x")
    return ",".join(steps)


def parse_plan(plan: str) -> list[tuple[str, int]]:
    """``"e30,c,a2"`` -> ``[("e", 30), ("c", 0), ("a", 2)]``."""
    steps = []
    for token in plan.split(","):
        kind, count = token[:1], token[1:]
        if kind and kind in "aep" and count.isdigit() and int(count) > 0:
            steps.append((kind, int(count)))
        elif kind in ("c", "r", "x") and not count:
            steps.append((kind, 0))
        else:
            raise ValueError(f"bad plan step {token!r} in {plan!r}")
    return steps


class SyncAudit:
    """Checks the commit protocol's order against what a power cut could lose.

    A SIGKILL loses nothing the kernel has accepted, so kills alone cannot show that a writer
    syncs what it must. This audit follows the operations instead: files written or
    truncated since their last ``fsync`` are dirty; names created or renamed in a directory
    since its last directory ``fsync`` are unsynced. When a temporary manifest is renamed over
    ``manifest.json``, it and every shard file it names (a ragged or compressed field's
    offsets files included) must be clean, and the shard files' names synced; so must a
    part's files when its record is renamed into ``parts/``. When a commit returns, the
    rename must have been synced. Each breach is a violation, printed as an ``AUDIT`` line.
    """

    def __init__(self, root: str, say: Callable[[str], None]) -> None:
        self.root = os.path.realpath(root)
        self.say = say
        self.dirty: set[str] = set()
        self.unsynced: dict[str, set[str]] = {}
        self.publishes = 0
        self.violations = 0

    def created(self, path: str) -> None:
        directory, name = os.path.split(path)
        self.unsynced.setdefault(directory, set()).add(name)

    def performed(self, name: str, args: Sequence[Any]) -> None:
        """Note operation ``name`` (it has returned)."""
        if name in ("write", "pwrite", "pwritev", "ftruncate"):
            self.dirty.add(_path_of(args[0]))
        elif name == "fsync":
            self.dirty.discard(_path_of(args[0]))
        elif name == DIRECTORY_SYNC:
            self.unsynced.pop(os.path.realpath(args[0]), None)
        elif name == "unlink":
            path = os.path.realpath(args[0])
            self.dirty.discard(path)
            self.unsynced.get(os.path.dirname(path), set()).discard(os.path.basename(path))
        elif name in ("replace", "rename"):
            source, target = os.path.realpath(args[0]), os.path.realpath(args[1])
            if source in self.dirty:
                self.dirty.discard(source)
                self.dirty.add(target)
            self.created(target)

    def publishing(self, source: str, target: str) -> None:
        """Check a rename of ``source`` over ``target`` before it happens: of a manifest, or
        of a part record (which must find the part's files as durable as a manifest does)."""
        name = os.path.basename(target)
        is_part = os.path.basename(os.path.dirname(target)) == PARTS_DIR and name.endswith(".json")
        if name != "manifest.json" and not is_part:
            return
        self.publishes += 1
        source = os.path.realpath(source)
        if source in self.dirty:
            self._violation(f"{os.path.basename(source)} renamed into place before its fsync")
        with open(source, "rb") as handle:
            document = json.loads(handle.read())
        named = _files_of(document["shards"]) if is_part else self._named(document)
        what = f"part record {name}: " if is_part else ""
        for relative in named:
            path = os.path.realpath(os.path.join(self.root, relative))
            directory, file_name = os.path.split(path)
            if path in self.dirty:
                self._violation(f"{what}published {relative} with unsynced writes")
            if file_name in self.unsynced.get(directory, ()):
                self._violation(f"{what}published {relative} before fsync of its directory")

    def _named(self, manifest: dict[str, Any]) -> list[str]:
        """The files a manifest about to be published names: its shards' files, and the shard
        table with its committed records' files (read with the builtin ``open``, which the
        injector does not count)."""
        named = _files_of(manifest["shards"])
        table = manifest.get("table")
        if table and table["records"]:
            fields = manifest["fields"]
            # Fields with an offsets file: ragged or compressed (spec section 6.6).
            ragged = [
                name
                for name, spec in fields.items()
                if spec.get("kind") == "ragged" or "codec" in spec
            ]
            dtype = record_dtype(len(fields), len(ragged))
            with open(os.path.join(self.root, TABLE_NAME), "rb") as handle:
                data = handle.read()
            offset = npyheader.data_offset(dtype, ())
            records = np.frombuffer(data, dtype=dtype, count=table["records"], offset=offset)
            for record in records:
                stem = bytes(record["stem"]).rstrip(bytes(1)).decode("ascii")
                named += [shard_path(stem, field) for field in fields]
                named += [offsets_path(shard_path(stem, field)) for field in ragged]
            named.append(TABLE_NAME)
        return named

    def committed(self) -> None:
        """A commit returned: its rename must be durable."""
        if "manifest.json" in self.unsynced.get(self.root, ()):
            self._violation("commit returned before the dataset directory was synced")

    def _violation(self, message: str) -> None:
        self.violations += 1
        self.say(f"AUDIT {message.replace(chr(10), ' ')}")


def _files_of(shards: list[dict[str, Any]]) -> list[str]:
    """The files of shard objects of a manifest or part record: each field's file and, of a
    ragged or compressed field, its offsets file."""
    named = []
    for shard in shards:
        for file in shard["files"].values():
            named.append(file["path"])
            if "offsets_checksum" in file or "offsets_prefix_checksum" in file:
                named.append(offsets_path(file["path"]))
    return named


def _path_of(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd{fd}"


class FaultInjector:
    """Counts file operations and kills the process at operation ``kill_at`` (1-based),
    ``when`` = "before" or "after" performing it. ``kill_at=None`` only counts (a census).
    Every operation is also fed to a :class:`SyncAudit`."""

    def __init__(self, root: str, out: TextIO, kill_at: int | None, when: str, trace: bool) -> None:
        if when not in WHEN:
            raise ValueError(f"when must be one of {WHEN}, got {when!r}")
        self.root = os.path.abspath(root)
        self.out = out
        self.kill_at = kill_at
        self.when = when
        self.trace = trace
        self.count = 0
        self.audit = SyncAudit(root, self._say)
        self._lock = threading.Lock()
        self._local = threading.local()

    def install(self) -> None:
        """Wrap the ``os`` functions and every module-level reference to
        :func:`memshard.durable.fsync_directory` (``memshard.durable`` and the modules that
        imported it by name, such as ``memshard.appender``)."""
        for name in OS_OPERATIONS:
            setattr(os, name, self._wrap(name, getattr(os, name)))
        os.open = self._observe_open(os.open)  # for the audit only; not a counted operation
        original = memshard.durable.fsync_directory
        wrapped = self._wrap(DIRECTORY_SYNC, original)
        for module_name, module in list(sys.modules.items()):
            in_package = module_name.split(".")[0] == "memshard" and module is not None
            if in_package and getattr(module, DIRECTORY_SYNC, None) is original:
                setattr(module, DIRECTORY_SYNC, wrapped)

    def _wrap(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if getattr(self._local, "inside", False):  # the fsync inside fsync_directory
                return function(*args, **kwargs)
            with self._lock:
                self.count += 1
                number = self.count
            if self.trace:
                self._say(f"OP {number} {name} {self._step()} {self._target(name, args)}")
            if number == self.kill_at and self.when == "before":
                self._kill(number, name, args)
            if name in ("replace", "rename"):
                with self._lock:
                    self.audit.publishing(args[0], args[1])
            self._local.inside = True
            try:
                result = function(*args, **kwargs)
            finally:
                self._local.inside = False
            with self._lock:
                self.audit.performed(name, args)
            if number == self.kill_at and self.when == "after":
                self._kill(number, name, args)
            return result

        wrapper.__wrapped__ = function  # type: ignore[attr-defined]
        return wrapper

    def _observe_open(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            creating = (
                flags & os.O_CREAT
                and kwargs.get("dir_fd") is None
                and not getattr(self._local, "inside", False)
                and not os.path.lexists(path)
            )
            fd: int = function(path, flags, *args, **kwargs)
            if creating:
                with self._lock:
                    self.audit.created(_path_of(fd))
            return fd

        return wrapper

    def _kill(self, number: int, name: str, args: Sequence[Any]) -> None:
        self._say(f"KILL {number} {self.when} {name} {self._step()} {self._target(name, args)}")
        os.kill(os.getpid(), signal.SIGKILL)
        os._exit(70)  # never reached: SIGKILL sent to oneself is delivered before kill returns

    def _say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    @staticmethod
    def _step() -> str:
        frame: FrameType | None = sys._getframe(2)
        while frame is not None:
            code = frame.f_code
            step = STEPS.get(getattr(code, "co_qualname", "")) or STEPS.get(code.co_name)
            if step is not None and "memshard" in code.co_filename:
                return step
            frame = frame.f_back
        return "other"

    def _target(self, name: str, args: Sequence[Any]) -> str:
        """The file an operation works on, relative to the dataset."""
        first = args[0] if args else None
        if isinstance(first, int):
            try:
                first = os.readlink(f"/proc/self/fd/{first}")
            except OSError:
                return f"fd{first}"
        if not isinstance(first, (str, bytes, os.PathLike)):
            return "?"
        where = os.path.relpath(os.fsdecode(first), self.root)
        return where.replace(" ", "_")


def run_plan(
    path: str, plan: str, out: TextIO, committed: Callable[[], None] = lambda: None
) -> None:
    """Run ``plan`` against the dataset at ``path`` (see the module docstring); call
    ``committed()`` after each commit returns."""

    def say(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    writer = ms.append(path)
    fields = list(writer.fields)
    say(f"START {writer.committed_rows}")
    for kind, count in parse_plan(plan):
        if kind == "a":
            say(f"WILL {writer.rows + count}")
            for _ in range(count):
                writer.append(single_row(fields, writer.rows))
        elif kind == "e":
            say(f"WILL {writer.rows + count}")
            writer.extend(batch(fields, writer.rows, count))
        elif kind == "p":
            say(f"WILL {writer.rows + count}")
            with ms.write_part(path) as part:
                part.extend(batch(fields, writer.rows, count))
            say(f"COMMIT {writer.rows + count}")
            ms.commit_parts(writer, [part.close()], order="given")
            committed()
            say(f"ACK {writer.committed_rows}")
        elif kind == "c":
            say(f"COMMIT {writer.rows}")
            writer.commit()
            committed()
            say(f"ACK {writer.committed_rows}")
        elif kind == "r":
            say(f"COMMIT {writer.rows}")
            writer.close()
            committed()
            say(f"ACK {writer.committed_rows}")
            writer = ms.append(path)
            say(f"START {writer.committed_rows}")
        else:  # "x"
            writer.abort()
            say(f"ABORT {writer.committed_rows}")
            writer = ms.append(path)
            say(f"START {writer.committed_rows}")
    say(f"COMMIT {writer.rows}")
    writer.close()
    committed()
    say(f"ACK {writer.committed_rows}")


def serve() -> None:
    """A zygote for the harness: memshard is imported once, here, and each child is forked
    from this process instead of starting a new interpreter (about 0.4 s each).

    For each request on stdin, a JSON list of arguments, fork a child that prints
    ``PID <pid>`` and then runs :func:`main` with those arguments, writing to this process's
    stdout; once it has exited, print ``EXIT <returncode>`` (``-9`` when SIGKILL-ed). A child
    that raises prints its traceback as ``ERROR`` lines and exits with status 1. One child
    at a time; stdin closing ends the zygote.

    The child is reaped only when the next request (or the end of stdin) arrives, so until
    the parent has read ``EXIT`` and moved on, its pid names that child (a zombie at worst)
    and the parent may SIGKILL it by pid without hitting another process.
    """
    pid = 0
    while True:
        request = sys.stdin.readline()
        if pid:
            os.waitpid(pid, 0)
        if not request:
            return
        argv = json.loads(request)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the child: never return into the zygote's loop
            code = 1
            try:
                print(f"PID {os.getpid()}", flush=True)
                main(argv)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                for line in traceback.format_exc().splitlines():
                    print(f"ERROR {line}")
            finally:
                sys.stdout.flush()
                os._exit(code)
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        assert info is not None
        killed = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
        print(f"EXIT {-info.si_status if killed else info.si_status}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?")
    parser.add_argument("--serve", action="store_true", help="be a zygote (see serve())")
    parser.add_argument("--plan", help="steps such as 'e30,c,a2,x' (see the module docstring)")
    parser.add_argument("--seed", type=int, help="generate the plan from this seed")
    parser.add_argument("--rounds", type=int, default=12, help="rounds of a generated plan")
    parser.add_argument("--kill-at", type=int, help="SIGKILL at this file operation (1-based)")
    parser.add_argument("--when", choices=WHEN, default="before")
    parser.add_argument("--trace", action="store_true", help="print every file operation")
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return
    if args.path is None:
        parser.error("PATH is required")
    if (args.plan is None) == (args.seed is None):
        parser.error("give exactly one of --plan and --seed")
    plan = args.plan if args.plan is not None else make_plan(args.seed, args.rounds)
    injector = FaultInjector(args.path, sys.stdout, args.kill_at, args.when, args.trace)
    injector.install()
    run_plan(args.path, plan, sys.stdout, injector.audit.committed)
    print(f"AUDITED {injector.audit.publishes}", flush=True)
    print(f"DONE {injector.count}", flush=True)


if __name__ == "__main__":
    main()
