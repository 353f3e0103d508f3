"""Turn a stage's @dataclass config into an argparse command line.

Every field becomes ``--field-name`` with the field's default, and its ``# comment`` in the source (unit and
sensible range) becomes the ``--help`` text. A ValueError from the config's ``__post_init__`` becomes an
argparse error, so a bad value prints the usage line and the reason instead of a traceback.
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


def parse_config(cls, argv=None, prog: str | None = None, description: str | None = None):
    """Parse ``argv`` into an instance of the dataclass ``cls`` and print the resolved config."""
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        kind = dict(action=argparse.BooleanOptionalAction) if isinstance(f.default, bool) else dict(type=type(f.default))
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=f.default,
                       help=helps.get(f.name, " ").replace("%", "%%"), **kind)
    try:
        cfg = cls(**vars(p.parse_args(argv)))
    except ValueError as e:
        p.error(str(e))
    print(f"{cls.__name__}:", json.dumps(dataclasses.asdict(cfg), indent=2))
    return cfg
