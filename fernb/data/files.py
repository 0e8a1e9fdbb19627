"""Files as real downloads deliver them: hidden/system files beside the data, and label files in other encodings.

* `is_hidden`: macOS archives put a ``._<name>`` resource file and a ``.DS_Store`` beside every image (and a
  ``__MACOSX/`` folder at the top); Windows adds ``Thumbs.db`` and ``desktop.ini``. None of them is data: the
  folder readers skip them and count them in ``info["hidden_files"]``.
* `text_encoding` / `open_text` / `read_text`: label files are read as UTF-8, or as UTF-8/16/32 when they start
  with a byte-order mark (Windows editors write one), or as UTF-16 when the bytes show it without a mark. Anything
  else fails with a `DatasetLayoutError` that names the file, the encoding tried and the offending byte.
"""
from __future__ import annotations

import codecs
import io
from pathlib import Path

from .errors import DatasetLayoutError

SYSTEM_FILES = frozenset({"__macosx", "thumbs.db", "desktop.ini", "$recycle.bin", "system volume information"})

# Longest mark first: the UTF-32-LE mark begins with the UTF-16-LE one.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def is_hidden(path) -> bool:
    """True for hidden or system entries that are never data: ``.*`` (``._x.jpg``, ``.DS_Store``), ``__MACOSX``,
    ``Thumbs.db``, ``desktop.ini``."""
    name = Path(path).name
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def text_encoding(path) -> str:
    """The encoding to read `path` with: from its byte-order mark, UTF-16 when every other byte of the start is NUL
    (a mark-less UTF-16 file), else UTF-8."""
    with open(path, "rb") as f:
        head = f.read(4)
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding
    if len(head) >= 2 and (head[0] == 0) != (head[1] == 0):
        return "utf-16-be" if head[0] == 0 else "utf-16-le"
    return "utf-8"


def _first_bad_line(path, encoding: str):
    """(line number, offending byte) of the first line of a UTF-8 file that does not decode, else (None, None)."""
    if not encoding.startswith("utf-8"):
        return None, None
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return line_no, raw[e.start:e.start + 1]
    return None, None


def decode_error(path, encoding: str, err: UnicodeError) -> DatasetLayoutError:
    """A DatasetLayoutError naming the file, the encoding tried, the line (for UTF-8) and the offending byte."""
    line, byte = _first_bad_line(path, encoding)
    if byte is None and isinstance(err, UnicodeDecodeError):
        byte = err.object[err.start:err.start + 1]
    where = f" line {line}" if line else ""
    bad = f": byte 0x{byte.hex()} is not valid {encoding}" if byte else f": {err}"
    return DatasetLayoutError(
        f"{path}{where} cannot be read as {encoding}{bad}. fernb reads label files as UTF-8, or as UTF-8/16/32 "
        f"with a byte-order mark; save it as UTF-8.")


def open_text(path, newline=None):
    """`open(path)` for reading text in the detected encoding (a universal-newline text stream)."""
    encoding = text_encoding(path)
    return io.open(path, encoding=encoding, newline=newline), encoding


def read_text(path) -> str:
    """The whole file as text in the detected encoding; DatasetLayoutError (file, encoding, byte) otherwise."""
    encoding = text_encoding(path)
    try:
        return Path(path).read_bytes().decode(encoding)
    except UnicodeDecodeError as e:
        raise decode_error(path, encoding, e) from None
