"""Code-base audits: nothing loads code or pickles, and no path that came off the wire is opened."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "train", "stream", "tools")

_BANNED_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "joblib", "cloudpickle"}
_BANNED_CALLS = {"eval", "exec", "__import__", "load_model", "unsafe_load"}


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _problems(path: Path) -> list[str]:
    problems = []
    for node in ast.walk(ast.parse(path.read_text())):
        where = f"{path.parent.name}/{path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            problems += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in _BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _BANNED_MODULES:
            problems.append(f"{where}: from {node.module} import")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            flags = {k.arg: k.value for k in node.keywords}
            if name in _BANNED_CALLS:
                problems.append(f"{where}: {name}()")
            for flag in ("allow_pickle", "safe_mode"):
                value = flags.get(flag)
                if isinstance(value, ast.Constant) and value.value is (flag == "allow_pickle"):
                    problems.append(f"{where}: {flag}={value.value}")
            if name == "load" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "np":
                value = flags.get("allow_pickle")
                if not (isinstance(value, ast.Constant) and value.value is False):
                    problems.append(f"{where}: np.load without allow_pickle=False")
            if name == "load" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") in ("yaml", "torch"):
                problems.append(f"{where}: {func.value.id}.load")
    return problems


def test_no_module_loads_code_or_pickles():
    problems = [p for path in _sources() for p in _problems(path)]
    assert problems == [], "\n".join(problems)


def test_the_audit_finds_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport numpy as np\nnp.load('x')\nnp.load('y', allow_pickle=True)\n"
                   "eval('1')\nkeras.saving.load_model('m', safe_mode=False)\n")
    found = [p.split(": ", 1)[1] for p in _problems(bad)]
    assert found == ["import pickle", "np.load without allow_pickle=False", "allow_pickle=True",
                     "np.load without allow_pickle=False", "eval()", "load_model()", "safe_mode=False"]


_OPENERS = {"open", "VideoWriter", "VideoCapture", "imread", "imwrite", "load", "read_bytes", "read_text",
            "write_text", "write_bytes"}


def _file_calls(path: Path) -> list[tuple[str, str]]:
    """(enclosing function, call) for every call in ``path`` that opens a file."""
    found = []

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in _OPENERS:
                found.append((function, ast.unparse(node)))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(path.read_text()), "")
    return found


def test_consumers_of_messages_open_only_the_files_they_were_told_to():
    """Past reading their config file (in ``main``), the worker and the viewer open no file; the
    recorder opens its CSV, its videos and its best frames, whose paths are the configured ones (a
    stream id and a frame number at most added to the name, see stream_path)."""
    def calls(name: str) -> list[tuple[str, str]]:
        return [c for c in _file_calls(ROOT / "stream" / name) if c[0] not in ("main", "work")]

    assert calls("worker.py") == []
    assert calls("watch.py") == []
    assert sorted(f for f, _ in calls("record.py")) == ["__init__", "__init__", "_files", "_open"]


def test_hostile_message_fields_never_become_paths(tmp_path):
    from stream import protocol
    from stream.record import RecordConfig, Recorder

    out = tmp_path / "out"
    out.mkdir()
    config = RecordConfig(csv=out / "scores.csv", video=out / "annotated.avi", fps=10.0, best_frames=out / "best")
    image = np.zeros((16, 16, 3), np.uint8)
    with Recorder(config) as recorder:
        for stream in ("..", "a:b", "x.y"):
            for seq in range(3):
                recorder.handle(protocol.frame_message(stream, seq, image))
                recorder.handle(protocol.Score(stream, seq, 0.9, True, 0.5, "../../model", time.time(), time.time(),
                                               time.time(), 0.01, ("../etc/passwd",), 1, 0))
            recorder.handle(protocol.Episode(stream, "end", 0, 2, 0.9, 0, 0, time.time(), time.time(), 0.5,
                                             "../../model"))
            recorder.handle(protocol.Status(stream, "warning", "/etc/passwd", time.time()))
            recorder.handle(protocol.EndOfStream(stream, 2, "../../eof", time.time()))
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    best = [f"out/best/{name}-00000000.{ext}" for name in ("..", "a%3Ab", "x.y") for ext in ("dcm", "png")]
    assert written == sorted(["out", "out/annotated-...avi", "out/annotated-a%3Ab.avi", "out/annotated-x.y.avi",
                              "out/scores.csv", "out/best", "out/best/episodes.csv", *best])
