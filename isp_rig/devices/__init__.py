"""Capture devices: one module per adapter, one interface (:mod:`isp_rig.devices.base`).

:func:`build_device` turns a rig file's ``[[device]]`` entry (merged over its
profile) into a device. Adapters: ``gphoto`` (DSLR over libgphoto2),
``adb`` (an Android phone over ADB), ``companion`` (a phone app speaking the
companion-bridge protocol) and ``folder`` (a phone whose files appear in a
folder).
"""

from __future__ import annotations

from typing import Any, Mapping

from isp_rig.devices.base import Device, DeviceConfigError
from isp_rig.profiles import load_profile

ADAPTERS = ("gphoto", "folder", "adb", "companion")
_COMMON = {"name", "kind", "profile", "adapter", "settings", "latency_s"}
_GPHOTO = {"model", "port", "capture_target", "image_format", "settings_map", "busy_retries",
           "busy_backoff_s", "event_timeout_s", "poll_ms", "settle_s"}
_FOLDER = {"folder", "model", "raw_extensions", "companion_extensions", "tolerance_s", "clock_offset_s",
           "stable_s", "poll_s", "recursive", "trigger", "trigger_timeout_s"}
_ADB = {"serial", "address", "adb_host", "adb_port", "camera_folder", "raw_extensions", "companion_extensions",
        "trigger", "delete_after_copy", "stable_s", "poll_s", "clock_samples", "model"}
_COMPANION = {"url", "request_timeout_s", "poll_s", "clock_samples", "model"}
_OPTIONS = {"gphoto": _GPHOTO, "folder": _FOLDER, "adb": _ADB, "companion": _COMPANION}


def resolve_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The entry merged over its profile's adapter section: every option spelled out.

    Returns a dict with ``name``, ``kind`` ('dslr' | 'phone', from the profile;
    downstream stages read it from session.toml), ``adapter``, ``profile``, ``settings``,
    ``latency_s`` and the adapter's options. Raises DeviceConfigError
    for a missing name, an unknown adapter or an unknown option.
    """
    name = entry.get("name")
    if not name or not isinstance(name, str):
        raise DeviceConfigError(str(name), "every [[device]] needs a name")
    profile = load_profile(entry["profile"]) if entry.get("profile") else {}
    head = profile.get("profile", {})
    adapter = entry.get("adapter") or head.get("adapter")
    if adapter not in ADAPTERS:
        raise DeviceConfigError(name, f"unknown adapter {adapter!r}; available: {', '.join(ADAPTERS)}")
    allowed = _COMMON | _OPTIONS[adapter]
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise DeviceConfigError(name, f"unknown option(s) {unknown} for adapter {adapter!r}; "
                                             f"valid: {sorted(allowed)}")
    options = dict(profile.get(adapter, {}))
    if adapter in ("folder", "adb", "companion"):
        options.setdefault("model", head.get("model", "unknown phone"))
    options.update({k: v for k, v in entry.items() if k not in _COMMON})
    latency = entry.get("latency_s", profile.get("latency", {}).get("trigger_s", 0.0))
    kind = entry.get("kind") or head.get("kind") or ("dslr" if adapter == "gphoto" else "phone")
    return {"name": name, "kind": kind, "adapter": adapter, "profile": entry.get("profile"),
            "settings": dict(entry.get("settings", {})), "latency_s": float(latency), "options": options}


def build_device(resolved: Mapping[str, Any]) -> Device:
    """A device from :func:`resolve_entry`'s result."""
    name, adapter, options = resolved["name"], resolved["adapter"], dict(resolved["options"])
    if adapter == "gphoto":
        from isp_rig.devices.gphoto import GPhotoCamera

        return GPhotoCamera(name, **options)
    for key in ("raw_extensions", "companion_extensions"):
        if key in options:
            options[key] = tuple(options[key])
    if adapter == "adb":
        from isp_rig.devices.adb import AdbPhone

        return AdbPhone(name, **options)
    if adapter == "companion":
        from isp_rig.devices.companion import CompanionPhone

        if "url" not in options:
            raise DeviceConfigError(name, "a companion device needs `url = \"http://phone:8765\"`")
        return CompanionPhone(name, options.pop("url"), **options)
    from isp_rig.devices.folder import WatchedFolder

    if "folder" not in options:
        raise DeviceConfigError(name, "a folder device needs `folder = \"/path/the/phone/writes/to\"`")
    folder = options.pop("folder")
    return WatchedFolder(name, folder, **options)
