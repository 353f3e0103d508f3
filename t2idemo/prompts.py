"""One prompt-set interface, two implementations: ``world`` (the shapes world) and ``sd`` (the paper's SD-scale
prompts). Downstream code asks this module which set a dataset row belongs to and calls the set's functions,
instead of testing which keys a row has.

Each prompt set is a module with these names (``INTERFACE``; tests/test_prompts.py checks both):

    NAME                      "shapes" | "sd": what rows record as ``prompt_set``
    JUDGE                     True where t2idemo.judge can rate its images (the shapes world only)
    CATEGORIES, ATTRIBUTES    the paper's four categories; the attributes a prompt can name
    NAMED                     {category: the attributes its prompts name}
    make_prompt(category, **attributes) -> (prompt, metadata)
    all_prompts(category=None, unseen=None) -> [(prompt, metadata)]
    parse_prompt(prompt) -> metadata             (a ValueError naming the word it does not know)
    is_unseen(metadata) -> bool                  (names a held-out pair or triple)
    in_grammar(row) -> bool                      (the row's prompt is what make_prompt writes for it)
    perturbations(metadata, include_unseen=False) -> [prompt]   (one named attribute swapped)
"""

from __future__ import annotations

from . import sd, world

SETS = {world.NAME: world, sd.NAME: sd}
INTERFACE = (
    "NAME",
    "JUDGE",
    "CATEGORIES",
    "ATTRIBUTES",
    "NAMED",
    "make_prompt",
    "all_prompts",
    "parse_prompt",
    "is_unseen",
    "in_grammar",
    "perturbations",
)


def get(name: str):
    """The prompt set called ``name`` ("shapes" or "sd")."""
    if name not in SETS:
        raise ValueError(f"prompt_set={name!r} is not one of {tuple(SETS)}")
    return SETS[name]


def of_row(row: dict):
    """The prompt set a dataset row belongs to: its ``prompt_set`` field. Rows written before that field existed
    are told apart by their attributes (the SD set names an ``object``, the shapes world a ``shape``)."""
    if "prompt_set" in row:
        return get(row["prompt_set"])
    return sd if "object" in row else world
