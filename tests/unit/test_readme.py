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


def _anchors(page: Path) -> set[str]:
    """The fragments GitHub gives the page's headings: lower case, punctuation dropped, spaces to hyphens, a
    repeated heading suffixed -1, -2, ..."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def test_every_relative_link_in_the_docs_resolves() -> None:
    """Every relative link names a file that exists and, with a fragment, a heading of that page."""
    broken = []
    for page in [README, *sorted((ROOT / "docs").rglob("*.md")), ROOT / "emulators" / "README.md"]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target, fragment in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            linked = page.parent / target if target else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
            elif fragment and linked.suffix == ".md" and fragment not in _anchors(linked):
                broken.append(f"{page.relative_to(ROOT)} -> {target}#{fragment}")
    assert broken == []
