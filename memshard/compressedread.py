"""Reading a compressed field: each shard's values file (the frames of its blocks) and offsets
file mapped as a ragged field's are (:class:`~memshard.raggedread.RaggedLayout`), the offsets
checked once per snapshot, and every block a read touches decompressed once, straight into the
rows' place in the output when the block is one row of it, grouped by shard, in parallel
threads for large gathers. Rows are always copies: there is no zero-copy view of a compressed
row.

A block's size follows from its rows (a fixed field: rows times the row bytes; a ragged one:
its element ends), so a frame that claims or inflates to anything else is a
:class:`~memshard.errors.BlockError` before any memory past the block's is written; and its
claim is checked before memory is allocated for the block (or for a gather of ragged rows), so
element ends that lie about a row's size cost no memory.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .blockcodec import BlockCodec, is_stored
from .blockindex import Blocks, blocks_of
from .errors import BlockError, ShardDataError
from .indexing import project_indices
from .manifest import FieldSpec, Shard
from .mappings import check_shard_file
from .pagecache import advise_ranges, page_aligned_empty
from .ragged import Allocator, Ragged, allocate, offsets_in_order
from .raggedread import RaggedLayout, _positions
from .shardtable import Shards

#: Most threads a gather decompresses with by default (fewer on a machine with fewer CPUs).
DEFAULT_THREADS = 4
#: A gather uses threads only when it decompresses at least this many blocks ...
PARALLEL_MIN_BLOCKS = 4
#: ... of at least this many bytes together (below, handing blocks to threads costs more than
#: it saves).
PARALLEL_MIN_BYTES = 1 << 20


def default_threads() -> int:
    """The threads a gather decompresses with when not told: the CPUs this process may use,
    at most :data:`DEFAULT_THREADS`."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(DEFAULT_THREADS, usable or 1))


class CompressedLayout(RaggedLayout):
    """Where the rows of one compressed field are (fixed or ragged): one segment per shard.

    For a ragged field it reads as :class:`~memshard.raggedread.RaggedLayout` does (rows,
    runs, gathers, lengths), decompressing; a fixed field's rows come from :meth:`take`.
    """

    def __init__(
        self, root: str, name: str, spec: FieldSpec, shards: Shards, lengths: np.ndarray
    ) -> None:
        super().__init__(root, name, spec, shards, lengths)
        assert spec.codec is not None
        self.codec = BlockCodec.of(spec.codec.name, spec.codec.params, spec.numpy_dtype.itemsize)
        self._blocks: dict[int, Blocks] = {}
        self._stored: dict[int, np.ndarray] = {}  # which blocks are stored, by shard (fixed)
        self._last: tuple[int, int, np.ndarray] | None = None  # the block :meth:`row` read last

    # -- one shard's files ---------------------------------------------------------------------
    def _check(self, shard: int, record: Shard, offsets: np.ndarray) -> None:
        file = record.files[self.name]
        full = self._lengths[shard] == record.rows
        path = f"{self.root}/{file.offsets_path}"
        ends = self._block_ends(offsets)
        if not offsets_in_order(ends, file.nbytes, whole=full):
            if int(ends[-1]) != file.nbytes:  # the values file may be what disagrees
                check_shard_file(self.root, self.spec.values, self._files[shard].values)
            raise ShardDataError(
                f"{path}: the block ends of field {self.name!r} must start at 0, never "
                f"decrease and end at its {file.nbytes} bytes of frames; they start at "
                f"{int(ends[0])} and end at {int(ends[-1])} (damaged file)"
            )
        if self.spec.ragged:
            elements = offsets[:, 0]
            if not offsets_in_order(elements, int(elements[-1]), whole=True):
                raise ShardDataError(
                    f"{path}: the element ends of field {self.name!r} must start at 0 and "
                    "never decrease (damaged file)"
                )
        if full:
            self._check_checksum(record, offsets)

    def _block_ends(self, offsets: np.ndarray) -> np.ndarray:
        ends: np.ndarray = offsets[:, 1] if self.spec.ragged else offsets
        return ends

    def blocks(self, shard: int) -> Blocks:
        """The blocks of the visible rows of ``shard``."""
        blocks = self._blocks.get(shard)
        if blocks is None:
            blocks = self._blocks[shard] = blocks_of(self._block_ends(self.offsets(shard)))
        return blocks

    def stored_blocks(self, shard: int) -> np.ndarray:
        """Which blocks of ``shard`` are stored (bytes as they are, not frames: see
        :func:`memshard.blockcodec.is_stored`), a bool per block; a ragged field's are found
        one at a time, as they are read."""
        stored = self._stored.get(shard)
        if stored is None:
            blocks = self.blocks(shard)
            size = self.spec.row_bytes
            raw = (blocks.stop_rows - blocks.first_rows) * size
            stored = (blocks.byte_ends - blocks.byte_starts == raw) & (raw > 0)
            self._stored[shard] = stored
        return stored

    def _element_ends(self, shard: int) -> np.ndarray:
        """A ragged field's element ends of the visible rows of ``shard`` (``rows + 1``)."""
        ends: np.ndarray = self.offsets(shard)[:, 0]
        return ends

    # -- decompressing -------------------------------------------------------------------------
    def _task(
        self,
        shard: int,
        block: int,
        blocks: Blocks,
        direct: np.ndarray | None = None,
        copies: tuple[np.ndarray, int | None, list[Any]] | None = None,
    ) -> _Task:
        """Block ``block`` of ``shard`` to decompress, its frame and size found now (in the
        calling thread: the mapping cache is not thread-safe)."""
        frames = self._frames(shard)
        first, stop = int(blocks.first_rows[block]), int(blocks.stop_rows[block])
        if self.spec.ragged:
            ends = self._element_ends(shard)
            nbytes = (int(ends[stop]) - int(ends[first])) * self.spec.row_bytes
        else:
            nbytes = (stop - first) * self.spec.row_bytes
        frame = frames(int(blocks.byte_starts[block]), int(blocks.byte_ends[block]))
        return _Task(self.codec, frame, nbytes, (self, shard, block, first, stop), direct, copies)

    def _frames(self, shard: int) -> Callable[[int, int], memoryview]:
        """``(start, stop) -> the bytes of the values file of shard`` from ``start`` to
        ``stop``: a view of its mapping, or bytes read when it cannot be mapped now."""
        values = self.values(shard)
        if values is None:
            return lambda start, stop: self.read_values(shard, start, stop).data.cast("B")
        whole = values.data.cast("B") if values.size else memoryview(b"")
        return lambda start, stop: whole[start:stop]

    def describe(self, shard: int, block: int, first: int, stop: int) -> str:
        """Where block ``block`` of ``shard`` is, for an error message."""
        path = self._shards[shard].files[self.name].path
        return (
            f"{self.root}/{path}: field {self.name!r}, block {block} (rows {first} to "
            f"{stop - 1} of the shard)"
        )

    def decompressed(self, shard: int, block: int) -> np.ndarray:
        """Block ``block`` of ``shard``, decompressed into new bytes; the block of the last
        call is kept, so a loop over rows decompresses each block once."""
        last = self._last
        if last is not None and last[0] == shard and last[1] == block:
            return last[2]
        task = self._task(shard, block, self.blocks(shard))
        task.check_claim()
        data = np.empty(task.nbytes, dtype=np.uint8)
        task.decompress(data.data)
        self._last = (shard, block, data)
        return data

    # -- reading rows --------------------------------------------------------------------------
    def fixed_row(self, row: int) -> Any:
        """Row ``row`` (in range) of a fixed field: a new array, or a numpy scalar for a
        field of scalars (as numpy indexes)."""
        shard, local = self._locate(row)
        blocks = self.blocks(shard)
        block = int(blocks.of_rows(np.array([local]))[0])
        element = self.spec.element
        if blocks.stop_rows[block] - blocks.first_rows[block] == 1:  # no block worth keeping
            result = np.empty(element.shape, dtype=element.numpy_dtype)
            target = result.reshape(-1).view(np.uint8)
            self._task(shard, block, blocks).decompress(target.data)
            return result[()] if not element.shape else result
        data = self.decompressed(shard, block)
        size = self.spec.row_bytes
        at = (local - int(blocks.first_rows[block])) * size
        found = data[at : at + size].view(element.numpy_dtype).reshape(element.shape).copy()
        return found[()] if not element.shape else found

    def row(self, row: int) -> np.ndarray:
        """Row ``row`` (in range) of a ragged field, a new array of shape ``(n, *tail)``."""
        shard, local = self._locate(row)
        blocks = self.blocks(shard)
        block = int(blocks.of_rows(np.array([local]))[0])
        data = self.decompressed(shard, block)
        ends = self._element_ends(shard)
        base = int(ends[int(blocks.first_rows[block])])
        start, stop = int(ends[local]) - base, int(ends[local + 1]) - base
        size = self.spec.row_bytes
        values: np.ndarray = data[start * size : stop * size].view(self.spec.numpy_dtype)
        found: np.ndarray = values.reshape(stop - start, *self.spec.shape).copy()
        return found

    def run(self, start: int, stop: int) -> Ragged:
        """Rows ``start:stop`` of a ragged field (in range), packed into a new buffer."""
        return self.gather(np.arange(start, stop, dtype=np.int64))

    def _locate(self, row: int) -> tuple[int, int]:
        shard = self.table.segment_of(row)
        return shard, row - self.starts[shard]

    def take(self, indices: np.ndarray, out: np.ndarray | None, threads: int | None) -> np.ndarray:
        """Rows ``indices`` (1-d, in range) of a fixed field, in request order, in ``out``
        (checked by the caller) or a new page-aligned array."""
        count = indices.size
        element = self.spec.element
        if out is None:
            out = page_aligned_empty((count, *element.shape), element.numpy_dtype)
        target = out.reshape(count, -1).view(np.uint8) if count else out
        tasks = []
        for shard, local, positions in project_indices(indices, self.table):
            tasks += self._fixed_tasks(shard, local, positions, target)
        self._run(tasks, threads)
        return out

    def _fixed_tasks(
        self, shard: int, local: np.ndarray, places: np.ndarray | slice, target: np.ndarray
    ) -> list[_Task]:
        """The blocks of rows ``local`` of ``shard`` (going to rows ``places`` of ``target``),
        each to decompress once: straight into the output when it is one row asked for once,
        else into new bytes copied from. Rows of stored blocks are copied at once instead."""
        blocks = self.blocks(shard)
        left = self._copy_stored_rows(shard, blocks, np.asarray(local), places, target)
        if left is None:
            return []
        local, of_rows, positions = left
        sizes = (blocks.stop_rows - blocks.first_rows)[of_rows]
        asked = np.bincount(of_rows, minlength=len(blocks.first_rows))[of_rows]
        direct = (sizes == 1) & (asked == 1)
        frames = self._frames(shard)
        size = self.spec.row_bytes
        tasks = [
            _Task(
                self.codec, frames(int(blocks.byte_starts[b]), int(blocks.byte_ends[b])), size,
                (self, shard, b, int(blocks.first_rows[b]), int(blocks.stop_rows[b])),
                target[p], None,
            )
            for b, p in zip(of_rows[direct].tolist(), positions[direct].tolist(), strict=True)
        ]  # fmt: skip
        if direct.all():
            return tasks
        rest = ~direct
        shared = of_rows[rest]
        order = np.argsort(shared, kind="stable")
        touched, starts = np.unique(shared[order], return_index=True)
        wanted = (local[rest] - blocks.first_rows[shared])[order] * size
        destinations = positions[rest][order]
        bounds = [*starts.tolist(), len(order)]
        for at, block in enumerate(touched.tolist()):
            group = slice(bounds[at], bounds[at + 1])
            copies = list(zip(destinations[group].tolist(), wanted[group].tolist(), strict=True))
            tasks.append(self._task(shard, block, blocks, copies=(target, size, copies)))
        return tasks

    def _copy_stored_rows(
        self,
        shard: int,
        blocks: Blocks,
        local: np.ndarray,
        places: np.ndarray | slice,
        target: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Copy the rows ``local`` of ``shard`` that are in stored blocks to their ``places``
        in ``target``, as uncompressed rows are copied (there is nothing to decompress); give
        back the others, with their blocks and places, or None if none is left. Nothing is
        copied here when the values file cannot be mapped now."""
        stored = self.stored_blocks(shard)
        values = self.values(shard) if stored.any() else None
        size = self.spec.row_bytes
        data = values.reshape(-1).view(np.uint8) if values is not None else None
        if data is not None and stored.all():  # the values are the rows' bytes
            source = data[: int(blocks.byte_ends[-1])].reshape(-1, size)
            if isinstance(places, slice):  # a run of the output: no temporary copy
                np.take(source, local, axis=0, out=target[places], mode="clip")
            else:
                target[places] = source[local]
            return None
        of_rows = blocks.of_rows(local)
        positions = _positions(places, len(target))
        in_stored = stored[of_rows]
        if data is None or not in_stored.any():
            return local, of_rows, positions
        # Every byte starts a row of ``size`` bytes in this view, so the byte start of a row
        # indexes it wherever its block starts.
        starts = np.lib.stride_tricks.as_strided(
            data, (data.size - size + 1, size), (1, 1), writeable=False
        )
        chosen = of_rows[in_stored]
        first = blocks.byte_starts[chosen] + (local[in_stored] - blocks.first_rows[chosen]) * size
        target[positions[in_stored]] = starts[first]
        kept = ~in_stored
        if not kept.any():
            return None
        return local[kept], of_rows[kept], positions[kept]

    def gather(self, indices: np.ndarray, empty: Allocator | None = None) -> Ragged:
        """Rows ``indices`` (1-d, in range) of a ragged field, packed into one new buffer in
        request order (``empty`` makes it, see :meth:`RaggedLayout.gather`)."""
        return self.gather_ragged(indices, empty, None)

    def gather_ragged(
        self, indices: np.ndarray, empty: Allocator | None, threads: int | None
    ) -> Ragged:
        """:meth:`gather`, decompressing with ``threads`` threads (None: the default)."""
        count = indices.size
        lengths = np.zeros(count, dtype=np.int64)
        pieces = []
        for shard, local, positions in project_indices(indices, self.table):
            ends = self._element_ends(shard)
            lengths[positions] = ends[local + 1] - ends[local]
            pieces.append((shard, np.asarray(local), _positions(positions, count)))
        out_offsets = np.zeros(count + 1, dtype=np.int64)
        np.cumsum(lengths, out=out_offsets[1:])
        size = self.spec.row_bytes
        tasks, copied = [], []
        for shard, local, positions in pieces:
            blocks = self.blocks(shard)
            ends = self._element_ends(shard)
            of_rows = blocks.of_rows(local)
            for block in np.unique(of_rows).tolist():
                chosen = of_rows == block
                base = int(ends[int(blocks.first_rows[block])])
                rows = local[chosen]
                copies = list(
                    zip(
                        (out_offsets[positions[chosen]] * size).tolist(),
                        ((ends[rows] - base) * size).tolist(),
                        ((ends[rows + 1] - ends[rows]) * size).tolist(),
                        strict=True,
                    )
                )
                task = self._task(shard, block, blocks)
                task.check_claim()  # element ends that lie about a size cost no memory
                tasks.append(task)
                copied.append(copies)
        out = allocate(
            empty or page_aligned_empty,
            (int(out_offsets[-1]), *self.spec.shape),
            self.spec.numpy_dtype,
            where=f"{self.root}: field {self.name!r}",
        )
        target = out.reshape(-1).view(np.uint8)
        for task, copies in zip(tasks, copied, strict=True):
            task.copies = (target, None, copies)
        self._run(tasks, threads)
        return Ragged._of(out, out_offsets)

    def _run(self, tasks: list[_Task], threads: int | None) -> None:
        workers = default_threads() if threads is None else threads
        if (
            workers > 1
            and len(tasks) >= PARALLEL_MIN_BLOCKS
            and sum(task.nbytes for task in tasks) >= PARALLEL_MIN_BYTES
        ):
            # One job per thread, each a share of the blocks: a job per block would cost the
            # pool's hand-over (tens of microseconds) as often as a block takes to decompress.
            shares = [tasks[start::workers] for start in range(workers)]
            for _ in pool(workers).map(_run_all, shares):
                pass
            return
        _run_all(tasks)

    # -- lengths and sizes ---------------------------------------------------------------------
    def length_blocks(self, block_rows: int) -> Iterator[np.ndarray]:
        """Every visible row's length (a ragged field), in row order, in new int64 arrays of
        at most ``block_rows`` rows each."""
        for shard in range(len(self._lengths)):
            ends = self._element_ends(shard)
            for start in range(0, len(ends) - 1, block_rows):
                yield np.diff(ends[start : start + block_rows + 1])

    def elements(self) -> int:
        """Elements of the visible rows (a ragged field)."""
        return sum(int(self._element_ends(shard)[-1]) for shard in range(len(self._lengths)))

    def stored_bytes(self) -> int:
        """Bytes of frames of the visible rows' blocks."""
        shards = range(len(self._lengths))
        return sum(int(self.blocks(shard).byte_ends[-1:].sum()) for shard in shards)

    def advise(self, indices: np.ndarray) -> None:
        """Ask the kernel to read the frames of the blocks of rows ``indices`` now."""
        for shard, local, _ in project_indices(indices, self.table):
            values = self.values(shard)
            if values is None or not values.size:
                continue
            blocks = self.blocks(shard)
            touched = np.unique(blocks.of_rows(np.asarray(local)))
            advise_ranges(values, blocks.byte_starts[touched], blocks.byte_ends[touched])


class _Task:
    """One block to decompress (its ``frame``, ``nbytes`` uncompressed): into ``direct`` (its
    one row's place in the output), or into new bytes from which ``copies`` go to the output:
    ``(target, row_bytes, [(position, offset)])`` for fixed rows, ``(target, None, [(target
    offset, offset, nbytes)])`` for ragged ones. Safe to run in any thread."""

    __slots__ = ("codec", "copies", "direct", "frame", "nbytes", "where")

    def __init__(
        self,
        codec: BlockCodec,
        frame: memoryview,
        nbytes: int,
        where: tuple[CompressedLayout, int, int, int, int],
        direct: np.ndarray | None,
        copies: tuple[np.ndarray, int | None, list[Any]] | None,
    ) -> None:
        self.codec, self.frame, self.nbytes, self.where = codec, frame, nbytes, where
        self.direct, self.copies = direct, copies

    def check_claim(self) -> None:
        """Refuse the frame now, before memory is allocated for the block, if its header
        claims another size than ``nbytes`` or more than it can hold.

        Raises:
            BlockError: see :meth:`memshard.blockcodec.BlockCodec.claim_problem`.
        """
        problem = self.codec.claim_problem(self.frame, self.nbytes)
        if problem is not None:
            layout, *place = self.where
            raise BlockError(f"{layout.describe(*place)}: {problem}")

    def decompress(self, out: memoryview) -> None:
        """Fill ``out`` (``nbytes``) with the block.

        Raises:
            BlockError: see :meth:`memshard.blockcodec.BlockCodec.decompress_into`.
        """
        if out.nbytes != self.nbytes:  # an out array of the wrong size: never write past it
            raise ValueError(f"a block of {self.nbytes} bytes given {out.nbytes} to fill")
        layout, *place = self.where
        self.codec.decompress_into(self.frame, out, where=lambda: layout.describe(*place))

    def __call__(self) -> None:
        if self.direct is not None:
            self.decompress(self.direct.data)
            return
        assert self.copies is not None
        if is_stored(self.frame, self.nbytes):  # its rows are copied straight from the file
            data = np.frombuffer(self.frame, dtype=np.uint8)
        else:
            data = np.empty(self.nbytes, dtype=np.uint8)
            self.decompress(data.data)
        target, size, copies = self.copies
        if size is not None:
            for position, offset in copies:
                target[position] = data[offset : offset + size]
        else:
            for at, offset, nbytes in copies:
                target[at : at + nbytes] = data[offset : offset + nbytes]


def _run_all(tasks: list[_Task]) -> None:
    for task in tasks:
        task()


_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def pool(threads: int) -> ThreadPoolExecutor:
    """This process's pool of ``threads`` decompression threads (a forked child makes its own:
    the parent's threads do not exist in it)."""
    key = (os.getpid(), threads)
    with _pools_lock:
        executor = _pools.get(key)
        if executor is None:
            executor = _pools[key] = ThreadPoolExecutor(threads, "memshard-decompress")
        return executor


def _forget_pools_after_fork() -> None:
    """In a forked child (a DataLoader worker): forget the parent's pools, whose threads do
    not exist here, and make the lock anew, since another thread of the parent may have held
    it as the process forked (it would stay held in the child, and its first threaded gather
    would wait for ever)."""
    global _pools_lock
    _pools_lock = threading.Lock()
    _pools.clear()


os.register_at_fork(after_in_child=_forget_pools_after_fork)
