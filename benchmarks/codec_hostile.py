"""Hostile frames against each library's decompression calls, each call in a fresh process.

For each frame format (zstd, lz4 block with numcodecs' 4-byte size prefix, raw lz4 block,
lz4 frame, blosc1 as numcodecs writes it, blosc2), :func:`hostile_frames` builds:

- ``bomb``: a small frame of zeros that inflates to ``bomb_bytes`` (1 GiB in a full run), its
  header (where the format has one) telling the truth;
- ``bomb, header lies``: the same inflation under a header that claims the bound (the lz4
  size prefix and blosc's ``nbytes`` rewritten) or no size at all (zstd and lz4 frames written
  without a content size);
- ``truncated``: a frame of ``bound`` bytes cut to half its length;
- ``short``: a whole frame of ``bound // 2`` bytes, for a reader expecting ``bound``.

Every :class:`Api` that takes a bound (an output buffer of ``bound`` bytes, or a maximum
size) meets all four; an unbounded call (the library's default) meets the honest bomb only,
to show what the bound saves. :func:`run_trial` runs one call in a new interpreter and reads
its peak resident set (``VmHWM``) and peak virtual size (``VmPeak``) from
``/proc/self/status`` just before and after the call: a call that reserves the claimed size
without touching it shows in ``VmPeak``, one that fills it in ``VmHWM``. A child that dies
(a segmentation fault) is reported as a crash.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .codec_candidates import installed

#: The frame kinds, in the order the report shows them.
BOMB, LYING, TRUNCATED, SHORT = "bomb", "bomb, header lies", "truncated", "short"
KINDS = (BOMB, LYING, TRUNCATED, SHORT)
#: The bound the trials give each call: a reader's buffer of one sketch row.
BOUND = 64 << 10
#: Bytes of zeros compressed at a time while building a streamed bomb.
CHUNK_BYTES = 64 << 20
#: The byte ``out`` is filled with before a call, to see how much of it the call wrote.
SENTINEL = 0xA5
#: Trials run at once (each measures its own process only).
PARALLEL_TRIALS = 2
#: Seconds a trial may take before it is killed.
TRIAL_TIMEOUT = 120.0
#: The folder holding ``benchmarks/``, where a trial's interpreter starts.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Api:
    """One decompression call: ``run(frame, out)``, ``out`` being ``bound`` bytes of uint8."""

    name: str
    format: str
    bounded: bool
    call: str
    run: Callable[[bytes, np.ndarray], object]
    library: str = ""


def _numcodecs_apis() -> Iterator[Api]:
    if not installed("numcodecs"):
        return
    import numcodecs

    zstd, lz4, blosc = numcodecs.Zstd(), numcodecs.LZ4(), numcodecs.Blosc()
    yield Api(
        "numcodecs Zstd decode(out=)",
        "zstd",
        True,
        "Zstd().decode(frame, out=out)",
        lambda frame, out: zstd.decode(frame, out=out),
    )
    yield Api(
        "numcodecs Zstd decode()",
        "zstd",
        False,
        "Zstd().decode(frame)",
        lambda f, _: zstd.decode(f),
    )
    yield Api(
        "numcodecs LZ4 decode(out=)",
        "lz4 block, size prefix",
        True,
        "LZ4().decode(frame, out=out)",
        lambda frame, out: lz4.decode(frame, out=out),
    )
    yield Api(
        "numcodecs LZ4 decode()",
        "lz4 block, size prefix",
        False,
        "LZ4().decode(frame)",
        lambda f, _: lz4.decode(f),
    )
    yield Api(
        "numcodecs Blosc decode(out=)",
        "blosc1",
        True,
        "Blosc().decode(frame, out=out)",
        lambda frame, out: blosc.decode(frame, out=out),
    )
    yield Api(
        "numcodecs Blosc decode()",
        "blosc1",
        False,
        "Blosc().decode(frame)",
        lambda f, _: blosc.decode(f),
    )


def _blosc2_apis() -> Iterator[Api]:
    if not installed("blosc2"):
        return
    import blosc2

    yield Api(
        "blosc2 decompress2(dst=)",
        "blosc2",
        True,
        "blosc2.decompress2(frame, dst=out)",
        lambda frame, out: blosc2.decompress2(frame, dst=out),
    )
    yield Api(
        "blosc2 decompress(dst=)",
        "blosc2",
        True,
        "blosc2.decompress(frame, dst=out)",
        lambda frame, out: blosc2.decompress(frame, dst=out),
    )
    yield Api(
        "blosc2 decompress2()",
        "blosc2",
        False,
        "blosc2.decompress2(frame)",
        lambda f, _: blosc2.decompress2(f),
    )


def _zstandard_apis() -> Iterator[Api]:
    if not installed("zstandard"):
        return
    import zstandard

    def readinto(frame: bytes, out: np.ndarray) -> object:
        return zstandard.ZstdDecompressor().stream_reader(frame).readinto(out)

    yield Api(
        "zstandard decompress(max_output_size=)",
        "zstd",
        True,
        "ZstdDecompressor().decompress(frame, max_output_size=len(out))",
        lambda frame, out: zstandard.ZstdDecompressor().decompress(
            frame, max_output_size=out.nbytes
        ),
    )
    yield Api(
        "zstandard stream_reader().readinto()",
        "zstd",
        True,
        "ZstdDecompressor().stream_reader(frame).readinto(out)",
        readinto,
    )
    yield Api(
        "zstandard decompressobj().decompress()",
        "zstd",
        False,
        "ZstdDecompressor().decompressobj().decompress(frame) (takes no bound)",
        lambda frame, _: zstandard.ZstdDecompressor().decompressobj().decompress(frame),
    )


def _lz4_apis() -> Iterator[Api]:
    if not installed("lz4"):
        return
    import lz4.block
    import lz4.frame

    def frame_bounded(frame: bytes, out: np.ndarray) -> object:
        return lz4.frame.LZ4FrameDecompressor().decompress(frame, max_length=out.nbytes)

    yield Api(
        "lz4.block decompress(uncompressed_size=)",
        "lz4 block",
        True,
        "lz4.block.decompress(frame, uncompressed_size=len(out))",
        lambda frame, out: lz4.block.decompress(frame, uncompressed_size=out.nbytes),
    )
    yield Api(
        "lz4.block decompress()",
        "lz4 block, size prefix",
        False,
        "lz4.block.decompress(frame)",
        lambda frame, _: lz4.block.decompress(frame),
    )
    yield Api(
        "lz4.frame LZ4FrameDecompressor.decompress(max_length=)",
        "lz4 frame",
        True,
        "LZ4FrameDecompressor().decompress(frame, max_length=len(out))",
        frame_bounded,
    )
    yield Api(
        "lz4.frame decompress()",
        "lz4 frame",
        False,
        "lz4.frame.decompress(frame)",
        lambda f, _: lz4.frame.decompress(f),
    )


#: Each library's calls, by the library's module name.
LIBRARIES: dict[str, Callable[[], Iterator[Api]]] = {
    "numcodecs": _numcodecs_apis,
    "blosc2": _blosc2_apis,
    "zstandard": _zstandard_apis,
    "lz4": _lz4_apis,
}


def apis(libraries: Iterable[str] = tuple(LIBRARIES)) -> dict[str, Api]:
    """Every call of the installed ``libraries``, by name, each knowing its library."""
    return {
        api.name: replace(api, library=library)
        for library in libraries
        for api in LIBRARIES[library]()
    }


# -- the frames ------------------------------------------------------------------------------
def sample_bytes(size: int) -> np.ndarray:
    """``size`` bytes that compress a little: the frames that are truncated or short."""
    return (np.arange(size, dtype=np.int64) * 7 % 251).astype(np.uint8)


def with_size_field(frame: bytes, start: int, size: int) -> bytes:
    """``frame`` with the little-endian 4-byte field at ``start`` rewritten as ``size``."""
    return frame[:start] + size.to_bytes(4, "little") + frame[start + 4 :]


def zero_chunks(total: int) -> Iterator[memoryview]:
    """``total`` zero bytes in chunks of at most :data:`CHUNK_BYTES`."""
    zeros = memoryview(bytes(CHUNK_BYTES))
    for start in range(0, total, CHUNK_BYTES):
        yield zeros[: min(CHUNK_BYTES, total - start)]


def _zstd_frames(bomb_bytes: int, bound: int) -> dict[str, bytes]:
    """Built by zstandard (streamed, with and without a content size), else numcodecs (no
    frame without a content size)."""
    if installed("zstandard"):
        import zstandard

        def streamed(sized: bool) -> bytes:
            compressor = zstandard.ZstdCompressor(level=3, write_content_size=sized)
            stream = compressor.compressobj(size=bomb_bytes if sized else -1)
            parts = [stream.compress(chunk) for chunk in zero_chunks(bomb_bytes)]
            return b"".join([*parts, stream.flush()])

        def compress(data: np.ndarray) -> bytes:
            return zstandard.ZstdCompressor(level=3).compress(data.tobytes())

        frames = {BOMB: streamed(True), LYING: streamed(False)}
    elif installed("numcodecs"):
        import numcodecs

        def compress(data: np.ndarray) -> bytes:
            return bytes(numcodecs.Zstd(level=3).encode(data))

        frames = {BOMB: compress(np.zeros(bomb_bytes, np.uint8))}
    else:
        return {}
    frames[TRUNCATED] = truncated(compress(sample_bytes(bound)))
    frames[SHORT] = compress(sample_bytes(bound // 2))
    return frames


def _lz4_block_frames(bomb_bytes: int, bound: int) -> dict[str, dict[str, bytes]]:
    """Frames of the format with a 4-byte size prefix (numcodecs LZ4, and ``lz4.block`` with
    ``store_size``), and of raw blocks (the prefix removed: nothing claims a size)."""
    if installed("lz4"):
        import lz4.block

        def compress(data: np.ndarray) -> bytes:
            return bytes(lz4.block.compress(data, store_size=True))
    elif installed("numcodecs"):
        import numcodecs

        def compress(data: np.ndarray) -> bytes:
            return bytes(numcodecs.LZ4().encode(data))
    else:
        return {}
    bomb = compress(np.zeros(bomb_bytes, np.uint8))
    whole, short = compress(sample_bytes(bound)), compress(sample_bytes(bound // 2))
    prefixed = {
        BOMB: bomb,
        LYING: with_size_field(bomb, 0, bound),
        TRUNCATED: truncated(whole),
        SHORT: short,
    }
    raw = {BOMB: bomb[4:], TRUNCATED: truncated(whole[4:]), SHORT: short[4:]}
    return {"lz4 block, size prefix": prefixed, "lz4 block": raw}


def _lz4_frame_frames(bomb_bytes: int, bound: int) -> dict[str, bytes]:
    """Streamed, with and without a content size."""
    if not installed("lz4"):
        return {}
    import lz4.frame

    def streamed(sized: bool) -> bytes:
        with lz4.frame.LZ4FrameCompressor() as compressor:
            parts = [compressor.begin(source_size=bomb_bytes if sized else 0)]
            parts += [compressor.compress(chunk) for chunk in zero_chunks(bomb_bytes)]
            parts.append(compressor.flush())
        return b"".join(parts)

    return {
        BOMB: streamed(True),
        LYING: streamed(False),
        TRUNCATED: truncated(bytes(lz4.frame.compress(sample_bytes(bound)))),
        SHORT: bytes(lz4.frame.compress(sample_bytes(bound // 2))),
    }


def _blosc_frames(
    encode: Callable[[np.ndarray], bytes], bomb_bytes: int, bound: int
) -> dict[str, bytes]:
    """blosc's ``nbytes`` is the 4-byte field at offset 4 of the header, in both versions."""
    bomb = encode(np.zeros(bomb_bytes, np.uint8))
    return {
        BOMB: bomb,
        LYING: with_size_field(bomb, 4, bound),
        TRUNCATED: truncated(encode(sample_bytes(bound))),
        SHORT: encode(sample_bytes(bound // 2)),
    }


def truncated(frame: bytes) -> bytes:
    """The first half of ``frame``."""
    return frame[: len(frame) // 2]


def hostile_frames(bomb_bytes: int, bound: int) -> dict[str, dict[str, bytes]]:
    """Every format's frames of each kind (see the module's docstring), by format and kind."""
    frames = {"zstd": _zstd_frames(bomb_bytes, bound), **_lz4_block_frames(bomb_bytes, bound)}
    frames["lz4 frame"] = _lz4_frame_frames(bomb_bytes, bound)
    if installed("numcodecs"):
        import numcodecs

        blosc = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
        frames["blosc1"] = _blosc_frames(lambda data: bytes(blosc.encode(data)), bomb_bytes, bound)
    if installed("blosc2"):
        import blosc2

        def encode(data: np.ndarray) -> bytes:
            return bytes(blosc2.compress2(data, codec=blosc2.Codec.ZSTD, clevel=5, typesize=1))

        frames["blosc2"] = _blosc_frames(encode, bomb_bytes, bound)
    return {name: kinds for name, kinds in frames.items() if kinds}


# -- one trial in a child --------------------------------------------------------------------
def memory_status() -> dict[str, int]:
    """This process's ``VmHWM`` and ``VmPeak`` in bytes."""
    found = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmPeak"):
                found[key] = int(value.split()[0]) << 10
    return found


def describe(returned: object, out: np.ndarray) -> str:
    """What a call returned, and how much of ``out`` it wrote (``out`` held :data:`SENTINEL`
    before: the count is up to the last byte that changed)."""
    changed = np.flatnonzero(out != SENTINEL)
    wrote = (
        f"; out written up to byte {int(changed[-1]) + 1:,} of {out.nbytes:,}"
        if len(changed)
        else ""
    )
    if isinstance(returned, (bytes, bytearray, memoryview)):
        return f"returned {len(returned):,} bytes{wrote}"
    if isinstance(returned, np.ndarray):
        return f"returned an array of {returned.nbytes:,} bytes{wrote}"
    return f"returned {returned!r}{wrote}"


def trial(library: str, api_name: str, frame: bytes, bound: int) -> dict[str, Any]:
    """Run the call ``api_name`` of ``library`` once on ``frame`` into a buffer of ``bound``
    bytes: what happened, the growth of ``VmHWM`` and ``VmPeak``, and the seconds."""
    api = apis([library])[api_name]
    out = np.full(bound, SENTINEL, dtype=np.uint8)
    before = memory_status()
    start = time.perf_counter()
    try:
        returned = api.run(frame, out)
    except Exception as error:
        outcome, message = "raised", f"{type(error).__name__}: {error}"
    else:
        outcome, message = "returned", describe(returned, out)
    seconds = time.perf_counter() - start
    after = memory_status()
    growth = {key: after[key] - before[key] for key in before}
    return {"outcome": outcome, "message": message, "seconds": seconds, **growth}


def child() -> None:
    """A trial's process: its arguments pickled on stdin, its record as JSON on stdout."""
    library, api_name, frame, bound = pickle.load(sys.stdin.buffer)
    json.dump(trial(library, api_name, frame, bound), sys.stdout)


def run_trial(api: Api, kind: str, frame: bytes, bound: int) -> dict[str, Any]:
    """:func:`trial` in a new interpreter that imports numpy and the call's library only; a
    child killed by a signal, or after :data:`TRIAL_TIMEOUT`, is ``crashed``."""
    command = [sys.executable, "-c", "from benchmarks.codec_hostile import child; child()"]
    arguments = pickle.dumps((api.library, api.name, frame, bound))
    record: dict[str, Any] = {"outcome": "crashed", "seconds": None}
    try:
        done = subprocess.run(
            command,
            input=arguments,
            capture_output=True,
            cwd=REPO,
            timeout=TRIAL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        record["message"] = f"killed after {TRIAL_TIMEOUT:.0f} s"
    else:
        if done.returncode == 0:
            record = json.loads(done.stdout)
        elif done.returncode < 0:
            record["message"] = f"killed by {signal.Signals(-done.returncode).name}"
        else:
            record["message"] = (
                f"exit code {done.returncode}: {done.stderr.decode(errors='replace')[-200:]}"
            )
    return {
        "api": api.name,
        "call": api.call,
        "format": api.format,
        "bounded": api.bounded,
        "kind": kind,
        "frame_bytes": len(frame),
        **record,
    }


def trials(bomb_bytes: int, bound: int, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every call on every frame it takes (bounded calls on each kind, unbounded ones on the
    bomb), two trials at a time: each measures its own process only."""
    frames = hostile_frames(bomb_bytes, bound)
    order = {kind: index for index, kind in enumerate(KINDS)}
    jobs = [
        (api, kind, frame)
        for api in apis().values()
        for kind, frame in sorted(
            frames.get(api.format, {}).items(), key=lambda item: order[item[0]]
        )
        if api.bounded or kind == BOMB
    ]
    progress(f"hostile frames: {len(jobs)} trials")
    with ThreadPoolExecutor(PARALLEL_TRIALS) as pool:
        return list(pool.map(lambda job: run_trial(job[0], job[1], job[2], bound), jobs))
