"""The documentation stands alone and keeps up with the code: no reference outside the
repository, every relative link resolves, every setting is in the README's table, every
code we send and every HTTP API method is documented."""

from __future__ import annotations

import re
from pathlib import Path

from realtime_server import codes
from realtime_server.api import METHODS
from realtime_server.config import VARIABLES

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DOCS = [README, ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROTOCOL = (ROOT / "docs" / "PROTOCOL.md").read_text()
WIRE = (ROOT / "docs" / "WIRE.md").read_text()


def project_files() -> list[Path]:
    files = [*DOCS, ROOT / "Dockerfile", ROOT / "compose.yaml", ROOT / "Makefile"]
    for folder in ("realtime_server", "tests", "bench", "docs"):
        files.extend(
            p
            for p in (ROOT / folder).rglob("*")
            if p.suffix in (".py", ".md", ".mjs", ".lua", ".sql", ".html", ".js")
            and "node_modules" not in p.parts
        )
    return files


def test_nothing_refers_outside_the_repository() -> None:
    outside = re.compile(r"\.\./shared|shared/(PROTOCOL|protocol|STYLE)")
    offenders = [
        str(p.relative_to(ROOT))
        for p in project_files()
        if p.is_file() and p.name != "test_docs.py" and outside.search(p.read_text())
    ]
    assert not offenders


def test_relative_links_resolve() -> None:
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not broken


def test_readme_configuration_table_lists_every_setting() -> None:
    table = README.read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [v.name for v in VARIABLES if f"`{v.name}`" not in table]
    assert not missing


def test_every_code_we_send_is_documented() -> None:
    sent = [v for v in vars(codes).values() if isinstance(v, codes.ErrorCode | codes.CloseCode)]
    sent_codes = [c.code for c in sent] + [
        codes.UNSUBSCRIBE_SERVER[0],
        codes.UNSUBSCRIBE_INSUFFICIENT[0],
        codes.UNSUBSCRIBE_EXPIRED[0],
        1009,
    ]
    for doc, text in (("PROTOCOL.md", PROTOCOL), ("WIRE.md", WIRE)):
        undocumented = [code for code in sent_codes if not re.search(rf"\b{code}\b", text)]
        assert not undocumented, f"{doc} does not mention {undocumented}"
    for close in (c for c in sent if isinstance(c, codes.CloseCode)):
        assert f"| {close.code} | {close.reason} |" in PROTOCOL, close


def test_every_http_api_method_is_documented() -> None:
    missing = [m for m in METHODS if f"| `{m}` |" not in PROTOCOL]
    assert not missing


def test_readme_has_the_two_commands() -> None:
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert 'REALTIME_JWT_SECRET="$(openssl rand -hex 32)" make serve' in quick
    assert "```sh\nmake test\n```" in quick
