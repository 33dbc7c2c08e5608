"""doc/images.md, run as written: every ``sh`` block in order, in an empty directory, with the
real ``keramos`` and ``openssl`` programs; the image it signs verifies and is recorded active."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.conftest import require
from tests.functional.conftest import BIN

DOC = Path(__file__).resolve().parents[2] / "doc" / "images.md"


def shell_blocks(markdown: str) -> list[str]:
    """The ``sh`` code blocks of a Markdown page, in order."""
    return re.findall(r"^```sh\n(.*?)^```$", markdown, flags=re.S | re.M)


def run_doc(directory: Path) -> subprocess.CompletedProcess:
    script = "set -euo pipefail\n" + "\n".join(shell_blocks(DOC.read_text()))
    return subprocess.run(
        ["bash", "-c", script],
        cwd=directory,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_documented_steps_sign_an_image_that_verifies(tmp_path):
    require(shutil.which("openssl") is not None, "the openssl program")
    assert len(shell_blocks(DOC.read_text())) == 5
    done = run_doc(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads(done.stdout[done.stdout.index("{") :])
    assert record["image"]["status"] == "active"
    assert "Example image signer" in record["image"]["signer"]
    certificate = next((tmp_path / "state" / "image_certificates").glob("*.pem"))
    assert certificate.stat().st_mode & 0o777 == 0o600


def test_the_documented_set_up_refuses_an_altered_image(tmp_path):
    require(shutil.which("openssl") is not None, "the openssl program")
    assert run_doc(tmp_path).returncode == 0
    image = tmp_path / "state" / "images" / "amphora-x64"
    data = bytearray(image.read_bytes())
    data[1000] ^= 0xFF
    image.write_bytes(bytes(data))
    cache = tmp_path / "state" / "image_cache"
    shutil.rmtree(cache, ignore_errors=True)
    done = subprocess.run(
        [str(BIN / "keramos"), "--config-file", "keramos.conf", "image", "verify", "amphora-x64"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "data_modified" in done.stderr
