"""`python -m runner compare BASELINE CANDIDATE`: is the candidate better or worse than the
baseline, beyond the noise the two runs measured themselves? (docs/compare.md)

Each side is an MLflow run id, a sweep's parent run id (its finished children, matched child by
child with the other side's by their config) or a results JSON an earlier comparison wrote
(`--save FILE`; its candidate, or its baseline with `FILE#baseline`). Every matched pair gets a
row per figure with a verdict: IMPROVED / SAME / REGRESSED by `Rule`, INVALID where the
benchmark that measured it was INVALID, UNMATCHED where only one side has the run or figure.

Exit status: 0 when no figure of `--fail-on` REGRESSED, 1 when one did, 2 for bad input (an
unknown run id, runs of different datasets, a bad option), said in one line before any work.
The comparison is an MLflow run of its own (experiment `compare`): both sides as tags, the table
as its Description, the rows as a CSV artifact, candidate/baseline per figure with the noise band
as a PNG.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from runner import report
from runner.config import PublishedFigures
from runner.errors import RunnerError

if TYPE_CHECKING:  # MLflow's import is slow: only once the arguments are checked
    from mlflow.tracking import MlflowClient

# the worst first: what a row of several figures (a sweep report's cell) shows
SEVERITY = report.COMPARE_SEVERITY
REGRESSED, INVALID, UNMATCHED, IMPROVED, SAME = SEVERITY
FORMAT = "runner.compare/1"  # the results JSON's `format`
EXPERIMENT = "compare"
EXIT_OK, EXIT_REGRESSED, EXIT_BAD_INPUT = 0, 1, 2
# the config that pairs runs of two sweeps, always; any other logged param (or the dataset) that
# varies among one side's runs joins it (the keys a sweep swept)
IDENTITY = ("model", "chip", "chip.precision", "bs")
# a run's metrics that the comparison reads besides the figures: the benchmark's noise
NOISE_METRICS = ("throughput_cv", "benchmark_window_spread", "benchmark_repeats",
                 "throughput_fps_min", "throughput_fps_max", "benchmark_valid",
                 "latency_ms_p50_cv", "latency_ms_p99_cv")
# what a run's noise is: the spread of one repeat (the default), or the standard error of its
# figure over its repeats (Rule says when each suits)
NOISE_KINDS = ("repeat-spread", "standard-error")


class CompareError(RunnerError):
    """A comparison's input is unusable (exit status 2)."""

    exit_status = EXIT_BAD_INPUT


@dataclass(frozen=True)
class Figure:
    metric: str
    label: str
    higher_is_better: bool
    kind: str  # timing (the benchmark's), e2e, accuracy, memory


FIGURES = (
    Figure("throughput_fps", "throughput img/s", True, "timing"),
    Figure("latency_ms_p50", "latency p50 ms", False, "timing"),
    Figure("latency_ms_p99", "latency p99 ms", False, "timing"),
    Figure("e2e_fps", "e2e img/s", True, "e2e"),
    *(Figure(f"top{k}", f"top-{k} %", True, "accuracy") for k in range(1, 6)),
    Figure("peak_rss_mib", "peak memory MiB", False, "memory"),
)
FIGURE_NAMES = tuple(f.metric for f in FIGURES)


@dataclass(frozen=True)
class Rule:
    """When a difference is beyond noise. Timing figures: each run's relative noise is the
    spread of one repeat: the largest of the coefficient of variation of its repeats'
    throughput (throughput_cv), half its worst window spread, and for a latency percentile that
    percentile's own CV over the repeats (latency_ms_p99_cv: a tail moves more than the mean).
    The two runs' noise combine as sqrt(nb^2 + nc^2); the figure changed when
    |candidate/baseline - 1| > max(k * combined, min_effect). Since benchmark.isolate_repeats
    each repeat runs in a fresh process, so the spread holds what varies between processes
    (placement, the machine's moment) too; min_effect is the floor under it.

    noise="standard-error" holds the figure to its standard error instead (the spread over
    sqrt(repeats), since the figure is taken over all the repeats' calls; one repeat: half its
    worst window spread), a narrower band. It is estimated from 3 repeats by default, so k=2 on
    it is a wide Student t (about 4 degrees of freedom for two runs): on the 2-core VM it raised
    more false alarms than the default with repeats in one process (4 of 20 identical pairs
    against 2) and with isolated ones (3 against 0), and caught a 10% slowdown no more often
    (docs/results.md)."""

    k: float = 2.0
    min_effect: float = 0.05
    memory_min_effect: float = 0.10
    noise: str = NOISE_KINDS[0]

    def text(self) -> str:
        noise = ("n = a run's standard error = its repeats' spread (throughput_cv; for latency "
                 "p50/p99 the larger of it and that percentile's CV over the repeats) / "
                 "sqrt(benchmark_repeats); one repeat: half its benchmark_window_spread"
                 if self.noise == "standard-error" else
                 "n = a run's relative noise = max(throughput_cv of its repeats, half its "
                 "benchmark_window_spread, and for latency p50/p99 the CV of that percentile "
                 "over the repeats)")
        return (f"timing figures (throughput, latency p50/p99, e2e): changed when |candidate/"
                f"baseline - 1| > max({self.k:g} x sqrt(nb^2 + nc^2), {self.min_effect:.0%}), "
                f"{noise}; e2e has no repeats: its run's benchmark noise; "
                f"peak memory: changed beyond {self.memory_min_effect:.0%} (one sample per run, "
                "no spread); top-k (the same dataset, so exact): equal is SAME, any change "
                "REGRESSED/IMPROVED, named within or beyond the guide's max_accuracy_drop "
                "points (model.published, 1 pt by default); INVALID: the benchmark of either run "
                "was INVALID (throughput, latency, e2e); UNMATCHED: on one side only")


@dataclass
class Entry:
    """One run's figures and what they are compared by."""

    run_id: str
    model: str
    chip: str
    dataset: str
    params: dict[str, str]
    metrics: dict[str, float]
    benchmark_verdict: str = ""  # VALID | INVALID | '' (no benchmark)
    max_drop: float = PublishedFigures().max_accuracy_drop

    def value(self, key: str) -> str:
        if key in ("model", "chip", "dataset"):
            return str(getattr(self, key))
        return self.params.get(key, "")

    def keys(self) -> set[str]:
        return {"model", "chip", "dataset", *self.params}

    def noise(self, metric: str = "", kind: str = NOISE_KINDS[0]) -> float | None:
        """The benchmark's relative noise for `metric` by the Rule's `kind` of noise; None when
        the run logged none."""
        # a latency percentile has its own spread over the repeats besides the throughput's
        keys = ["throughput_cv", *([f"{metric}_cv"] if metric.startswith("latency_ms_p") else [])]
        spread = [self.metrics[key] for key in keys if key in self.metrics]
        windows = self.metrics.get("benchmark_window_spread")
        if kind == "repeat-spread":
            parts = [*spread, *([windows / 2] if windows is not None else [])]
            return max(parts) if parts else None
        if spread:
            return max(spread) / math.sqrt(max(self.metrics.get("benchmark_repeats", 1.0), 1.0))
        return windows / 2 if windows is not None else None


@dataclass
class Side:
    source: str  # what was given: a run id, a sweep's parent run id, a file
    kind: str  # run | sweep | file
    entries: list[Entry]
    notes: list[str] = field(default_factory=list)


@dataclass
class Row:
    pair: str
    figure: str
    verdict: str
    baseline: float | None = None
    candidate: float | None = None
    change: str = ""  # 0.52x, +0.30 pt
    band: str = ""  # the noise band the change was held to
    why: str = ""
    baseline_run: str = ""
    candidate_run: str = ""
    ratio: float | None = None  # candidate / baseline (timing, memory)
    threshold: float | None = None  # relative (timing, memory) or points (accuracy)
    delta_pt: float | None = None


@dataclass
class Comparison:
    baseline: Side
    candidate: Side
    rule: Rule
    rows: list[Row]

    def counts(self) -> dict[str, int]:
        return {v: sum(r.verdict == v for r in self.rows) for v in SEVERITY}

    def regressed(self, fail_on: Sequence[str] = FIGURE_NAMES) -> list[Row]:
        return [r for r in self.rows if r.verdict == REGRESSED and r.figure in fail_on]

    def failing(self, fail_on: Sequence[str] = FIGURE_NAMES, strict: bool = False) -> list[Row]:
        """The rows that fail a gate: REGRESSED ones of fail_on; with strict, INVALID and
        UNMATCHED ones too (a figure that could not be judged does not pass; '*' is a run
        found on one side only)."""
        unjudged = (INVALID, UNMATCHED) if strict else ()
        return [r for r in self.rows if (r.verdict == REGRESSED and r.figure in fail_on)
                or (r.verdict in unjudged and (r.figure in fail_on or r.figure == "*"))]

    def by_run(self) -> dict[str, str]:
        """The worst verdict of each candidate run's rows (a sweep report's column)."""
        worst: dict[str, str] = {}
        for row in self.rows:
            if row.candidate_run:
                old = worst.get(row.candidate_run, SAME)
                worst[row.candidate_run] = min(old, row.verdict, key=SEVERITY.index)
        return worst

    def summary(self) -> str:
        counts = self.counts()
        return ", ".join(f"{n} {v}" for v, n in counts.items() if n) or "nothing to compare"

    def table(self) -> str:
        """Markdown: the rows, then the rule and the sides."""
        header = ["pair", "figure", "baseline", "candidate", "change", "noise band", "verdict"]
        rows = [[report._cell(c) for c in (
            r.pair, r.figure, _value(r.baseline), _value(r.candidate), r.change, r.band,
            r.verdict)] for r in self.rows]
        out = [f"## compare: {self.summary()}", ""]
        if rows:
            out += report._table(header, rows, {2, 3, 4})
            out.append("")
        bullets = [f"baseline: {_describe(self.baseline)}",
                   f"candidate: {_describe(self.candidate)}",
                   f"rule: {self.rule.text()}",
                   *(f"{r.pair} {r.figure}: {r.why}" for r in self.rows
                     if r.why and r.verdict != SAME),
                   *self.baseline.notes, *self.candidate.notes]
        for bullet in bullets:
            out += textwrap.wrap(bullet, report.WIDTH, initial_indent="- ",
                                 subsequent_indent="  ", break_on_hyphens=False)
        return "\n".join(out) + "\n"

    def csv(self) -> str:
        out = io.StringIO()
        columns = [f for f in Row.__dataclass_fields__]
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: "" if v is None else v for k, v in asdict(row).items()})
        return out.getvalue()

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "rule": asdict(self.rule), "rule_text": self.rule.text(),
                "baseline": asdict(self.baseline), "candidate": asdict(self.candidate),
                "rows": [asdict(r) for r in self.rows], "counts": self.counts()}


def _value(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _describe(side: Side) -> str:
    runs = ", ".join(e.run_id for e in side.entries[:6])
    more = f" and {len(side.entries) - 6} more" if len(side.entries) > 6 else ""
    count = f"{len(side.entries)} run{'s' if len(side.entries) != 1 else ''}"
    return f"{side.kind} {side.source} ({count}: {runs}{more})"


# -- reading the sides --

def entry_from_run(run: Any) -> Entry:
    """An Entry from an mlflow.entities.Run."""
    tags = run.data.tags
    published = report.Published.from_json(tags.get(report.PUBLISHED_TAG))
    wanted = {*FIGURE_NAMES, *NOISE_METRICS}
    return Entry(run_id=run.info.run_id, model=tags.get("model", ""), chip=tags.get("chip", ""),
                 dataset=tags.get("dataset", ""), params=dict(run.data.params),
                 metrics={k: float(v) for k, v in run.data.metrics.items() if k in wanted},
                 benchmark_verdict=tags.get(report.VERDICT_TAG, ""),
                 max_drop=published.max_drop if published is not None
                 else PublishedFigures().max_accuracy_drop)


def _store_exists(tracking_uri: str) -> None:
    """MLflow makes an empty SQLite store where none is: refuse instead (a mistyped path)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        if not db.is_file():
            raise CompareError(f"--tracking-uri {tracking_uri}: there is no MLflow store at "
                               f"{db}; pass the store the runs were logged to")


def load_file(spec: str, what: str) -> Side:
    path_text, _, part = spec.partition("#")
    path = Path(path_text)
    part = part or "candidate"
    if part not in ("baseline", "candidate"):
        raise CompareError(f"{what} {spec}: #{part} is not a side of a results file: write "
                           f"{path_text}#baseline or {path_text}#candidate")
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, not {FORMAT}")
        side = data[part]
        entries = [Entry(**{**e, "params": dict(e["params"]),
                            "metrics": {k: float(v) for k, v in e["metrics"].items()}})
                   for e in side["entries"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CompareError(f"{what} {spec}: not a results file written by `python -m runner "
                           f"compare --save` ({error}); give a run id or such a file") from None
    if not entries:
        raise CompareError(f"{what} {spec}: its {part} has no runs")
    return Side(f"{path}#{part}", "file", entries)


def load_side(spec: str, what: str, client: MlflowClient | None) -> Side:
    """`spec`: a results JSON (`FILE` or `FILE#baseline`) or a run id in the client's store."""
    from mlflow.exceptions import MlflowException

    from runner import sweep

    if Path(spec.partition("#")[0]).suffix == ".json" or Path(spec).is_file():
        return load_file(spec, what)
    if client is None:
        raise CompareError(f"{what} {spec} is not a results file")
    try:
        run = client.get_run(spec)
    except MlflowException:
        option = "mlflow.tracking_uri=" if what.startswith("compare.") else "--tracking-uri"
        shown = f"{what}={spec}" if what.startswith("compare.") else f"{what} {spec}"
        raise CompareError(f"{shown} is not a run id in {client.tracking_uri} (nor a results "
                           f"file): pass a run id from that store, or {option} for another "
                           "store") from None
    if run.data.tags.get("sweep.role") == "parent":
        children = sweep.children(client, run.info.experiment_id, run.info.run_id)
        finished = [c for c in children if c.info.status == "FINISHED"]
        notes = [f"{what} sweep job {c.data.tags.get('sweep.job_num', '?')} (run "
                 f"{c.info.run_id}) is {c.info.status}: left out" for c in children
                 if c.info.status != "FINISHED"]
        if not finished:
            raise CompareError(f"{what} {spec} is a sweep with no finished job to compare")
        return Side(spec, "sweep", [entry_from_run(c) for c in finished], notes)
    if run.info.status != "FINISHED":
        raise CompareError(f"{what} {spec} is a {run.info.status} run: compare finished runs")
    return Side(spec, "run", [entry_from_run(run)])


# -- matching the runs --

def match_keys(*sides: Side) -> list[str]:
    """IDENTITY and every key whose value varies among one side's runs."""
    varying: set[str] = set()
    for side in sides:
        for key in set().union(*(e.keys() for e in side.entries)):
            if len({e.value(key) for e in side.entries}) > 1:
                varying.add(key)
    return [*IDENTITY, *sorted(varying - set(IDENTITY))]


def _label(entry: Entry, keys: Sequence[str]) -> str:
    extra = [f"{k}={entry.value(k)}" for k in keys[len(IDENTITY):]]
    precision = entry.value("chip.precision")
    return " ".join([f"{entry.model}/{entry.chip}/bs{entry.value('bs')}"
                     + (f"/{precision}" if precision and precision != "fp32" else ""), *extra])


def match(baseline: Side, candidate: Side) -> list[tuple[Entry | None, Entry | None, str]]:
    """(baseline entry, candidate entry, label) pairs; one run against one run is one pair
    whatever their config (the user chose them)."""
    if len(baseline.entries) == 1 and len(candidate.entries) == 1:
        (b,), (c,) = baseline.entries, candidate.entries
        return [(b, c, _label(c, IDENTITY))]
    keys = match_keys(baseline, candidate)
    indexed: list[dict[tuple[str, ...], Entry]] = []
    for side, what in ((baseline, "baseline"), (candidate, "candidate")):
        index: dict[tuple[str, ...], Entry] = {}
        for entry in side.entries:
            key = tuple(entry.value(k) for k in keys)
            if key in index:
                raise CompareError(
                    f"{what} {side.source}: runs {index[key].run_id} and {entry.run_id} have "
                    f"the same config ({_label(entry, keys)}): compare them one run at a time")
            index[key] = entry
        indexed.append(index)
    base, cand = indexed
    order = sorted(set(base) | set(cand), key=lambda k: tuple(
        (0, int(v)) if v.isdigit() else (1, v) for v in k))
    return [(base.get(k), cand.get(k), _label(cand.get(k) or base[k], keys)) for k in order]


# -- judging --

def judge_timing(figure: Figure, b: float, c: float, nb: float | None, nc: float | None,
                 rule: Rule) -> tuple[str, float, str]:
    """(verdict, threshold, why) for a timing figure."""
    combined = math.hypot(nb or 0.0, nc or 0.0)
    threshold = max(rule.k * combined, rule.min_effect)
    change = c / b - 1
    missing = [w for w, n in (("baseline", nb), ("candidate", nc)) if n is None]
    why = f"no spread logged by the {' and '.join(missing)}: min effect only" if missing else ""
    if abs(change) <= threshold:
        return SAME, threshold, why
    better = change > 0 if figure.higher_is_better else change < 0
    return (IMPROVED if better else REGRESSED), threshold, why


def judge(b: Entry | None, c: Entry | None, label: str, rule: Rule) -> list[Row]:
    if b is None or c is None:
        present = b or c
        assert present is not None
        side = "baseline" if b is not None else "candidate"
        return [Row(label, "*", UNMATCHED, why=f"run {present.run_id} on the {side} side only",
                    baseline_run=b.run_id if b else "", candidate_run=c.run_id if c else "")]
    rows = []
    for figure in FIGURES:
        bv, cv = b.metrics.get(figure.metric), c.metrics.get(figure.metric)
        row = Row(label, figure.metric, SAME, bv, cv, baseline_run=b.run_id,
                  candidate_run=c.run_id)
        if bv is None and cv is None:
            continue
        rows.append(row)
        if bv is None or cv is None:
            row.verdict = UNMATCHED
            row.why = f"{figure.metric} logged by the {'candidate' if bv is None else 'baseline'}"\
                " only"
            continue
        if figure.kind == "accuracy":
            row.delta_pt = cv - bv
            row.threshold = b.max_drop
            row.change, row.band = f"{cv - bv:+.2f} pt", f"±{b.max_drop:g} pt"
            if cv == bv:
                continue
            # the same images through a deterministic model: any difference is real, not
            # noise; the guide's points say whether it would still pass the guide's rule
            row.verdict = IMPROVED if cv > bv else REGRESSED
            row.why = (f"{cv - bv:+.4g} pt on the same images: "
                       + (f"within the guide's {b.max_drop:g} pt acceptance"
                          if abs(cv - bv) <= b.max_drop
                          else f"beyond the guide's {b.max_drop:g} pt acceptance"))
            continue
        if bv <= 0:
            row.verdict, row.why = INVALID, f"baseline {figure.metric} is {bv:g}: no ratio"
            continue
        row.ratio = cv / bv
        row.change = f"{cv / bv:.3f}x"
        if figure.kind == "memory":
            row.threshold = rule.memory_min_effect
            change = cv / bv - 1
            if abs(change) > rule.memory_min_effect:
                row.verdict = REGRESSED if change > 0 else IMPROVED
        else:
            invalid = [f"{w} run {e.run_id}" for w, e in (("baseline", b), ("candidate", c))
                       if e.benchmark_verdict == "INVALID"]
            row.verdict, row.threshold, row.why = judge_timing(
                figure, bv, cv, b.noise(figure.metric, rule.noise),
                c.noise(figure.metric, rule.noise), rule)
            if invalid:  # e2e too: no verdict of its own, held to the same machine's noise
                row.verdict = INVALID
                row.why = f"benchmark INVALID in the {' and '.join(invalid)}"
        row.band = f"±{row.threshold:.1%}"
    return rows


def compare(baseline: Side, candidate: Side, rule: Rule | None = None) -> Comparison:
    """The rows of every matched pair; CompareError where a pair's datasets differ."""
    rule = rule or Rule()
    rows: list[Row] = []
    for b, c, label in match(baseline, candidate):
        if b is not None and c is not None and b.dataset != c.dataset:
            raise CompareError(
                f"baseline run {b.run_id} is on dataset {b.dataset!r}, candidate run "
                f"{c.run_id} on {c.dataset!r}: compare runs of the same dataset")
        rows += judge(b, c, label, rule)
    return Comparison(baseline, candidate, rule, rows)


# -- the plot and the comparison's own run --

COLORS = {IMPROVED: "tab:green", SAME: "tab:gray", REGRESSED: "tab:red", INVALID: "tab:orange",
          UNMATCHED: "tab:purple"}


def plot(comparison: Comparison) -> Any:
    """candidate/baseline per figure with its noise band (timing, memory; log scale) and the
    top-k differences in points with the guide's band."""
    from matplotlib.figure import Figure as MplFigure  # no pyplot: no GUI, no global state

    pairs = len({r.pair for r in comparison.rows})
    ratios = [r for r in comparison.rows if r.ratio is not None]
    points = [r for r in comparison.rows if r.delta_pt is not None]
    figure = MplFigure(figsize=(max(7.0, 0.45 * len(ratios) + 0.3 * len(points)), 4.5),
                       layout="constrained")
    left, right = figure.subplots(1, 2, width_ratios=[max(len(ratios), 1), max(len(points), 1)])

    def name(row: Row) -> str:
        return row.figure if pairs == 1 else f"{row.pair}: {row.figure}"

    for axes, rows, centre, value in ((left, ratios, 1.0, "ratio"),
                                      (right, points, 0.0, "delta_pt")):
        for x, row in enumerate(rows):
            band = row.threshold or 0.0
            low, high = (centre - band, centre + band) if value == "delta_pt" else (
                max(1e-3, 1 - band), 1 + band)
            axes.fill_between([x - 0.35, x + 0.35], low, high, color="tab:blue", alpha=0.15,
                              linewidth=0)
            axes.plot([x], [getattr(row, value)], marker="o", color=COLORS[row.verdict])
        axes.axhline(centre, color="black", linewidth=0.8)
        axes.set_xticks(range(len(rows)), [name(r) for r in rows], rotation=60, ha="right",
                        fontsize=7)
        axes.grid(True, axis="y", alpha=0.3)
    left.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter, ScalarFormatter

    left.yaxis.set_major_formatter(ScalarFormatter())  # 0.75, not 7.5x10^-1
    left.yaxis.set_minor_formatter(FormatStrFormatter("%.2g"))
    left.set_ylabel("candidate / baseline")
    left.set_title("timing and memory: band = the rule's noise band", fontsize=9)
    right.set_ylabel("candidate - baseline (points)")
    right.set_title("top-k: band = the guide's points", fontsize=9)
    figure.suptitle(f"compare: {comparison.summary()}\nred REGRESSED, green IMPROVED, gray "
                    "SAME, orange INVALID", fontsize=9)
    return figure


def log_run(comparison: Comparison, tracking_uri: str, artifact_location: str,
            experiment: str, exit_status: int) -> tuple[str, str]:
    """The comparison as an MLflow run of its own: (experiment id, run id)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from runner import tracking
    from runner.config import MlflowConfig

    settings = MlflowConfig(tracking_uri, artifact_location, experiment)
    tracking.check_store(settings)
    experiment_id = tracking.experiment_id(settings)
    client = MlflowClient(tracking_uri=tracking_uri)
    b, c = comparison.baseline, comparison.candidate
    verdict = REGRESSED if exit_status == EXIT_REGRESSED else (
        IMPROVED if comparison.counts()[IMPROVED] else SAME)
    run = client.create_run(experiment_id, run_name=f"compare-{b.source[:8]}-vs-{c.source[:8]}",
                            tags={"compare.baseline": b.source, "compare.candidate": c.source,
                                  "compare.baseline_kind": b.kind,
                                  "compare.candidate_kind": c.kind,
                                  "compare.baseline_runs": ",".join(
                                      e.run_id for e in b.entries)[:5000],
                                  "compare.candidate_runs": ",".join(
                                      e.run_id for e in c.entries)[:5000],
                                  "compare.verdict": verdict,
                                  "compare.rule": comparison.rule.text()[:5000],
                                  "mlflow.note.content": comparison.table()})
    run_id = run.info.run_id
    import time

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(f"compare_{v.lower()}", n, now, 0)
                                      for v, n in comparison.counts().items()])
    client.log_text(run_id, comparison.csv(), "compare/table.csv")
    client.log_dict(run_id, comparison.to_json(), "compare/results.json")
    client.log_figure(run_id, plot(comparison), "compare/ratios.png")
    client.set_terminated(run_id, "FINISHED")
    return experiment_id, run_id


# -- the command --

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit status 2
        print(f"runner: error: compare: {message} (python -m runner compare --help)",
              file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m runner compare",
                description="Compare a candidate with a baseline beyond the noise the runs "
                "measured (docs/compare.md). Exit status: 0 nothing REGRESSED, 1 something "
                "did (--fail-on; with --strict also INVALID or UNMATCHED), 2 bad input.")
    p.add_argument("baseline", help="run id, sweep parent run id, or results JSON "
                   "(FILE or FILE#baseline)")
    p.add_argument("candidate", help="the same kinds as baseline")
    p.add_argument("--tracking-uri", help="the MLflow store (default: mlflow.tracking_uri of "
                   "conf/config.yaml)")
    p.add_argument("--artifact-location", help="where the comparison run's artifacts go "
                   "(default: mlruns beside an SQLite store, else mlflow.artifact_location)")
    p.add_argument("--experiment", default=EXPERIMENT, help="the comparison run's experiment")
    p.add_argument("--fail-on", default=",".join(FIGURE_NAMES), metavar="FIGURE,...",
                   help=f"figures whose REGRESSED exits 1 (default all: {','.join(FIGURE_NAMES)})")
    p.add_argument("--strict", action="store_true", help="exit 1 also when a figure of "
                   "--fail-on is INVALID (a busy machine's benchmark) or UNMATCHED (on one side "
                   "only): nothing passes unjudged")
    p.add_argument("--k", type=float, default=Rule.k, help="times the combined noise (default "
                   f"{Rule.k:g})")
    p.add_argument("--min-effect", type=float, default=Rule.min_effect,
                   help=f"smallest relative change of a timing figure (default {Rule.min_effect})")
    p.add_argument("--noise", choices=NOISE_KINDS, default=Rule.noise,
                   help="a run's noise: one repeat's spread (repeat-spread, the default) or "
                   "the standard error of its figure over its repeats (standard-error: a band "
                   "about 1/sqrt(repeats) as wide, more false alarms)")
    p.add_argument("--memory-min-effect", type=float, default=Rule.memory_min_effect,
                   help=f"of peak memory (default {Rule.memory_min_effect})")
    p.add_argument("--save", metavar="FILE", help="write the results JSON (a side of a later "
                   "comparison)")
    p.add_argument("--no-track", action="store_true", help="no MLflow run for the comparison")
    return p


def default_store() -> tuple[str, str]:
    """mlflow.tracking_uri and mlflow.artifact_location as a run would resolve them."""
    from hydra import compose, initialize_config_dir

    from runner import config

    config.register()
    with initialize_config_dir(config_dir=str(config.PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config")
    return str(cfg.mlflow.tracking_uri), str(cfg.mlflow.artifact_location)


def check_fail_on(fail_on: Sequence[str], what: str) -> list[str]:
    unknown = [f for f in fail_on if f not in FIGURE_NAMES]
    if unknown or not fail_on:
        raise CompareError(f"{what}={','.join(fail_on)}: {', '.join(unknown) or 'empty'}: name "
                           f"figures of {', '.join(FIGURE_NAMES)}")
    return list(fail_on)


def check_options(args: argparse.Namespace) -> tuple[list[str], Rule]:
    fail_on = check_fail_on([f.strip() for f in args.fail_on.split(",") if f.strip()],
                            "--fail-on")
    for option, value in (("--k", args.k), ("--min-effect", args.min_effect),
                          ("--memory-min-effect", args.memory_min_effect)):
        if not value >= 0 or math.isinf(value):
            raise CompareError(f"{option} {value}: give a number >= 0")
    if args.save and Path(args.save).is_dir():
        raise CompareError(f"--save {args.save} is a folder: give a file name")
    if args.save and not Path(args.save).resolve().parent.is_dir():
        raise CompareError(f"--save {args.save}: folder {Path(args.save).parent} does not "
                           "exist; create it")
    return fail_on, Rule(args.k, args.min_effect, args.memory_min_effect, args.noise)


def exit_status(comparison: Comparison, fail_on: Sequence[str], strict: bool = False) -> int:
    return EXIT_REGRESSED if comparison.failing(fail_on, strict) else EXIT_OK


def failure_text(failed: Sequence[Row]) -> str:
    """'REGRESSED: a top1, b throughput_fps; INVALID: ...' of the rows that fail a gate."""
    return "; ".join(f"{verdict}: " + ", ".join(sorted({f"{r.pair} {r.figure}" for r in failed
                                                        if r.verdict == verdict}))
                     for verdict in SEVERITY if any(r.verdict == verdict for r in failed))


def load_sides(baseline: str, candidate: str, tracking_uri: str) -> tuple[Side, Side]:
    from mlflow.tracking import MlflowClient

    needs_store = [s for s in (baseline, candidate) if not (
        Path(s.partition("#")[0]).suffix == ".json" or Path(s).is_file())]
    client = None
    if needs_store:
        _store_exists(tracking_uri)
        client = MlflowClient(tracking_uri=tracking_uri)
    return (load_side(baseline, "baseline", client), load_side(candidate, "candidate", client))


def run(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    fail_on, rule = check_options(args)
    if args.tracking_uri:
        tracking_uri = args.tracking_uri
        artifact_location = args.artifact_location or (
            str(Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlruns")
            if tracking_uri.startswith("sqlite:///") else default_store()[1])
    else:
        tracking_uri, default_artifacts = default_store()
        artifact_location = args.artifact_location or default_artifacts
    baseline, candidate = load_sides(args.baseline, args.candidate, tracking_uri)
    comparison = compare(baseline, candidate, rule)
    status = exit_status(comparison, fail_on, args.strict)
    print(comparison.table(), end="")
    if args.save:
        Path(args.save).write_text(json.dumps(comparison.to_json(), indent=2))
        print(f"runner: results saved to {args.save} (a side of a later comparison)")
    if not args.no_track:
        from runner import tracking

        experiment_id, run_id = log_run(comparison, tracking_uri, artifact_location,
                                        args.experiment, status)
        print(f"runner: comparison run {run_id}: "
              f"{tracking.run_url(tracking_uri, experiment_id, run_id)}")
    failed = comparison.failing(fail_on, args.strict)
    passing = ("nothing of --fail-on REGRESSED, INVALID or UNMATCHED (--strict)" if args.strict
               else "nothing of --fail-on REGRESSED")
    print(f"runner: compare: {comparison.summary()}; "
          + (f"{failure_text(failed)}; exit 1" if failed else f"{passing}; exit 0"))
    return status


def main(argv: Sequence[str]) -> NoReturn:
    """`python -m runner compare ...`: every error one line; exit 0, 1 or 2."""
    from runner import redact

    try:
        status = run(argv)
    except RunnerError as error:
        print(f"runner: error: compare: {redact.text(str(error))}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    except Exception as error:  # a store that fails mid-way: still one line, never exit 0 or 1
        text = str(error).strip().splitlines()[0][:1000] if str(error).strip() else ""
        print(f"runner: error: compare: unexpected {type(error).__name__}: "
              f"{redact.text(text)}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    raise SystemExit(status)


@dataclass
class Gate:
    """compare.baseline / compare.fail_on of a sweep or a run, checked before any work."""

    baseline: Side
    fail_on: list[str]
    tracking_uri: str
    strict: bool = False  # INVALID and UNMATCHED rows fail it too

    @classmethod
    def setup(cls, baseline: str, fail_on: Sequence[str], tracking_uri: str,
              strict: bool = False) -> Gate:
        figures = check_fail_on(list(fail_on) or list(FIGURE_NAMES), "compare.fail_on")
        client = None
        if not (Path(baseline.partition("#")[0]).suffix == ".json" or Path(baseline).is_file()):
            from mlflow.tracking import MlflowClient

            try:
                _store_exists(tracking_uri)
            except CompareError:
                raise CompareError(f"compare.baseline={baseline}: there is no MLflow store at "
                                   f"mlflow.tracking_uri={tracking_uri} to find it in") from None
            client = MlflowClient(tracking_uri=tracking_uri)
        return cls(load_side(baseline, "compare.baseline", client), figures, tracking_uri,
                   strict)

    def judge(self, candidate_runs: Sequence[Any], source: str, kind: str) -> Comparison:
        """The candidate's finished runs (mlflow.entities.Run) against the baseline."""
        entries = [entry_from_run(r) for r in candidate_runs if r.info.status == "FINISHED"]
        return compare(self.baseline, Side(source, kind, entries))

    def failure(self, comparison: Comparison) -> str:
        """The line of a failed gate; '' when nothing of fail_on REGRESSED."""
        failed = comparison.failing(self.fail_on, self.strict)
        if not failed:
            return ""
        if not self.strict:
            return (f"compare.baseline={self.baseline.source}: REGRESSED beyond noise: "
                    f"{', '.join(sorted({f'{r.pair} {r.figure}' for r in failed}))}")
        return (f"compare.baseline={self.baseline.source}: beyond noise or unjudged "
                f"(compare.strict): {failure_text(failed)}")
