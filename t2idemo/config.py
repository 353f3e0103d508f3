"""Turn a stage's @dataclass config into an argparse command line.

Every field becomes ``--field-name`` with the field's default, and its ``# comment`` in the source (unit and
sensible range) becomes the ``--help`` text. A field that is itself a dataclass (the main job's ``RunConfig`` holds
one config per stage) becomes a group of options ``--stage.field-name``, one per field of that stage's config, so
each stage's dataclass stays the single source of its options. Every command line of the kit is parsed this way. A
bad value, an unknown flag or a ValueError from a config's ``__post_init__`` prints one line,
``PROG: error: <reason>``, and exits with status 2: no usage dump, no traceback (``--help`` has the usage).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import re


def field_help(cls) -> dict:
    """{field name: its help}: the comment lines just above the field (or its trailing comment), read from the class
    source ({} when the source is unavailable); ``# --- name`` lines head sections. The help states no range:
    ``--help`` adds the one ``ranged`` enforces."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    helps, above = {}, []
    for line in lines[1:]:
        text = line.strip()
        if text.startswith("# ---"):  # a section heading, not a field's help
            above = []
            continue
        if text.startswith("#"):
            above.append(text.lstrip("#").strip())
            continue
        m = re.match(r"^\s+(\w+)\s*:[^#\n]*?(?:#\s*(.+))?$", line)
        if m and not text.startswith(("def ", "@")):
            helps[m.group(1)] = " ".join(above + ([m.group(2)] if m.group(2) else [])).strip()
        above = []
    return {k: v for k, v in helps.items() if v}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2, and which takes only exact flags
    (``allow_abbrev=False``: ``--beta`` is an error, never silently ``--betas``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def ranged(default, lo, hi):
    """A numeric dataclass field allowed from ``lo`` to ``hi`` (inclusive), integral when ``default`` is an int:
    ``lr: float = ranged(1e-4, 1e-7, 1.0)  # AdamW learning rate``. ``check_ranges`` enforces it, ``--help`` shows
    it."""
    return dataclasses.field(default=default, metadata={"range": (lo, hi)})


SEED_MAX = 2**31 - 1  # the largest seed of any config: numpy's and torch's generators both take it


def seed_field(default: int = 0):
    """A seed field: every config's seeds share one range, 0 to SEED_MAX."""
    return ranged(default, 0, SEED_MAX)


def comma_list(text: str, name: str, cast=str, lo=None, hi=None) -> list:
    """The items of the comma-separated ``text`` (blanks dropped), each ``cast`` (str, int or float) and, when ``lo``
    / ``hi`` are given, within them: ``comma_list("0,0.5,1", "betas", float, 0, 100)`` -> [0.0, 0.5, 1.0]. A bad item
    raises ValueError("name='text': ..."), naming the argument, the value and what is allowed. The one parser of
    the kit's comma lists."""
    kind = {int: "integers", float: "numbers"}.get(cast, "names")
    items = []
    for item in (x.strip() for x in str(text).split(",")):
        if not item:
            continue
        try:
            value = cast(item)
        except ValueError:
            raise ValueError(f"{name}={text!r}: {item!r} is not one of a comma-separated list of {kind}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(f"{name}={text!r}: {item} is out of range; use {kind} from {lo:g} to {hi:g}")
        items.append(value)
    return items


def check_field(cls, name: str, value):
    """A visitor's ``value`` for the field ``name`` of the dataclass ``cls``, as an int or float within the field's
    range (``ranged``); a ValueError naming it, the value and the range otherwise. The app checks its input with
    the same ranges as the configs it fills."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    (lo, hi), integer = field_range(f), isinstance(f.default, int) and not isinstance(f.default, bool)
    kind = "an integer" if integer else "a number"
    if value is None or value == "":
        raise ValueError(f"{name} is empty; use {kind} from {lo:g} to {hi:g}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or (integer and number != int(number)):
        raise ValueError(f"{name}={value!r} is not allowed; use {kind} from {lo:g} to {hi:g}")
    number = int(number) if integer else number
    if not lo <= number <= hi:
        raise ValueError(f"{name}={value!r} is out of range; use {kind} from {lo:g} to {hi:g}")
    return number


def field_range(f: dataclasses.Field):
    """(lo, hi) of a field made by ``ranged``, else None."""
    return f.metadata.get("range")


def bounds(cls, name: str) -> tuple:
    """(lo, hi) of the field ``name`` of the dataclass ``cls`` (made by ``ranged``): read by whoever checks the same
    setting elsewhere (a comma list of betas, an app's input), so each setting has one range."""
    return field_range(next(f for f in dataclasses.fields(cls) if f.name == name))


def check_ranges(cfg) -> None:
    """Raise ValueError("name=value is out of range; use ... from lo to hi") for the first field of the dataclass
    instance ``cfg`` that is outside its declared range (``ranged``). Every stage config calls it first thing in
    ``__post_init__``, so a bad value stops a command before any work starts."""
    for f in dataclasses.fields(cfg):
        bounds = field_range(f)
        if bounds is None:
            continue
        lo, hi = bounds
        value, integer = getattr(cfg, f.name), isinstance(f.default, int)
        kind = "an integer" if integer else "a number"
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and lo <= value <= hi
        if not ok or (integer and int(value) != value):
            raise ValueError(f"{f.name}={value!r} is out of range; use {kind} from {lo:g} to {hi:g}")


def require_set(cfg) -> None:
    """Raise ValueError for the first field of ``cfg`` that still holds None: a folder or model that the main job
    sets for each round (runconfig.round_configs). Each stage calls it before any work."""
    for f in dataclasses.fields(cfg):
        if getattr(cfg, f.name) is None:
            raise ValueError(
                f"{type(cfg).__name__}.{f.name} is None: pass {f.name}=... (in the main job each round sets "
                f"it: runconfig.round_configs)"
            )


def add_fields(
    p: argparse.ArgumentParser,
    cls,
    suppress: bool = False,
    defaults=None,
    prefix: str = "",
    skip: frozenset = frozenset(),
) -> None:
    """One ``--field-name`` option per field of the dataclass ``cls``, typed by its default, helped by its comment.
    ``suppress``: options not given are absent from the namespace (instead of holding the default).
    ``defaults``: an instance of ``cls`` whose values are the defaults (a preset); None = the class defaults.
    A field whose value is a dataclass adds a group ``--name.field`` of its fields; ``skip`` names fields
    ("stage.field" for a group's) that get no option because the caller sets them."""
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        if name in skip:
            continue
        default = (
            getattr(defaults, f.name)
            if defaults is not None
            else (f.default_factory() if f.default is dataclasses.MISSING else f.default)
        )
        if dataclasses.is_dataclass(default):
            group = p.add_argument_group(f"{name} ({type(default).__name__}): {helps.get(f.name, '')}")
            add_fields(group, type(default), suppress, default, name + ".", skip)
            continue
        kind = dict(action=argparse.BooleanOptionalAction) if isinstance(default, bool) else dict(type=type(default))
        bounds = field_range(f)
        text = (
            helps.get(f.name, " ")
            + (f" [allowed: {bounds[0]:g} to {bounds[1]:g}]" if bounds else "")
            + (f" (default: {default!r})" if suppress else "")
        )
        p.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS if suppress else default,
            help=text.replace("%", "%%"),
            **kind,
        )


def build(cls, values: dict, defaults=None):
    """An instance of ``cls`` from ``values`` {"field" or "stage.field": value}; fields not given come from
    ``defaults`` (an instance) or the class defaults. Each nested config is built (and checked) before ``cls``."""
    top, nested = {}, {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[key] = value
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted((set(top) | set(nested)) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {unknown[0]!r}; its fields are {sorted(names)}")
    for head, sub in nested.items():
        base = top.get(head, getattr(defaults, head) if defaults is not None else None)
        if base is None:
            f = next(f for f in dataclasses.fields(cls) if f.name == head)
            base = f.default_factory()
        try:
            top[head] = build(type(base), sub, base)
        except ValueError as e:  # name the stage: "finetune.lr=..." rather than "lr=..."
            raise ValueError(f"{head}.{e}") from None
    if defaults is None:
        return cls(**top)
    return dataclasses.replace(defaults, **top)


def parse_config(
    cls,
    argv=None,
    prog: str | None = None,
    description: str | None = None,
    defaults=None,
    skip: frozenset = frozenset(),
    parser: Parser | None = None,
):
    """Parse ``argv`` into an instance of the dataclass ``cls`` (defaults: the instance ``defaults``, else the class's)
    and print the resolved config. ``parser``: one that already holds extra options (they are not config fields)."""
    p = parser or Parser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    extra = {a.dest for a in p._actions}
    add_fields(p, cls, defaults=defaults, skip=skip)
    try:
        args = vars(p.parse_args(argv))
        cfg = build(cls, {k: v for k, v in args.items() if k not in extra}, defaults)
        if hasattr(cfg, "check_inputs"):  # checks of the files a command reads (folders that must exist, ...)
            cfg.check_inputs()
    except ValueError as e:
        p.error(str(e))
    print(f"{cls.__name__}:", json.dumps(dataclasses.asdict(cfg), indent=2))
    return cfg
