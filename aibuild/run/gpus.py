"""--gpus, read exactly as docker run --gpus reads it."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Any

from aibuild import kv
from aibuild.errors import shown
from aibuild.profile.schema import MAX_GPUS

# How an engine without the NVIDIA runtime answers a GPU request.
NO_DRIVER_MARKER = "could not select device driver"


@dataclass(frozen=True)
class GpuRequest:
    """One ``--gpus`` request, field for field what ``docker run --gpus`` sends."""

    count: int = 0  # -1: all
    device_ids: tuple[str, ...] = ()
    driver: str = ""  # empty: the engine picks the driver that has the capabilities
    capabilities: tuple[tuple[str, ...], ...] = (("gpu",),)
    options: tuple[tuple[str, str], ...] = ()

    def to_device_request(self) -> Any:
        """The ``docker.types.DeviceRequest`` for the engine API."""
        from docker.types import DeviceRequest

        return DeviceRequest(
            driver=self.driver,
            count=self.count,
            device_ids=list(self.device_ids),
            capabilities=[list(caps) for caps in self.capabilities],
            options=dict(self.options),
        )

    def describe(self) -> str:
        if self.device_ids:
            return f"device={','.join(self.device_ids)}"
        return "all" if self.count < 0 else str(self.count)


def _parse_count(text: str, whole: str) -> int:
    if text == "all":
        return -1
    try:
        count = int(text)
    except ValueError:
        raise ValueError(
            f"invalid --gpus value {whole!r}: expected all, none, a number of GPUs, "
            "or device=ID[,ID...]"
        ) from None
    if not 0 <= count <= MAX_GPUS:
        raise ValueError(f"invalid --gpus value {whole!r}: the GPU count must be 0 to {MAX_GPUS}")
    return count


def parse_gpus(value: str | None) -> GpuRequest | None:
    """``--gpus`` -> a GpuRequest, or None for no GPUs (``none``, ``0``, empty).

    Same semantics as ``docker run --gpus``: ``all`` is count -1, ``N`` count N,
    ``device=0,1`` device ids ["0", "1"] (no count), capabilities [["gpu"]] (plus any
    ``capabilities=`` given), driver empty unless ``driver=`` says. Docker reads the
    value as CSV, so ``device=0,1`` needs quoting there (``'"device=0,1"'``); here a
    bare ID after ``device=`` (or a capability after ``capabilities=``) continues
    that list, and the quoted form works too. Raises ValueError with a usage message.
    """
    if value is None:
        return None
    text = value.strip()
    if text.lower() in ("", "none", "0"):
        return None
    try:
        fields = next(csv.reader([text]))
    except (csv.Error, StopIteration):
        raise ValueError(f"invalid --gpus value {value!r}") from None
    count: int | None = None
    device_ids: list[str] = []
    driver = ""
    capabilities: list[str] | None = None
    options: dict[str, str] = {}
    seen: set[str] = set()
    last_list: list[str] | None = None
    for position, raw in enumerate(fields):
        item = raw.strip()
        try:
            key, given = kv.split_item(item, option="--gpus", bare=True)
        except ValueError:
            raise ValueError(f"invalid --gpus value {value!r}: unexpected {item!r}") from None
        if given is None:
            if position == 0:
                count = _parse_count(item, value)
                seen.add("count")
                last_list = None
                continue
            if last_list is not None and item:
                last_list.append(item)
                continue
            raise ValueError(f"invalid --gpus value {value!r}: unexpected {item!r}")
        if key in seen:
            raise ValueError(f"invalid --gpus value {value!r}: {key!r} given twice")
        seen.add(key)
        last_list = None
        val = given
        if key == "count":
            count = _parse_count(val, value)
        elif key == "device":
            device_ids = [v.strip() for v in val.split(",") if v.strip()]
            if not device_ids:
                raise ValueError(f"invalid --gpus value {value!r}: device= names no device")
            last_list = device_ids
        elif key == "driver":
            driver = val
        elif key == "capabilities":
            capabilities = [v.strip() for v in val.split(",") if v.strip()]
            last_list = capabilities
        elif key == "options":
            for pair in next(csv.reader([val])):
                name, setting = kv.split_item(pair, option="--gpus options", bare=True)
                options[name] = setting or ""
        else:
            raise ValueError(f"invalid --gpus value {value!r}: unknown key {key!r}")
    if len(device_ids) > MAX_GPUS or any(len(d) > 64 for d in device_ids):
        raise ValueError(f"invalid --gpus value {shown(value)}: too many or too long device IDs")
    if device_ids and count not in (None, 0):
        raise ValueError(f"invalid --gpus value {value!r}: give a count or device IDs, not both")
    if count is None and not device_ids:
        count = 1  # docker: `--gpus driver=nvidia` alone asks for one GPU
    caps = (*capabilities, "gpu") if capabilities is not None else ("gpu",)
    return GpuRequest(
        count=count or 0,
        device_ids=tuple(device_ids),
        driver=driver,
        capabilities=(tuple(dict.fromkeys(caps)),),
        options=tuple(sorted(options.items())),
    )
