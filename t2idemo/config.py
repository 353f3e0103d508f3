"""Turn a stage's @dataclass config into an argparse command line.

Every field becomes ``--field-name`` with the field's default, and its ``# comment`` in the source (unit and
sensible range) becomes the ``--help`` text. Every command line of the kit is parsed this way. A bad value, an
unknown flag or a ValueError from the config's ``__post_init__`` prints one line, ``PROG: error: <reason>``, and
exits with status 2: no usage dump, no traceback (``--help`` has the usage).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re


def field_help(cls) -> dict:
    """{field name: its trailing comment} read from the class source ({} when the source is unavailable)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return dict(re.findall(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, flags=re.M))


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def add_fields(p: argparse.ArgumentParser, cls, suppress: bool = False) -> None:
    """One ``--field-name`` option per field of the dataclass ``cls``, typed by its default, helped by its comment.
    ``suppress``: options not given are absent from the namespace (instead of holding the default)."""
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        kind = dict(action=argparse.BooleanOptionalAction) if isinstance(f.default, bool) else dict(type=type(f.default))
        text = helps.get(f.name, " ") + (f" (default: {f.default!r})" if suppress else "")
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=argparse.SUPPRESS if suppress else f.default,
                       help=text.replace("%", "%%"), **kind)


def parse_config(cls, argv=None, prog: str | None = None, description: str | None = None):
    """Parse ``argv`` into an instance of the dataclass ``cls`` and print the resolved config."""
    p = Parser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_fields(p, cls)
    try:
        cfg = cls(**vars(p.parse_args(argv)))
    except ValueError as e:
        p.error(str(e))
    print(f"{cls.__name__}:", json.dumps(dataclasses.asdict(cfg), indent=2))
    return cfg
