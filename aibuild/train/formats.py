"""The file formats the dataset readers decode, each bounded before it allocates.

Bytes in, tensors out: IDX (raw or gzip), PNG, PGM/PPM, and the python pickles
of CIFAR-10 (read with a restricted unpickler that understands numpy's array
pickles without numpy and refuses every other object, so a hostile pickle
cannot run code). Every size a file declares (image dimensions, an IDX header,
a gzip or zlib stream's expanded length, a pickle's counted strings and memo
indices) is checked against the file and against the limits below before
memory is allocated for it; a file that breaks one raises ``TrainError``.
"""

from __future__ import annotations

import codecs
import io
import pickle
import pickletools
import struct
import zlib
from math import prod
from pathlib import Path
from typing import Any, ClassVar

import torch

from aibuild.errors import TrainError
from aibuild.train.config import shown

MAX_FILE_BYTES = 1 << 30
"""1 GiB: the largest dataset file read into memory."""
MAX_DECOMPRESSED_BYTES = 1 << 30
"""1 GiB: the most a ``.gz`` dataset file may expand to (MNIST's largest file is 47 MB)."""
MAX_IMAGE_PIXELS = 1 << 24
"""16,777,216 (4096 x 4096): the most pixels one image may have."""
MAX_CLASSES = 1 << 16
"""65,536: the most classes a labelled dataset may have (labels 0 .. 65,535)."""

_GZIP_MAGIC = b"\x1f\x8b"


def _check_size(path: Path, what: str) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise TrainError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if size > MAX_FILE_BYTES:
        raise TrainError(
            f"{path}: {size:,} bytes, more than the {MAX_FILE_BYTES:,} a {what} may have"
        )


def read_file(path: Path, what: str) -> bytes:
    """The bytes of ``path``, refused above :data:`MAX_FILE_BYTES` before reading."""
    _check_size(path, what)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TrainError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None


class _TooLarge(TrainError):
    """A compressed stream expands past its limit."""


def _inflate(data: bytes, wbits: int, limit: int, where: str, *, partial: bool = False) -> bytes:
    """Decompress a zlib or gzip (wbits 31, every member) stream to at most ``limit`` bytes.

    More than ``limit`` raises :class:`_TooLarge`; with ``partial``, the first ``limit``
    bytes (or fewer, from a truncated stream) come back instead.
    """
    out = bytearray()
    rest = data
    try:
        while True:
            stream = zlib.decompressobj(wbits)
            out += stream.decompress(rest, limit - len(out) + 1)
            if len(out) > limit:
                if partial:
                    return bytes(out[:limit])
                raise _TooLarge(f"{where}: expands to more than {limit:,} bytes")
            if not stream.eof:
                if partial:
                    return bytes(out)
                raise TrainError(f"{where}: truncated compressed data")
            rest = stream.unused_data
            if wbits != 31 or not rest.startswith(_GZIP_MAGIC):
                return bytes(out)
    except zlib.error as exc:
        raise TrainError(f"{where}: corrupt compressed data ({exc})") from None


# ---------------------------------------------------------------------------- IDX


def _idx_header(raw: bytes, path: Path) -> tuple[tuple[int, ...], int]:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise TrainError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    if raw[2] != 0x08:
        raise TrainError(
            f"{path}: IDX data type 0x{raw[2]:02x} is not supported (need 0x08, ubyte)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise TrainError(f"{path}: truncated IDX header")
    return struct.unpack(f">{ndim}I", raw[4:header]), header


def read_idx(path: Path) -> tuple[tuple[int, ...], bytes]:
    """The dims and raw bytes of an unsigned-byte IDX file (raw or gzip).

    A gzip file is expanded only as far as its IDX header says it holds, and
    never past :data:`MAX_DECOMPRESSED_BYTES`.
    """
    raw = read_file(path, "IDX file")
    if path.suffix == ".gz" or raw[:2] == _GZIP_MAGIC:
        where = f"{path}: cannot read it as an IDX file"
        dims, header = _idx_header(_inflate(raw, 31, 4 + 4 * 255, where, partial=True), path)
        declared = header + prod(dims)
        if declared > MAX_DECOMPRESSED_BYTES:
            raise TrainError(
                f"{path}: its IDX header says {'x'.join(map(str, dims))} = {prod(dims):,} "
                f"bytes, more than the limit of {MAX_DECOMPRESSED_BYTES:,}"
            )
        try:
            raw = _inflate(raw, 31, declared, where)
        except _TooLarge:
            raise TrainError(
                f"{path}: malformed IDX file: its header says {'x'.join(map(str, dims))} = "
                f"{prod(dims)} bytes of data, the file has more"
            ) from None
    dims, header = _idx_header(raw, path)
    expected = prod(dims)
    if len(raw) - header != expected:
        raise TrainError(
            f"{path}: malformed IDX file: its header says {'x'.join(map(str, dims))} = "
            f"{expected} bytes of data, the file has {len(raw) - header}"
        )
    return tuple(dims), raw[header:]


# ---------------------------------------------------------------------------- images


def _check_pixels(width: int, height: int, where: str, kind: str) -> None:
    if width <= 0 or height <= 0:
        raise TrainError(f"{where}: {kind} of {width}x{height} pixels holds no image")
    if width * height > MAX_IMAGE_PIXELS:
        raise TrainError(
            f"{where}: {kind} declares {width}x{height} = {width * height:,} pixels, more "
            f"than the limit of {MAX_IMAGE_PIXELS:,}"
        )


def _png_chunks(data: bytes, where: str) -> tuple[bytes, bytes, bytes]:
    """(IHDR body, PLTE body, concatenated IDAT bodies)."""
    pos, ihdr, palette, idat = 8, b"", b"", bytearray()
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise TrainError(f"{where}: truncated PNG chunk {kind!r}")
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"PLTE":
            palette = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    return ihdr, palette, bytes(idat)


def _unfilter(raw: bytes, height: int, stride: int, bpp: int, where: str) -> bytearray:
    out = bytearray(height * stride)
    prev = bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        row = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        if ftype == 1:
            for i in range(bpp, stride):
                row[i] = (row[i] + row[i - bpp]) & 0xFF
        elif ftype == 2:
            for i in range(stride):
                row[i] = (row[i] + prev[i]) & 0xFF
        elif ftype == 3:
            for i in range(stride):
                left = row[i - bpp] if i >= bpp else 0
                row[i] = (row[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:
            for i in range(stride):
                a = row[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                row[i] = (row[i] + pred) & 0xFF
        elif ftype != 0:
            raise TrainError(f"{where}: bad PNG filter type {ftype} on row {y}")
        out[y * stride : (y + 1) * stride] = row
        prev = row
    return out


def decode_png(data: bytes, where: str = "<png>") -> torch.Tensor:
    """An 8-bit, non-interlaced PNG (grey, grey+alpha, RGB, RGBA, palette) -> uint8 [C,H,W]."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise TrainError(f"{where}: not a PNG file")
    ihdr, palette, idat = _png_chunks(data, where)
    if not ihdr or not idat:
        raise TrainError(f"{where}: PNG without IHDR or image data")
    if len(ihdr) != 13:
        raise TrainError(f"{where}: PNG IHDR chunk of {len(ihdr)} bytes (must be 13)")
    width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", ihdr)
    if depth != 8 or interlace != 0 or ctype not in (0, 2, 3, 4, 6):
        raise TrainError(
            f"{where}: only 8-bit non-interlaced PNGs are supported (bit depth {depth}, "
            f"colour type {ctype}, interlace {interlace})"
        )
    _check_pixels(width, height, where, "PNG")
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    stride = width * channels
    expected = height * (stride + 1)
    raw = _inflate(idat, zlib.MAX_WBITS, expected, f"{where}: PNG image data")
    if len(raw) != expected:
        raise TrainError(f"{where}: PNG data has {len(raw)} bytes, expected {expected}")
    out = _unfilter(raw, height, stride, channels, where)
    img = torch.frombuffer(out, dtype=torch.uint8).view(height, width, channels)
    if ctype == 3:
        if len(palette) < 3 or len(palette) > 768 or len(palette) % 3:
            raise TrainError(f"{where}: palette PNG without a valid palette ({len(palette)} bytes)")
        table = torch.frombuffer(bytearray(palette), dtype=torch.uint8).view(-1, 3)
        index = img[..., 0].long()
        if int(index.max()) >= len(table):
            raise TrainError(
                f"{where}: PNG palette index {int(index.max())} out of range "
                f"(the palette has {len(table)} colours)"
            )
        img = table[index]
    elif ctype in (4, 6):
        img = img[..., :-1]  # drop alpha
    return img.permute(2, 0, 1).contiguous()


def _pnm_header(data: bytes, where: str) -> tuple[list[int], int]:
    fields: list[int] = []
    pos = 2
    while len(fields) < 3:
        while pos < len(data) and data[pos : pos + 1].isspace():
            pos += 1
        if data[pos : pos + 1] == b"#":
            while pos < len(data) and data[pos : pos + 1] not in (b"\n", b"\r"):
                pos += 1
            continue
        start = pos
        while pos < len(data) and data[pos : pos + 1].isdigit():
            pos += 1
        if start == pos or pos - start > 9:
            raise TrainError(f"{where}: malformed PGM/PPM header")
        fields.append(int(data[start:pos]))
    return fields, pos


def decode_pnm(data: bytes, where: str = "<pnm>") -> torch.Tensor:
    """A PGM/PPM (P2, P3, P5, P6; maxval up to 65535) -> uint8 [C,H,W]."""
    magic = data[:2]
    if magic not in (b"P2", b"P3", b"P5", b"P6"):
        raise TrainError(f"{where}: not a PGM/PPM file (magic {magic!r})")
    (width, height, maxval), pos = _pnm_header(data, where)
    _check_pixels(width, height, where, "PGM/PPM")
    if not 1 <= maxval <= 65535:
        raise TrainError(f"{where}: PGM/PPM maxval {maxval} (must be 1 .. 65535)")
    channels = 3 if magic in (b"P3", b"P6") else 1
    count = width * height * channels
    if magic in (b"P5", b"P6"):
        pos += 1  # the single whitespace after maxval
        size = 2 if maxval > 255 else 1
        body = data[pos : pos + count * size]
        if len(body) != count * size:
            raise TrainError(f"{where}: truncated PGM/PPM data")
        if size == 1:
            values = torch.frombuffer(bytearray(body), dtype=torch.uint8).long()
        else:
            values = torch.tensor(struct.unpack(f">{count}H", body), dtype=torch.long)
    else:
        words = data[pos:].split(maxsplit=count)[:count]
        if len(words) < count:
            raise TrainError(f"{where}: truncated PGM/PPM data")
        if not all(w.isdigit() and len(w) <= 5 for w in words):
            bad = next(w for w in words if not (w.isdigit() and len(w) <= 5))
            raise TrainError(f"{where}: PGM/PPM value {shown(bad)} is not a number up to 65535")
        values = torch.tensor([int(w) for w in words], dtype=torch.long)
    if int(values.max()) > maxval:
        raise TrainError(f"{where}: PGM/PPM value {int(values.max())} above maxval {maxval}")
    if maxval != 255:
        values = values * 255 // maxval
    return values.to(torch.uint8).view(height, width, channels).permute(2, 0, 1).contiguous()


def decode_tensor_image(path: Path) -> torch.Tensor:
    """A ``.pt`` file holding one [C,H,W] or [H,W] tensor (floats in 0..1, or uint8)."""
    _check_size(path, "tensor file")
    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:  # a bound that failed must show, not pass as bad input
        raise
    except Exception as exc:
        raise TrainError(
            f"{path}: cannot load the tensor ({shown(str(exc), quote=False)})"
        ) from None
    if not isinstance(t, torch.Tensor) or t.dim() not in (2, 3):
        raise TrainError(f"{path}: expected a [C,H,W] or [H,W] tensor")
    if t.dim() == 2:
        t = t[None]
    _check_pixels(t.shape[2], t.shape[1], str(path), "tensor image")
    if t.shape[0] not in (1, 3):
        raise TrainError(f"{path}: {t.shape[0]} channels (need 1 or 3)")
    if t.is_floating_point():
        t = (t.clamp(0, 1) * 255).round()
    return t.to(torch.uint8)


# ---------------------------------------------------------------------------- pickles


class _NdArray:
    """Stands in for numpy.ndarray while unpickling: keeps shape, dtype and raw bytes."""

    def __init__(self, *args: Any) -> None:
        self.shape: tuple[int, ...] = ()
        self.dtype: _DType | None = None
        self.raw: bytes = b""

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        if len(state) == 5:
            state = state[1:]
        shape, dtype, fortran, raw = state
        if fortran:
            raise pickle.UnpicklingError("Fortran-ordered arrays are not supported")
        if not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError("object arrays are not supported")
        if not isinstance(dtype, _DType):
            raise pickle.UnpicklingError("an array without a dtype")
        shape = tuple(shape)
        if not all(isinstance(n, int) and n >= 0 for n in shape):
            raise pickle.UnpicklingError(f"array shape {shown(shape)} is not a shape")
        declared = prod(shape) * dtype.itemsize()
        if declared != len(raw):
            raise pickle.UnpicklingError(
                f"an array of shape {shown(shape)} needs {declared:,} bytes, it holds {len(raw):,}"
            )
        self.shape, self.dtype, self.raw = shape, dtype, bytes(raw)

    def to_tensor(self) -> torch.Tensor:
        assert self.dtype is not None
        dtype = self.dtype.torch_dtype()
        if not self.raw:
            return torch.empty(self.shape, dtype=dtype)
        return torch.frombuffer(bytearray(self.raw), dtype=dtype).reshape(self.shape)


class _DType:
    """Stands in for numpy.dtype while unpickling."""

    _MAP: ClassVar[dict[str, torch.dtype]] = {
        "u1": torch.uint8,
        "i1": torch.int8,
        "i2": torch.int16,
        "i4": torch.int32,
        "i8": torch.int64,
        "f4": torch.float32,
        "f8": torch.float64,
        "b1": torch.bool,
    }

    def __init__(self, code: Any, *args: Any) -> None:
        if not isinstance(code, str) or code not in self._MAP:
            raise pickle.UnpicklingError(f"array dtype {shown(code)} is not supported")
        self.code = code
        self.byteorder = "|"

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.byteorder = state[1] if len(state) > 1 and isinstance(state[1], str) else "|"
        if self.byteorder == ">":
            raise pickle.UnpicklingError("big-endian arrays are not supported")

    def itemsize(self) -> int:
        return int(self.code[1])

    def torch_dtype(self) -> torch.dtype:
        return self._MAP[self.code]


def _reconstruct(*args: Any) -> _NdArray:
    return _NdArray()


def _scalar(dtype: _DType, raw: bytes) -> int | float:
    if not isinstance(dtype, _DType) or len(raw) != dtype.itemsize():
        raise pickle.UnpicklingError("malformed array scalar")
    result: int | float = torch.frombuffer(bytearray(raw), dtype=dtype.torch_dtype()).item()
    return result


class _SafeUnpickler(pickle.Unpickler):
    """Allows numpy arrays/scalars (as stand-ins) and latin-1 bytes; refuses anything else."""

    _ALLOWED: dict[tuple[str, str], Any] = {  # noqa: RUF012
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.multiarray", "scalar"): _scalar,
        ("numpy._core.multiarray", "scalar"): _scalar,
        ("numpy", "ndarray"): _NdArray,
        ("numpy", "dtype"): _DType,
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {shown(module, quote=False)}.{shown(name, quote=False)}"
            ) from None


_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


def _check_pickle_sizes(raw: bytes) -> None:
    """Every length a pickle declares must fit in the file before the unpickler sees it.

    The C unpickler allocates a counted bytes object, or a memo table up to a
    PUT's index, before it reads; this pass (pure Python, allocating nothing
    the file does not hold) refuses a pickle whose counts overrun the file.
    """
    for ops, (opcode, arg, pos) in enumerate(pickletools.genops(io.BytesIO(raw)), start=1):
        if opcode.name in _MEMO_PUTS and isinstance(arg, int) and arg > ops:
            raise pickle.UnpicklingError(f"memo index {arg:,} at byte {pos} is out of range")
        if opcode.name == "FRAME" and isinstance(arg, int) and arg > len(raw) - (pos or 0):
            raise pickle.UnpicklingError(f"a frame of {arg:,} bytes overruns the file")


def load_pickle(path: Path) -> Any:
    """A python pickle holding only numpy arrays, scalars, bytes, lists and dicts."""
    raw = read_file(path, "pickle")
    try:
        _check_pickle_sizes(raw)
        return _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except MemoryError:  # a bound that failed must show, not pass as bad input
        raise
    except Exception as exc:  # any failure of a hostile pickle: the allowed classes are closed
        raise TrainError(
            f"{path}: not a CIFAR-10 python batch ({shown(str(exc), quote=False)})"
        ) from None


def array_tensor(value: Any) -> torch.Tensor | None:
    """An unpickled numpy array or bytes as a tensor; None for anything else."""
    if isinstance(value, _NdArray):
        return value.to_tensor()
    if isinstance(value, (bytes, bytearray)):
        return torch.frombuffer(bytearray(value), dtype=torch.uint8)
    return None


__all__ = [
    "MAX_CLASSES",
    "MAX_DECOMPRESSED_BYTES",
    "MAX_FILE_BYTES",
    "MAX_IMAGE_PIXELS",
    "array_tensor",
    "decode_png",
    "decode_pnm",
    "decode_tensor_image",
    "load_pickle",
    "read_file",
    "read_idx",
]
