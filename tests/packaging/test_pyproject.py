"""``pyproject.toml`` declares how the product builds and the same runtime dependencies as ``requirements.txt``."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _requirements_txt() -> dict[str, str]:
    lines = (line.split("#", 1)[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines())
    return {Requirement(line).name.lower(): str(Requirement(line)) for line in lines if line}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_runtime_dependencies_are_requirements_txt_pin_for_pin() -> None:
    texts = _pyproject()["project"]["dependencies"]
    declared = {Requirement(text).name.lower(): str(Requirement(text)) for text in texts}
    wanted = _requirements_txt()
    missing = sorted(set(wanted) - set(declared))
    extra = sorted(set(declared) - set(wanted))
    different = sorted(f"{name}: {declared[name]} != {wanted[name]}" for name in set(wanted) & set(declared)
                       if declared[name] != wanted[name])
    assert not (missing or extra or different), (f"pyproject.toml vs requirements.txt: missing {missing}, "
                                                 f"extra {extra}, different {different}")
    assert all("==" in requirement for requirement in wanted.values()), "every runtime dependency is pinned"


def test_there_is_a_build_system_and_it_packages_the_product_only() -> None:
    project = _pyproject()
    assert project["build-system"]["build-backend"]
    assert set(project["tool"]["setuptools"]["packages"]["find"]["include"]) == {"functions*", "shared*", "sluice*"}
