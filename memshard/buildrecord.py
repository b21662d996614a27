"""The build record: what :func:`memshard.build` keeps in its dataset's attributes.

Under the key :data:`BUILD_ATTR` of the manifest's ``attrs``, committed with the rows it
describes (in the same commit), so that it never disagrees with them::

    "memshard.build": {
      "version": 1,
      "function": "render:rasterise",   # module:qualified name of fn
      "inputs": 50000000,                # len(inputs)
      "digest": "6c1f...",               # of a sample of the inputs' repr (inputs_digest)
      "inputs_per_part": 2000,
      "committed": 1234000,              # inputs 0 .. committed-1 are committed
      "skipped": [{"index": 17, "input": "'a/b.json'", "error": "ValueError: ..."}],
      "skipped_count": 1                 # every skipped input, listed or not
    }

Parts are committed in input order, so the committed inputs are always a prefix, and one
number says which. A resume (``resume=True``) compares ``function``, ``inputs`` and
``digest`` with the call it is given (:meth:`BuildRecord.mismatch`) and continues from
``committed``. The first :data:`MAX_RECORDED_SKIPS` skipped inputs are listed (every commit
rewrites the manifest, so the list is bounded); ``skipped_count`` counts them all.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import BuildStateError

#: The key of the build record in the dataset's ``attrs``.
BUILD_ATTR = "memshard.build"
#: The version of the record's layout.
RECORD_VERSION = 1
#: Most skipped inputs the record lists.
MAX_RECORDED_SKIPS = 1000
#: Longest ``repr`` of an input kept (in errors, reports and the record), in characters.
REPR_CHARS = 200
#: Longest error text of a skipped input kept in the record, in characters.
ERROR_CHARS = 500
#: Inputs, spread over the sequence, whose ``repr`` the digest covers.
SAMPLED_INPUTS = 16

_ADDRESS = re.compile(r" at 0x[0-9A-Fa-f]+")


@dataclass(frozen=True)
class SkippedInput:
    """An input the build skipped (``on_error="skip"``): its index, its ``repr`` and the
    error (``"ValueError: ..."``). Unpacks as ``index, input, error = skipped``."""

    index: int
    input: str
    error: str

    def __iter__(self) -> Iterator[Any]:
        return iter((self.index, self.input, self.error))


def describe_input(item: Any) -> str:
    """``repr(item)``, at most :data:`REPR_CHARS` characters (``...`` marks a cut).

    Example:
        >>> describe_input("cat.png"), len(describe_input(list(range(100))))
        ("'cat.png'", 200)
    """
    try:
        text = repr(item)
    except Exception as exc:  # a repr that fails still names the input's type
        text = f"<{type(item).__name__} (repr failed: {type(exc).__name__})>"
    return text if len(text) <= REPR_CHARS else text[: REPR_CHARS - 3] + "..."


def function_name(fn: Any) -> str:
    """``module:qualified name`` of a function, of a callable object's class, or of the
    function a ``functools.partial`` wraps.

    Example:
        >>> import os.path
        >>> function_name(os.path.join), function_name(functools.partial(max, 0))
        ('posixpath:join', 'builtins:max')
    """
    while isinstance(fn, functools.partial):
        fn = fn.func
    named = fn if hasattr(fn, "__qualname__") else type(fn)
    module = getattr(named, "__module__", "?")
    # A worker imports the caller's script as __mp_main__ (memshard.workerjob).
    module = "__main__" if module == "__mp_main__" else module
    return f"{module}:{getattr(named, '__qualname__', '?')}"


def inputs_digest(inputs: Sequence[Any]) -> str:
    """A digest of ``len(inputs)`` and the ``repr`` of :data:`SAMPLED_INPUTS` of them, spread
    from the first to the last (memory addresses, ``at 0x...``, left out of each ``repr``)."""
    count = len(inputs)
    picked = sorted({round(k * (count - 1) / (SAMPLED_INPUTS - 1)) for k in range(SAMPLED_INPUTS)})
    digest = hashlib.sha256(str(count).encode())
    for index in picked if count else []:
        digest.update(f"\n{index}:{_ADDRESS.sub('', describe_input(inputs[index]))}".encode())
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class BuildRecord:
    """The build record (see the module docstring)."""

    function: str
    inputs: int
    digest: str
    inputs_per_part: int
    committed: int = 0
    skipped: tuple[SkippedInput, ...] = ()
    skipped_count: int = 0

    def to_attrs(self) -> dict[str, Any]:
        """The record as the value of :data:`BUILD_ATTR`."""
        return {
            "version": RECORD_VERSION,
            "function": self.function,
            "inputs": self.inputs,
            "digest": self.digest,
            "inputs_per_part": self.inputs_per_part,
            "committed": self.committed,
            "skipped": [
                {"index": skip.index, "input": skip.input, "error": skip.error[:ERROR_CHARS]}
                for skip in self.skipped[:MAX_RECORDED_SKIPS]
            ],
            "skipped_count": self.skipped_count,
        }

    @classmethod
    def of(cls, attrs: Mapping[str, Any], where: str) -> BuildRecord:
        """The record in a dataset's ``attrs``.

        Raises:
            BuildStateError: there is none, or it is damaged (``where`` names the dataset).
        """
        value = attrs.get(BUILD_ATTR)
        try:
            if not isinstance(value, dict) or value["version"] != RECORD_VERSION:
                raise ValueError(value)
            skipped = tuple(
                SkippedInput(int(s["index"]), str(s["input"]), str(s["error"]))
                for s in value["skipped"]
            )
            record = cls(
                function=str(value["function"]),
                inputs=int(value["inputs"]),
                digest=str(value["digest"]),
                inputs_per_part=int(value["inputs_per_part"]),
                committed=int(value["committed"]),
                skipped=skipped,
                skipped_count=int(value["skipped_count"]),
            )
            if record.inputs_per_part < 1 or not 0 <= record.committed <= record.inputs:
                raise ValueError(record)
        except (KeyError, TypeError, ValueError):
            raise BuildStateError(
                f"{where}: holds no build record ({BUILD_ATTR} in its attrs) of version "
                f"{RECORD_VERSION}: it was not written by memshard.build"
            ) from None
        return record

    def mismatch(self, other: BuildRecord) -> str | None:
        """How the build this record describes differs from ``other`` (the one asked for
        now), as a clause; ``None`` if it is the same build."""
        if self.inputs != other.inputs:
            return f"was built from {self.inputs:,} inputs, this call has {other.inputs:,}"
        if self.function != other.function:
            return f"was built with fn {self.function}, this call has fn {other.function}"
        if self.digest != other.digest:
            return (
                f"was built from other inputs (the repr of {SAMPLED_INPUTS} inputs spread over "
                "them differs)"
            )
        return None

    def committed_up_to(self, stop: int, skipped: Sequence[SkippedInput]) -> BuildRecord:
        """This record once the inputs before ``stop`` are committed, ``skipped`` among them
        (those skipped since the last commit)."""
        listed = (self.skipped + tuple(skipped))[:MAX_RECORDED_SKIPS]
        return dataclasses.replace(
            self,
            committed=stop,
            skipped=listed,
            skipped_count=self.skipped_count + len(skipped),
        )
