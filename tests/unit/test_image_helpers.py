"""Base facts read from an image: os-release and the inspection output (no engine needed)."""

from __future__ import annotations

from aibuild.image.helpers import parse_inspection, parse_os_release


def test_os_release() -> None:
    debian = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
    ubuntu = 'NAME="Ubuntu"\nID=ubuntu\nVERSION_ID="22.04"\n'
    assert parse_os_release(debian) == "debian12"
    assert parse_os_release(ubuntu) == "ubuntu22.04"
    assert parse_os_release("ID=alpine\nVERSION_ID=3.20.0\n") is None
    assert parse_os_release("") is None


def test_inspection_output() -> None:
    output = "## python\ntorch==2.13.0+cpu\nClick==8.5.1\n## os\nbash=5.2.15-2+b7\ndpkg=1.21.22\n"
    python, system = parse_inspection(output)
    assert python == ["Click==8.5.1", "torch==2.13.0+cpu"]
    assert system == ["bash=5.2.15-2+b7", "dpkg=1.21.22"]
