"""The peers of the build benchmark: the same function over the same inputs, written by the
tools a user would reach for instead of ``ms.build``, each timed and its memory measured.

Run from the repository root::

    python -m benchmarks.build_peers --quick            # a few hundred rows (CI runs this)
    python -m benchmarks.build_peers --scale 0.1        # a tenth of the full job

The peers, each with ``--workers`` processes (default 2):

- ``litdata``: ``litdata.optimize(fn, inputs, output_dir, num_workers=N)``, read back with
  ``litdata.StreamingDataset`` (its own serialisers; chunks of 64 MB);
- ``HF datasets``: ``datasets.Dataset.from_dict({"index": ...}).map(fn, batched=True,
  batch_size=1, num_proc=N, features=...)`` (an input may give several rows), then
  ``save_to_disk``, read back with ``load_from_disk``;
- ``LMDB pool``: a hand-written ``multiprocessing.Pool(N).imap`` whose workers run the
  function and pickle each row, feeding one LMDB writer in the parent (one key per row, one
  transaction per input), read back by counting the entries.

Two jobs: ``drawings``, CPU-bound, rasterises Quick, Draw! drawings (``examples/doodles.py``:
an input is a chunk of lines of a newline-delimited JSON file, its rows a 256x256 image, the
ragged strokes, a label and an id); ``images``, I/O-bound, decodes and resizes JPEG/PNG files
(``examples/image_folder.py``: an input is one file and its class).

``benchmarks/build.py`` runs memshard itself the same way (:data:`MEMSHARD`:
``ms.build(fn, inputs, output_dir, workers=N)``, read back with ``ms.open``), in the same
run as these peers.

Each peer runs in a fresh child process (``python -m benchmarks.build_peers --child ...``),
so that its memory is its own and no import is shared. The child times the write alone (its
interpreter start and imports excluded), then counts the rows of its output with the peer's
own reader. The parent samples the child's process tree every 10 ms
(:class:`benchmarks.system.TreeSampler`): *peak RSS* is the highest sum of the resident sets
of the child and every process below it; *largest process* is ``ru_maxrss`` of the child as
``wait4`` reports it (the largest single process of the tree, as
``getrusage(RUSAGE_CHILDREN)`` counts). Figures of one run only; speed is compared with
memshard's in ``benchmarks/build.py``, in the same run.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import memshard as ms
from examples import doodles, image_folder

from . import core
from .core import Option, format_bytes, format_count, markdown, progress
from .formats.base import Unavailable, require
from .system import TreeSampler

LITDATA, HF, LMDB = "litdata", "HF datasets", "LMDB pool"
PEERS = (LITDATA, HF, LMDB)
#: memshard, run as the peers are (``benchmarks/build.py`` compares them; not in PEERS).
MEMSHARD = "memshard"
#: Rows of the full jobs; ``--scale`` takes a fraction, ``--quick`` the quick counts. A full
#: job takes several seconds of one core, so that the start of a worker process (a fresh
#: interpreter importing memshard and the function's module, measured on its own among the
#: overheads) is small against it, as in the builds the tools are for, which run for hours.
FULL_DRAWINGS, QUICK_DRAWINGS = 40_000, 200
FULL_IMAGES_PER_CLASS, QUICK_IMAGES_PER_CLASS = 3_000, 10
#: Lines of the drawings file per input, in a full run and in a quick one.
FULL_LINES_PER_CHUNK, QUICK_LINES_PER_CHUNK = 250, 25
IMAGE_SIZE = 64
#: litdata's chunks, and HF's and LMDB's batching.
LITDATA_CHUNK_BYTES = "64MB"
#: Address space LMDB may map (the file grows only as rows are written).
LMDB_MAP_SIZE = 1 << 40
INSTALL = (
    "pip install 'memshard[bench]'; litdata: pip install --no-deps litdata "
    "lightning-utilities boto3"
)
#: The exit status of a child whose peer is not installed.
UNAVAILABLE = 3

Row = dict[str, Any]
Fields = dict[str, tuple[str, tuple[int | None, ...]]]


@dataclass(frozen=True)
class Job:
    """A build: ``function(input)`` gives one row (a dict) or an iterable of rows for each of
    ``inputs``, ``rows`` rows in all, of the ``fields`` (as :func:`memshard.create` takes
    them; a shape starting with ``None`` is ragged). Picklable: ``function`` is a module-level
    function or a ``functools.partial`` of one."""

    name: str
    function: Callable[[Any], Row | Iterable[Row]]
    inputs: list[Any]
    rows: int
    fields: Fields


def rows_of(result: Row | Iterable[Row]) -> list[Row]:
    """The rows one call of a job's function gave."""
    return [result] if isinstance(result, dict) else list(result)


def drawings_job(scratch: str, drawings: int, lines_per_chunk: int) -> Job:
    """The CPU-bound job: ``drawings`` sample drawings rasterised at 256x256."""
    path = os.path.join(scratch, "drawings.ndjson")
    doodles.make_sample(path, drawings)
    return Job(
        name="drawings",
        function=partial(doodles.rows_of_chunk, words=doodles.WORDS, size=doodles.SIZE),
        inputs=doodles.chunks([path], lines_per_chunk),
        rows=drawings,
        fields=doodles.fields(doodles.SIZE),
    )


def images_job(scratch: str, per_class: int) -> Job:
    """The I/O-bound job: ``per_class`` sample JPEG/PNG files of each class decoded and
    resized to :data:`IMAGE_SIZE`."""
    root = os.path.join(scratch, "photos")
    image_folder.make_sample(root, per_class)
    inputs, _ = image_folder.images_of(root)
    return Job(
        name="images",
        function=partial(image_folder.row_of, size=IMAGE_SIZE),
        inputs=inputs,
        rows=len(inputs),
        fields={"image": ("uint8", (3, IMAGE_SIZE, IMAGE_SIZE)), "label": ("int64", ())},
    )


# -- litdata -------------------------------------------------------------------------------


def write_litdata(job: Job, out: str, workers: int) -> None:
    """``litdata.optimize`` with ``workers`` processes (its default start method, spawn)."""
    litdata = require("litdata", INSTALL)
    litdata.optimize(
        fn=job.function,
        inputs=job.inputs,
        output_dir=out,
        num_workers=workers,
        chunk_bytes=LITDATA_CHUNK_BYTES,
        mode="overwrite",
        verbose=False,
    )


def count_litdata(out: str) -> int:
    """Rows ``litdata.StreamingDataset`` finds in ``out``."""
    return len(require("litdata", INSTALL).StreamingDataset(out))


# -- Hugging Face datasets -----------------------------------------------------------------


def hf_features(fields: Fields) -> Any:
    """``datasets.Features`` of the fields: ``Value`` for one number, ``List`` for one axis,
    ``Array2D``-``5D`` for more (a ragged field's first axis ``None``, its length varying)."""
    datasets = require("datasets", INSTALL)
    features = {}
    for name, (dtype, shape) in fields.items():
        if not shape:
            features[name] = datasets.Value(dtype)
        elif len(shape) == 1:
            features[name] = datasets.List(datasets.Value(dtype), length=shape[0] or -1)
        else:
            features[name] = getattr(datasets, f"Array{len(shape)}D")(shape=shape, dtype=dtype)
    return datasets.Features(features)


@dataclass(frozen=True)
class HfBatch:
    """``Dataset.map``'s function: the rows of the inputs whose indices a batch holds, as
    columns (an input may give any number of rows)."""

    job: Job

    def __call__(self, batch: dict[str, list[int]]) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = {name: [] for name in self.job.fields}
        for index in batch["index"]:
            for row in rows_of(self.job.function(self.job.inputs[index])):
                for name, values in columns.items():
                    values.append(row[name])
        return columns


def write_hf(job: Job, out: str, workers: int) -> None:
    """``Dataset.from_dict`` of the input indices, ``map(num_proc=workers)``,
    ``save_to_disk``."""
    datasets = require("datasets", INSTALL)
    datasets.disable_progress_bars()
    source = datasets.Dataset.from_dict({"index": list(range(len(job.inputs)))})
    built = source.map(
        HfBatch(job),
        batched=True,
        batch_size=1,
        num_proc=workers,
        remove_columns=["index"],
        features=hf_features(job.fields),
    )
    built.save_to_disk(out)


def count_hf(out: str) -> int:
    """Rows ``datasets.load_from_disk`` finds in ``out``."""
    rows: int = require("datasets", INSTALL).load_from_disk(out).num_rows
    return rows


# -- a multiprocessing pool feeding one LMDB writer ----------------------------------------


@dataclass(frozen=True)
class PickledRows:
    """A pool worker's task: the rows of one input, each pickled."""

    function: Callable[[Any], Row | Iterable[Row]]

    def __call__(self, item: Any) -> list[bytes]:
        return [pickle.dumps(row, protocol=5) for row in rows_of(self.function(item))]


def write_lmdb(job: Job, out: str, workers: int) -> None:
    """``multiprocessing.Pool(workers).imap`` (the platform's default start method) over the
    inputs, in order; the parent puts each row under its index (10 ASCII digits), one
    transaction per input, and syncs at the end."""
    import multiprocessing

    lmdb = require("lmdb", INSTALL)
    environment = lmdb.open(out, map_size=LMDB_MAP_SIZE, sync=False)
    try:
        key = 0
        with multiprocessing.Pool(workers) as pool:
            for values in pool.imap(PickledRows(job.function), job.inputs):
                with environment.begin(write=True) as transaction:
                    for value in values:
                        transaction.put(b"%010d" % key, value)
                        key += 1
        environment.sync(True)
    finally:
        environment.close()


def count_lmdb(out: str) -> int:
    """Entries of the LMDB environment ``out``."""
    environment = require("lmdb", INSTALL).open(out, readonly=True, lock=False)
    try:
        entries: int = environment.stat()["entries"]
        return entries
    finally:
        environment.close()


# -- memshard ------------------------------------------------------------------------------


def write_memshard(job: Job, out: str, workers: int) -> None:
    """``ms.build`` with ``workers`` worker processes, the job's fields declared."""
    ms.build(job.function, job.inputs, out, fields=job.fields, workers=workers, progress=False)


def count_memshard(out: str) -> int:
    """Rows ``ms.open`` finds in ``out``."""
    return len(ms.open(out))


WRITERS: dict[str, Callable[[Job, str, int], None]] = {
    LITDATA: write_litdata,
    HF: write_hf,
    LMDB: write_lmdb,
    MEMSHARD: write_memshard,
}
COUNTERS: dict[str, Callable[[str], int]] = {
    LITDATA: count_litdata,
    HF: count_hf,
    LMDB: count_lmdb,
    MEMSHARD: count_memshard,
}


# -- running one peer ----------------------------------------------------------------------


@dataclass(frozen=True)
class PeerResult:
    """One peer's run of one job: wall seconds of the write, rows its reader found, bytes of
    its output, the peak RSS of its process tree and of its largest process."""

    peer: str
    job: str
    workers: int
    seconds: float
    rows_expected: int
    rows_read: int
    output_bytes: int
    peak_rss: int
    largest_process_rss: int

    @property
    def ok(self) -> bool:
        """Whether the output holds every row."""
        return self.rows_read == self.rows_expected


def run_peer(peer: str, job: Job, out: str, workers: int) -> dict[str, Any]:
    """Write ``job`` with ``peer`` into ``out`` in this process: the write's wall seconds, the
    rows the peer's reader finds, the bytes of the output."""
    started = time.perf_counter()
    WRITERS[peer](job, out, workers)
    seconds = time.perf_counter() - started
    size = sum(os.path.getsize(path) for path in core.files_under(out))
    return {"seconds": seconds, "rows_read": COUNTERS[peer](out), "output_bytes": size}


def measure(peer: str, job: Job, scratch: str, workers: int = 2) -> PeerResult:
    """Run ``peer`` on ``job`` in a fresh child process (see the module docstring) and
    remove its output.

    Raises:
        Unavailable: the peer's library is not installed (the message says how to).
        RuntimeError: the child failed (its output is in the message).
    """
    folder = os.path.join(scratch, f"{job.name}-{peer.replace(' ', '-').lower()}")
    os.makedirs(folder)
    job_path, result_path = os.path.join(folder, "job.pickle"), os.path.join(folder, "result.json")
    with open(job_path, "wb") as file:
        pickle.dump(job, file)
    command = [sys.executable, "-m", "benchmarks.build_peers", "--child", peer, job_path,
               os.path.join(folder, "out"), str(workers), result_path]  # fmt: skip
    environment = child_environment(folder)
    child = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, cwd=core_root())  # fmt: skip
    assert child.stdout is not None
    with TreeSampler(child.pid) as sampler, child.stdout:
        output = child.stdout.read()  # until the child and its workers close it
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    try:
        text = output.decode(errors="replace")[-4000:]
        if child.returncode == UNAVAILABLE:
            raise Unavailable((text.strip().splitlines() or [f"{peer} is not installed"])[-1])
        if child.returncode != 0:
            raise RuntimeError(f"{peer} on {job.name}: exit status {child.returncode}\n{text}")
        with open(result_path) as file:
            result = json.load(file)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return PeerResult(
        peer=peer,
        job=job.name,
        workers=workers,
        seconds=result["seconds"],
        rows_expected=job.rows,
        rows_read=result["rows_read"],
        output_bytes=result["output_bytes"],
        peak_rss=sampler.tree_rss,
        largest_process_rss=usage.ru_maxrss << 10,
    )


def core_root() -> str:
    """The repository root, from which ``benchmarks`` and ``examples`` import."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_environment(folder: str) -> dict[str, str]:
    """The environment of a child: the repository importable, the peers' caches under
    ``folder``, no network look-ups. (``TMPDIR`` stays: HF ``map`` of an in-memory dataset
    writes its results to a temporary folder first, and ``multiprocess`` binds sockets
    there, whose paths may not be long.)"""
    root = core_root()
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        "HF_HOME": os.path.join(folder, "hf-home"),
        "HF_DATASETS_CACHE": os.path.join(folder, "hf-cache"),
        "HF_DATASETS_OFFLINE": "1",
        "LITDATA_DISABLE_VERSION_CHECK": "1",
    }


def child_main(argv: Sequence[str]) -> int:
    """``--child PEER JOB_PICKLE OUT WORKERS RESULT_JSON``: run one peer, write its result."""
    peer, job_path, out, workers, result_path = argv
    with open(job_path, "rb") as file:
        job = pickle.load(file)
    try:
        result = run_peer(peer, job, out, int(workers))
    except Unavailable as error:
        print(error, flush=True)
        return UNAVAILABLE
    with open(result_path, "w") as file:
        json.dump(result, file)
    return 0


# -- the command line ----------------------------------------------------------------------


def report_table(results: Sequence[PeerResult]) -> str:
    """One line per peer and job."""
    rows = [
        [
            result.job,
            result.peer,
            f"{result.seconds:.2f} s",
            f"{format_count(result.rows_read / result.seconds)} rows/s",
            format_bytes(result.peak_rss),
            format_bytes(result.largest_process_rss),
            format_bytes(result.output_bytes),
            f"{result.rows_read:,} of {result.rows_expected:,}",
        ]
        for result in results
    ]
    head = ["job", "peer", "write", "rows/s", "peak RSS (tree)", "largest process", "output",
            "rows read back"]  # fmt: skip
    return markdown(head, rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every peer on both jobs; print the table, write the JSON and markdown."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--child"]:
        return child_main(arguments[1:])
    options = core.CommandLine(
        "python -m benchmarks.build_peers",
        __doc__,
        Option("--scale", float, "fraction of the full jobs", 1.0, None),
        Option("--workers", int, "processes of every peer", 2, 2),
        repeats=(1, 1),
    )
    options.add_argument("--out", default="benchmark-results", help="folder for the report")
    args = options.parse(arguments)
    quick, scale = args["mode"] == "quick", args["scale"]
    drawings = QUICK_DRAWINGS if quick else max(1, round(FULL_DRAWINGS * scale))
    per_class = QUICK_IMAGES_PER_CLASS if quick else max(1, round(FULL_IMAGES_PER_CLASS * scale))
    lines = QUICK_LINES_PER_CHUNK if quick else FULL_LINES_PER_CHUNK
    results: list[PeerResult] = []
    skipped: dict[str, str] = {}
    with core.scratch_directory(args["dir"]) as scratch:
        method = [
            f"drawings: {drawings:,} at 256x256, {lines} lines per input; images: "
            f"{per_class:,} per class of 3, to {IMAGE_SIZE}x{IMAGE_SIZE}",
            f"{args['workers']} worker processes per peer, one run each",
        ]
        out = core.Report("Build peers", args["mode"], scratch, method)
        jobs = [drawings_job(scratch, drawings, lines), images_job(scratch, per_class)]
        for job in jobs:
            for peer in PEERS:
                progress(f"{job.name}: {peer}")
                try:
                    result = measure(peer, job, scratch, args["workers"])
                except Unavailable as error:
                    skipped[peer] = str(error)
                    progress(f"{peer}: skipped: {error}")
                    continue
                out.check(f"{job.name}_{peer}_rows".replace(" ", "_"), result.ok)
                results.append(result)
        out.add(report_table(results))
        if skipped:
            out.add("\n".join(f"- {peer}: not measured ({why})" for peer, why in skipped.items()))
    out.record.update(
        workers=args["workers"],
        jobs={job.name: {"inputs": len(job.inputs), "rows": job.rows} for job in jobs},
        results=[{**asdict(result), "ok": result.ok} for result in results],
        skipped=skipped,
    )
    os.makedirs(args["out"], exist_ok=True)
    json_path = args["json"] or os.path.join(args["out"], "build-peers.json")
    return out.finish(json_path, os.path.join(args["out"], "build-peers.md"))


if __name__ == "__main__":
    raise SystemExit(main())
