"""Checks shared by every data set reader: the error that lists every problem, CSV rows with their line
numbers, file names and links that would leave the data folder."""
from __future__ import annotations

import csv
import os
from pathlib import Path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

MAX_LISTED = 20  # problems shown in an exception message; all of them are in ``.problems``


class DatasetError(ValueError):
    """A problem with a dataset on disk.

    ``problems`` lists every offending file or row (each names it and says what to do); the message
    shows the first ``MAX_LISTED`` and how many there are.
    """

    def __init__(self, headline: str, problems: list[str] | tuple[str, ...] = ()):
        self.headline = headline
        self.problems = list(problems)
        super().__init__(format_problems(headline, self.problems))


def format_problems(headline: str, problems: list[str], limit: int = MAX_LISTED) -> str:
    """``headline`` followed by the first ``limit`` problems, one per line, and a count of the rest."""
    if not problems:
        return headline
    lines = [f"{headline} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
    lines += [f"  - {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more (all are listed in the exception's .problems)")
    return "\n".join(lines)


def unsafe_name_problem(name: str) -> str | None:
    """Why ``name`` is not a plain file name (a path-traversal risk), or None if it is one."""
    if "\0" in name:
        return "contains a NUL byte"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if ".." in name:
        return "contains '..'"
    if name.startswith("."):
        return "starts with '.'"
    if os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):  # the latter: a Windows drive like C:
        return "is an absolute path"
    return None


def link_outside_problem(path: str | Path, root: str | Path) -> str | None:
    """Why ``path`` is refused as a symbolic link out of the data folder ``root``, or None if it stays inside.

    A link out of the data folder makes the data set depend on files nobody checks in it; they are
    refused rather than followed silently.
    """
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep):
        return None
    return (f"is a symbolic link to {real}, outside the data folder {real_root}; copy the file into the "
            "folder (or point the data folder at the real data)")


def read_csv_rows(csv_path: Path, errors: list[str]) -> tuple[list[str], list[tuple[int, list[str]]]] | None:
    """Header and ``(line, fields)`` rows of a CSV, counting the header as line 1.

    The csv module (not pandas) is used so each row keeps its true line number, even past blank lines.
    Problems are appended to ``errors``; returns None when the file cannot be read at all.
    """
    name = csv_path.name
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                errors.append(f"{name} is empty; replace it with the original file")
                return None
            rows = []
            for fields in reader:
                line = reader.line_num
                if not any(v.strip() for v in fields):
                    continue  # blank line
                if len(fields) != len(header):
                    errors.append(f"{name} line {line}: {len(fields)} fields but the header has {len(header)}; "
                                  "fix the row (a stray comma or quote?)")
                    continue
                rows.append((line, fields))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        errors.append(f"{csv_path} cannot be read as UTF-8 CSV ({e}); replace it with the original file")
        return None
    return header, rows
