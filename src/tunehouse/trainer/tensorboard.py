"""A dependency-free TensorBoard scalar writer (and reader, for tests and tools).

An event file is a TFRecord stream of ``Event`` protocol buffers; scalars need four message
fields, so they are encoded by hand rather than pulling in protobuf and tensorboard.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

_CRC_TABLE: list[int] = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, *, file_version: str | None = None, scalar=None) -> bytes:
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        out += _field_bytes(3, file_version.encode())
    if scalar is not None:
        tag, value = scalar
        summary_value = _field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", value)
        out += _field_bytes(5, _field_bytes(1, summary_value))  # Event.summary.value[0]
    return out


class ScalarWriter:
    """Appends scalars to ``{logdir}/events.out.tfevents.{time}.{host}``; one file per process."""

    def __init__(self, logdir: Path) -> None:
        logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}"
        self.path = logdir / name
        self._fh = open(self.path, "ab")  # noqa: SIM115 - lives as long as the writer
        self._write(_event(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, data: bytes) -> None:
        header = struct.pack("<Q", len(data))
        self._fh.write(header + struct.pack("<I", _masked_crc(header)) + data)
        self._fh.write(struct.pack("<I", _masked_crc(data)))

    def add_scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        now = time.time()
        for tag, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self._write(_event(now, step, scalar=(prefix + tag, float(value))))
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes):
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        elif wire == 2:
            n, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + n], pos + n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, value


def read_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} across every event file in ``logdir``, checking each CRC."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            header = data[pos : pos + 8]
            (length,) = struct.unpack("<Q", header)
            if struct.unpack("<I", data[pos + 8 : pos + 12])[0] != _masked_crc(header):
                raise ValueError(f"{path}: bad length checksum at byte {pos}")
            record = data[pos + 12 : pos + 12 + length]
            if struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])[0] != _masked_crc(record):
                raise ValueError(f"{path}: bad record checksum at byte {pos}")
            pos += 16 + length
            step = 0
            for number, value in _fields(record):
                if number == 2:
                    step = value
                elif number == 5:
                    for _, summary_value in _fields(value):
                        parts = dict(_fields(summary_value))
                        tag = parts[1].decode()
                        scalars.setdefault(tag, []).append((step, struct.unpack("<f", parts[2])[0]))
    return scalars
