"""Markdown shared by the report and the studies: number formats, tables, and the marked blocks
(``<!-- report:start -->`` ... ``<!-- report:end -->``, or ``<!-- report:NAME:start -->``) of a README, a docs
page or a model card, rewritten with generated Markdown."""
from __future__ import annotations

from pathlib import Path

from qana_keras.io import atomic_write_text


class ReportError(ValueError):
    """An input JSON or marked file is not usable; the message names the file (and row)."""


# ---------------------------------------------------------------------------------------------------
# Formatting


def fmt_ci(value, ci: dict | None, digits: int = 3) -> str:
    """``0.743 [0.716, 0.768]``; "n/a" when the value is missing."""
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    if ci and ci.get("low") is not None:
        text += f" [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"
    return text


def fmt_diff(diff: dict | None, scale: float = 100.0) -> str:
    """A paired difference in points: ``+2.9 [+1.1, +4.7]`` (bold when the interval excludes zero)."""
    if not diff:
        return "—"
    text = f"{scale * diff['difference']:+.1f} [{scale * diff['low']:+.1f}, {scale * diff['high']:+.1f}]"
    return f"**{text}**" if diff.get("real") else text


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Marked blocks


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_block(text: str, content: str, name: str = "report", where: str = "text") -> str:
    """``text`` with everything between the start and end markers of ``name`` replaced by ``content``.

    The markers stay; each must occur exactly once, start before end. Raises ReportError naming
    ``where`` (the file) and the line of a stray marker otherwise.
    """
    start, end = _markers(name)
    found = {m: [i + 1 for i, line in enumerate(text.splitlines()) if m in line] for m in (start, end)}
    for marker, lines in found.items():
        if len(lines) != 1:
            at = f" (lines {', '.join(map(str, lines))})" if lines else ""
            raise ReportError(f"{where}: expected the marker {marker} exactly once, found it {len(lines)} times{at}; "
                              f"the generated block goes between {start} and {end}")
    if found[start][0] > found[end][0]:
        raise ReportError(f"{where}: {end} (line {found[end][0]}) comes before {start} (line {found[start][0]})")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{content.strip()}\n{end}{tail}"


def rewrite_block(path: str | Path, content: str, name: str = "report") -> bool:
    """Rewrite the ``name`` block of the file at ``path`` atomically; returns True when it changed."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"{path} not found; create it with the markers {' and '.join(_markers(name))}")
    old = path.read_text()
    new = replace_block(old, content, name, where=str(path))
    if new != old:
        atomic_write_text(path, new)
    return new != old


def has_block(path: str | Path, name: str) -> bool:
    """Whether the file at ``path`` holds the start marker of block ``name``."""
    return _markers(name)[0] in Path(path).read_text()


def rewrite_blocks_across(paths: list[str | Path], blocks: dict[str, str], required: str = "report") -> list[str]:
    """Write each ``report``/``report:NAME`` block of ``blocks`` into the one file of ``paths`` that holds its
    markers (a README and its docs/ pages). The ``required`` block must be in one of them (else the error of
    ``rewrite_block`` on the first file); a study block in none is just not shown; a block whose markers are
    in two files is an error and nothing is written. Returns "path" (required block) or "path (name)"."""
    paths = list(dict.fromkeys(Path(p) for p in paths))  # a file named twice is one file
    for path in paths:
        if not path.is_file():
            raise ReportError(f"{path} not found; create it with the markers of the blocks it should hold")
    plan = []
    for name, content in blocks.items():
        if name != required and not name.startswith("report:"):
            continue
        holders = [p for p in paths if has_block(p, name)]
        if len(holders) > 1:
            raise ReportError(f"the markers of block {name} are in {' and '.join(map(str, holders))}; keep them in "
                              "one file")
        if holders or name == required:
            plan.append((holders[0] if holders else paths[0], name, content))
    changed = []
    for path, name, content in plan:
        if rewrite_block(path, content, name):
            changed.append(str(path) if name == required else f"{path} ({name})")
    return changed


def rewrite_present_blocks(path: str | Path, blocks: dict[str, str]) -> list[str]:
    """Rewrite those ``report:NAME`` blocks whose markers the file has (a file without them just does not
    show that table); returns "path (name)" for each block that changed."""
    return [f"{path} ({name})" for name, content in blocks.items()
            if name.startswith("report:") and has_block(path, name) and rewrite_block(path, content, name)]
