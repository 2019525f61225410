"""Reference server of the companion-app bridge protocol (``isp-rig-companion/1``).

A phone app that holds an open camera session implements this small HTTP +
JSON protocol; this module is the reference implementation in Python, serving
a camera folder. Its capture is pluggable (``capture``): the default writes
the rig simulator's DNG, so the tests and the virtual rig exercise the whole
protocol. The protocol is documented in docs/capture.md; in short:

==========================  ===================================================
``GET  /hello``             ``{"protocol", "make", "model", "serial",
                            "clock_ns"}``: the phone's wall clock in ns
``POST /arm``               ``{"armed": true}``: get ready (focus/AE lock)
``POST /fire``              body ``{"shot": str}``; answers after the exposure:
                            ``{"shot", "sensor_timestamp_ns", "capture_wall_ns",
                            "files": [names]}``
``GET  /files``             ``{"files": [{"name", "size", "sha256",
                            "mtime_ns", "complete"}]}``
``GET  /files/<name>``      the bytes; headers ``Content-Length``, ``X-Sha256``
==========================  ===================================================

Errors answer ``{"error": "..."}`` with status 400 (bad request), 404 (no such
file) or 500 (the camera failed). Run one with
``python -m isp_rig.devices.companion_server --folder DIR [--port N]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote

PROTOCOL = "isp-rig-companion/1"


def simulator_capture(folder: Path, stem: str, when: _dt.datetime) -> list[Path]:
    """Default capture: the rig simulator's phone raw as ``<stem>.dng`` (EXIF time ``when``)."""
    from isp_rig import simulate
    from isp_rig.devices.virtual import scene_pair

    raw = scene_pair("companion").phone
    raw = dataclasses.replace(raw, exif=dataclasses.replace(raw.exif, capture_time=when))
    path = folder / f"{stem}.dng"
    simulate.write_dng(path, raw)
    return [path]


class CompanionServer:
    """The reference companion server.

    Args:
        folder: the camera folder it serves (files appear here).
        make, model, serial: what ``/hello`` says.
        latency_s: fire request -> exposure.
        clock_offset_s: the phone clock minus the host clock.
        capture: ``f(folder, stem, when) -> [paths]`` writes one capture.
        host, port: where to listen (port 0: any free port).
    """

    def __init__(self, folder: Path | str, *, make: str = "Apple", model: str = "iPhone 6s",
                 serial: str = "companion-1", latency_s: float = 0.02, clock_offset_s: float = 0.0,
                 capture: Callable[[Path, str, _dt.datetime], list[Path]] = simulator_capture,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.make, self.model, self.serial = make, model, serial
        self.latency_s = latency_s
        self.clock_offset_s = clock_offset_s
        self.capture = capture
        self.count = 0
        self.armed = False
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._writing: set[str] = set()
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port``."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        """Serve in a background thread; returns the URL."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def phone_now_ns(self) -> int:
        """The phone's wall clock, ns."""
        return time.time_ns() + int(self.clock_offset_s * 1e9)

    # -- protocol ------------------------------------------------------------
    def hello(self) -> dict[str, Any]:
        """Answer of ``GET /hello``."""
        return {"protocol": PROTOCOL, "make": self.make, "model": self.model, "serial": self.serial,
                "clock_ns": self.phone_now_ns()}

    def fire(self, shot: str) -> dict[str, Any]:
        """Expose now (after the latency), write the files, answer with the sensor timestamp."""
        with self._lock:
            self.count += 1
            number = self.count
        time.sleep(self.latency_s)
        sensor = time.monotonic_ns()
        wall = self.phone_now_ns()
        stem = f"IMG_{number:04d}"
        self._writing.add(stem)
        try:
            when = _dt.datetime.fromtimestamp(wall / 1e9)
            paths = self.capture(self.folder, stem, when)
        finally:
            self._writing.discard(stem)
        return {"shot": shot, "sensor_timestamp_ns": sensor, "capture_wall_ns": wall,
                "files": [p.name for p in paths]}

    def listing(self) -> dict[str, Any]:
        """Answer of ``GET /files``: every file with size, sha256 and whether it is complete."""
        files = []
        for path in sorted(self.folder.iterdir()):
            if not path.is_file() or path.name.startswith("."):
                continue
            st = path.stat()
            key = (path.name, st.st_size, st.st_mtime_ns)
            if key not in self._hashes:
                self._hashes[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            files.append({"name": path.name, "size": st.st_size, "sha256": self._hashes[key],
                          "mtime_ns": st.st_mtime_ns, "complete": path.stem not in self._writing})
        return {"files": files}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:  # quiet; requests are recorded
                server.requests.append(f"{self.command} {self.path}")

            def _json(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b"{}"
                value = json.loads(raw or b"{}")
                if not isinstance(value, dict):
                    raise ValueError("the body must be a JSON object")
                return value

            def do_GET(self) -> None:  # noqa: N802  (http.server's name)
                if self.path == "/hello":
                    return self._json(200, server.hello())
                if self.path == "/files":
                    return self._json(200, server.listing())
                if self.path.startswith("/files/"):
                    name = unquote(self.path[len("/files/"):])
                    path = server.folder / name
                    if "/" in name or name.startswith(".") or not path.is_file():
                        return self._json(404, {"error": f"no such file: {name}"})
                    data = path.read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("X-Sha256", hashlib.sha256(data).hexdigest())
                    self.end_headers()
                    self.wfile.write(data)
                    return None
                return self._json(404, {"error": f"unknown path {self.path}"})

            def do_POST(self) -> None:  # noqa: N802
                try:
                    body = self._body()
                except ValueError as err:
                    return self._json(400, {"error": f"bad JSON body: {err}"})
                if self.path == "/arm":
                    server.armed = True
                    return self._json(200, {"armed": True})
                if self.path == "/fire":
                    shot = body.get("shot")
                    if not isinstance(shot, str) or not shot:
                        return self._json(400, {"error": "fire needs {\"shot\": \"<id>\"}"})
                    try:
                        return self._json(200, server.fire(shot))
                    except Exception as err:  # noqa: BLE001  the camera failed: say so
                        return self._json(500, {"error": f"capture failed: {type(err).__name__}: {err}"})
                return self._json(404, {"error": f"unknown path {self.path}"})

        return Handler


def main() -> None:
    """``python -m isp_rig.devices.companion_server --folder DIR [--port N]``."""
    parser = argparse.ArgumentParser(description="Reference companion-app bridge server")
    parser.add_argument("--folder", required=True, type=Path, help="camera folder to serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency", type=float, default=0.02, help="fire -> exposure, seconds")
    args = parser.parse_args()
    server = CompanionServer(args.folder, host=args.host, port=args.port, latency_s=args.latency)
    print(f"serving {args.folder} at {server.url} ({PROTOCOL}); Ctrl-C stops", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    main()
