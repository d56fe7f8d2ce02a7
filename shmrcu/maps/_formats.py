"""Key and value formats: ``struct`` format strings, analysed once per map.

Formats use native alignment (``"@"``, the default, like a C struct) so that
u64 fields sit on 8-byte boundaries, where an atomic add is a single
instruction.  ``"="`` and ``"<"`` (little-endian standard sizes) are accepted
too; big-endian prefixes are refused because atomic adds and per-worker sums
work on native integers.
"""
from __future__ import annotations

import re
import struct
import sys
from dataclasses import dataclass

from ..errors import InvalidMapSpec

FORMAT_MAX = 47               # bytes of text; the header stores it NUL-terminated in 48
INT_CODES = "bBhHiIlLqQnN"
U64_CODES = "Qq"              # fields that support atomic per-field add
_TOKEN = re.compile(r"\s*(\d*)([xcbB?hHiIlLqQnNefdsp])\s*")
_PREFIXES = ("@", "=", "<") if sys.byteorder == "little" else ("@", "=")


@dataclass(frozen=True)
class Field:
    code: str
    offset: int
    size: int


@dataclass(frozen=True)
class Format:
    text: str
    size: int
    fields: tuple[Field, ...]
    struct: struct.Struct

    @property
    def nfields(self) -> int:
        return len(self.fields)

    @property
    def single_int(self) -> bool:
        """One native integer field: the fast paths convert it without ``struct``."""
        return self.nfields == 1 and self.fields[0].code in INT_CODES and not self.text.startswith(("=", "<"))

    @property
    def signed(self) -> bool:
        return self.fields[0].code.islower()

    @property
    def all_int(self) -> bool:
        return all(f.code in INT_CODES for f in self.fields)

    @property
    def u64_offsets(self) -> tuple[int, ...]:
        """Offsets of every field, or -1 for fields that are not 8-byte-aligned u64s."""
        return tuple(f.offset if f.code in U64_CODES and f.offset % 8 == 0 else -1 for f in self.fields)

    def pack(self, item) -> bytes:
        return self.struct.pack(*item) if self.nfields > 1 else self.struct.pack(item)

    def unpack(self, data):
        vals = self.struct.unpack(data)
        return vals if self.nfields > 1 else vals[0]


def parse(text: object, what: str) -> Format:
    """Analyse a ``struct`` format; ``InvalidMapSpec`` naming ``what`` if unusable."""
    if not isinstance(text, str):
        raise InvalidMapSpec(f"{what} format must be a struct format string like 'I' or 'QQ', got {text!r}")
    if not text or len(text.encode()) > FORMAT_MAX or not text.isascii():
        raise InvalidMapSpec(f"{what} format {text!r} must be 1-{FORMAT_MAX} ASCII characters")
    prefix, body = (text[0], text[1:]) if text[0] in "@=<>!" else ("@", text)
    if prefix not in _PREFIXES:
        raise InvalidMapSpec(f"{what} format {text!r}: byte order {prefix!r} is not supported "
                             f"(use native '@', '=' or '<')")
    try:
        st = struct.Struct(text)
    except struct.error as e:
        raise InvalidMapSpec(f"{what} format {text!r} is not a struct format: {e}") from None
    fields: list[Field] = []
    acc = prefix
    pos = 0
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if m is None:
            raise InvalidMapSpec(f"{what} format {text!r}: cannot use {body[pos:]!r}")
        pos = m.end()
        count = int(m.group(1)) if m.group(1) else 1
        code = m.group(2)
        if code in "sp":
            end = struct.calcsize(acc + f"{count}{code}")
            fields.append(Field(code, end - count, count))
            acc += f"{count}{code}"
        elif code == "x":
            acc += f"{count}x"
        else:
            size = struct.calcsize(prefix + code)
            for _ in range(count):
                acc += code
                end = struct.calcsize(acc)
                fields.append(Field(code, end - size, size))
    if st.size == 0 or not fields:
        raise InvalidMapSpec(f"{what} format {text!r} describes no data (size 0)")
    return Format(text, st.size, tuple(fields), st)
