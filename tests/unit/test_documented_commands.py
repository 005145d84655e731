"""The commands README.md and docs/*.md show still exist: every `imem ...` names a real subcommand path, whose
--help exits 0 and lists every option the command is shown with, and every `make TARGET` is a Makefile target.

Commands are taken from code only (fenced blocks and inline code spans), never from prose. Placeholders
(NAME, <id>, ...) stand for a value the reader chooses: the path up to them must still exist."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from pathlib import Path

import pytest

from imem_cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE = re.compile(r"(`+)(.+?)\1")
# `imem` as a command word: at the start, after a shell separator or whitespace, or as a path's last part.
IMEM = re.compile(r"(?:^|(?<=[\s;&|(]))(?:[\w.~-]*/)*imem[ \t]+(.*)")
MAKE = re.compile(r"(?:^|(?<=[\s;&|(]))make[ \t]+(.*)")
# Where one shell command ends and the next begins.
SEPARATOR = re.compile(r"\s*(?:&&|\|\||;|\||\))\s*")


def code(text: str) -> list[str]:
    """The lines of code in a markdown text: fenced blocks' lines (continuation lines joined) and inline spans."""
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif fenced and lines and lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1] + " " + line.strip()
        elif fenced:
            lines.append(line)
        else:
            lines.extend(match.group(2) for match in INLINE.finditer(line))
    return lines


def commands(line: str) -> list[str]:
    """The shell commands of a line of code, comment dropped."""
    line = re.sub(r"(^|\s)#.*", "", line)
    return SEPARATOR.split(line)


def words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:  # an unclosed quote in an inline span that shows part of a command
        return command.split()


def documented(pattern: re.Pattern) -> list[tuple[str, str, list[str]]]:
    """(document, the command as shown, its words after the program) for every match in code."""
    found = []
    for path in DOCUMENTS:
        for line in code(path.read_text()):
            for command in commands(line):
                match = pattern.search(command)
                if match:
                    found.append((path.relative_to(ROOT).as_posix(), match.group(0).strip(),
                                  words(match.group(1))))
    return found


def is_placeholder(word: str) -> bool:
    """NAME, <id>, [options], ..., $(VAR): a value for the reader to choose."""
    return (word.isupper() or word.startswith(("<", "[", "$", "{")) or word.strip(".") == ""
            or "..." in word)


def subcommand_path(argv: list[str]) -> tuple[list[str], str | None]:
    """The subcommands named at the start of `argv` (`bench NAME` included), and why they are not commands
    of `imem` (None when they are)."""
    parser = build_parser()
    path: list[str] = []
    while True:
        actions = [a for a in parser._actions if a.choices and not a.option_strings]
        if not actions:
            return path, None
        positional = next((w for w in argv[len(path):] if not w.startswith("-")), None)
        if positional is None or is_placeholder(positional):
            return path, None
        choices = actions[0].choices or {}
        names = sorted(choices)
        if positional not in names:
            return path, f"{positional!r} is not one of {names}"
        path.append(positional)
        if not isinstance(choices, dict):  # `bench NAME`: a benchmark module, with a parser of its own
            return path, None
        parser = choices[positional]


def help_text(path: list[str]) -> str:
    """What `imem PATH --help` prints; fails unless it exits 0."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()) as err:
        with pytest.raises(SystemExit) as exited:
            main([*path, "--help"])
    assert exited.value.code in (0, None), f"imem {' '.join(path)} --help exited {exited.value.code}: {err.getvalue()}"
    return out.getvalue()


IMEM_COMMANDS = documented(IMEM)
MAKE_COMMANDS = documented(MAKE)


def test_the_documents_show_commands():
    """The extraction itself works: the README's quick start is found."""
    shown = {" ".join(argv[:2]) for _, _, argv in IMEM_COMMANDS}
    assert {"chat -c", "memory ingest", "serve"} <= shown
    assert {"serve", "test"} <= {argv[0] for _, _, argv in MAKE_COMMANDS if argv}


@pytest.fixture(scope="module")
def helps() -> dict[tuple[str, ...], str]:
    return {}


@pytest.mark.parametrize(("document", "command", "argv"), IMEM_COMMANDS,
                         ids=[f"{d}: {c}" for d, c, _ in IMEM_COMMANDS])
def test_documented_imem_command_exists(document, command, argv, helps, monkeypatch):
    # `imem bench` sets IMEM_MODEL's default for its run; keep that out of the other tests.
    monkeypatch.setenv("IMEM_MODEL", os.environ.get("IMEM_MODEL", ""))
    path, wrong = subcommand_path(argv)
    assert wrong is None, f"{document}: `{command}`: {wrong}"
    if path == ["bench"]:  # `imem bench NAME`: bench's own --help is the benchmark's
        return
    key = tuple(path)
    if key not in helps:
        helps[key] = help_text(path)
    options = {w.split("=", 1)[0] for w in argv if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", w)}
    unknown = sorted(o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", helps[key]))
    assert not unknown, f"{document}: `{command}`: imem {' '.join(path)} has no option {', '.join(unknown)}"


def makefile_targets() -> set[str]:
    targets: set[str] = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([^\s:=#][^:=]*?)\s*::?(?!=)", line)
        if match:
            targets.update(match.group(1).split())
    return targets


@pytest.mark.parametrize(("document", "command", "argv"), MAKE_COMMANDS,
                         ids=[f"{d}: {c}" for d, c, _ in MAKE_COMMANDS])
def test_documented_make_target_exists(document, command, argv):
    # Options are not targets; VAR=value arguments must name a variable the Makefile reads.
    named = [w for w in argv if "=" not in w and not w.startswith("-") and not is_placeholder(w)]
    missing = sorted(set(named) - makefile_targets())
    assert not missing, f"{document}: `{command}`: the Makefile has no target {', '.join(missing)}"
    makefile = (ROOT / "Makefile").read_text()
    unread = sorted(name for name, _ in (w.split("=", 1) for w in argv if re.fullmatch(r"[A-Z_]+=.*", w))
                    if f"$({name})" not in makefile)
    assert not unread, f"{document}: `{command}`: the Makefile does not read {', '.join(unread)}"
