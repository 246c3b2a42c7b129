"""The image contract (aibuild.contract): the template, run, the Dev Container file and
the exports read its names; none of them writes the values again."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aibuild import contract
from aibuild._resources import templates_dir
from aibuild.image.render import render_dockerfile
from aibuild.profile.resolve import plan_for
from aibuild.run.config import ContainerOptions, container_config
from aibuild.run.rendezvous import Rendezvous


def test_the_template_writes_no_contract_value() -> None:
    text = (Path(templates_dir()) / "Dockerfile.j2").read_text(encoding="utf-8")
    for literal in (str(contract.UID), contract.WORKSPACE, contract.OUTPUT_DIR,
                    contract.PROFILE_PATH, contract.RUNTIME_DIR, "useradd --create-home "
                    "--uid 1"):  # fmt: skip
        assert literal not in text, literal


def test_the_rendered_image_follows_the_contract(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contract, "UID", 4242)
    monkeypatch.setattr(contract, "USER_SPEC", "4242:4242")
    monkeypatch.setattr(contract, "USER", "trainer")
    monkeypatch.setattr(contract, "PROFILE_PATH", "/etc/elsewhere/profile.yaml")
    text = render_dockerfile(plan_for("cpu"))
    assert "--uid 4242 --user-group --shell /bin/bash trainer" in text
    assert re.search(r"^USER 4242:4242$", text, re.M)
    assert "COPY profile.yaml /etc/elsewhere/profile.yaml" in text
    assert 'AIBUILD_PROFILE="/etc/elsewhere/profile.yaml"' in text
    assert 'ENTRYPOINT ["aibuild", "train"]' in text


def test_run_and_the_rendezvous_use_the_contract(tmp_path: Path) -> None:
    config = container_config(
        ContainerOptions(data=str(tmp_path), output=str(tmp_path), user="0:0"), "x"
    )
    targets = sorted(m["Target"] for m in config["mounts"])
    assert targets == sorted([contract.DATA_DIR, contract.OUTPUT_DIR])
    assert config["environment"][contract.ENV_DATA] == contract.DATA_DIR
    argv = Rendezvous(2, 1, "h:1").torchrun()
    assert argv[-len(contract.TRAIN_ENTRYPOINT) :] == list(contract.TRAIN_ENTRYPOINT)
