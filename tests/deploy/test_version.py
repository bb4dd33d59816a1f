"""One version: ``kamus.__version__``. pyproject.toml reads it; the copies that cannot read it
(the chart, the images' label, the examples) must say the same."""

import re
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from kamus import __version__

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_package_has_the_version() -> None:
    assert version("kamus-py") == __version__
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert not re.search(r'^version = "', pyproject, re.M)  # dynamic, not a copy


def test_the_chart_releases_this_version() -> None:
    chart = yaml.safe_load((ROOT / "deploy/helm/kamus/Chart.yaml").read_text())
    assert chart["version"] == __version__
    assert chart["appVersion"] == __version__


@pytest.mark.parametrize("dockerfile", ["Dockerfile.encryptor", "Dockerfile.decryptor"])
def test_the_images_are_labelled_with_this_version(dockerfile: str) -> None:
    assert re.findall(r"^ARG VERSION=(\S+)$", (ROOT / dockerfile).read_text(), re.M) == [
        __version__
    ]


@pytest.mark.parametrize("document", ["example/deployment.yaml", "docs/cli.md"])
def test_examples_name_this_versions_image(document: str) -> None:
    tags = re.findall(r"kamus-decryptor:(\S+)", (ROOT / document).read_text())
    assert tags
    assert set(tags) == {__version__}
