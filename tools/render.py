"""Everything a person reads on a terminal: rich tables, progress bars and live views, in one module.

The library hands over plain results (dicts, dataclasses, a ``StreamBoard``)
and a ``models.progress.Progress`` to report on; this module draws them.
"""

from __future__ import annotations

import os
from time import monotonic

from rich.console import Console, Group
from rich.markup import escape
from rich.live import Live
from rich.padding import Padding
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from models.classes import CLASS_NAMES, HEAD, NOT_HEAD
from models.progress import NO_PROGRESS


# --- progress ----------------------------------------------------------------------------


class _Bar:
    """One ``models.progress.Task`` drawn as a rich progress bar of its own."""

    def __init__(self, console: Console, description: str, total: int, completed: int) -> None:
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console,
                                  transient=not console.is_terminal)
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=completed, note="")

    def update(self, *, advance: int = 0, completed: int | None = None, description: str | None = None,
               note: str | None = None) -> None:
        fields = {k: v for k, v in (("description", description), ("note", note)) if v is not None}
        if completed is not None:
            fields["completed"] = completed
        self._progress.update(self._task, advance=advance, **fields)

    def close(self) -> None:
        self._progress.stop()


class RichProgress:
    """A ``models.progress.Progress`` that draws each task as a rich progress bar."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()

    def task(self, description: str, total: int, completed: int = 0) -> _Bar:
        return _Bar(self.console, description, total, completed)


def progress(enabled: bool):
    """A RichProgress when ``enabled``, else ``models.progress.NO_PROGRESS``."""
    return RichProgress() if enabled else NO_PROGRESS


# --- models --------------------------------------------------------------------------------


def print_model_summary(config, summary, console: Console | None = None) -> None:
    """``fetalhead model info``: a ``models.cnn_lstm.ModelSummary`` of ``config`` as a table, then its counts."""
    console = console or Console()
    table = Table(title=f"CNN-LSTM ({config.backbone}, weights {config.weights})")
    for column in ("layer", "output shape", "parameters"):
        table.add_column(column)
    for name, shape, parameters in summary.layers:
        table.add_row(name, shape, f"{parameters:,}")
    console.print(table)
    console.print(f"feature size: {summary.feature_dim}")
    console.print(f"trainable parameters: {summary.trainable:,}")
    console.print(f"non-trainable parameters: {summary.non_trainable:,}")


def _calibration_phrase(meta) -> str:
    from models.bundle import calibration_of

    calibration = calibration_of("", meta)
    if calibration is None:
        return "none: the threshold applies to the model's own scores"
    return calibration.describe()


def print_bundle_info(path, meta, model_id: str, console: Console | None = None) -> None:
    """``fetalhead model info BUNDLE``: what a bundle is, how it was trained and how well, from its metadata.

    ``meta`` is ``models.bundle.read_meta``'s; bundles made outside
    ``fetalhead train`` lack the training part, which is then said.
    """
    from models.config import weights_phrase
    from train.metrics import METRIC_NAMES

    console = console or Console()
    config, info = meta["config"], meta.get("info", {})
    train = info.get("train_config", {})
    rows = [
        ("model id", model_id),
        ("backbone", f"{config['backbone']} (from {weights_phrase(config['weights'])}), "
                     f"{meta.get('feature_dim', '?')} features per frame"),
        ("input", f"{config['image_size']} x {config['image_size']} px, window of {config['window']} frames, "
                  f"roi {config['roi']}, preprocessing version {meta.get('preprocess_version', 1)}"),
        ("temporal head", f"LSTM {config['lstm_units'][0]} -> LSTM {config['lstm_units'][1]} -> "
                          f"Dense {config['dense_units']} -> 1"
                          + (f", {meta['head_members']} of them, scores averaged" if meta.get("head_members") else "")
                          + (f": {info['heads']}" if info.get("heads") else "")),
        ("threshold", f"{meta['threshold']:.4f}" + (f", {info['threshold_rule']}" if "threshold_rule" in info
                                                     else "")),
        ("calibration", _calibration_phrase(meta)),
    ]
    if train:
        rows.append(("training", f"Adam {train.get('learning_rate', '?'):g}, batch {train.get('batch_size', '?')}, "
                                 f"{train.get('folds', '?')} folds"
                                 + (f", final model {info['final_epochs']} epochs" if info.get("final_epochs") else "")
                                 + (", backbone trained" if train.get("train_backbone") else "")))
    if "trained_on" in info:
        scans = info["trained_on"]
        shown = ", ".join(scans[:8]) + (f" and {len(scans) - 8} more" if len(scans) > 8 else "")
        rows.append(("trained on", f"{len(scans)} scans: {shown}"))
        rows.append(("held out", ", ".join(info.get("holdout", [])) or "none"))
    cv = info.get("cross_validation")
    if cv:
        mean, sd, pooled = cv["folds_mean"], cv["folds_std"], cv["pooled_out_of_fold"]
        rows.append(("cross-validation, mean ± sd over folds",
                     ", ".join(f"{m} {mean[m]:.3f} ± {sd[m]:.3f}" for m in METRIC_NAMES)))
        rows.append(("pooled out of fold", ", ".join(f"{m} {pooled[m]:.3f}" for m in METRIC_NAMES)))
        within = cv.get("mean_within_scan_roc_auc")
        if within is not None:
            rows.append(("mean within-scan ROC-AUC", f"{within:.3f}"))
    elif not info:
        rows.append(("training", "not recorded: this bundle was not made by fetalhead train"))
    versions = meta.get("versions", {})
    rows.append(("made with", ", ".join(f"{k} {v}" for k, v in versions.items())))
    table = Table(title=f"model bundle {path}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, escape(str(value)))
    console.print(table)


def print_export(path, config, console: Console | None = None) -> None:
    """What ``fetalhead model export`` wrote: the file, and the model's input and output."""
    (console or Console()).print(
        f"wrote {path}: frames (batch, {config.window}, {config.image_size}, {config.image_size}, 3) "
        f"preprocessed by models.preprocess -> scores (batch, {config.window})", highlight=False, soft_wrap=True)


# --- training and data -------------------------------------------------------------------


def print_fold_table(results, summary, console: Console | None = None) -> None:
    """Cross-validation: one row per fold result (``train.kfold``), then mean ± sd and pooled from ``summary``.

    ``summary`` is ``train.kfold.summarise``'s dict, or None for a run of single folds.
    """
    from train.metrics import METRIC_NAMES

    table = Table(title="Cross-validation, per-frame scores at each fold's threshold")
    for column in ("fold", "val scans", "threshold", *METRIC_NAMES):
        table.add_column(column, justify="right")
    for r in results:
        m = r["at_threshold"]
        table.add_row(str(r["fold"]), str(len(r["val_scans"])), f"{r['threshold']:.3f}",
                      *(f"{m[k]:.3f}" for k in METRIC_NAMES))
    if summary:
        mean, std = summary["folds_mean"], summary["folds_std"]
        table.add_row("mean ± sd", "", "", *(f"{mean[k]:.3f} ± {std[k]:.3f}" for k in METRIC_NAMES))
        pooled = summary["pooled_out_of_fold"]
        table.add_row("pooled", "", f"{summary['threshold']:.3f}", *(f"{pooled[k]:.3f}" for k in METRIC_NAMES))
    (console or Console()).print(table)


def print_training(summary, fold: int | None, console: Console | None = None) -> None:
    """``fetalhead train``'s result (``train.kfold.train``): the fold table, then where the bundle and report are."""
    console = console or Console()
    print_fold_table(summary["folds"], summary["cross_validation"], console)
    if summary["bundle"]:
        console.print(f"model bundle: [bold]{summary['bundle']}[/]")
    if summary["report"]:
        console.print(f"report: [bold]{summary['report']}/report.md[/]")
    if fold is not None:
        console.print(f"fold {fold} done in {summary['run']}; combine folds with `fetalhead train merge`")
    print_warnings(summary["warnings"], console)


def print_warnings(warnings, console: Console | None = None) -> None:
    """One highlighted line per warning of a run (``train.kfold.learning_warnings``)."""
    console = console or Console()
    for warning in warnings:
        console.print(f"[bold yellow]warning:[/] {escape(warning)}", soft_wrap=True)


def print_merge(summary, console: Console | None = None) -> None:
    """``fetalhead train merge``'s result (``train.merge.merge_runs``): the fold table, the report, what next."""
    console = console or Console()
    print_fold_table(summary["folds"], summary["cross_validation"], console)
    console.print(f"report: {summary['report']}/report.md", highlight=False, markup=False, soft_wrap=True)
    console.print(f"final model: run `fetalhead train {summary['data_root'] or 'DATA'} --out {summary['run']}` "
                  "(finished folds are reused)", highlight=False, markup=False, soft_wrap=True)


def print_evaluation(result, console: Console | None = None) -> None:
    """``fetalhead evaluate``'s metrics and head episodes at the bundle's threshold (``train.evaluate.evaluate``)."""
    m, e = result["metrics"], result["episodes"]
    delays = (f"; delay {e['start_delay']:+.1f} frames at the start, {e['end_delay']:+.1f} at the end"
              if e["found"] else "")
    (console or Console()).print(
        f"{m['frames']} frames, threshold {m['threshold']:.3f}: accuracy {m['accuracy']:.3f}, "
        f"precision {m['precision']:.3f}, recall {m['recall']:.3f}, F1 {m['f1']:.3f}, "
        f"ROC-AUC {m['roc_auc']:.3f}, PR-AUC {m['pr_auc']:.3f}\n"
        f"head episodes: {e['found']} of {e['truth']} found, {e['missed']} missed, {e['false']} false, "
        f"{e['split']} split{delays}\nreport: {result['report']}/report.md")


def print_synth_summary(out, config, scans, console: Console | None = None) -> None:
    """What ``fetalhead synth`` wrote: ``scans`` (``train.data.Scan``, read back) of ``config`` under ``out``."""
    console = console or Console(highlight=False, soft_wrap=True)
    head = sum(int((s.labels == HEAD).sum()) for s in scans)
    total = sum(len(s) for s in scans)
    n_video = sum(s.video is not None for s in scans)
    console.print(f"wrote {len(scans)} scans ({len(scans) - n_video} as PNG frames, {n_video} as MJPG video) "
                  f"of {config.frames} frames {config.height}x{config.width} to {out}")
    console.print(f"{CLASS_NAMES[HEAD]} {head} ({100 * head / total:.1f} %), "
                  f"{CLASS_NAMES[NOT_HEAD]} {total - head} ({100 * (total - head) / total:.1f} %)")


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}" if whole else "-"


def print_check_report(report, root, console: Console | None = None) -> None:
    """A ``train.data.CheckReport`` of the dataset at ``root``: a table of scans, every problem, then the verdict."""
    console = console or Console(highlight=False, soft_wrap=True)
    usable = set(report.usable_scans)
    table = Table(title=f"{root}: {len(report.scans)} scans", title_justify="left")
    for name, justify in (("scan", "left"), ("source", "left"), ("frames", "right"), (CLASS_NAMES[HEAD], "right"),
                          (CLASS_NAMES[NOT_HEAD], "right"), (f"{CLASS_NAMES[HEAD]} %", "right"),
                          ("usable", "left")):
        table.add_column(name, justify=justify)
    for s in report.scans:
        table.add_row(s.name, s.source, str(s.frames), str(s.head), str(s.not_head),
                      _percent(s.head, s.head + s.not_head), "yes" if s.name in usable else "[red]no[/red]")
    frames = sum(s.frames for s in report.scans)
    head = sum(s.head for s in report.scans)
    not_head = sum(s.not_head for s in report.scans)
    table.add_section()
    table.add_row("total", "", str(frames), str(head), str(not_head), _percent(head, head + not_head),
                  f"{len(usable)} scans")
    console.print(table)

    n_fatal = len(report.fatal)
    n_warn = len(report.problems) - n_fatal
    if report.problems:
        console.print(f"{len(report.problems)} problems: {n_fatal} fatal, {n_warn} warnings")
    for problem in report.problems:
        kind = "[red]error[/red]  " if problem.fatal else "[yellow]warning[/yellow]"
        console.print(f"{kind} ", end="")
        # Paths and messages are printed as they are: file names may hold [brackets].
        console.print(str(problem), markup=False)
    if report.ok:
        console.print(f"[green]OK[/green]: {len(usable)} usable scans")
    else:
        console.print(f"[red]NOT OK[/red]: {n_fatal} fatal problem{'s' if n_fatal != 1 else ''}; "
                      "training refuses this data until they are fixed")


# --- streams -----------------------------------------------------------------------------

# The sparkline's levels, lowest first, and its width in characters on a terminal and in a log line.
SPARK_LEVELS = "▁▂▃▄▅▆▇█"
_SPARK_WIDTH = 30
_SPARK_WIDTH_LOG = 20
_VERDICT_STYLE = {CLASS_NAMES[HEAD]: "bold black on green", CLASS_NAMES[NOT_HEAD]: "bold white on red"}
_IDLE_STYLE = "bold white on grey30"


def spark_level(value: float) -> str:
    """The sparkline character of a score in [0, 1]: ``▁`` for [0, 1/8) up to ``█`` for [7/8, 1]."""
    return SPARK_LEVELS[min(len(SPARK_LEVELS) - 1, int(max(0.0, value) * len(SPARK_LEVELS)))]


def spark_buckets(history, span_s: float, width: int) -> list[float | None]:
    """The mean score of each of ``width`` equal slices of the last ``span_s`` seconds, oldest first.

    ``history`` is ``StreamBoard.rows()``'s (age_s, score) pairs; a slice
    with no score is None.
    """
    sums, counts = [0.0] * width, [0] * width
    step = span_s / width
    for age, value in history:
        if 0 <= age < span_s:
            i = width - 1 - min(width - 1, int(age / step))
            sums[i] += value
            counts[i] += 1
    return [total / n if n else None for total, n in zip(sums, counts)]


def sparkline(history, span_s: float, width: int = _SPARK_WIDTH) -> str:
    """The last ``span_s`` seconds of scores as ``width`` block characters (``spark_level``), blank where none."""
    return "".join(" " if v is None else spark_level(v) for v in spark_buckets(history, span_s, width))


def _spark_text(history, threshold: float | None, span_s: float, width: int = _SPARK_WIDTH) -> Text:
    """The sparkline with the slices at or above the threshold in green, the others grey."""
    text = Text()
    for value in spark_buckets(history, span_s, width):
        if value is None:
            text.append(" ")
        else:
            above = threshold is not None and value >= threshold
            text.append(spark_level(value), style="bold green" if above else "grey62")
    return text


def _score_text(row: dict) -> str:
    """``score 0.93  threshold 0.50 = ▅``: the last score, and the threshold with its sparkline level."""
    return f"score {row['score']:.2f}  threshold {row['threshold']:.2f} = {spark_level(row['threshold'])}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _age(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.0f} min"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else f"{int(seconds // 60)} min {seconds % 60:02.0f} s"


def _drops(row: dict, *, start: bool = True) -> str:
    """``8 (3 lost, 3 before the first score)``: drops, lost, and with ``start`` lost before the first score."""
    if not row["lost"]:
        return f"{row['drops']}"
    before = f", {row['lost_at_start']} before the first score" if start and row["lost_at_start"] else ""
    return f"{row['drops']} ({row['lost']} lost{before})"


def verdict_line(row: dict) -> str:
    """The headline of a stream row: its id, the smoothed verdict and time in view, or why there is none."""
    if row["ended"]:
        last = f", last verdict {row['verdict']}" if row["verdict"] else ""
        return f"{row['stream']}   ended ({row['end_reason']}){last}"
    if row["verdict"] is None:
        return f"{row['stream']}   waiting for scores"
    in_view = f"   in view {_duration(row['in_view_s'])}" if row["in_view_s"] is not None else ""
    return f"{row['stream']}   {row['verdict']}{in_view}"


def _stream_block(row: dict, span_s: float):
    """One stream: the verdict as a 3-line colour band, score and sparkline under it; engineering figures beside."""
    style = _IDLE_STYLE if row["ended"] or row["verdict"] is None else _VERDICT_STYLE[row["verdict"]]
    band = Padding(Text(verdict_line(row), justify="center"), (1, 2), style=style, expand=True)
    score = Text("" if row["score"] is None else _score_text(row))
    for flag in row["flags"]:
        score.append("  ")
        score.append(f" {flag} ", style="black on yellow")
    spark = Text(f"last {span_s:g} s ")
    spark.append_text(_spark_text(row["history"], row["threshold"], span_s))
    figures = Table.grid(padding=(0, 1))
    figures.add_column(style="dim")
    figures.add_column()
    for name, value in (("seq", "-" if row["seq"] is None else str(row["seq"])),
                        ("fps in/out", f"{row['fps_in']:.1f}/{row['fps_out']:.1f}"),
                        ("ms p50/p99", f"{_ms(row['latency_p50_ms'])}/{_ms(row['latency_p99_ms'])}"),
                        ("drops", _drops(row, start=False)),
                        *((("before 1st score", f"{row['lost_at_start']} lost"),) if row["lost_at_start"] else ()),
                        ("last", "ended" if row["ended"] else _age(row["age_s"]))):
        figures.add_row(name, value)
    grid = Table.grid(expand=True, padding=(0, 2))
    grid.add_column(ratio=1)
    # One width for every stream's figures, so that they line up down the screen.
    grid.add_column(no_wrap=True, min_width=32)
    grid.add_row(Group(band, score, spark), figures)
    return grid


def render(board, now: float | None = None):
    """A ``stream.watch.StreamBoard`` as rich renderables: per stream its verdict band, score, sparkline
    and figures, then process health, warnings and recent events."""

    now = board.clock() if now is None else now
    parts = [Text(f"fetalhead streams (verdict held {board.hold} frames)", style="bold")]
    for row in board.rows(now):
        parts.append(_stream_block(row, board.history_s))
    for proc in board.processes(now):
        parts.append(Text(process_line(proc), style="red" if proc["dead"] and not proc["finished"] else ""))
    for line in board.warnings(now):
        parts.append(Text(f"warning: {line}", style="bold red"))
    for event in board.recent_events(now):
        style = {"error": "red", "warning": "yellow"}.get(event["level"], "dim")
        parts.append(Text(event_line(event), style=style))
    return Group(*parts)


def event_line(event: dict) -> str:
    """One status event (``StreamBoard.recent_events``) with how long ago it arrived."""
    return f"{event['stream']} {event['level']} ({_age(event['age_s'])} ago): {event['message']}"


def process_line(proc: dict) -> str:
    """One line of a process's heartbeat figures (``StreamBoard.processes``); figures it does not report are left out."""
    if proc["loading"] and not proc["dead"]:
        since = "" if proc["uptime_s"] is None else f" ({proc['uptime_s']:.0f} s)"
        what = "loading its model" if proc["role"] == "worker" else "starting"
        return f"{proc['role']} pid {proc['pid']}: {what}{since}"
    parts = [f"{name} {proc[key]}" for name, key in (("in", "frames_in"), ("out", "frames_out"),
                                                       ("dropped", "dropped")) if proc[key] is not None]
    if proc["rejected_by"] or proc["role"] == "worker":
        detail = ", ".join(f"{k} {v}" for k, v in sorted(proc["rejected_by"].items()))
        parts.append(f"rejected {proc['rejected']}" + (f" ({detail})" if detail else ""))
    rates = [f"{proc[key]:.1f} fps {name}" for name, key in (("in", "fps_in"), ("out", "fps_out"))
             if proc[key] is not None]
    if proc["dead"] and proc["finished"]:
        # Its last rates are history: the stream ended and the capture with it.
        rates = ["finished with its stream"]
    elif proc["dead"]:
        rates.append(f"silent {proc['silent_s']:.0f} s")
    return f"{proc['role']} pid {proc['pid']}: " + ", ".join([" ".join(parts)] + rates if parts else rates)


def row_line(row: dict, span_s: float = 10.0) -> str:
    """One plain-text line of a stream row (``StreamBoard.rows``), for logs and non-terminal output.

    The verdict first, with time in view, then the score and the threshold
    with its sparkline level, the last ``span_s`` seconds as a sparkline,
    and the engineering figures.
    """
    score = "" if row["score"] is None else f" {_score_text(row)}"
    spark = f" last {span_s:g} s {sparkline(row['history'], span_s, _SPARK_WIDTH_LOG)}" if row["history"] else ""
    flags = f" [{','.join(row['flags'])}]" if row["flags"] else ""
    return (f"{verdict_line(row)}{score}{spark}{flags} seq {row['seq'] if row['seq'] is not None else '-'} "
            f"in/out {row['fps_in']:.1f}/{row['fps_out']:.1f} fps "
            f"p50/p99 {_ms(row['latency_p50_ms'])}/{_ms(row['latency_p99_ms'])} ms drops {_drops(row)}")


class LiveBoard:
    """A ``stream.watch.BoardView`` for a terminal: ``render``'s view, updated in place from the first update on."""

    def __init__(self, console: Console) -> None:
        self._live = Live(console=console, auto_refresh=False, transient=False)

    def update(self, board) -> None:
        if not self._live.is_started:
            self._live.start()
        self._live.update(render(board), refresh=True)

    def close(self, board) -> None:
        self.update(board)
        self._live.stop()


class BoardLog:
    """A ``stream.watch.BoardView`` for a pipe or a log file: plain lines, then ``render``'s view at the end.

    Every ``interval_s`` it prints a line per stream that got scores or
    ended since the last time, each status event once, and each alert
    once, when it starts.
    """

    def __init__(self, console: Console, interval_s: float) -> None:
        self.console = console
        self.interval_s = interval_s
        self.clock = monotonic
        self._printed: dict[str, tuple[int, bool]] = {}
        self._event_number = 0
        self._alerted: set[str] = set()
        self._next = self.clock() + interval_s

    def update(self, board) -> None:
        if self.clock() < self._next:
            return
        self._next += self.interval_s
        for row in board.rows():
            state = (row["scores"], row["ended"])
            if self._printed.get(row["stream"]) != state:
                self._printed[row["stream"]] = state
                # Not markup: rich would take the flags' [brackets] for a style and drop them.
                self.console.print(row_line(row, board.history_s), highlight=False, markup=False, soft_wrap=True)
        for event in board.recent_events():
            if event["number"] > self._event_number:
                self._event_number = event["number"]
                self.console.print(f"{event['stream']} {event['level']}: {event['message']}", highlight=False,
                                   markup=False, soft_wrap=True)
        alerts = board.alerts()
        for key in alerts.keys() - self._alerted:
            self.console.print(f"warning: {alerts[key]}", highlight=False, markup=False, soft_wrap=True)
        self._alerted = set(alerts)

    def close(self, board) -> None:
        self.console.print(render(board))


def board_view(interval_s: float, console: Console | None = None) -> LiveBoard | BoardLog:
    """The view ``fetalhead watch`` draws with: ``LiveBoard`` on a terminal, else ``BoardLog``."""
    if console is None:
        console = Console()
        if not console.is_terminal and "COLUMNS" not in os.environ:
            # rich assumes 80 columns without a terminal, too narrow for the table in a log.
            console = Console(width=160)
    return LiveBoard(console) if console.is_terminal else BoardLog(console, interval_s)


# --- benchmarks ----------------------------------------------------------------------------


def print_bench_table(rows) -> None:
    """``fetalhead bench``'s rows (``tools.bench.Row``): value, baseline, ratio (with its runs' range), target."""
    table = Table(title="fetalhead bench (ratios are value / baseline, measured in the same run)")
    for column in ("section", "backbone", "figure", "value", "baseline", "ratio", "target"):
        table.add_column(column, justify="right" if column in ("value", "ratio") else "left")
    for row in rows:
        baseline = "" if row.baseline is None else f"{row.baseline:.4g} {row.unit} ({row.baseline_name})"
        ratio = "" if row.ratio is None else f"{row.ratio:.3g}"
        if row.runs > 1 and row.ratio_min is not None:
            ratio += f" ({row.ratio_min:.3g}-{row.ratio_max:.3g}, {row.runs} runs)"
        table.add_row(row.section, row.backbone, row.figure, f"{row.value:.4g} {row.unit}", baseline, ratio,
                      row.target)
    # Wide enough for the table when piped to a file or a CI log.
    Console(width=200).print(table)


def print_soak_report(result, console: Console) -> None:
    """``fetalhead soak``'s two windows (``tools.soak.SoakResult``) side by side, then the verdict."""
    table = Table(title="soak: start and end of the run")
    for column in ("window", "seconds", "scores/s", "latency p50 ms", "latency p99 ms", "worker RSS MiB",
                   "capture RSS MiB"):
        table.add_column(column, justify="right")
    for w in (result.first, result.last):
        table.add_row(w.name, f"{w.seconds:.0f}", f"{w.scores / w.seconds:.1f}",
                      "-" if w.latency_p50_ms is None else f"{w.latency_p50_ms:.1f}",
                      "-" if w.latency_p99_ms is None else f"{w.latency_p99_ms:.1f}",
                      *(f"{w.rss[r] / 2**20:.1f}" if r in w.rss else "-" for r in ("worker", "capture")))
    console.print(table)
    if result.problems:
        for line in result.problems:
            console.print(f"[bold red]FAIL[/] {line}", highlight=False)
        tail = result.log.strip().splitlines()[-15:]
        if tail:
            console.print("last lines of the children's log:\n" + "\n".join(tail), highlight=False, markup=False)
    else:
        console.print(f"[bold green]OK[/] {result.scores} scores; memory and latency held steady", highlight=False)
