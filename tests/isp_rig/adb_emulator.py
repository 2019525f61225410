"""A device-side ADB emulator: the phone end of the ADB transport over TCP.

The real adb server (the binary adbutils ships) connects to it with
``adb connect 127.0.0.1:PORT`` exactly as it connects to a phone in wireless
debugging, so the adapter under test talks to a real adb server through
adbutils, and only the phone is emulated. Implemented from the ADB protocol
(system/core/adb/protocol.txt, SYNC.TXT):

* transport messages: 24-byte header (command, arg0, arg1, length, checksum,
  magic = command ^ 0xffffffff) and payload; CNXN without AUTH, OPEN, OKAY,
  WRTE with one unacknowledged WRTE per stream, CLSE;
* services: ``shell:CMD`` (v1, output then close; shell_v2 is not
  advertised) and ``sync:`` with STAT, LIST (DENT ... DONE), RECV (DATA ...
  DONE or FAIL) and QUIT;
* shell commands a camera rig needs: ``getprop``, ``date +%s.%N``,
  ``input keyevent 27|KEYCODE_CAMERA``, ``am start ...STILL_IMAGE_CAMERA``,
  ``sha256sum``, ``rm``; anything else answers like Android's shell does for
  an unknown command.

The camera app: a key event makes it write, after ``latency_s``, a DNG from
the rig simulator (EXIF capture time on the phone's clock) and, when
``jpeg`` is set, its own JPEG, each first under a hidden ``.pending-`` name
(as MediaStore does) and then renamed.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import os
import shlex
import socket
import struct
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

A_CNXN, A_OPEN, A_OKAY, A_CLSE, A_WRTE, A_AUTH = (0x4E584E43, 0x4E45504F, 0x59414B4F, 0x45534C43,
                                                 0x45545257, 0x48545541)
A_VERSION = 0x01000001
MAX_PAYLOAD = 256 * 1024
SYNC_DATA_MAX = 64 * 1024
S_IFREG, S_IFDIR = 0o100000, 0o040000
ROOTS = ("/sdcard/", "/storage/emulated/0/")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return bytes(data)


def default_raw_writer(path: Path, when: _dt.datetime) -> None:
    """A DNG from the rig simulator whose EXIF capture time is ``when``."""
    from isp_rig import simulate
    from isp_rig.devices.virtual import scene_pair

    raw = scene_pair("adb-emulator").phone
    raw = dataclasses.replace(raw, exif=dataclasses.replace(raw.exif, capture_time=when))
    simulate.write_dng(path, raw)


@dataclasses.dataclass
class _Stream:
    local: int
    remote: int
    service: str
    out: deque = dataclasses.field(default_factory=deque)
    ready: bool = True
    close_after: bool = False
    inbuf: bytearray = dataclasses.field(default_factory=bytearray)


class AdbDeviceEmulator:
    """The phone: a TCP listener speaking the device side of ADB.

    Args:
        storage: host folder that backs ``/sdcard``.
        model, serial, manufacturer: what ``getprop`` answers.
        clock_offset_s: the phone clock minus the host clock.
        latency_s: key event -> exposure.
        deliver: False makes the camera app never write a file.
        jpeg: the camera app writes RAW+JPEG.
        corrupt_reads: how many RECV transfers get one byte flipped (a bad cable).
    """

    def __init__(self, storage: Path, *, model: str = "MI 3", serial: str = "emu-mi3",
                 manufacturer: str = "Xiaomi", clock_offset_s: float = 0.0, latency_s: float = 0.05,
                 deliver: bool = True, jpeg: bool = True, corrupt_reads: int = 0,
                 raw_writer: Callable[[Path, _dt.datetime], None] = default_raw_writer) -> None:
        self.storage = Path(storage)
        self.model, self.serial, self.manufacturer = model, serial, manufacturer
        self.clock_offset_s = clock_offset_s
        self.latency_s = latency_s
        self.deliver = deliver
        self.jpeg = jpeg
        self.corrupt_reads = corrupt_reads
        self.raw_writer = raw_writer
        self.camera_dir = "/sdcard/DCIM/Camera"
        self.shots = 0
        self.commands: list[str] = []
        self.errors: list[str] = []
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        (self.storage / "DCIM" / "Camera").mkdir(parents=True, exist_ok=True)

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> int:
        """Listen on 127.0.0.1; returns the port."""
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(4)
        self._spawn(self._accept_loop)
        return self._sock.getsockname()[1]

    def stop(self) -> None:
        """Close the listener and every connection (the phone goes away)."""
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            self._spawn(_Connection(self, conn).run)

    # -- the phone's filesystem ----------------------------------------------
    def host_path(self, device_path: str) -> Path | None:
        """The host file behind a device path, or None outside /sdcard."""
        for root in ROOTS:
            if device_path == root.rstrip("/"):
                return self.storage
            if device_path.startswith(root):
                rel = Path(device_path[len(root):])
                if ".." in rel.parts:
                    return None
                return self.storage / rel
        return None

    def phone_now(self) -> float:
        """The phone clock (epoch seconds)."""
        return time.time() + self.clock_offset_s

    # -- shell ---------------------------------------------------------------
    def run_shell(self, command: str) -> bytes:
        """Answer one ``shell:`` command like Android's shell."""
        self.commands.append(command)
        try:
            argv = shlex.split(command)
        except ValueError as err:
            return f"/system/bin/sh: syntax error: {err}\n".encode()
        if not argv:
            return b""
        name, args = argv[0], argv[1:]
        if name == "getprop":
            props = {"ro.product.model": self.model, "ro.serialno": self.serial,
                     "ro.product.manufacturer": self.manufacturer, "ro.build.version.sdk": "23"}
            return (props.get(args[0], "") + "\n").encode() if args else b""
        if name == "date" and args == ["+%s.%N"]:
            return f"{self.phone_now():.9f}\n".encode()
        if name == "input" and args[:1] == ["keyevent"] and args[1:] in (["27"], ["KEYCODE_CAMERA"]):
            self._shutter()
            return b""
        if name == "am" and args[:1] == ["start"] and "android.media.action.STILL_IMAGE_CAMERA" in args:
            return b"Starting: Intent { act=android.media.action.STILL_IMAGE_CAMERA }\n"
        if name == "sha256sum" and args:
            lines = []
            for path in args:
                host = self.host_path(path)
                if host is None or not host.is_file():
                    lines.append(f"sha256sum: {path}: No such file or directory")
                else:
                    lines.append(f"{hashlib.sha256(host.read_bytes()).hexdigest()}  {path}")
            return ("\n".join(lines) + "\n").encode()
        if name == "rm":
            paths = [a for a in args if not a.startswith("-")]
            out = []
            for path in paths:
                host = self.host_path(path)
                if host is None or not host.is_file():
                    out.append(f"rm: {path}: No such file or directory")
                else:
                    host.unlink()
            return ("\n".join(out) + "\n").encode() if out else b""
        return f"/system/bin/sh: {name}: inaccessible or not found\n".encode()

    def _shutter(self) -> None:
        with self._lock:
            self.shots += 1
            number = self.shots
        pressed = time.time()
        self._spawn(self._expose, pressed, number)

    def _expose(self, pressed: float, number: int) -> None:
        try:
            time.sleep(self.latency_s)
            if not self.deliver:
                return
            when = _dt.datetime.fromtimestamp(pressed + self.latency_s + self.clock_offset_s)
            stem = f"IMG_{when:%Y%m%d_%H%M%S}_{number:03d}"
            folder = self.host_path(self.camera_dir)
            pending = folder / f".pending-{stem}.dng"
            self.raw_writer(pending, when)
            stamp = self.phone_now()
            os.utime(pending, (stamp, stamp))  # file times on the phone's clock
            pending.rename(folder / f"{stem}.dng")
            if self.jpeg:
                pending_jpg = folder / f".pending-{stem}.jpg"
                pending_jpg.write_bytes(b"\xff\xd8\xff\xe0 phone ISP jpeg " + stem.encode() + b"\xff\xd9")
                os.utime(pending_jpg, (stamp, stamp))
                pending_jpg.rename(folder / f"{stem}.jpg")
        except Exception as err:  # noqa: BLE001  the camera app's crash log
            self.errors.append(f"{type(err).__name__}: {err}")


class _Connection:
    """One transport connection from the adb server."""

    def __init__(self, device: AdbDeviceEmulator, sock: socket.socket) -> None:
        self.device = device
        self.sock = sock
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.max_payload = MAX_PAYLOAD
        self.send_lock = threading.Lock()

    def send(self, command: int, arg0: int, arg1: int, payload: bytes = b"") -> None:
        header = struct.pack("<6I", command, arg0, arg1, len(payload), sum(payload) & 0xFFFFFFFF,
                             command ^ 0xFFFFFFFF)
        with self.send_lock:
            self.sock.sendall(header + payload)

    def run(self) -> None:
        try:
            while True:
                command, arg0, arg1, length, _check, magic = struct.unpack("<6I", _recv_exact(self.sock, 24))
                if magic != command ^ 0xFFFFFFFF:
                    raise ConnectionError("bad ADB header magic")
                payload = _recv_exact(self.sock, length) if length else b""
                self.handle(command, arg0, arg1, payload)
        except (ConnectionError, OSError):
            pass
        except Exception as err:  # noqa: BLE001
            self.device.errors.append(f"transport: {type(err).__name__}: {err}")
        finally:
            self.sock.close()

    def handle(self, command: int, arg0: int, arg1: int, payload: bytes) -> None:
        if command == A_CNXN:
            self.max_payload = min(arg1 or MAX_PAYLOAD, MAX_PAYLOAD)
            d = self.device
            banner = (f"device::ro.product.name={d.model.lower().replace(' ', '')};"
                      f"ro.product.model={d.model};ro.product.device=emulator;features=cmd\0")
            self.send(A_CNXN, A_VERSION, self.max_payload, banner.encode())
        elif command == A_OPEN:
            self.open(arg0, payload.rstrip(b"\0").decode("utf-8", "replace"))
        elif command == A_OKAY:
            stream = self.streams.get(arg1)
            if stream is not None:
                stream.ready = True
                self.pump(stream)
        elif command == A_WRTE:
            stream = self.streams.get(arg1)
            if stream is None:
                return
            self.send(A_OKAY, stream.local, stream.remote)
            if stream.service == "sync:":
                stream.inbuf += payload
                self.sync(stream)
        elif command == A_CLSE:
            stream = self.streams.pop(arg1, None)
            if stream is not None:
                self.send(A_CLSE, stream.local, stream.remote)
        elif command == A_AUTH:
            pass  # never sent: this phone does not ask for a key

    def open(self, remote: int, service: str) -> None:
        local = self.next_id
        self.next_id += 1
        if service.startswith("shell:"):
            stream = _Stream(local, remote, service)
            self.streams[local] = stream
            self.send(A_OKAY, local, remote)
            self.write(stream, self.device.run_shell(service[len("shell:"):]), close=True)
        elif service == "sync:":
            stream = _Stream(local, remote, service)
            self.streams[local] = stream
            self.send(A_OKAY, local, remote)
        else:
            self.send(A_CLSE, 0, remote)  # service not available

    def write(self, stream: _Stream, data: bytes, close: bool = False) -> None:
        step = self.max_payload
        for i in range(0, len(data), step):
            stream.out.append(data[i:i + step])
        stream.close_after = stream.close_after or close
        self.pump(stream)

    def pump(self, stream: _Stream) -> None:
        if stream.ready and stream.out:
            stream.ready = False
            self.send(A_WRTE, stream.local, stream.remote, stream.out.popleft())
        elif stream.ready and not stream.out and stream.close_after:
            self.streams.pop(stream.local, None)
            self.send(A_CLSE, stream.local, stream.remote)

    # -- sync service --------------------------------------------------------
    def sync(self, stream: _Stream) -> None:
        buf = stream.inbuf
        while len(buf) >= 8:
            request = bytes(buf[:4]).decode("ascii", "replace")
            length = struct.unpack("<I", buf[4:8])[0]
            if request == "QUIT":
                del buf[:8]
                self.write(stream, b"", close=True)
                return
            if len(buf) < 8 + length:
                return
            path = bytes(buf[8:8 + length]).decode("utf-8", "replace")
            del buf[:8 + length]
            host = self.device.host_path(path)
            if request == "STAT":
                if host is not None and host.exists():
                    st = host.stat()
                    mode = (S_IFDIR if host.is_dir() else S_IFREG) | 0o660
                    self.write(stream, b"STAT" + struct.pack("<III", mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime)))
                else:
                    self.write(stream, b"STAT" + struct.pack("<III", 0, 0, 0))
            elif request == "LIST":
                out = bytearray()
                if host is not None and host.is_dir():
                    for entry in sorted(host.iterdir()):
                        st = entry.stat()
                        mode = (S_IFDIR if entry.is_dir() else S_IFREG) | 0o660
                        name = entry.name.encode()
                        out += b"DENT" + struct.pack("<IIII", mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime),
                                                     len(name)) + name
                out += b"DONE" + struct.pack("<IIII", 0, 0, 0, 0)
                self.write(stream, bytes(out))
            elif request == "RECV":
                if host is None or not host.is_file():
                    msg = f"remote object '{path}' does not exist".encode()
                    self.write(stream, b"FAIL" + struct.pack("<I", len(msg)) + msg)
                    continue
                data = bytearray(host.read_bytes())
                if self.device.corrupt_reads > 0 and data:
                    self.device.corrupt_reads -= 1
                    data[len(data) // 2] ^= 0xFF
                out = bytearray()
                for i in range(0, len(data), SYNC_DATA_MAX):
                    chunk = data[i:i + SYNC_DATA_MAX]
                    out += b"DATA" + struct.pack("<I", len(chunk)) + chunk
                out += b"DONE" + struct.pack("<I", 0)
                self.write(stream, bytes(out))
            else:
                msg = f"unsupported sync request {request}".encode()
                self.write(stream, b"FAIL" + struct.pack("<I", len(msg)) + msg)
