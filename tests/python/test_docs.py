"""The documentation holds together: every relative link of README.md and docs/*.md
resolves (file and heading anchor), and docs/cli.md documents exactly the options
the binary's `--help` lists."""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(path):
    """The lines of a Markdown file outside fenced code blocks."""
    inside = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield line


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return "".join(c for c in text if c.isalnum() or c in " -_").replace(" ", "-")


def anchors(path):
    seen, out = {}, set()
    for line in prose_lines(path):
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def relative_links():
    for doc in DOCS:
        for line in prose_lines(doc):
            for target in LINK.findall(line):
                if re.match(r"^[a-z]+:", target):
                    continue
                yield doc, target


@pytest.mark.parametrize("doc,target", list(relative_links()), ids=lambda v: str(v))
def test_relative_link_resolves(doc, target):
    path, _, anchor = target.partition("#")
    dest = (doc.parent / path).resolve() if path else doc
    assert dest.exists(), f"{doc.relative_to(ROOT)}: {target} names no file"
    if anchor and dest.suffix == ".md":
        assert anchor in anchors(dest), f"{doc.relative_to(ROOT)}: {target}: no such heading"


def test_readme_lists_every_document():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for doc in (ROOT / "docs").glob("*.md"):
        assert f"(docs/{doc.name})" in readme, f"README.md does not link docs/{doc.name}"


def binary():
    exe = os.environ.get("ONNX_PROTECT_BIN") or str(ROOT / "target" / "debug" / "onnx-protect")
    if not os.access(exe, os.X_OK):
        pytest.skip("no onnx-protect binary (set ONNX_PROTECT_BIN)")
    return exe


def help_text(*args):
    return subprocess.run([binary(), *args, "--help"], capture_output=True, text=True, check=True).stdout


def commands(*parent):
    """The subcommands a help text lists (`policy`'s `search` under `policy`, and so on)."""
    text = help_text(*parent)
    if "Commands:" not in text:
        return []
    text = text.split("Commands:")[1].split("Options:")[0]
    return [m.group(1) for m in re.finditer(r"^  ([a-z][a-z-]*)\s", text, re.M) if m.group(1) != "help"]


def options(text):
    """The long options an Options: section of a help text lists."""
    text = text.split("Options:")[1].split("Exit codes:")[0]
    return set(re.findall(r"^\s+(?:-[a-zA-Z], )?(--[a-z][a-z0-9-]*)", text, re.M))


def test_cli_md_documents_every_option_and_only_those():
    cli = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", cli))
    listed = set()
    for cmd in commands():
        assert f"`{cmd}`" in cli or f"## `{cmd}" in cli, f"docs/cli.md does not document `{cmd}`"
        for path in [(cmd,)] + [(cmd, sub) for sub in commands(cmd)]:
            opts = options(help_text(*path))
            listed |= opts
            missing = sorted(o for o in opts if o not in documented)
            assert not missing, f"docs/cli.md does not document {missing} of `{' '.join(path)}`"
    if {"run", "assess"} <= set(commands()):
        stale = sorted(documented - listed - {"--version"})
        assert not stale, f"docs/cli.md documents options the binary does not have: {stale}"
