"""train.files: result files are whole or absent, and every writer in train/ goes through them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from train.files import copy_tree, is_partial, partial_path, replacing, write_json

TRAIN = Path(__file__).resolve().parents[2] / "train"


def test_a_failed_write_leaves_the_previous_file_and_no_partial(tmp_path):
    target = tmp_path / "folds.csv"
    target.write_text("scan,fold\na,0\n")
    with pytest.raises(RuntimeError):
        with replacing(target) as tmp:
            tmp.write_text("scan,fo")  # killed half way through
            raise RuntimeError("killed")
    assert target.read_text() == "scan,fold\na,0\n"
    assert list(tmp_path.iterdir()) == [target]
    write_json(tmp_path / "sub" / "result.json", {"fold": 1})
    assert (tmp_path / "sub" / "result.json").read_text() == '{\n  "fold": 1\n}'


def test_partial_names_keep_the_suffixes_writers_need():
    assert partial_path(Path("f/best.weights.h5")) == Path("f/best.partial.weights.h5")
    assert partial_path(Path("roc.png")) == Path("roc.partial.png")
    assert partial_path(Path("README")) == Path("README.partial")
    assert is_partial(Path("roc.partial.png")) and not is_partial(Path("roc.png"))


def test_copy_tree_skips_leftovers_and_copies_the_marker_last(tmp_path):
    src = tmp_path / "fold_0"
    (src / "backup").mkdir(parents=True)
    for name in ("result.json", "predictions.csv", "predictions.partial.csv", "backup/state.json"):
        (src / name).write_text(name)
    copy_tree(src, tmp_path / "out", last="result.json")
    copied = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert copied == ["backup/state.json", "predictions.csv", "result.json"]


# Calls that write a file, and where the file's path is: the receiver or the first argument.
_WRITES_RECEIVER = {"write_text", "write_bytes"}
_WRITES_ARGUMENT = {"to_csv", "savefig", "save_weights", "save", "dump", "copyfile", "copy", "copy2", "copytree",
                    "imwrite"}
# Modules with their own discipline: the helpers themselves; the feature cache, shared
# between runs, writes to unique temporary names (mkstemp) and checks every entry it
# reads; synth writes a new dataset into an empty folder, not a result.
_EXEMPT = {"files.py", "cache.py", "synth.py"}


def _atomic_writes_problems(path: Path) -> list[str]:
    """Every write call in ``path`` whose target is not a name bound by ``with replacing(...) as NAME``."""
    problems = []

    def visit(node: ast.AST, safe: frozenset[str]) -> None:
        if isinstance(node, ast.With):
            bound = {item.optional_vars.id for item in node.items
                     if isinstance(item.context_expr, ast.Call) and getattr(item.context_expr.func, "id", "") ==
                     "replacing" and isinstance(item.optional_vars, ast.Name)}
            safe = safe | bound
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            target = None
            if name in _WRITES_RECEIVER and isinstance(func, ast.Attribute):
                target = func.value
            elif name in _WRITES_ARGUMENT and node.args:
                target = node.args[0]
            elif name == "open" and any(isinstance(a, ast.Constant) and isinstance(a.value, str) and
                                        set(a.value) & set("wax") for a in node.args[1:]):
                target = node.args[0]
            if target is not None and not (isinstance(target, ast.Name) and target.id in safe):
                problems.append(f"{path.name}:{node.lineno}: {ast.unparse(node)[:80]}")
        for child in ast.iter_child_nodes(node):
            visit(child, safe)

    visit(ast.parse(path.read_text()), frozenset())
    return problems


def test_every_result_file_in_train_is_written_through_a_temporary_name():
    problems = [p for path in sorted(TRAIN.glob("*.py")) if path.name not in _EXEMPT
                for p in _atomic_writes_problems(path)]
    assert problems == [], "direct writes (use train.files.replacing):\n" + "\n".join(problems)


def test_the_audit_catches_a_direct_write(tmp_path):
    source = tmp_path / "report.py"
    source.write_text("def f(frame, path, fig):\n"
                      "    frame.to_csv(path)\n"
                      "    with replacing(path) as tmp:\n"
                      "        fig.savefig(tmp)\n"
                      "    (path / 'x').write_text('a')\n"
                      "    open(path, 'w')\n")
    assert [p.split(":")[1] for p in _atomic_writes_problems(source)] == ["2", "5", "6"]
