"""Example lines at the end of each `mtq` command's help."""
from __future__ import annotations

import argparse

HEADS = ("example:", "examples:")


class ExampleFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that an epilog of example lines is printed as written (one command a line)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(HEADS):
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)


def examples(*lines: str) -> dict:
    """Keyword arguments for `ArgumentParser`/`add_parser` that end the help with these command lines."""
    head = HEADS[len(lines) > 1]
    return {"epilog": "\n".join([head, *("  " + line for line in lines)]), "formatter_class": ExampleFormatter}


def example_lines(parser: argparse.ArgumentParser) -> list[str]:
    """The command lines of a parser's example epilog ([] when it has none)."""
    text = parser.epilog or ""
    return [line.strip() for line in text.splitlines()[1:]] if text.startswith(HEADS) else []
