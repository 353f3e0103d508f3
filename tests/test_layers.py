"""Imports go one way: each module of t2idemo imports only from the layers below its own (t2idemo/__init__.py)."""

import ast
import os

import t2idemo

PKG = os.path.dirname(t2idemo.__file__)
MAX_LINES = 450  # no module over 450 lines (issue 26)
MAX_FUNCTION = 100  # no function over 100 lines, in t2idemo/ or app.py


def t2idemo_imports(path: str) -> set:
    """Every t2idemo module that ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif node.module and node.module.split(".")[0] == "t2idemo":
                parts = node.module.split(".")
                found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("t2idemo.")}
    return found


def modules() -> list:
    return sorted(f[:-3] for f in os.listdir(PKG) if f.endswith(".py") and f not in ("__init__.py", "__main__.py"))


def test_every_module_has_a_layer_and_the_docstring_lists_it():
    layer_of = {m: i for i, layer in enumerate(t2idemo.LAYERS) for m in layer}
    assert sorted(layer_of) == modules(), "add the new module to t2idemo.LAYERS (and the package docstring)"
    doc = t2idemo.__doc__
    for i, layer in enumerate(t2idemo.LAYERS):
        line = next(l for l in doc.splitlines() if l.strip().startswith(f"{i}  "))
        block = doc[doc.index(line) :].split(f"\n    {i + 1}  ")[0]
        assert all(f"{m} (" in block for m in layer), f"the docstring's layer {i} must name {layer}"


def test_imports_go_only_to_lower_layers():
    layer_of = {m: i for i, layer in enumerate(t2idemo.LAYERS) for m in layer}
    bad = [
        f"{m} (layer {layer_of[m]}) imports {d} (layer {layer_of.get(d)})"
        for m in modules()
        for d in sorted(t2idemo_imports(os.path.join(PKG, m + ".py")) - {m})
        if d in layer_of and layer_of[d] >= layer_of[m]
    ]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "def f():\n    from .reward import load_reward_fn\n    from t2idemo.run import run\n    import t2idemo.sd\n"
    )
    assert t2idemo_imports(str(f)) == {"reward", "run", "sd"}


def test_no_module_is_too_long():
    """No module of t2idemo/, nor app.py nor a script, over MAX_LINES lines (as ruff formats them)."""
    root = os.path.dirname(PKG)
    files = [os.path.join(PKG, m + ".py") for m in modules()] + [os.path.join(root, "app.py")]
    files += [os.path.join(root, "scripts", f) for f in os.listdir(os.path.join(root, "scripts")) if f.endswith(".py")]
    long = {os.path.relpath(f, root): n for f in files if (n := len(open(f).read().splitlines())) > MAX_LINES}
    assert not long, f"split these modules (at most {MAX_LINES} lines): {long}"


def test_no_function_is_too_long():
    """A function that reads top to bottom fits on a screen or two: none over MAX_FUNCTION lines, app.py included."""
    import ast

    files = [os.path.join(PKG, m + ".py") for m in modules()] + [os.path.join(os.path.dirname(PKG), "app.py")]
    long = {
        f"{os.path.basename(path)}:{node.name}": node.end_lineno - node.lineno + 1
        for path in files
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION
    }
    assert not long, f"split these functions (at most {MAX_FUNCTION} lines): {long}"


def test_app_is_thin():
    lines = len(open(os.path.join(os.path.dirname(PKG), "app.py"), encoding="utf-8").read().splitlines())
    assert lines <= MAX_LINES, f"app.py has {lines} lines; move what is not page-building into t2idemo.backend"
