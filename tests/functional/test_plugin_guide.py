"""doc/plugins.md works as written: its example package, built from the guide's own text, installs
and passes its own tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.functional.conftest import install_apart

GUIDE = Path(__file__).resolve().parents[2] / "doc" / "plugins.md"
#: A file of the example package: a ``<!-- file: PATH -->`` line, then a fenced block.
FILE_BLOCK = re.compile(r"<!-- file: (?P<path>[^ ]+) -->\n```[a-z]*\n(?P<text>.*?)^```$", re.DOTALL | re.MULTILINE)


def guide_files() -> dict[str, str]:
    return {match["path"]: match["text"] for match in FILE_BLOCK.finditer(GUIDE.read_text(encoding="utf-8"))}


def run(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_the_guide_shows_every_file_of_its_package_tree():
    tree = GUIDE.read_text(encoding="utf-8").split("```\nkeramos-filecompute/", 1)[1].split("```", 1)[0]
    shown = {name for name in re.findall(r"[\w.]+\.(?:py|toml)", tree)}
    assert shown == {Path(path).name for path in guide_files()}


def test_the_guides_example_package_installs_and_passes_its_tests(tmp_path):
    for path, text in guide_files().items():
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    package = tmp_path / "keramos-filecompute"
    env = install_apart(package, tmp_path / "site")
    listed = run(str(Path(sys.executable).parent / "keramos"), "drivers", "--check", cwd=tmp_path, env=env)
    assert any(
        line.split()[:2] == ["filecompute", "keramos_filecompute.compute:FileCompute"] and "[ok]" in line
        for line in listed.stdout.splitlines()
    ), listed.stdout
    tested = run(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests", cwd=package, env=env)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    summary = tested.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"=+ 3 passed in [\d.]+s =+", summary), tested.stdout
