"""isp-rig: capture, align and learn from smartphone-raw / DSLR image pairs."""

__version__ = "0.1.0"
