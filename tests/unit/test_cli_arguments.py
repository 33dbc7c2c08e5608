"""The keramos command's arguments: every one documented, bad values refused before anything runs."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator

import pytest

from keramos.framework.cli import build_parser, main
from keramos.framework.cli.amphora import STATUSES


def parsers(parser: argparse.ArgumentParser, path: str = "keramos") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the tree with its command path, the root first."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, f"{path} {name}")


def undocumented(parser: argparse.ArgumentParser, path: str) -> Iterator[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if not (choice.help or "").strip():
                    yield f"{path} {choice.dest}"
        elif action.help != argparse.SUPPRESS and not (action.help or "").strip():
            yield f"{path} {'/'.join(action.option_strings) or action.dest}"


def test_every_command_and_every_argument_has_help():
    missing = [
        name for path, parser in parsers(build_parser()) for name in undocumented(parser, path)
    ]
    assert missing == []


def test_the_walk_sees_nested_commands_and_their_arguments():
    paths = {path for path, _ in parsers(build_parser())}
    assert {"keramos amphora list", "keramos amphora show", "keramos image sign"} <= paths


def test_amphora_list_refuses_an_unknown_status_listing_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["amphora", "list", "--status", "BOGUS"])
    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert "invalid choice: 'BOGUS'" in error
    assert all(status in error for status in STATUSES)


def test_amphora_list_takes_a_status_in_any_case():
    args = build_parser().parse_args(["amphora", "list", "--status", "ready"])
    assert args.status == "READY"


def test_image_sign_refuses_a_certificate_uuid_that_is_not_one(capsys, tmp_path):
    image = tmp_path / "image"
    image.write_bytes(b"data")
    with pytest.raises(SystemExit) as exited:
        main(["image", "sign", str(image), "--key", "key.pem", "--cert-uuid", "not-a-uuid"])
    assert exited.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert "--cert-uuid: 'not-a-uuid' is not a uuid" in error


def test_image_sign_records_the_canonical_form_of_the_uuid():
    args = build_parser().parse_args(
        ["image", "sign", "f", "--key", "k", "--cert-uuid", "3D3E1A4C6A1F4F0B9D532F8E2B7C9A10"]
    )
    assert args.cert_uuid == "3d3e1a4c-6a1f-4f0b-9d53-2f8e2b7c9a10"


def run_config(tmp_path) -> str:
    config = tmp_path / "keramos.conf"
    config.write_text(
        f"[DEFAULT]\nstate_path = {tmp_path}\n[amphora]\nrequire_signed_images = false\n"
    )
    return str(config)


PAYLOAD = json.dumps({"amphora_id": "cli-payload", "image_id": "img"})


def test_run_takes_the_payload_as_cast_does(capsys, tmp_path):
    code = main(["--config-file", run_config(tmp_path), "run", "create_amphora", "--payload", PAYLOAD, "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["amphora"]["status"] == "READY"
    assert captured.err == ""


def test_run_still_takes_store_with_a_one_line_deprecation_notice(capsys, tmp_path):
    code = main(["--config-file", run_config(tmp_path), "run", "create_amphora", "--store", PAYLOAD, "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.err == "keramos run: --store is deprecated, use --payload\n"
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--store" not in capsys.readouterr().out
