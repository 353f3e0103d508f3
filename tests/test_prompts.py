"""One prompt-set interface (t2idemo.prompts) that the shapes world and the SD-scale prompt set both implement."""

import inspect

import pytest

from t2idemo import prompts, sd, world
from t2idemo.generate import GenerateConfig, plan_rows


@pytest.mark.parametrize("ps", [world, sd], ids=["world", "sd"])
def test_both_sets_implement_the_interface(ps):
    missing = [name for name in prompts.INTERFACE if not hasattr(ps, name)]
    assert not missing, f"{ps.__name__} lacks {missing}"
    assert prompts.get(ps.NAME) is ps and ps.CATEGORIES == ("count", "color", "background", "combination")
    prompt, meta = ps.all_prompts("combination", unseen=False)[0]
    assert ps.parse_prompt(prompt)["category"] == "combination" and ps.in_grammar({**meta, "prompt": prompt})
    assert not ps.is_unseen(meta) and ps.make_prompt("combination", **{a: meta[a] for a in ps.ATTRIBUTES})[0] == prompt
    swaps = ps.perturbations(meta)
    assert swaps and prompt not in swaps and all(not ps.parse_prompt(s)["unseen"] for s in swaps)
    assert "include_unseen" in inspect.signature(ps.perturbations).parameters


def test_rows_record_their_prompt_set_and_code_asks_the_interface(tmp_path):
    for name in ("shapes", "sd"):
        rows = plan_rows(
            GenerateConfig(out=str(tmp_path / name), model="m", prompt_set=name, max_prompts=2, per_prompt=1)
        )
        assert all(r["prompt_set"] == name for r in rows) and prompts.of_row(rows[0]) is prompts.get(name)
    # rows written before the field existed: told apart by their attributes, in this one place
    assert prompts.of_row({"object": "dog"}) is sd and prompts.of_row({"shape": "circle"}) is world
    assert world.JUDGE and not sd.JUDGE
    with pytest.raises(ValueError, match="prompt_set='photos'"):
        prompts.get("photos")
