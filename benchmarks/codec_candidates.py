"""The codec implementations :mod:`benchmarks.codecs` measures.

A :class:`Candidate` is one library's codec with fixed parameters. Its :class:`Codec` holds the
two calls memshard would make: ``compress(block) -> frame`` and ``decompress_into(frame, out)``,
which fills ``out`` (a C-contiguous uint8 array of exactly the block's bytes) and raises
:class:`FrameSizeError` if the frame claims or decodes to anything else. Each candidate
decompresses the way its library allows: straight into ``out`` where the library takes an
output buffer (``out=``, ``dst=``, ``readinto``), else through the bytes it returns, copied
into ``out``; where the library's own call cannot be trusted with a bound (see
:mod:`benchmarks.codec_hostile`), the candidate reads the size the frame header claims first
and refuses a frame that claims another size. The timed path is the safe path.

Only the libraries installed are offered: numcodecs (zarr's codecs), python-blosc2, zstandard
(python-zstandard) and lz4 (python-lz4); each is imported inside the function that uses it.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Blosc's compression level for every blosc candidate (both libraries' default). Blosc gives
#: zstd the level ``2 * clevel - 1``: 9 here.
BLOSC_LEVEL = 5
#: Bytes of the dictionary a zstandard candidate trains, and the most sample bytes it trains on.
DICT_BYTES = 64 << 10
DICT_SAMPLE_BYTES = 4 << 20
#: Families of codec: what memshard would name in a manifest.
FAMILIES = ("zstd", "lz4", "blosc")
#: Parameters of a blosc candidate, by the codec inside.
BLOSC_PARAMS = {
    "zstd": f"clevel {BLOSC_LEVEL} (zstd level {2 * BLOSC_LEVEL - 1}), typesize = itemsize",
    "lz4": f"clevel {BLOSC_LEVEL}, typesize = itemsize",
}

Make = Callable[[Sequence[bytes]], "Codec"]


class FrameSizeError(ValueError):
    """A frame claims, or decodes to, another size than its block's."""


@dataclass(frozen=True)
class Codec:
    """A candidate's two calls, ready to use (any dictionary already trained)."""

    compress: Callable[[np.ndarray], bytes]
    decompress_into: Callable[[bytes, np.ndarray], None]


def no_switches() -> None:
    """The ``activate`` of a candidate whose library has no process-wide switch."""


@dataclass(frozen=True)
class Candidate:
    """One library's codec with fixed parameters.

    ``make(samples)`` returns its :class:`Codec`; only a candidate with a dictionary uses
    ``samples`` (blocks of the workload's training rows). ``activate()`` sets the library's
    process-wide switches before the candidate is measured. ``api`` names the library's bounded
    call (a :class:`benchmarks.codec_hostile.Api`) that its ``decompress_into`` makes. ``key``
    names the codec and parameters (``"zstd 3"``, ``"blosc lz4+shuffle"``): candidates of one
    key from different libraries write the same kind of data, and are compared.
    """

    name: str
    family: str
    key: str
    library: str
    params: str
    into: bool
    decompress_call: str
    api: str
    make: Make
    activate: Callable[[], None] = no_switches
    note: str = ""


def installed(module: str) -> bool:
    """Whether ``module`` can be imported."""
    return importlib.util.find_spec(module) is not None


def copy_into(data: bytes, out: np.ndarray) -> None:
    """Copy ``data`` into ``out``, refusing any other size."""
    if len(data) != out.nbytes:
        raise FrameSizeError(f"frame decoded to {len(data)} bytes, expected {out.nbytes}")
    out[...] = np.frombuffer(data, dtype=np.uint8)


def check_claim(claimed: int, out: np.ndarray) -> None:
    """Refuse a frame whose header claims another size than ``out``'s."""
    if claimed != out.nbytes:
        raise FrameSizeError(f"frame header claims {claimed} bytes, expected {out.nbytes}")


def per_thread(factory: Callable[[], Any]) -> Callable[[], Any]:
    """A function returning this thread's instance of ``factory()``, made at its first call."""
    local = threading.local()

    def instance() -> Any:
        if not hasattr(local, "value"):
            local.value = factory()
        return local.value

    return instance


# -- numcodecs -------------------------------------------------------------------------------
def numcodecs_make(codec: Any) -> Make:
    """The :class:`Codec` of a numcodecs codec: ``encode``, and ``decode`` into ``out``."""

    def decompress_into(frame: bytes, out: np.ndarray) -> None:
        codec.decode(frame, out=out)

    return lambda _: Codec(codec.encode, decompress_into)


def numcodecs_candidates() -> list[Candidate]:
    """numcodecs Zstd (levels 1, 3), LZ4 and Blosc (zstd/lz4, byte/bit shuffle)."""
    if not installed("numcodecs"):
        return []
    import numcodecs
    from numcodecs import blosc

    library = f"numcodecs {numcodecs.__version__}"

    def single_threaded_blosc() -> None:
        # Blosc's own threads would make a single-thread figure two-thread on two cores; the
        # context calls (one blosc thread) are what a multi-threaded reader gets anyway.
        blosc.use_threads = False

    found = [
        Candidate(
            name=f"numcodecs Zstd({level})", family="zstd", key=f"zstd {level}",
            library=library, params=f"level {level}", into=True,
            decompress_call="Zstd(level).decode(frame, out=out)",
            api="numcodecs Zstd decode(out=)", make=numcodecs_make(numcodecs.Zstd(level=level)),
        )
        for level in (1, 3)
    ]  # fmt: skip
    found.append(
        Candidate(
            name="numcodecs LZ4", family="lz4", key="lz4", library=library,
            params="acceleration 1", into=True, decompress_call="LZ4().decode(frame, out=out)",
            api="numcodecs LZ4 decode(out=)", make=numcodecs_make(numcodecs.LZ4()),
        )
    )  # fmt: skip
    for shuffle, flag in (("shuffle", blosc.SHUFFLE), ("bitshuffle", blosc.BITSHUFFLE)):
        for cname in ("zstd", "lz4"):
            codec = numcodecs.Blosc(cname=cname, clevel=BLOSC_LEVEL, shuffle=flag)
            found.append(
                Candidate(
                    name=f"numcodecs Blosc {cname}+{shuffle}", family="blosc",
                    key=f"blosc {cname}+{shuffle}", library=library,
                    params=f"c-blosc {blosc.VERSION_STRING}, {BLOSC_PARAMS[cname]}", into=True,
                    decompress_call="Blosc(...).decode(frame, out=out)",
                    api="numcodecs Blosc decode(out=)", make=numcodecs_make(codec),
                    activate=single_threaded_blosc,
                    note="numcodecs.blosc.use_threads = False (context calls, one blosc thread)",
                )
            )  # fmt: skip
    return found


# -- blosc2 ----------------------------------------------------------------------------------
def blosc2_make(codec: Any, shuffle: Any) -> Make:
    """``compress2`` of one thread, and ``decompress2`` into ``out`` after checking the
    header: ``decompress2`` writes as many bytes as the header claims, whatever the size of
    ``dst`` (a larger claim overruns it)."""
    import blosc2

    def compress(block: np.ndarray) -> bytes:
        return bytes(
            blosc2.compress2(
                block, codec=codec, clevel=BLOSC_LEVEL, filters=[shuffle],
                typesize=block.itemsize, nthreads=1,
            )
        )  # fmt: skip

    def decompress_into(frame: bytes, out: np.ndarray) -> None:
        nbytes, cbytes, _ = blosc2.get_cbuffer_sizes(frame)
        check_claim(nbytes, out)
        if cbytes != len(frame):
            raise FrameSizeError(f"frame header claims {cbytes} compressed bytes, has {len(frame)}")
        blosc2.decompress2(frame, dst=out)

    return lambda _: Codec(compress, decompress_into)


def blosc2_candidates() -> list[Candidate]:
    """python-blosc2 ``compress2``/``decompress2`` (zstd/lz4, byte/bit shuffle) with the GIL
    released, and zstd+shuffle with the GIL held (the library's default)."""
    if not installed("blosc2"):
        return []
    import blosc2

    library = f"blosc2 {blosc2.__version__} (c-blosc2 {blosc2.VERSION_STRING})"
    call = "get_cbuffer_sizes(frame) checked, then decompress2(frame, dst=out)"

    def switches(release: bool) -> Callable[[], None]:
        def activate() -> None:
            blosc2.set_nthreads(1)
            blosc2.set_releasegil(release)

        return activate

    def candidate(name: str, cname: str, shuffle: str, release: bool, note: str) -> Candidate:
        codec = {"zstd": blosc2.Codec.ZSTD, "lz4": blosc2.Codec.LZ4}[cname]
        flag = {"shuffle": blosc2.Filter.SHUFFLE, "bitshuffle": blosc2.Filter.BITSHUFFLE}[shuffle]
        return Candidate(
            name=name, family="blosc", key=f"blosc {cname}+{shuffle}", library=library,
            params=f"{BLOSC_PARAMS[cname]}, nthreads 1", into=True, decompress_call=call,
            api="blosc2 decompress2(dst=)", make=blosc2_make(codec, flag),
            activate=switches(release), note=note,
        )  # fmt: skip

    released = "blosc2.set_releasegil(True) (process-wide; the default holds the GIL)"
    found = [
        candidate(f"blosc2 {cname}+{shuffle}", cname, shuffle, True, released)
        for shuffle in ("shuffle", "bitshuffle")
        for cname in ("zstd", "lz4")
    ]
    held = "the library's default, set_releasegil(False)"
    return [*found, candidate("blosc2 zstd+shuffle, GIL held", "zstd", "shuffle", False, held)]


# -- zstandard -------------------------------------------------------------------------------
def training_samples(samples: Sequence[bytes]) -> list[bytes]:
    """The first ``samples`` up to :data:`DICT_SAMPLE_BYTES` in all."""
    kept, total = [], 0
    for sample in samples:
        total += len(sample)
        if total > DICT_SAMPLE_BYTES:
            break
        kept.append(sample)
    return kept


def zstandard_one_shot(level: int, dict_bytes: int = 0) -> Make:
    """``compress``, and ``decompress`` after checking ``frame_content_size`` (``decompress``
    allocates what the header claims, ``max_output_size`` or not), copied into ``out``; with a
    dictionary of ``dict_bytes`` trained on the samples if ``dict_bytes``."""
    import zstandard

    def make(samples: Sequence[bytes]) -> Codec:
        words = None
        if dict_bytes:
            kept: list[bytes | bytearray | memoryview] = [*training_samples(samples)]
            words = zstandard.train_dictionary(dict_bytes, kept)
        compressor = zstandard.ZstdCompressor(level=level, dict_data=words)
        # A ZstdDecompressor is not thread-safe: one per thread.
        decompressor = per_thread(lambda: zstandard.ZstdDecompressor(dict_data=words))

        def decompress_into(frame: bytes, out: np.ndarray) -> None:
            check_claim(zstandard.frame_content_size(frame), out)
            copy_into(decompressor().decompress(frame), out)

        return Codec(lambda block: compressor.compress(block.data), decompress_into)

    return make


def zstandard_readinto(level: int) -> Make:
    """``compress``, and ``stream_reader(frame).readinto(out)``, which stops at ``out``'s end:
    a frame is refused unless it filled ``out`` and has nothing left."""
    import zstandard

    def make(_: Sequence[bytes]) -> Codec:
        compressor = zstandard.ZstdCompressor(level=level)
        decompressor = per_thread(zstandard.ZstdDecompressor)

        def decompress_into(frame: bytes, out: np.ndarray) -> None:
            reader = decompressor().stream_reader(frame)
            if reader.readinto(out) != out.nbytes or reader.read(1):
                raise FrameSizeError(f"frame does not decode to {out.nbytes} bytes")

        return Codec(lambda block: compressor.compress(block.data), decompress_into)

    return make


def zstandard_candidates() -> list[Candidate]:
    """python-zstandard levels 1 and 3, one-shot and ``readinto``, and level 3 with a
    dictionary trained on the workload."""
    if not installed("zstandard"):
        return []
    import zstandard

    library = (
        f"zstandard {zstandard.__version__} (zstd {'.'.join(map(str, zstandard.ZSTD_VERSION))})"
    )
    one_shot = "frame_content_size(frame) checked, then decompress(frame), copied"
    bounded = "zstandard decompress(max_output_size=)"
    found = []
    for level in (1, 3):
        found.append(
            Candidate(
                name=f"zstandard L{level}", family="zstd", key=f"zstd {level}", library=library,
                params=f"level {level}", into=False, decompress_call=one_shot, api=bounded,
                make=zstandard_one_shot(level),
            )
        )  # fmt: skip
        found.append(
            Candidate(
                name=f"zstandard L{level} readinto", family="zstd", key=f"zstd {level}",
                library=library, params=f"level {level}", into=True,
                decompress_call="stream_reader(frame).readinto(out); read(1) must be empty",
                api="zstandard stream_reader().readinto()", make=zstandard_readinto(level),
            )
        )  # fmt: skip
    trained = (
        f"level 3, {DICT_BYTES >> 10} KiB dictionary trained on up to "
        f"{DICT_SAMPLE_BYTES >> 20} MiB of training blocks"
    )
    found.append(
        Candidate(
            name="zstandard L3 + dictionary", family="zstd", key="zstd 3 + dictionary",
            library=library, params=trained, into=False, decompress_call=one_shot, api=bounded,
            make=zstandard_one_shot(3, DICT_BYTES),
            note="the dictionary would be stored once per field",
        )
    )  # fmt: skip
    return found


# -- lz4 -------------------------------------------------------------------------------------
def lz4_block(_: Sequence[bytes]) -> Codec:
    """Raw lz4 blocks (no size prefix): the reader passes the block's size as the bound."""
    import lz4.block

    def compress(block: np.ndarray) -> bytes:
        return bytes(lz4.block.compress(block, store_size=False))

    def decompress_into(frame: bytes, out: np.ndarray) -> None:
        copy_into(lz4.block.decompress(frame, uncompressed_size=out.nbytes), out)

    return Codec(compress, decompress_into)


def lz4_frame(_: Sequence[bytes]) -> Codec:
    """lz4 frames, decompressed up to ``out``'s size; a frame not finished by then is refused."""
    import lz4.frame

    def compress(block: np.ndarray) -> bytes:
        return bytes(lz4.frame.compress(block, store_size=True))

    def decompress_into(frame: bytes, out: np.ndarray) -> None:
        decompressor = lz4.frame.LZ4FrameDecompressor()
        data = decompressor.decompress(frame, max_length=out.nbytes)
        if not decompressor.eof:
            raise FrameSizeError(f"frame does not end within {out.nbytes} bytes")
        copy_into(data, out)

    return Codec(compress, decompress_into)


def lz4_candidates() -> list[Candidate]:
    """python-lz4 block and frame."""
    if not installed("lz4"):
        return []
    import lz4

    library = f"lz4 {lz4.__version__} (liblz4 {lz4.library_version_string()})"
    return [
        Candidate(
            name="lz4.block", family="lz4", key="lz4", library=library,
            params="acceleration 1, store_size=False", into=False,
            decompress_call="lz4.block.decompress(frame, uncompressed_size=n), copied",
            api="lz4.block decompress(uncompressed_size=)", make=lz4_block,
        ),
        Candidate(
            name="lz4.frame", family="lz4", key="lz4", library=library,
            params="level 0, store_size=True", into=False,
            decompress_call="LZ4FrameDecompressor().decompress(frame, max_length=n), eof "
            "checked, copied",
            api="lz4.frame LZ4FrameDecompressor.decompress(max_length=)", make=lz4_frame,
        ),
    ]  # fmt: skip


def candidates() -> list[Candidate]:
    """Every candidate whose library is installed."""
    return [
        *numcodecs_candidates(),
        *blosc2_candidates(),
        *zstandard_candidates(),
        *lz4_candidates(),
    ]
