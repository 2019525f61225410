"""The companion-app adapter: a phone app holding an open camera session,
reached over HTTP + JSON (protocol ``isp-rig-companion/1``, see
:mod:`isp_rig.devices.companion_server` and docs/capture.md).

The lowest-latency phone path: the app keeps its camera open, so ``fire``
costs one request, and it answers with the sensor timestamp of the exposure
and the names of the files it writes. The adapter then waits until the
listing marks those files complete, downloads each and checks its sha256
against both the listing and the ``X-Sha256`` header. The phone clock is
measured at connect from ``/hello`` round trips (shortest wins).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import http.client
import json
import time
import urllib.parse
from typing import Any, Mapping

from isp_rig.devices.base import (CaptureTimeout, CapturedFile, ClockSample, Device, DeviceConfigError, DeviceDisconnected,
                                  DeviceError, DeviceInfo, DeviceNotFound, FireRecord, timed_call)

PROTOCOL = "isp-rig-companion/1"


class CompanionPhone(Device):
    """A phone running a companion app at ``url`` (``http://host:port``).

    Args:
        name: device name in the rig.
        url: the app's address.
        request_timeout_s: per-request socket timeout.
        poll_s: listing interval while waiting for files.
        clock_samples: ``/hello`` round trips used to measure the clock.
    """

    adapter = "companion"

    def __init__(self, name: str, url: str, *, request_timeout_s: float = 10.0, poll_s: float = 0.02,
                 clock_samples: int = 5, model: str | None = None) -> None:
        super().__init__(name)
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise DeviceConfigError(name, f"companion url must look like http://host:port, not {url!r}")
        self.url = url
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.request_timeout_s = request_timeout_s
        self.poll_s = poll_s
        self.clock_samples = clock_samples
        self.profile_model = model
        self.hello: dict[str, Any] = {}
        self.clock: ClockSample | None = None
        self.last_fire: FireRecord | None = None
        self.last_answer: dict[str, Any] = {}
        self._conn: http.client.HTTPConnection | None = None
        self._shot = 0

    # -- transport -----------------------------------------------------------
    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None,
                 raw: bool = False) -> Any:
        """One request on the kept-alive connection (reconnected once if it dropped)."""
        payload = json.dumps(dict(body)).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        last: Exception | None = None
        for _attempt in range(2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.request_timeout_s)
            try:
                self._conn.request(method, path, body=payload, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as err:
                self._conn.close()
                self._conn = None
                last = err
                continue
            if response.status != 200:
                try:
                    message = json.loads(data).get("error", data[:200])
                except ValueError:
                    message = data[:200]
                raise DeviceError(self.name, f"{method} {path}: HTTP {response.status}: {message}")
            if raw:
                return data, response.getheader("X-Sha256")
            try:
                return json.loads(data)
            except ValueError as err:
                raise DeviceError(self.name, f"{method} {path}: not JSON: {data[:80]!r}") from err
        raise DeviceDisconnected(self.name, f"companion app at {self.url} unreachable: {last}")

    # -- session -----------------------------------------------------------
    def connect(self) -> None:
        """Say hello, check the protocol, measure the phone clock."""
        best: ClockSample | None = None
        for _ in range(max(1, self.clock_samples)):
            t0 = time.time_ns()
            try:
                hello = self._request("GET", "/hello")
            except DeviceDisconnected as err:
                raise DeviceNotFound(self.name, err.reason) from err
            t1 = time.time_ns()
            if hello.get("protocol") != PROTOCOL:
                raise DeviceNotFound(self.name, f"{self.url} speaks {hello.get('protocol')!r}, not {PROTOCOL}")
            sample = ClockSample(offset_s=(hello["clock_ns"] - (t0 + t1) / 2) / 1e9, round_trip_s=(t1 - t0) / 1e9)
            if best is None or sample.round_trip_s < best.round_trip_s:
                best = sample
            self.hello = hello
        self.clock = best

    def describe(self) -> DeviceInfo:
        """What ``/hello`` said, with the measured clock offset."""
        return DeviceInfo(name=self.name, adapter=self.adapter,
                          model=f"{self.hello.get('make', '')} {self.hello.get('model', '')}".strip()
                          or (self.profile_model or "?"),
                          serial=self.hello.get("serial"),
                          clock_offset_s=self.clock.offset_s if self.clock else None,
                          extra={"url": self.url, "protocol": self.hello.get("protocol"),
                                 "clock_round_trip_s": self.clock.round_trip_s if self.clock else None})

    def configure(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Protocol version 1 carries no settings: any setting is refused with the reason."""
        if settings:
            raise DeviceConfigError(self.name, f"{PROTOCOL} has no settings (got {sorted(settings)}); "
                                               "set them in the app")
        return {}

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- shooting ----------------------------------------------------------
    def arm(self) -> None:
        """``POST /arm``."""
        self._request("POST", "/arm", {})

    def fire(self) -> FireRecord:
        """``POST /fire``: returns once the app has exposed; its answer is kept for collect()."""
        self._shot += 1
        shot = f"{self.name}-{self._shot}"

        def call() -> None:
            self.last_answer = self._request("POST", "/fire", {"shot": shot})

        record = timed_call(self.name, call)
        self.last_fire = record
        return record

    def collect(self, timeout_s: float) -> list[CapturedFile]:
        """Wait until the fired files are complete in ``/files``; download and verify each."""
        names = list(self.last_answer.get("files", []))
        if not names:
            raise CaptureTimeout(self.name, "the app fired but named no files")
        deadline = time.monotonic() + timeout_s
        while True:
            listing = {f["name"]: f for f in self._request("GET", "/files")["files"]}
            if all(n in listing and listing[n].get("complete") for n in names):
                break
            if time.monotonic() >= deadline:
                missing = [n for n in names if not listing.get(n, {}).get("complete")]
                raise CaptureTimeout(self.name, f"files {missing} not complete within {timeout_s:.1f} s")
            time.sleep(self.poll_s)
        wall = self.last_answer.get("capture_wall_ns")
        when = _dt.datetime.fromtimestamp(wall / 1e9, _dt.timezone.utc) if wall else None
        out = []
        for name in names:
            data, header_sha = self._request("GET", "/files/" + urllib.parse.quote(name), raw=True)
            got = hashlib.sha256(data).hexdigest()
            listed = listing[name]
            if got != listed["sha256"] or len(data) != listed["size"] or (header_sha and header_sha != got):
                raise DeviceError(self.name, f"{name}: download does not match the app's sha256/size "
                                             f"({len(data)} bytes {got[:12]}..., listed {listed['size']} bytes "
                                             f"{listed['sha256'][:12]}...); the file stays on the phone")
            out.append(CapturedFile(name=name, device_path=name, data=data, capture_time=when,
                                    capture_time_source="sensor" if when else None))
        return out
