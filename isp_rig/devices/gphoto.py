"""The DSLR adapter: any camera libgphoto2 can remote-control (Nikon Z6 first).

One camera session stays open for the whole capture (opening one costs a
second or more on real bodies). Settings are applied by widget name, and a
value must be one of the widget's own choices (read from the camera, never
hard-coded). A shot is ``trigger_capture`` followed by ``wait_for_event``
until the expected FILE_ADDED events arrived, then ``file_get`` of each file.

Faults:

* a busy camera (GP_ERROR_CAMERA_BUSY) gets ``busy_retries`` retries with a
  growing pause, then :class:`DeviceBusy`;
* any other failure of the trigger (USB gone, I/O error, a camera in an
  error state) closes and reopens the session once, re-applies the settings
  and triggers again; if that fails too, :class:`DeviceDisconnected`;
* a PTP StoreFull event after a trigger (a full card, or libgphoto2's
  virtual camera at its per-session limit) reopens and fires once more; a
  second StoreFull fails the shot.

python-gphoto2 reads ``VCAMERADIR`` (the virtual camera's folder) when it is
first imported, so this module imports ``gphoto2`` only when a camera is
first used.
"""

from __future__ import annotations

import datetime as _dt
import gc
import re
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from alignment import exif
from isp_rig.devices.base import (CaptureTimeout, CapturedFile, Device, DeviceBusy, DeviceConfigError,
                                  DeviceDisconnected, DeviceError, DeviceInfo, DeviceNotFound, FireRecord,
                                  timed_call)

_RAW_WORDS = re.compile(r"raw|nef|cr2|cr3|crw|arw|raf|orf|rw2|pef|dng|srw|x3f", re.IGNORECASE)
_STOREFULL = re.compile(r"PTP Event 400a\b", re.IGNORECASE)  # PTP 1.0 event code 0x400A: StoreFull
IMAGE_FORMAT_WIDGETS = ("imageformat", "imagequality")
CAPTURE_TARGET_WIDGET = "capturetarget"


def gphoto2_module():
    """The ``gphoto2`` module, imported on first use."""
    import gphoto2  # noqa: PLC0415  (deliberately late: VCAMERADIR is read at import)

    return gphoto2


def autodetect() -> list[tuple[str, str]]:
    """(model, port) of every camera libgphoto2 finds now."""
    gp = gphoto2_module()
    found = gp.Camera.autodetect()
    return [(found.get_name(i), found.get_value(i)) for i in range(found.count())]


def open_camera(model: str | None = None, port: str | None = None):
    """An initialised ``gphoto2.Camera`` for the camera matching ``model``/``port``.

    ``model`` matches case-insensitively as a substring of the detected model
    name; ``port`` exactly (e.g. ``usb:001,004``). With neither, exactly one
    camera must be attached. Raises :class:`DeviceNotFound` listing what was found.
    """
    gp = gphoto2_module()
    cameras = autodetect()
    matches = [(m, p) for m, p in cameras
               if (model is None or model.lower() in m.lower()) and (port is None or p == port)]
    exact = [(m, p) for m, p in matches if model is not None and m.lower() == model.lower()]
    matches = exact or matches  # 'Nikon Z6' must not also pick a 'Nikon Z6_2'
    wanted = " ".join(f"{k}={v!r}" for k, v in (("model", model), ("port", port)) if v) or "any camera"
    if not matches:
        raise DeviceNotFound(model or port or "camera",
                             f"no camera matches {wanted}; found: {cameras or 'none'}")
    if len(matches) > 1:
        raise DeviceNotFound(model or port or "camera",
                             f"{len(matches)} cameras match {wanted} ({matches}); give the port")
    model_name, port_path = matches[0]
    camera = gp.Camera()
    ports = gp.PortInfoList()
    ports.load()
    camera.set_port_info(ports[ports.lookup_path(port_path)])
    abilities = gp.CameraAbilitiesList()
    abilities.load()
    camera.set_abilities(abilities[abilities.lookup_model(model_name)])
    camera.init()
    return camera


def walk_widgets(widget) -> dict[str, Any]:
    """Every leaf widget of a config tree by name (first one wins on duplicates)."""
    gp = gphoto2_module()
    out: dict[str, Any] = {}
    stack = [widget]
    while stack:
        w = stack.pop(0)
        if w.get_type() in (gp.GP_WIDGET_WINDOW, gp.GP_WIDGET_SECTION):
            stack.extend(w.get_child(i) for i in range(w.count_children()))
        else:
            out.setdefault(w.get_name(), w)
    return out


def widget_choices(widget) -> list[str]:
    """The choices of a radio/menu widget (empty for other kinds)."""
    gp = gphoto2_module()
    if widget.get_type() not in (gp.GP_WIDGET_RADIO, gp.GP_WIDGET_MENU):
        return []
    return [widget.get_choice(i) for i in range(widget.count_choices())]


def pick_raw_plus_jpeg(choices: Sequence[str]) -> str | None:
    """The image-format choice that records a raw file *and* the best JPEG, or None.

    Reads the camera's own strings: a choice naming a raw format and a '+'
    (Nikon 'NEF+Fine', Canon 'RAW + Large Fine JPEG'); among those, the one
    mentioning 'fine' and 'large' wins, ties to the first listed.
    """
    both = [c for c in choices if "+" in c and _RAW_WORDS.search(c)]
    if not both:
        return None
    return max(both, key=lambda c: (("fine" in c.lower()) * 2 + ("large" in c.lower()), -both.index(c)))


def _match_choice(value: str, choices: Sequence[str]) -> str | None:
    if value in choices:
        return value
    norm = [c for c in choices if c.replace(" ", "").lower() == value.replace(" ", "").lower()]
    return norm[0] if len(norm) == 1 else None


class GPhotoCamera(Device):
    """A camera over libgphoto2 (python-gphoto2).

    Args:
        name: device name in the rig.
        model, port: which camera (see :func:`open_camera`).
        capture_target: 'card' keeps every capture on the memory card (never
            lose a file), 'internal' uses the camera's RAM, None leaves it.
        image_format: 'raw+jpeg' selects the camera's RAW+JPEG choice where it
            offers one (recorded in describe() when it does not), None leaves it.
        settings_map: logical name -> widget name (from the profile), so a rig
            can say ``shutter`` for ``shutterspeed``.
        busy_retries, busy_backoff_s: bounded retry of a busy camera (the pause
            doubles each time).
        event_timeout_s: longest wait for a FILE_ADDED after a trigger.
        settle_s: after CAPTURE_COMPLETE, how long to keep listening for a late file.
        camera_factory: ``f(model, port) -> initialised camera``; default
            :func:`open_camera`. Tests wrap the real camera to inject latency.
    """

    adapter = "gphoto"

    def __init__(self, name: str, *, model: str | None = None, port: str | None = None,
                 capture_target: str | None = "card", image_format: str | None = "raw+jpeg",
                 settings_map: Mapping[str, str] | None = None, busy_retries: int = 5,
                 busy_backoff_s: float = 0.05, event_timeout_s: float = 15.0, poll_ms: int = 100,
                 settle_s: float = 0.3,
                 camera_factory: Callable[[str | None, str | None], Any] | None = None) -> None:
        super().__init__(name)
        self.model = model
        self.port = port
        self.capture_target = capture_target
        self.image_format = image_format
        self.settings_map = dict(settings_map or {})
        self.busy_retries = busy_retries
        self.busy_backoff_s = busy_backoff_s
        self.event_timeout_s = event_timeout_s
        self.poll_ms = poll_ms
        self.settle_s = settle_s
        self.camera_factory = camera_factory or open_camera
        self.camera: Any = None
        self.applied: dict[str, Any] = {}
        self.format_note: str | None = None
        self.expected_files = 1
        self.last_fire: FireRecord | None = None
        self.reopens = 0
        self.busy_retries_used = 0
        self._lock = threading.RLock()

    # -- session -----------------------------------------------------------
    def connect(self) -> None:
        """Open the camera session (once) and set capture target and image format."""
        with self._lock:
            if self.camera is not None:
                return
            self._open()

    def _open(self) -> None:
        gp = gphoto2_module()
        try:
            self.camera = self.camera_factory(self.model, self.port)
        except gp.GPhoto2Error as err:
            raise DeviceNotFound(self.name, f"cannot open camera: {err}") from err
        try:
            self._apply_format_and_target()
            if self.applied:
                self._apply(self.applied)
        except gp.GPhoto2Error as err:
            raise DeviceError(self.name, f"camera opened but refused its configuration: {err}") from err

    def close(self) -> None:
        """End the camera session; safe to call twice."""
        with self._lock:
            camera, self.camera = self.camera, None
            if camera is not None:
                try:
                    camera.exit()
                except gphoto2_module().GPhoto2Error:
                    pass  # the camera may already be gone

    def _reopen(self, why: str) -> None:
        self.close()
        gc.collect()  # the old camera object must be gone before libgphoto2 reopens the port
        self.reopens += 1
        try:
            self._open()
        except DeviceError as err:
            raise DeviceDisconnected(self.name, f"{why}; reopening failed: {err.reason}") from err

    def _require(self):
        if self.camera is None:
            raise DeviceError(self.name, "not connected (call connect() first)")
        return self.camera

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Call a camera method, retrying a busy camera up to ``busy_retries`` times."""
        gp = gphoto2_module()
        pause = self.busy_backoff_s
        for attempt in range(self.busy_retries + 1):
            try:
                return fn(*args)
            except gp.GPhoto2Error as err:
                if err.code != gp.GP_ERROR_CAMERA_BUSY:
                    raise
                self.busy_retries_used += 1
                if attempt == self.busy_retries:
                    raise DeviceBusy(self.name, f"{what}: camera busy after {self.busy_retries} retries "
                                                f"({err})") from err
                time.sleep(pause)
                pause *= 2
        raise AssertionError("unreachable")

    # -- description and settings -------------------------------------------
    def describe(self) -> DeviceInfo:
        """Model (libgphoto2's name and the camera's own), serial, clock offset (1 s resolution)."""
        gp = gphoto2_module()
        with self._lock:
            camera = self._require()
            try:
                widgets = walk_widgets(self._call("get_config", camera.get_config))
            except gp.GPhoto2Error as err:
                raise DeviceError(self.name, f"cannot read the camera's configuration: {err}") from err

            def value(widget_name: str) -> Any:
                return widgets[widget_name].get_value() if widget_name in widgets else None

            offset = None
            clock = value("datetime")
            if isinstance(clock, (int, float)) and clock > 0:
                offset = float(clock) - time.time()
            extra = {"camera_model": value("cameramodel"), "manufacturer": value("manufacturer"),
                     "firmware": value("deviceversion"), "image_format": self.format_note,
                     "expected_files_per_shot": self.expected_files, "reopens": self.reopens,
                     "widgets": sorted(widgets)}
            return DeviceInfo(name=self.name, adapter=self.adapter, model=camera.get_abilities().model,
                              serial=value("serialnumber"), clock_offset_s=offset,
                              extra={k: v for k, v in extra.items() if v is not None})

    def _apply_format_and_target(self) -> None:
        camera = self._require()
        config = self._call("get_config", camera.get_config)
        widgets = walk_widgets(config)
        changed = False
        if self.capture_target:
            widget = widgets.get(CAPTURE_TARGET_WIDGET)
            if widget is not None:
                word = {"card": "card", "internal": "ram"}[self.capture_target]
                pick = [c for c in widget_choices(widget) if word in c.lower()]
                if not pick:
                    raise DeviceConfigError(self.name, f"capture target {self.capture_target!r} not offered",
                                            widget_choices(widget))
                if widget.get_value() != pick[0]:
                    widget.set_value(pick[0])
                    changed = True
        self.expected_files = 1
        self.format_note = None
        if self.image_format == "raw+jpeg":
            widget = next((widgets[n] for n in IMAGE_FORMAT_WIDGETS if n in widgets), None)
            if widget is None:
                self.format_note = "camera offers no image format setting: its default format only"
            else:
                pick = pick_raw_plus_jpeg(widget_choices(widget))
                if pick is None:
                    self.format_note = f"no RAW+JPEG choice in {widget.get_name()}: left at {widget.get_value()!r}"
                else:
                    if widget.get_value() != pick:
                        widget.set_value(pick)
                        changed = True
                    self.format_note = pick
                    self.expected_files = 2
        if changed:
            self._call("set_config", camera.set_config, config)

    def configure(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Set widgets by name (or by the profile's logical name); returns widget -> value read back.

        Raises DeviceConfigError with the valid widget names, or the valid
        choices of a radio/menu widget, when a name or value is not offered.
        """
        gp = gphoto2_module()
        with self._lock:
            self._require()
            resolved = {self.settings_map.get(k, k): v for k, v in settings.items()}
            try:
                applied = self._apply(resolved)
            except gp.GPhoto2Error as err:
                raise DeviceError(self.name, f"configuring {sorted(resolved)} failed: {err}") from err
            self.applied.update(resolved)
            return applied

    def _apply(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        gp = gphoto2_module()
        camera = self._require()
        config = self._call("get_config", camera.get_config)
        widgets = walk_widgets(config)
        for name, value in settings.items():
            widget = widgets.get(name)
            if widget is None:
                raise DeviceConfigError(self.name, f"camera has no setting {name!r}; it has: "
                                                   f"{', '.join(sorted(widgets))}", sorted(widgets))
            if widget.get_readonly():
                raise DeviceConfigError(self.name, f"setting {name!r} is read-only on this camera")
            kind = widget.get_type()
            if kind in (gp.GP_WIDGET_RADIO, gp.GP_WIDGET_MENU):
                choices = widget_choices(widget)
                pick = _match_choice(str(value), choices)
                if pick is None:
                    raise DeviceConfigError(self.name, f"{name}={value!r} is not offered; valid choices: "
                                                       f"{', '.join(choices)}", choices)
                widget.set_value(pick)
            elif kind == gp.GP_WIDGET_TOGGLE:
                widget.set_value(int(bool(value)))
            elif kind == gp.GP_WIDGET_RANGE:
                low, high, _step = widget.get_range()
                if not low <= float(value) <= high:
                    raise DeviceConfigError(self.name, f"{name}={value!r} outside [{low}, {high}]")
                widget.set_value(float(value))
            elif kind == gp.GP_WIDGET_DATE:
                widget.set_value(int(value))
            else:
                widget.set_value(str(value))
        if settings:
            try:
                self._call("set_config", camera.set_config, config)
            except gp.GPhoto2Error as err:
                raise DeviceConfigError(self.name, f"camera refused settings {dict(settings)}: {err}") from err
        now = walk_widgets(self._call("get_config", camera.get_config))
        return {name: now[name].get_value() for name in settings}

    # -- shooting ----------------------------------------------------------
    def arm(self) -> None:
        """Drain queued camera events so the next FILE_ADDED belongs to the next trigger."""
        gp = gphoto2_module()
        with self._lock:
            camera = self._require()
            try:
                for _ in range(100):
                    kind, _data = self._call("wait_for_event", camera.wait_for_event, 1)
                    if kind == gp.GP_EVENT_TIMEOUT:
                        break
            except gp.GPhoto2Error:
                pass  # a broken session shows itself at fire(), where it is reopened

    def fire(self) -> FireRecord:
        """``trigger_capture`` now; busy -> bounded retry; other failure -> reopen once."""
        gp = gphoto2_module()
        with self._lock:
            self._require()
            self.busy_retries_used = 0
            trigger = lambda: self._call("trigger_capture", self._require().trigger_capture)  # noqa: E731
            failure = None
            try:
                record = timed_call(self.name, trigger)
            except gp.GPhoto2Error as err:
                failure = str(err)
            if failure is not None:
                # Reopen outside the except block: the traceback would keep the
                # old camera object (and libgphoto2's port) alive.
                self._reopen(f"trigger failed ({failure})")
                second = None
                try:
                    record = timed_call(self.name, trigger, attempts=2,
                                        notes=[f"trigger failed ({failure}); reopened the camera session"])
                except gp.GPhoto2Error as err:
                    second = str(err)
                if second is not None:
                    raise DeviceDisconnected(self.name, f"trigger failed ({failure}), reopened, "
                                                        f"failed again ({second})")
            if self.busy_retries_used:
                record.notes.append(f"camera busy: retried {self.busy_retries_used} time(s)")
                record.attempts += self.busy_retries_used
            self.last_fire = record
            return record

    def collect(self, timeout_s: float | None = None) -> list[CapturedFile]:
        """Follow events to the FILE_ADDED(s) of the last trigger and download each file."""
        with self._lock:
            timeout = self.event_timeout_s if timeout_s is None else timeout_s
            paths = self._wait_for_files(timeout)
            if paths is None:  # StoreFull before any file
                self._reopen("camera reported its storage full (PTP StoreFull)")
                refire = self.fire()
                refire.notes.insert(0, "storage full after the trigger: reopened and fired again")
                refire.attempts += 1
                paths = self._wait_for_files(timeout)
                if paths is None:
                    raise DeviceError(self.name, "camera storage full (PTP StoreFull) even after "
                                                 "reopening: free the card")
            return [self._download(folder, name) for folder, name in paths]

    def _wait_for_files(self, timeout_s: float) -> list[tuple[str, str]] | None:
        """(folder, name) of the files added after the trigger; None on StoreFull before any file."""
        gp = gphoto2_module()
        camera = self._require()
        deadline = time.monotonic() + timeout_s
        files: list[tuple[str, str]] = []
        complete_at: float | None = None
        while True:
            now = time.monotonic()
            if len(files) >= self.expected_files:
                return files
            if complete_at is not None and files and now - complete_at >= self.settle_s:
                return files
            if now >= deadline:
                if files:
                    return files
                raise CaptureTimeout(self.name, f"no FILE_ADDED event within {timeout_s:.1f} s of the trigger")
            wait_ms = max(1, min(self.poll_ms, int((deadline - now) * 1000)))
            try:
                kind, data = self._call("wait_for_event", camera.wait_for_event, wait_ms)
            except gp.GPhoto2Error as err:
                lost = str(err)
            else:
                lost = None
            if lost is not None:
                del camera
                reason = f"lost the camera while waiting for the file ({lost})"
                self._reopen(reason)  # raises DeviceDisconnected if the camera stays away
                raise DeviceDisconnected(self.name, reason + "; reopened the session for the next shot "
                                                             "(any file of this shot stays on the card)")
            if kind == gp.GP_EVENT_FILE_ADDED:
                files.append((data.folder, data.name))
            elif kind == gp.GP_EVENT_CAPTURE_COMPLETE:
                complete_at = time.monotonic()
            elif kind == gp.GP_EVENT_UNKNOWN and isinstance(data, str) and _STOREFULL.search(data):
                if not files:
                    return None

    def _download(self, folder: str, name: str) -> CapturedFile:
        gp = gphoto2_module()
        camera = self._require()
        try:
            cam_file = self._call("file_get", camera.file_get, folder, name, gp.GP_FILE_TYPE_NORMAL)
            data = bytes(memoryview(cam_file.get_data_and_size()))
        except gp.GPhoto2Error as err:
            raise DeviceError(self.name, f"download of {folder}/{name} failed: {err} "
                                         "(the file stays on the camera)") from err
        when = exif.capture_time(exif.read_tags(data))
        source = "exif" if when is not None else None
        if when is None:
            try:
                info = self._call("file_get_info", camera.file_get_info, folder, name)
                if info.file.fields & gp.GP_FILE_INFO_MTIME:
                    when = _dt.datetime.fromtimestamp(info.file.mtime, _dt.timezone.utc)
                    source = "camera_mtime"
            except gp.GPhoto2Error:
                pass
        return CapturedFile(name=name, device_path=f"{folder}/{name}", data=data,
                            capture_time=when, capture_time_source=source)
