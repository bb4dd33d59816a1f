"""``kamus --help`` and each command's help: whole summaries, every option described, examples
for the commands people type, and default ports that match the images and the chart."""

import re
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from kamus.cli.main import main
from kamus.server import asgi
from kamus.server.services import SERVICES

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = sorted(main.commands)


def help_text(*args: str) -> str:
    # 80 columns: a CI log or a small terminal, where click cuts long summaries with "...".
    result = CliRunner().invoke(main, [*args, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.output


def test_the_command_list_shows_whole_summaries() -> None:
    listing = help_text().split("Commands:", 1)[1]
    assert sorted(re.findall(r"^  (\S+)", listing, re.MULTILINE)) == COMMANDS
    assert "..." not in listing


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_says_what_it_does(name: str) -> None:
    command = main.commands[name]
    undescribed = [
        param.opts[-1]
        for param in command.params
        if isinstance(param, click.Option) and not param.help
    ]
    assert undescribed == []


SUBCOMMANDS = sorted(
    (name, sub)
    for name, command in main.commands.items()
    if isinstance(command, click.Group)
    for sub in command.commands
)


@pytest.mark.parametrize(("group", "name"), SUBCOMMANDS)
def test_every_subcommand_option_says_what_it_does_and_shows_examples(
    group: str, name: str
) -> None:
    command = main.commands[group].commands[name]  # type: ignore[attr-defined]
    undescribed = [
        param.opts[-1]
        for param in command.params
        if isinstance(param, click.Option) and not param.help
    ]
    assert undescribed == []
    text = help_text(group, name)
    examples = text.split("Examples:", 1)[1].split("Options:", 1)[0]
    lines = [line.strip() for line in examples.splitlines() if line.strip()]
    assert any(f"kamus {group} {name}" in line for line in lines), text
    assert all(len(line) <= 90 for line in lines), lines


def test_the_keys_group_has_its_three_commands() -> None:
    assert ("keys", "export") in SUBCOMMANDS
    assert [s for g, s in SUBCOMMANDS if g == "keys"] == ["export", "fetch", "verify"]


@pytest.mark.parametrize("name", ["encrypt", "seal", "init", "serve"])
def test_the_commands_people_type_show_examples(name: str) -> None:
    text = help_text(name)
    examples = text.split("Examples:", 1)[1].split("Options:", 1)[0]
    lines = [line.strip() for line in examples.splitlines() if line.strip()]
    assert any(f"kamus {name}" in line for line in lines), text
    # \b keeps click from joining the example lines into one paragraph.
    assert all(len(line) <= 90 for line in lines), lines


def test_each_service_has_its_own_default_port_as_in_the_images_and_the_chart() -> None:
    ports = {service.name: service.default_port for service in SERVICES.values()}
    assert len(set(ports.values())) == len(ports)
    for service in ("encryptor", "decryptor"):
        dockerfile = (ROOT / f"Dockerfile.{service}").read_text()
        port = ports[service]
        assert f'"--port", "{port}"]' in dockerfile
        assert f"EXPOSE {port}\n" in dockerfile
    for service, port in ports.items():
        if service == "injector":  # a value: 10250 passes a private GKE cluster's firewall
            values = yaml.safe_load((ROOT / "deploy/helm/kamus/values.yaml").read_text())
            assert values["injector"]["port"] == port
            continue
        template = (ROOT / f"deploy/helm/kamus/templates/{service}.yaml").read_text()
        assert f'"port" {port} ' in template
    assert "9091 for the decryptor" in help_text("serve")
    assert "8443 for the injector" in help_text("serve")


def test_kamus_serve_and_the_worker_factories_start_the_same_registry() -> None:
    """``kamus serve --workers N`` hands uvicorn ``kamus.server.asgi:<name>``: one factory for
    each service that may run several workers, and none for one that may not."""
    assert set(main.commands["serve"].params[0].type.choices) == set(SERVICES)  # type: ignore[attr-defined]
    for name, service in SERVICES.items():
        assert hasattr(asgi, name) == service.multi_worker, name
