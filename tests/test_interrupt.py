"""Ctrl-C during long operations (:mod:`memshard.interrupt`): every press stops the operation
at the next block, keeps what a resume continues, and ``memshard`` exits with status 130.

Before, a Ctrl-C that landed in a weakref callback (a mapping or a view being freed) was
printed as ``Exception ignored in: ... KeyboardInterrupt`` and discarded, and the conversion
ran to the end and exited 0 (9 of 13 presses in the CLI). Each trial here runs the real
command in a session of its own with stderr on a pseudo-terminal, so it draws its progress
bar; the test waits until the bar shows a percentage drawn at random, then a random few
milliseconds more, and sends SIGINT to the whole process group, as a terminal's Ctrl-C does.
Every trial must stop with 130, leave no process behind, and leave a state that a resume
completes bit for bit.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import random
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

import memshard as ms
from memshard import interrupt
from memshard.convert import STAGING_SUFFIX
from tests.helpers import REPO_ROOT

#: Trials of each kind. Together they take about a minute on two cores.
CONVERT_TRIALS = {1: 10, 2: 6}
VERIFY_TRIALS = 8
THREAD_TRIALS = 3
EXPORT_TRIALS = 3
#: The largest bar percentage a trial waits for: the rest of the run is longer than the
#: signal takes to arrive, so every press lands while the operation runs.
LATEST_PERCENT = 60
#: The random delay after that percentage is up to this many seconds.
MAX_DELAY = 0.01
#: The children draw their bar at every block, not every 0.1 s (tqdm reads its defaults from
#: these variables), so that a trial can stop at any block of a short run.
DRAW_EVERY_BLOCK = {"TQDM_MININTERVAL": "0", "TQDM_MINITERS": "1"}
PERCENT = re.compile(rb"(\d+)%\|")
#: A source of 48 shards of 64 rows (128 KiB each: the warning about small shards is
#: printed, as the user asked for them).
SOURCE_ROWS, SHARD_ROWS, ROW_FLOATS = 48 * 64, 64, 512
SHARD_SIZE = str(SHARD_ROWS * (ROW_FLOATS * 4 + 8))
TIMEOUT = 120


class TerminalChild:
    """A command in a session of its own (its own process group), its stderr a
    pseudo-terminal 80 columns wide that a thread reads as it comes."""

    def __init__(self, argv: list[str], *, stdout_too: bool = False) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=slave if stdout_too else subprocess.PIPE,
            stderr=slave,
            start_new_session=True,
            env={**os.environ, "PYTHONWARNINGS": "error", **DRAW_EVERY_BLOCK},
        )
        os.close(slave)
        self._master = master
        self._terminal = bytearray()
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 4096)
            except OSError:  # EIO: every writer closed the terminal
                chunk = b""
            with self._changed:
                self._terminal += chunk
                self._changed.notify_all()
            if not chunk:
                return

    def wait_for_percent(self, percent: int) -> None:
        """Wait until the bar shows ``percent`` or more (or the command has ended)."""
        deadline = time.monotonic() + TIMEOUT
        with self._changed:
            while max(map(int, PERCENT.findall(self._terminal)), default=-1) < percent:
                assert self.process.poll() is None, self.terminal()
                assert self._changed.wait(deadline - time.monotonic()), self.terminal()

    def wait_for_text(self, text: bytes) -> None:
        """Wait until the command has written ``text`` to its terminal."""
        deadline = time.monotonic() + TIMEOUT
        with self._changed:
            while text not in self._terminal:
                assert self.process.poll() is None, self.terminal()
                assert self._changed.wait(deadline - time.monotonic()), self.terminal()

    def press_ctrl_c(self) -> None:
        """SIGINT to the command's process group, as a terminal sends it."""
        os.killpg(self.process.pid, signal.SIGINT)

    def finish(self) -> tuple[int, str]:
        """Wait for the command; its exit status and standard output."""
        stdout, _ = self.process.communicate(timeout=TIMEOUT)
        self._reader.join(TIMEOUT)
        os.close(self._master)
        return self.process.returncode, (stdout or b"").decode()

    def terminal(self) -> str:
        """What the command wrote to its terminal, carriage returns as new lines."""
        return self._terminal.decode(errors="replace").replace("\r", "\n")


def interrupted_at_random(argv: list[str], rng: random.Random) -> tuple[int, str, str]:
    """Run ``argv``, press Ctrl-C at a random moment of its progress; return its exit status,
    standard output and terminal output. Asserts that none of its processes outlives it."""
    child = TerminalChild(argv)
    try:
        child.wait_for_percent(rng.randint(0, LATEST_PERCENT))
        time.sleep(rng.uniform(0, MAX_DELAY))  # the random moment (input, not synchronisation)
        child.press_ctrl_c()
        status, stdout = child.finish()
    finally:
        if child.process.poll() is None:
            child.process.kill()
            child.process.wait()
    left = group_members(child.process.pid)
    assert left == [], f"processes of its group outlived it (workers included): {left}"
    return status, stdout, child.terminal()


def group_members(group: int) -> list[str]:
    """``pid state command`` of every live process in process group ``group``.

    Zombies are left out: they run nothing and hold no file. A worker stopped while a library
    it imports runs a short command (h5py runs ``uname -p``) leaves that command to be reaped
    by whichever process adopts orphans, which in a container may take its time."""
    members = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if entry.isdigit() and int(fields[2]) == group and fields[0] != "Z":
                members.append(f"{entry} {fields[0]} {stat[: stat.rindex(')') + 1]}")
    return members


def assert_stopped(status: int, stdout: str, terminal: str) -> None:
    assert status == 130, (status, stdout, terminal)
    assert "Traceback" not in terminal, terminal
    assert "Exception ignored" not in terminal, terminal
    assert "memshard: interrupted" in terminal, terminal


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """An HDF5 file of two fields, chunked along rows."""
    rng = np.random.default_rng(7)
    columns: dict[str, np.ndarray] = {
        "x": rng.standard_normal((SOURCE_ROWS, ROW_FLOATS), dtype=np.float32),
        "y": rng.integers(0, 1 << 40, SOURCE_ROWS, dtype=np.int64),
    }
    path = tmp_path_factory.mktemp("interrupt") / "src.h5"
    with h5py.File(path, "w") as handle:
        for name, values in columns.items():
            handle.create_dataset(name, data=values, chunks=(32, *values.shape[1:]))
    return path, columns


def assert_same(ds: ms.Dataset, columns: dict[str, np.ndarray]) -> None:
    assert len(ds) == SOURCE_ROWS
    for name, values in columns.items():
        assert ds[name][:].tobytes() == values.tobytes()


@pytest.mark.parametrize("workers", sorted(CONVERT_TRIALS))
def test_ctrl_c_stops_every_conversion_and_the_resume_completes_it(
    source: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, workers: int
) -> None:
    src, columns = source
    rng = random.Random(1000 + workers)
    kept = []
    for trial in range(CONVERT_TRIALS[workers]):
        dst = tmp_path / f"out{trial}"
        staging = Path(f"{dst}{STAGING_SUFFIX}")
        argv = [sys.executable, "-m", "memshard", "convert", str(src), str(dst),
                "--shard-size", SHARD_SIZE, "--workers", str(workers)]  # fmt: skip
        status, stdout, terminal = interrupted_at_random(argv, rng)
        assert_stopped(status, stdout, terminal)
        assert f"the rows converted so far are kept in {staging}" in terminal
        assert not os.path.lexists(dst)
        partial = ms.open(staging)
        assert len(partial) % SHARD_ROWS == 0
        assert all(shard.sealed for shard in partial.shards)
        for name, values in columns.items():
            assert partial[name][:].tobytes() == values[: len(partial)].tobytes()
        kept.append(len(partial))
        partial.close()
        assert_same(ms.from_hdf5(src, dst, resume=True, workers=workers), columns)
        assert not os.path.lexists(staging)
    # The presses landed at different moments: different amounts were kept.
    assert len(set(kept)) > 1, kept


@pytest.fixture(scope="module")
def cold_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """256 MiB in 64 shards, for verify to read from disk (its pages evicted before each
    trial, so that it runs long enough for a press to land anywhere)."""
    path = tmp_path_factory.mktemp("verify") / "ds"
    rows = np.arange(1 << 16, dtype=np.float32).reshape(-1, 1) + np.zeros(1024, np.float32)
    with ms.create(path, {"x": ("float32", (1024,))}, shard_bytes=4 << 20) as writer:
        writer.extend({"x": rows})
    return path


def evict(path: Path) -> None:
    for shard in (path / "shards").iterdir():
        fd = os.open(shard, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def test_ctrl_c_stops_every_verification(cold_dataset: Path) -> None:
    manifest = (cold_dataset / "manifest.json").read_bytes()
    rng = random.Random(2000)
    for _ in range(VERIFY_TRIALS):
        evict(cold_dataset)
        argv = [sys.executable, "-m", "memshard", "verify", str(cold_dataset)]
        status, stdout, terminal = interrupted_at_random(argv, rng)
        assert_stopped(status, stdout, terminal)
        assert stdout == "", "no verdict for a verification that did not finish"
    assert (cold_dataset / "manifest.json").read_bytes() == manifest
    assert ms.open(cold_dataset).verify().ok


#: A conversion of in-memory arrays by two threads, then an export to HDF5, from Python with a
#: progress bar: ``python -c CODE DST``. Exits 130 on KeyboardInterrupt.
API_CHILD = """
import sys, warnings
import numpy as np
import memshard as ms
warnings.filterwarnings("ignore", category=ms.errors.SmallShardWarning)
x = np.arange({rows} * 512, dtype=np.float32).reshape({rows}, 512)
try:
    if sys.argv[1] == "threads":
        ms.from_numpy({{"x": x}}, sys.argv[2], workers=2, shard_bytes={shard_bytes},
                      progress=True)
    else:
        ms.to_hdf5(sys.argv[2], sys.argv[3], compression="gzip", progress=True)
except KeyboardInterrupt:
    print("memshard: interrupted", file=sys.stderr)
    sys.exit(130)
"""


def api_child(rows: int) -> str:
    return API_CHILD.format(rows=rows, shard_bytes=64 * 512 * 4)


def test_ctrl_c_stops_a_conversion_by_threads(tmp_path: Path) -> None:
    rows = 64 * 256
    expected = np.arange(rows * 512, dtype=np.float32).reshape(rows, 512)
    rng = random.Random(3000)
    for trial in range(THREAD_TRIALS):
        dst = tmp_path / f"threads{trial}"
        argv = [sys.executable, "-c", api_child(rows), "threads", str(dst)]
        status, stdout, terminal = interrupted_at_random(argv, rng)
        assert_stopped(status, stdout, terminal)
        with warnings_ignored():
            ds = ms.from_numpy({"x": expected}, dst, workers=2, shard_bytes=64 * 512 * 4,
                               resume=True)  # fmt: skip
        assert ds["x"][:].tobytes() == expected.tobytes()


def test_ctrl_c_stops_an_export_and_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "ds"
    values = np.random.default_rng(3).standard_normal((1 << 15, 256), dtype=np.float32)
    with ms.create(path, {"x": ("float32", (256,))}) as writer:
        writer.extend({"x": values})
    rng = random.Random(4000)
    for trial in range(EXPORT_TRIALS):
        out = tmp_path / f"export{trial}.h5"
        argv = [sys.executable, "-c", api_child(1), "export", str(path), str(out)]
        status, stdout, terminal = interrupted_at_random(argv, rng)
        assert_stopped(status, stdout, terminal)
        assert sorted(os.listdir(tmp_path)) == ["ds"], "no export file, no temporary one"


@pytest.mark.parametrize("stage", ["converting", "training"])
def test_ctrl_c_stops_the_demo(tmp_path: Path, stage: str) -> None:
    """The demo stops in its conversion (at a random block) or in its training loop, whose
    DataLoader workers get the Ctrl-C too; the next run starts the conversion over."""
    workdir = tmp_path / "demo"
    argv = [sys.executable, "-m", "memshard", "demo", "--rows", "6000", "--steps", "100000",
            "--workers", "2", "--dir", str(workdir)]  # fmt: skip
    child = TerminalChild(argv, stdout_too=True)
    try:
        if stage == "converting":
            child.wait_for_text(b"1/4 wrote")
            child.wait_for_percent(random.Random(5).randint(0, LATEST_PERCENT))
        else:
            child.wait_for_text(b"3/4 verified")
        child.press_ctrl_c()
        status, _ = child.finish()
    finally:
        if child.process.poll() is None:
            child.process.kill()
            child.process.wait()
    assert_stopped(status, "", child.terminal())
    assert "4/4" not in child.terminal()
    assert group_members(child.process.pid) == []
    if stage == "converting":
        assert (workdir / f"synthetic.memshard{STAGING_SUFFIX}").is_dir()


@contextlib.contextmanager
def warnings_ignored() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ms.errors.SmallShardWarning)
        yield


# -- the deferral itself, with real signals in this process -------------------------------------


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """Python's own SIGINT handler in this process (what a program starts with)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def press_ctrl_c() -> None:
    """SIGINT to this process, then enough bytecodes for Python to run its handler."""
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(1000):
        pass


@pytest.mark.usefixtures("default_sigint")
def test_a_press_waits_for_the_next_check() -> None:
    checked = []

    def operation() -> None:
        with interrupt.deferred():
            press_ctrl_c()
            assert interrupt.pressed()  # recorded, not raised
            checked.append("before")
            interrupt.check()
            checked.append("after")

    with pytest.raises(KeyboardInterrupt):
        operation()
    assert checked == ["before"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.usefixtures("default_sigint")
def test_a_press_that_lands_in_a_weakref_callback_is_not_lost() -> None:
    """The way presses were lost: Python's own handler raises KeyboardInterrupt inside the
    callback that is running (here a weakref callback, as when a mapping's last view goes),
    where it is printed as "Exception ignored" and dropped, and the operation runs on."""
    blocks = []

    class Mapping:
        pass

    def operation() -> None:
        with interrupt.deferred():
            mapping = Mapping()
            ref = weakref.ref(mapping, lambda _: press_ctrl_c())
            del mapping  # the callback runs now, and the press lands in it
            assert ref() is None
            for block in range(3):
                interrupt.check()
                blocks.append(block)

    with pytest.raises(KeyboardInterrupt):
        operation()
    assert blocks == [], "stopped at the first block after the press"


@pytest.mark.usefixtures("default_sigint")
def test_a_press_that_no_check_took_is_raised_on_leaving() -> None:
    def operation() -> None:
        with interrupt.deferred(), interrupt.deferred():
            press_ctrl_c()

    with pytest.raises(KeyboardInterrupt):
        operation()
    with interrupt.deferred():  # a new block starts without a press
        interrupt.check()


@pytest.mark.usefixtures("default_sigint")
def test_a_press_taken_and_handled_is_not_raised_again() -> None:
    with interrupt.deferred():
        press_ctrl_c()
        with contextlib.suppress(KeyboardInterrupt):
            interrupt.check()


@pytest.mark.usefixtures("default_sigint")
def test_a_second_press_raises_at_once() -> None:
    reached = []

    def operation() -> None:
        with interrupt.deferred():
            press_ctrl_c()
            press_ctrl_c()
            reached.append(True)

    with pytest.raises(KeyboardInterrupt):
        operation()
    assert reached == [], "the second press raised at once"


@pytest.mark.usefixtures("default_sigint")
def test_the_wakeup_socket_wakes_a_wait() -> None:
    import select

    def operation() -> None:
        with interrupt.deferred():
            wakeup = interrupt.wakeup_fd()
            assert wakeup is not None
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
            readable, _, _ = select.select([wakeup], [], [], TIMEOUT)
            assert readable == [wakeup]
            interrupt.check()

    with pytest.raises(KeyboardInterrupt):
        operation()


def test_a_program_with_its_own_handler_keeps_it() -> None:
    presses = []
    previous = signal.signal(signal.SIGINT, lambda *_: presses.append(1))
    try:
        with interrupt.deferred():
            assert interrupt.wakeup_fd() is None
            press_ctrl_c()
            interrupt.check()
        assert presses == [1]
    finally:
        signal.signal(signal.SIGINT, previous)
