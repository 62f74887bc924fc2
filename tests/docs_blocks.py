"""The fenced code blocks of README.md and docs/*.md, and the rule that runs each.

A reader copies a block and runs it: so does tests/integration/test_docs_blocks.py, against a
throwaway database given as UNBROKEN_DATABASE_URL (never by editing the block). The rules,
by the block's language (the first word of its info string):

- python: written to a file and run as a script, in one working directory per document, in
  the document's order. A first line `# NAME.py` names the file, so a later block or shell
  command can import it (`--app myapp:app`); other blocks are `block_LINE.py`.
- sh, bash, console, shell: each command (backslash continuations joined, `$ ` prompts
  and comments dropped; in console blocks lines without a prompt are output) runs in bash in
  that directory, the venv's bin first on PATH. `make` and `pip install` lines are skipped
  (they build or install; the suite already runs inside what they make). A command that
  serves until stopped (`unbroken worker` without `--burst`, `unbroken dashboard`) is
  started, waited for (its "started" log line; the dashboard's /health/live, on a free port
  given with `--port` since 8787 may be taken on a shared machine), stopped with SIGTERM,
  and must exit 0 with no traceback (the dashboard may end by that SIGTERM: uvicorn shuts
  down, then re-raises the signal it caught).
- sql: run through psycopg on the test database and committed; a role the block alters
  (`ALTER ROLE app`) is the reader's own, so the test makes a throwaway one first.
- ini: parsed by configparser (`;` starts an inline comment, as in pgbouncer.ini).
- yaml: Kubernetes manifests (docs/autoscaling.md), parsed by PyYAML: every document must
  parse and name its apiVersion and kind (no cluster runs them).
- mermaid, text: not code (a diagram, output): listed in NOT_CODE and skipped.

Afterwards no job that a document's blocks enqueued may have recorded an error: a task that
failed fails its document, though the worker that ran it exited 0.

A block whose first line names an example (`# examples/fastapi_app.py`) is that file,
verbatim: tests/integration/test_examples.py runs the examples for real (served, called over
HTTP, their jobs run by a worker), so this test checks the block and the file are the same.

Two marks, both invisible in the rendered page, put a block outside those rules:
- `<!-- fragment ... -->` on the line before it, or `fragment` in its info string
  (```python fragment): part of a larger program, not runnable alone. Python fragments
  must still parse. The test counts them (MAX_FRAGMENTS) so they stay few.
- `<!-- NAME: tests/PATH runs this block as written -->`: another test runs it (roles that
  belong to the whole cluster, for instance); that test must exist and name NAME.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
PYTHON = {"python", "py"}
SHELL = {"sh", "bash", "console", "shell"}
NOT_CODE = {"mermaid": "a diagram", "text": "output shown to the reader"}
MAX_FRAGMENTS = 3
SKIPPED_COMMANDS = (  # (pattern, why): lines a reader runs that the suite has already done
    (re.compile(r"^make\b"), "builds this repository's venv and runs its targets"),
    (re.compile(r"^(python -m )?pip install\b"), "installs; the suite runs in the installed venv"),
)
FENCE = re.compile(r"^(```+|~~~+)\s*(.*)$")
ELSEWHERE = re.compile(r"<!--\s*([\w.-]+):\s*(tests/\S+)\s+runs this block as written\s*-->")
FILE_NAME = re.compile(r"^#\s*([\w-]+\.py)\b")
EXAMPLE = re.compile(r"^# (examples/\S+)\n")


@dataclass(frozen=True)
class Block:
    document: Path
    line: int  # of the opening fence, 1-based
    language: str
    flags: tuple[str, ...]
    code: str
    note: str  # the HTML comment on the line before the fence, if any

    @property
    def where(self) -> str:
        return f"{self.document.relative_to(REPO)}:{self.line}"

    @property
    def fragment(self) -> bool:
        return "fragment" in self.flags or self.note.startswith("<!-- fragment")

    @property
    def run_elsewhere(self) -> tuple[str, str] | None:
        found = ELSEWHERE.fullmatch(self.note)
        return (found[1], found[2]) if found else None

    @property
    def example(self) -> Path | None:
        found = EXAMPLE.match(self.code)
        return REPO / found[1] if found else None

    @property
    def file_name(self) -> str:
        found = FILE_NAME.match(self.code)
        return found[1] if found else f"block_{self.line}.py"


def blocks(document: Path) -> list[Block]:
    """Every fenced block of `document`, in order."""
    lines = document.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, info = opening[1], opening[2].split()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith(fence))
        before = lines[i - 1].strip() if i > 0 else ""
        found.append(
            Block(
                document=document,
                line=i + 1,
                language=info[0].lower() if info else "",
                flags=tuple(info[1:]),
                code="\n".join(lines[i + 1 : end]) + "\n",
                note=before if before.startswith("<!--") else "",
            )
        )
        i = end + 1
    return found


def commands(block: Block) -> list[str]:
    """A shell block's commands, one per entry (see the module docstring)."""
    out: list[str] = []
    pending = ""
    for raw in block.code.splitlines():
        line = raw.strip()
        if block.language == "console":
            if not (line.startswith("$ ") or pending):
                continue
            line = line.removeprefix("$ ")
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(strip_comment(pending + line))
        pending = ""
    return out


def strip_comment(command: str) -> str:
    """`cmd args   # why` -> `cmd args` (a `#` inside quotes stays)."""
    quote = ""
    for k, ch in enumerate(command):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or command[k - 1].isspace()):
            return command[:k].rstrip()
    return command.rstrip()


def skip_reason(command: str) -> str | None:
    for pattern, why in SKIPPED_COMMANDS:
        if pattern.search(command):
            return why
    return None


def serves(command: str) -> str | None:
    """'worker' or 'dashboard' when the command runs until stopped, else None."""
    words = command.split()
    if "unbroken" not in words:
        return None
    rest = words[words.index("unbroken") + 1 :]
    if rest[:1] == ["worker"] and "--burst" not in rest:
        return "worker"
    if rest[:1] == ["dashboard"]:
        return "dashboard"
    return None
