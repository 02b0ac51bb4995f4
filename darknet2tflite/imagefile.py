"""Reading an image file's bytes safely, and what its header says, before any decoder runs.

Why not ``cv2.imread(path)``: it crashes the process (SIGSEGV) on a file name that is not
valid UTF-8, it opens whatever the name points at (a FIFO blocks forever), and it allocates
the full decoded image before anyone could check its size.  Here the bytes are read by
Python (regular files only, opened non-blocking), the header gives the pixel count, which
must be within :data:`bounds.MAX_IMAGE_PIXELS`, and a JPEG or PNG that stops before its end
marker is refused as truncated (libjpeg would otherwise decode the missing part as grey and
only print a warning).  The caller then decodes the bytes with ``cv2.imdecode``.
"""
from __future__ import annotations

import os
import stat
import struct
from typing import NamedTuple

from .bounds import MAX_IMAGE_PIXELS, check_image_size
from .errors import InputError, shown_path

#: an image file larger than this is refused unread (a 50 Mpx BMP is 150 MB)
MAX_IMAGE_BYTES = 4 * MAX_IMAGE_PIXELS


class Header(NamedTuple):
    format: str   # "jpeg", "png", "bmp" or "other"
    width: int
    height: int


def read_image_bytes(path: str | os.PathLike[str]) -> bytes:
    """The file's bytes; a FIFO, device, folder or oversized file raises InputError unread."""
    where = shown_path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"{where}: "
                         + ("dangling symlink" if os.path.islink(path) else "file not found"))
    except OSError as e:
        raise InputError(f"{where}: cannot open ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{where}: not a regular file")
        if st.st_size > MAX_IMAGE_BYTES:
            raise InputError(f"{where}: {st.st_size} bytes, more than the {MAX_IMAGE_BYTES} an "
                             "image file may have (README: Limits)")
        chunks = []
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)
    except OSError as e:
        raise InputError(f"{where}: cannot read ({e.strerror})") from None
    finally:
        os.close(fd)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:          # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (seglen,) = struct.unpack(">H", data[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        if marker == 0xDA or seglen < 2:   # scan data before any frame header
            return None
        i += 2 + seglen
    return None


#: extensions whose header image_header reads: a file so named must carry that header
CLAIMED_FORMAT = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".bmp": "bmp"}


def image_header(data: bytes) -> Header | None:
    """Format and size from the first bytes, or None when they are not JPEG/PNG/BMP (or the
    header itself is cut short)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        w, h = struct.unpack(">II", data[16:24])
        return Header("png", w, h)
    if data[:2] == b"\xff\xd8":
        size = _jpeg_size(data)
        return Header("jpeg", *size) if size else None
    if data[:2] == b"BM" and len(data) >= 26:
        (dib,) = struct.unpack("<I", data[14:18])
        if dib == 12:
            w, h = struct.unpack("<HH", data[18:22])
        else:
            w, h = struct.unpack("<ii", data[18:26])
        return Header("bmp", abs(w), abs(h))
    return Header("other", 0, 0)


def check_image_bytes(data: bytes, path: str | os.PathLike[str]) -> Header:
    """Header within bounds and, for JPEG/PNG, the end marker present.  Formats other than
    JPEG/PNG/BMP are left to the decoder (``OPENCV_IO_MAX_IMAGE_PIXELS`` bounds those)."""
    where = shown_path(path)
    hdr = image_header(data)
    if hdr is None:
        raise InputError(f"{where}: truncated or malformed image header")
    if hdr.format == "other":
        claimed = CLAIMED_FORMAT.get(os.path.splitext(os.fspath(path))[1].lower())
        if claimed:  # named .png/.jpg/.bmp but not one: refuse it here, not at calibration
            raise InputError(f"{where}: not a {claimed.upper()} file (its first bytes are "
                             f"no {claimed.upper()} header)")
        return hdr
    check_image_size(hdr.width, hdr.height, where)
    if hdr.format == "jpeg" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise InputError(f"{where}: truncated JPEG (the file ends inside the image data)")
    if hdr.format == "png" and data.rfind(b"IEND") < 0:
        raise InputError(f"{where}: truncated PNG (no IEND chunk)")
    return hdr


def probe_image(path: str | os.PathLike[str]) -> Header:
    """Everything short of decoding: readable regular file, header, bounds, not truncated."""
    return check_image_bytes(read_image_bytes(path), path)


__all__ = ["Header", "MAX_IMAGE_BYTES", "check_image_bytes", "image_header", "probe_image",
           "read_image_bytes"]
