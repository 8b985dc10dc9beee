"""The README's promises that code can check: its settings table and its two set-up commands."""

from __future__ import annotations

import re
from pathlib import Path

from sluice.commands.settings_table import README, readme_with_table

ROOT = Path(__file__).resolve().parents[2]


def test_the_settings_table_is_current() -> None:
    readme = README.read_text()
    assert readme == readme_with_table(readme), "run: python -m sluice settings-table --write"


def test_every_setting_is_in_the_table() -> None:
    from shared.settings import GROUPS, env_names

    listed = set(re.findall(r"^\| `([A-Za-z_]+)` \|", README.read_text(), flags=re.M))
    assert {n for g in GROUPS.values() for n in env_names(g)} <= listed


def test_the_readme_starts_with_the_two_commands_and_ci_runs_the_test_command() -> None:
    first_block = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["bash scripts/run-local.sh", "bash scripts/test.sh"]
    assert all((ROOT / c.split()[1]).is_file() for c in commands)
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_every_relative_link_in_the_docs_resolves() -> None:
    broken = []
    for page in [README, *sorted((ROOT / "docs").rglob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []
