"""--gpus parsing: the same requests `docker run --gpus` sends (no engine needed)."""

from __future__ import annotations

import pytest

from aibuild.run.gpus import GpuRequest, parse_gpus


@pytest.mark.parametrize("value", [None, "none", "NONE", "", "0"])
def test_no_gpus(value: str | None) -> None:
    assert parse_gpus(value) is None


def test_all_is_count_minus_one() -> None:
    req = parse_gpus("all")
    assert req == GpuRequest(count=-1)
    assert req is not None
    api = req.to_device_request()
    assert api == {
        "Driver": "",
        "Count": -1,
        "DeviceIDs": [],
        "Capabilities": [["gpu"]],
        "Options": {},
    }


def test_number_is_count() -> None:
    req = parse_gpus("2")
    assert req is not None
    assert req.to_device_request()["Count"] == 2
    assert req.device_ids == ()
    assert req.describe() == "2"


@pytest.mark.parametrize("value", ["device=0,1", '"device=0,1"', "device=0, 1"])
def test_device_ids(value: str) -> None:
    req = parse_gpus(value)
    assert req is not None
    api = req.to_device_request()
    assert api["DeviceIDs"] == ["0", "1"]
    assert api["Count"] == 0
    assert api["Capabilities"] == [["gpu"]]
    assert req.describe() == "device=0,1"


def test_device_uuid() -> None:
    req = parse_gpus("device=GPU-3a23c669-1f69-c64e-cf85-44e9b07e7a2a")
    assert req is not None
    assert req.device_ids == ("GPU-3a23c669-1f69-c64e-cf85-44e9b07e7a2a",)


def test_capabilities_add_gpu_like_docker() -> None:
    req = parse_gpus("all,capabilities=compute,utility")
    assert req is not None
    assert req.count == -1
    assert req.capabilities == (("compute", "utility", "gpu"),)


def test_driver_and_count_keys() -> None:
    req = parse_gpus("driver=nvidia,count=4")
    assert req == GpuRequest(count=4, driver="nvidia")


def test_driver_alone_asks_for_one_gpu() -> None:
    req = parse_gpus("driver=nvidia")
    assert req is not None
    assert req.count == 1


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("lots", "expected all, none, a number"),
        ("-1", "0 to 1024"),
        ("99999999999999999999", "0 to 1024"),
        ("2,3", "unexpected '3'"),
        ("device=", "names no device"),
        ("count=2,device=0", "not both"),
        ("colour=red", "unknown key 'colour'"),
        ("count=1,count=2", "given twice"),
    ],
)
def test_bad_values_say_why(value: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="invalid --gpus value") as info:
        parse_gpus(value)
    assert fragment in str(info.value)
