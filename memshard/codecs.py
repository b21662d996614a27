"""The codecs a compressed field may name in a manifest, and their parameters (spec section
5.7); compressing and decompressing blocks is :mod:`memshard.blockcodec`'s.

- ``zstd`` (python-zstandard): ``level`` 1-22, default 3;
- ``lz4`` (numcodecs' LZ4: a 4-byte size, then an LZ4 block): ``acceleration`` 1-65537,
  default 1;
- ``blosc`` (numcodecs' Blosc, c-blosc 1): ``cname`` (``zstd``, ``lz4``, ``lz4hc``, ``zlib``,
  ``blosclz``), ``clevel`` 0-9 (default 5) and ``shuffle`` (``byte``, ``bit`` or ``none``,
  default ``byte``) over the field's item size: the choice for float data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import SchemaError

#: Codec names a reader of format 2.2 must know (spec section 5.7).
CODEC_NAMES = ("zstd", "lz4", "blosc")
#: Blosc's compressors, by the names numcodecs and the manifest use.
BLOSC_CNAMES = ("zstd", "lz4", "lz4hc", "zlib", "blosclz")
#: Blosc's shuffle filters, by manifest name, and their numcodecs constants.
BLOSC_SHUFFLES = {"none": 0, "byte": 1, "bit": 2}
#: Each codec's parameters: name -> (default, smallest, largest or a tuple of choices).
PARAMETERS: dict[str, dict[str, tuple[Any, Any, Any]]] = {
    "zstd": {"level": (3, 1, 22)},
    "lz4": {"acceleration": (1, 1, 65537)},
    "blosc": {
        "cname": ("zstd", None, BLOSC_CNAMES),
        "clevel": (5, 0, 9),
        "shuffle": ("byte", None, tuple(BLOSC_SHUFFLES)),
    },
}
#: The uncompressed bytes a block of rows aims at, unless one row is larger (spec 5.7).
DEFAULT_BLOCK_BYTES = 64 << 10
#: The range a field's ``block_bytes`` may take.
MIN_BLOCK_BYTES, MAX_BLOCK_BYTES = 1 << 10, 64 << 20


def codec_parameters(name: Any, given: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Codec ``name`` with its parameters ``given`` checked and completed with defaults.

    Example:
        >>> codec_parameters("zstd", {}, where="field 'x'")
        {'level': 3}
        >>> codec_parameters("blosc", {"shuffle": "bit"}, where="field 'x'")
        {'cname': 'zstd', 'clevel': 5, 'shuffle': 'bit'}

    Raises:
        SchemaError: an unknown codec, an unknown parameter, or a value out of its range.
    """
    if name not in PARAMETERS:
        raise SchemaError(
            f"{where}: codec {name!r:.40} is not one memshard knows ({', '.join(CODEC_NAMES)})"
        )
    known = PARAMETERS[name]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise SchemaError(
            f"{where}: codec {name!r} has no parameter {unknown[0]!r}; it takes {sorted(known)}"
        )
    result = {}
    for key, (default, low, high) in known.items():
        value = given.get(key, default)
        if isinstance(high, tuple):
            if value not in high:
                raise SchemaError(f"{where}: codec {name!r}: {key} must be one of {list(high)}")
        elif isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise SchemaError(
                f"{where}: codec {name!r}: {key} must be an integer from {low} to {high}, "
                f"got {value!r:.40}"
            )
        result[key] = value
    return result


def parse_codec(text: str, *, where: str) -> tuple[str, dict[str, Any]]:
    """A codec written as the command line takes it: ``NAME[:ARG[:ARG...]]``, its arguments
    the codec's parameters in the order :data:`PARAMETERS` lists them (integers as digits).

    Example:
        >>> parse_codec("zstd:9", where="--codec")
        ('zstd', {'level': 9})
        >>> parse_codec("blosc:lz4:5:bit", where="--codec")
        ('blosc', {'cname': 'lz4', 'clevel': 5, 'shuffle': 'bit'})

    Raises:
        SchemaError: an unknown codec, too many arguments, or a value out of range.
    """
    name, *arguments = text.split(":")
    if name not in PARAMETERS:
        raise SchemaError(
            f"{where}: codec {name!r:.40} is not one memshard knows ({', '.join(CODEC_NAMES)})"
        )
    keys = list(PARAMETERS[name])
    if len(arguments) > len(keys):
        raise SchemaError(
            f"{where}: codec {name!r} takes at most {len(keys)} arguments ({', '.join(keys)}), "
            f"got {text!r:.60}"
        )
    given: dict[str, Any] = {}
    for key, argument in zip(keys, arguments, strict=False):
        given[key] = int(argument) if argument.lstrip("-").isdigit() else argument
    return name, codec_parameters(name, given, where=where)
