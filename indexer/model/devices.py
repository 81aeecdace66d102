"""Device names: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`parse_device`). Imports nothing heavy, so the
CLI checks ``--device`` without loading the model's runtime."""

from __future__ import annotations

import re

from clipindex.errors import DeviceError

__all__ = ["DEVICES", "parse_device"]

DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
_CUDA_INDEX = re.compile(r"cuda:(\d{1,3})")


def parse_device(device: str) -> tuple[str, int]:
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> ``(kind, cuda_device_id)``; ``cuda`` is ``cuda:0``."""
    text = str(device).strip().lower()
    if text in DEVICES:
        return text, 0
    found = _CUDA_INDEX.fullmatch(text)
    if found:
        return "cuda", int(found.group(1))
    raise DeviceError(f"--device {device!r}: choose one of auto, cpu, cuda or cuda:N (N the GPU's index)")
