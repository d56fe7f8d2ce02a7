"""Key and value formats: ``struct`` format strings, analysed once per map.

Formats use native alignment (``"@"``, the default, like a C struct) so that
u64 fields sit on 8-byte boundaries, where an atomic add is a single
instruction.  Every ``struct`` byte order is honoured: ``"="``, ``"<"``, ``">"``
and ``"!"`` (network order: keys straight from sockets or numpy ``">u4"``
arrays).  Atomic adds and per-worker sums need native integers, so ``add()``
refuses fields of a foreign byte order and per-worker maps refuse such values.

``s`` fields take ``bytes`` of exactly their length, or ``str``: UTF-8, padded
with NUL bytes to the length (longer: refused).  They read back as ``bytes``,
padding included.  Anything else -- a 3-byte key for ``"4s"``, text that can
never fit -- is refused with ``TypeError``: two different keys never collide.
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
_PREFIXES = "@=<>!"
# prefixes whose integers are in this machine's byte order
_NATIVE_ORDER = ("@", "=", "<") if sys.byteorder == "little" else ("@", "=", ">", "!")


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
    str_fields: tuple[int, ...] = ()     # indices of ``s`` fields (checked when packing)

    @property
    def native_order(self) -> bool:
        """Integers in this machine's byte order (atomic adds, per-worker sums)."""
        return (self.text[0] if self.text[0] in _PREFIXES else "@") in _NATIVE_ORDER

    @property
    def nfields(self) -> int:
        return len(self.fields)

    @property
    def single_int(self) -> bool:
        """One native integer field: the fast paths convert it without ``struct``."""
        return self.nfields == 1 and self.fields[0].code in INT_CODES and not self.text.startswith(("=", "<", ">", "!"))

    @property
    def signed(self) -> bool:
        return self.fields[0].code.islower()

    @property
    def all_int(self) -> bool:
        return all(f.code in INT_CODES for f in self.fields)

    @property
    def u64_offsets(self) -> tuple[int, ...]:
        """Offsets of every field, or -1 for fields that are not 8-byte-aligned native u64s."""
        return tuple(f.offset if f.code in U64_CODES and f.offset % 8 == 0 and self.native_order else -1
                     for f in self.fields)

    def pack(self, item) -> bytes:
        if self.str_fields:
            item = self._fit_strings(item)
        return self.struct.pack(*item) if self.nfields > 1 else self.struct.pack(item)

    def _fit_strings(self, item):
        """``s`` fields: bytes of exactly the field's length, or str (UTF-8, NUL-padded)."""
        items = list(item) if self.nfields > 1 else [item]
        if len(items) != self.nfields:
            return item                      # struct reports the count mismatch
        for i in self.str_fields:
            v, n = items[i], self.fields[i].size
            if isinstance(v, str):
                b = v.encode("utf-8")
                if len(b) > n:
                    raise TypeError(f"{v!r} is {len(b)} bytes in UTF-8; field {i} ('{n}s') holds {n}")
                items[i] = b.ljust(n, b"\0")
            elif isinstance(v, (bytes, bytearray, memoryview)):
                if len(v) != n:
                    raise TypeError(f"{bytes(v)!r} is {len(v)} bytes; field {i} ('{n}s') needs exactly "
                                    f"{n} (pad it yourself, or pass a str to have it NUL-padded)")
            else:
                raise TypeError(f"field {i} ('{n}s') takes bytes or str, got {type(v).__name__}")
        return items if self.nfields > 1 else items[0]

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
    return Format(text, st.size, tuple(fields), st,
                  tuple(i for i, f in enumerate(fields) if f.code == "s"))
