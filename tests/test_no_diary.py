"""No work diary in the product: files say what the code does and why, never how the work went.

Scans the tracked (and new, not ignored) files of the README, the docs, the package, the stages,
the scripts, the benchmarks and their results, the profiles, the recorded results and params.yaml
for numbered work periods ("stop 21", "stops 24-26"), references to working sessions ("this
session", "the previous session"), the hours the work ran in ("a quick hour") and before/after
narration ("no longer", "previously", "before the speed work"). Git history keeps the story.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("README.md", "mkdocs.yml", "params.yaml", "docs", "src", "stages", "scripts", "benchmarks", "profiles",
           "results")
TEXT = {".md", ".py", ".txt", ".yaml", ".yml", ".sh", ".toml", ".cfg", ".json", ".csv", ""}

DIARY = [
    ("a numbered work period", r"\bstops? \d+(?:\s*(?:-|–|,|and|to)\s*\d+)*\b"),
    ("a numbered work period", r"\b(?:this|that|each|every|until|since|before|after) stop\b"),
    ("a working session", r"\b(?:this|that|previous|last|earlier|current|later|next|no) (?:work(?:ing)? )?sessions?\b"),
    ("the hour the work ran in", r"\b(?:quick|slow|middling) (?:hours?|stretch|one)\b"),
    ("before/after narration", r"\bbefore the speed work\b|\bspeed work\b"),
    ("before/after narration", r"\bno longer\b|\bpreviously\b|\bformerly\b|\bused to be\b"),
    ("before/after narration", r"\b(?:previous|earlier) (?:version|code|run)s?\b"),
    ("before/after narration", r"\b(?:before|after) (?:this|the|that) change\b"),
    ("commit history as a source", r"\bgit show [0-9a-f]{7,40}:"),
]
PATTERNS = [(what, re.compile(rx, re.IGNORECASE)) for what, rx in DIARY]


def scanned_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *SCANNED],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / p for p in sorted(set(out)) if (ROOT / p).is_file() and (ROOT / p).suffix in TEXT]


def diary_lines(text: str) -> list[tuple[int, str, str]]:
    """(line number, what it is, the line) for every line that narrates the work."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for what, pattern in PATTERNS:
            if pattern.search(line):
                found.append((number, what, line.strip()[:160]))
                break
    return found


@pytest.mark.parametrize("text", [
    "Stop 21's change made it faster.", "see stops 24-26 in Performance", "stops 25, 26 and 27",
    "in this session's run", "958dc22 is the previous session's last commit", "in a quick hour",
    "fp32 took 14-18 before the speed work", "Until stop 22 the default", "since this stop",
    "it no longer fills new tensors", "a previous version of this benchmark", "`git show 79a0a52:x.txt`",
])
def test_the_patterns_catch_diary_text(text):
    assert diary_lines(text), text


@pytest.mark.parametrize("text", [
    "early stopping on valid_acc", "stop the server with make team-down", "pg_ctl stop -D data",
    "a stopped PostgreSQL fails the stage", "start_new_session=True", "aiohttp.ClientSession()",
    "@pytest.fixture(scope=\"session\")", "stops the stage with a one-line error", "the run stops at 5 epochs",
    "the stop-gap", "non-stop work", "a slow test", "the hour hand", "versus.py runs it on older commits",
])
def test_the_patterns_pass_ordinary_words(text):
    assert not diary_lines(text), text


def test_no_work_diary_in_tracked_files():
    files = scanned_files()
    assert any(p.name == "README.md" for p in files) and any(p.suffix == ".py" for p in files)
    found = []
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [f"{path.relative_to(ROOT)}:{n}: {what}: {line}" for n, what, line in diary_lines(text)]
    assert not found, ("files narrate how the work went; say what the code does instead (git history keeps "
                       "the story):\n" + "\n".join(found))
