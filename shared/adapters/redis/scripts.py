"""The Lua scripts of the Redis layout: ``lua/<name>.lua``, loaded like the SQL migrations.

A script file may start with ``-- uses: _a _b``: the fragments ``lua/_a.lua`` and
``lua/_b.lua`` (shared local functions) are put in front of it. Each script is
sent by SHA (``EVALSHA``); a server that lost it (restart, failover, ``SCRIPT
FLUSH``) answers ``NOSCRIPT`` and the caller loads every script and retries,
which the idempotent scripts allow.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from shared.exceptions import ConfigurationError

LUA_DIR = Path(__file__).with_name("lua")
_USES = re.compile(r"^-- uses:((?:\s+_[a-z_]+)+)\s*$")
_NAME = re.compile(r"^_?[a-z][a-z_]*\.lua$")


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    body: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.body.encode()).hexdigest()


def _read(directory: Path, name: str) -> str:
    path = directory / f"{name}.lua"
    if not path.is_file():
        raise ConfigurationError(f"Redis script {path} is missing")
    return path.read_text(encoding="utf-8")


def discover(directory: Path = LUA_DIR) -> dict[str, Script]:
    """Every ``name.lua`` in ``directory`` (fragments ``_*.lua`` excluded), with its fragments in front."""
    scripts: dict[str, Script] = {}
    for path in sorted(directory.glob("*.lua")):
        if not _NAME.match(path.name):
            raise ConfigurationError(f"Redis script file {path.name} is not named name.lua (a-z and _)")
        if path.name.startswith("_"):
            continue
        text = path.read_text(encoding="utf-8")
        first = text.split("\n", 1)[0]
        uses = _USES.match(first)
        fragments = [_read(directory, name) for name in uses.group(1).split()] if uses else []
        scripts[path.stem] = Script(path.stem, "".join(fragments) + text)
    return scripts


@cache
def scripts() -> dict[str, Script]:
    """The scripts of this package's ``lua/`` directory (read once per process)."""
    return discover()
