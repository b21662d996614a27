"""The compression an export (:func:`memshard.to_hdf5`, :func:`memshard.to_zarr`) writes
each field with: the one the caller names, or, by default, the one that mirrors the field's
codec. No I/O; the target modules turn a :class:`Compression` into their library's filter
or codec, and say which they can write.

A compression is named as text: ``"gzip"`` or ``"gzip:LEVEL"`` (0-9, default
:data:`DEFAULT_GZIP_LEVEL`), ``"lzf"``, any memshard codec in its text form (``"zstd:3"``,
``"lz4"``, ``"blosc:lz4:5:bit"``, :func:`memshard.codecs.parse_codec`), or ``"none"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .codecs import parse_codec
from .errors import SchemaError
from .manifest import Codec

#: Compressions only an export writes (memshard's codecs are the others).
EXPORT_ONLY = ("gzip", "lzf")
#: gzip's level when the text names none (h5py's default).
DEFAULT_GZIP_LEVEL = 4
#: The text that asks for no compression.
NONE = "none"
#: What an export's ``compression=`` argument may be: one compression for every field, or
#: ``{field: compression or None}``; ``None``: mirror every field's codec.
CompressionChoice = str | Mapping[str, str | None] | None


@dataclass(frozen=True)
class Compression:
    """A compression by name (``gzip``, ``lzf``, ``zstd``, ``lz4``, ``blosc``) with every
    parameter it takes (those of :data:`memshard.codecs.PARAMETERS`; gzip's ``level``)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


def parse_compression(text: str, *, where: str) -> Compression | None:
    """The compression ``text`` names; ``None`` for ``"none"``.

    Example:
        >>> parse_compression("gzip:6", where="compression")
        Compression(name='gzip', params={'level': 6})
        >>> parse_compression("blosc:lz4", where="compression").params
        {'cname': 'lz4', 'clevel': 5, 'shuffle': 'byte'}

    Raises:
        SchemaError: an unknown compression, or a parameter it does not take or out of range.
    """
    if not isinstance(text, str):
        raise SchemaError(f"{where}: a compression is text such as 'gzip' or 'zstd:3', "
                          f"not {type(text).__name__}")  # fmt: skip
    if text == NONE:
        return None
    name, sep, argument = text.partition(":")
    if name == "gzip":
        if not sep:
            return Compression("gzip", {"level": DEFAULT_GZIP_LEVEL})
        if not argument.isdigit() or not 0 <= int(argument) <= 9:
            raise SchemaError(f"{where}: gzip's level is an integer from 0 to 9, got {argument!r}")
        return Compression("gzip", {"level": int(argument)})
    if name == "lzf":
        if sep:
            raise SchemaError(f"{where}: lzf takes no parameter, got {text!r}")
        return Compression("lzf")
    try:
        codec, params = parse_codec(text, where=where)
    except SchemaError as exc:
        raise SchemaError(f"{exc}; an export also writes {' and '.join(EXPORT_ONLY)}") from None
    return Compression(codec, params)


def mirroring(codec: Codec | None) -> Compression | None:
    """The compression that mirrors a field's ``codec`` (its name and parameters)."""
    return None if codec is None else Compression(codec.name, dict(codec.params))


#: Why a target cannot write a compression for a field (``None``: it can), given the field's
#: name and the compression.
Refusal = Callable[[str, Compression], str | None]


def chosen_compressions(
    compression: CompressionChoice,
    codecs: Mapping[str, Codec | None],
    *,
    refusal: Refusal,
) -> dict[str, Compression | None]:
    """The compression of each field of ``codecs`` (name -> the field's codec): the one
    ``compression`` names for it (one text for every field, or ``{field: text or None}``),
    else the mirror of its codec, or none if ``refusal`` says the target cannot write that.

    Example:
        >>> def no_lzf(name, compression):
        ...     return "no lzf here" if compression.name == "lzf" else None
        >>> zstd = Codec(name="zstd", params={"level": 3}, block_bytes=65536)
        >>> chosen_compressions("gzip", {"x": zstd}, refusal=no_lzf)
        {'x': Compression(name='gzip', params={'level': 4})}
        >>> chosen_compressions(None, {"x": zstd, "y": None}, refusal=no_lzf)["x"]
        Compression(name='zstd', params={'level': 3})

    Raises:
        SchemaError: a field not among ``codecs``, a compression :func:`parse_compression`
            refuses, or one named that the target cannot write (naming the field and why).
    """
    names = list(codecs)
    chosen: dict[str, Compression | None] = {}
    for name, text in _asked(compression, names).items():
        where = f"compression of field {name!r}"
        wanted = parse_compression(NONE if text is None else text, where=where)
        reason = None if wanted is None else refusal(name, wanted)
        if reason is not None:
            raise SchemaError(f"{where}: {reason}")
        chosen[name] = wanted
    for name in names:
        if name not in chosen:
            mirror = mirroring(codecs[name])
            chosen[name] = None if mirror is None or refusal(name, mirror) else mirror
    return {name: chosen[name] for name in names}


def _asked(compression: CompressionChoice, names: list[str]) -> dict[str, str | None]:
    """``{field: text or None}`` for the fields ``compression`` names."""
    if compression is None:
        return {}
    if isinstance(compression, str):
        return dict.fromkeys(names, compression)
    if isinstance(compression, Mapping):
        unknown = [name for name in compression if name not in names]
        if unknown:
            raise SchemaError(
                f"compression: no field {unknown[0]!r:.80} is exported; the fields are "
                f"{', '.join(names)}"
            )
        return dict(compression)
    raise SchemaError(
        f"compression must be text ('gzip', 'zstd:3', 'none') or {{field: text}}, not "
        f"{type(compression).__name__}"
    )
