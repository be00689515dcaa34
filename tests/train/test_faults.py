"""Training under bad input and interruption: one line naming the file; result files never torn."""

from __future__ import annotations

import ast
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from train.cli import main
from train.files import copy_tree, is_partial, partial_path, replacing, write_json
from train.trainer import HistoryLog, read_history

TRAIN = Path(__file__).resolve().parents[2] / "train"
FLAGS = ["--backbone", "tiny", "--weights", "none", "--image-size", "48", "--folds", "2", "--epochs", "1",
         "--no-progress"]


def write_scan(folder: Path, frames: int, *, video: bool = False) -> None:
    """A scan of real image (or MJPG video) files and labels.csv, alternating Head and Not-Head in runs of 4."""
    rng = np.random.default_rng(len(folder.name))
    images = [rng.integers(0, 255, (40, 48, 3), np.uint8) for _ in range(frames)]
    folder.mkdir(parents=True)
    if video:
        writer = cv2.VideoWriter(str(folder / "scan.avi"), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"),
                                 25.0, (48, 40), True)
        for image in images:
            writer.write(image)
        writer.release()
        names = [str(i) for i in range(frames)]
    else:
        (folder / "frames").mkdir()
        names = [f"frame_{i:03d}.png" for i in range(frames)]
        for name, image in zip(names, images):
            assert cv2.imwrite(str(folder / "frames" / name), image)
    labels = ["Head" if (i // 4) % 2 else "Not-Head" for i in range(frames)]
    pd.DataFrame({"frame": names, "label": labels}).to_csv(folder / "labels.csv", index=False)


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "data"
    write_scan(root / "scan_a", 16)
    write_scan(root / "scan_b", 16)
    write_scan(root / "scan_c", 24, video=True)
    return root


def run_train(capsys, dataset: Path, tmp_path: Path) -> tuple[int, str]:
    code = main([str(dataset), "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), *FLAGS])
    return code, capsys.readouterr().err.strip()


def test_an_image_that_cannot_be_read_during_extraction_stops_training_naming_it(capsys, dataset, tmp_path):
    # Not empty, so the quick check before training lets it through; decoding it fails.
    bad = dataset / "scan_b" / "frames" / "frame_009.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    code, err = run_train(capsys, dataset, tmp_path)
    assert code == 1
    assert err == f"fetalhead: error: {bad}: not a readable image"
    assert not (tmp_path / "run" / "model.fhb").exists()


def test_a_video_that_breaks_during_extraction_stops_training_naming_it(capsys, dataset, tmp_path):
    video = dataset / "scan_c" / "scan.avi"
    data = video.read_bytes()
    video.write_bytes(data[: len(data) * 2 // 3])
    code, err = run_train(capsys, dataset, tmp_path)
    assert code == 1 and "\n" not in err
    assert err.startswith(f"fetalhead: error: {video}: ended after ") and err.endswith(" of 24 frames")


def test_a_label_file_in_an_unknown_format_is_named(capsys, dataset, tmp_path):
    labels = dataset / "scan_a" / "labels.csv"
    labels.rename(labels.with_name("labels.json"))
    code, err = run_train(capsys, dataset, tmp_path)
    assert code == 1
    assert f"{dataset / 'scan_a' / 'labels.json'}: unknown label file format .json; use labels.csv or " \
           f"labels.xlsx" in err


# --- result files are whole or absent --------------------------------------------------------


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


def test_history_log_rewrites_the_whole_file_and_resumes(tmp_path):
    path = tmp_path / "history.csv"
    pd.DataFrame({"epoch": [0, 1], "loss": [0.5, 0.4], "val_loss": [0.6, 0.5]}).to_csv(path, index=False)
    history = HistoryLog(path)
    history.on_epoch_end(1, {"loss": 0.35, "val_loss": 0.45})  # epoch 1 again, after a resume
    history.on_epoch_end(2, {"loss": 0.3, "val_loss": 0.4})
    assert read_history(path).to_dict("list") == {"epoch": [0, 1, 2], "loss": [0.5, 0.35, 0.3],
                                                  "val_loss": [0.6, 0.45, 0.4]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]


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
