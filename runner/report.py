"""Runs compared with the figures their guide publishes, and the guide-shaped report of a sweep.

A guide ends with a table (top-1/top-5 per source, throughput per chip and batch size) and an
acceptance rule (AlexNet: accuracy within 1 point of the PyTorch checkpoint's figures passes).
`compare` applies that to one run; `sweep_report` lays a sweep's runs out as the guide does: one
row per model and chip, top-1/top-5 once (they do not depend on bs), one throughput column per
batch size, the published figures and the differences under each row, the benchmark's
VALID/INVALID verdict, and at most 120 characters a line, so it reads the same in a terminal, in
`report.md` and as the parent run's MLflow Description.

Everything here reads plain values (tags, params, metrics of MLflow runs), so runs made by any
launcher, or by an older version of the runner, report alike.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.config import PRECISIONS, DatasetConfig, PublishedFigures

WIDTH = 120  # the widest line of a report: a terminal's
PUBLISHED_TAG = "published"  # JSON of the run's published figures (`Published.to_json`)
ACCURACY_TAG = "accuracy.verdict"  # PASS | FAIL | N/A
PASS, FAIL, NOT_APPLICABLE = "PASS", "FAIL", "N/A"
FULL_IMAGENET = "imagenet"  # what `describe_dataset` says of the whole ImageNet val
NO_RUN = "NO RUN"  # the status of a planned job that left no MLflow run
# the lead's "Figures to trust" names: absent on runs without a benchmark stage and older runs
VERDICT_TAG, REASONS_TAG, REUSED_TAG = ("benchmark.verdict", "benchmark.verdict_reasons",
                                        "benchmark.reused_from")
INVALID_MARK, REUSED_MARK = "!", "*"
FP32 = "fp32"  # the precision a precision sweep's accuracy is measured against
PRECISION_PARAM = "chip.precision"
# the preprocessing route of a run (host_float | on_device); an on_device run is its own row
ROUTE_TAG = "preprocess.route"
ON_DEVICE_ROW = " on-device"  # appended to the chip of an on_device run's row


def describe_dataset(dataset: DatasetConfig) -> str:
    """What was run, not only the dataset's name: `imagenet`, `imagenet[:32]`, `synthetic (8
    images)`."""
    if dataset.synthetic is not None:
        count = dataset.synthetic.num_images
        if dataset.limit is not None:
            count = min(count, dataset.limit)
        return f"{dataset.name} ({count} images)"
    return dataset.name + (f"[:{dataset.limit}]" if dataset.limit is not None else "")


def not_comparable(weights_kind: str, dataset: str) -> str:
    """Why a run's accuracy cannot be held to a guide's figures ('' when it can)."""
    reasons = []
    if weights_kind == "random":
        reasons.append("random weights")
    if dataset != FULL_IMAGENET:
        reasons.append(f"dataset {dataset} is not the whole ImageNet val")
    return "; ".join(reasons)


@dataclass(frozen=True)
class Published:
    """A model's published figures as they concern one chip (what a run logs as a tag)."""

    guide: str
    reference: str  # the source the acceptance rule compares with (pth)
    accuracy: dict[str, tuple[float, float]]  # source -> (top1, top5), percent
    chip: str
    fps: dict[int, float]  # the chip's published images/s per batch size (empty: none)
    max_drop: float  # percentage points

    @classmethod
    def from_config(cls, figures: PublishedFigures, chip: str) -> Published | None:
        if not figures.accuracy and not figures.fps:
            return None
        return cls(figures.guide, figures.reference,
                   {k: (float(v.top1), float(v.top5)) for k, v in figures.accuracy.items()},
                   chip, {int(bs): float(v) for bs, v in figures.fps.get(chip, {}).items()},
                   float(figures.max_accuracy_drop))

    def to_json(self) -> str:
        return json.dumps({"guide": self.guide, "reference": self.reference,
                           "accuracy": self.accuracy, "chip": self.chip,
                           "fps": {str(k): v for k, v in self.fps.items()},
                           "max_drop": self.max_drop}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> Published | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(data["guide"], data["reference"],
                       {k: (float(v[0]), float(v[1])) for k, v in data["accuracy"].items()},
                       data["chip"], {int(k): float(v) for k, v in data["fps"].items()},
                       float(data["max_drop"]))
        except (ValueError, KeyError, TypeError, IndexError):
            return None  # written by another version: the report goes without it

    @property
    def reference_accuracy(self) -> tuple[float, float] | None:
        return self.accuracy.get(self.reference)

    @property
    def chip_accuracy(self) -> tuple[float, float] | None:
        return self.accuracy.get(self.chip)

    def rule(self) -> str:
        ref = self.reference_accuracy
        figures = f" ({ref[0]:g}/{ref[1]:g})" if ref else ""
        return (f"top-1 and top-5 at most {self.max_drop:g} pt below {self.reference}{figures}"
                f"{', ' + self.guide if self.guide else ''}")


@dataclass(frozen=True)
class Comparison:
    """One run against its published figures."""

    deltas: tuple[float, float] | None  # measured - reference top1, top5 (points)
    accuracy: str  # PASS | FAIL | N/A
    why: str  # the breach, or why it does not apply
    published_fps: float | None  # the chip's published figure at this bs
    fps_ratio: float | None  # measured / published

    def metrics(self) -> dict[str, float]:
        values: dict[str, float] = {}
        if self.deltas is not None:
            values["top1_delta_pt"], values["top5_delta_pt"] = (round(d, 4) for d in self.deltas)
        if self.fps_ratio is not None:
            values["fps_vs_published"] = round(self.fps_ratio, 4)
        return values


def compare(published: Published | None, bs: int | None, metrics: Mapping[str, float],
            reason_not_comparable: str) -> Comparison:
    deltas, accuracy, why = None, NOT_APPLICABLE, "no published figures"
    ref = published.reference_accuracy if published else None
    if published is not None and ref is not None:
        if "top1" in metrics and "top5" in metrics:
            deltas = (metrics["top1"] - ref[0], metrics["top5"] - ref[1])
            breaches = [f"{name} {delta:+.2f} pt"
                        for name, delta in zip(("top-1", "top-5"), deltas, strict=True)
                        if delta < -published.max_drop]
            if reason_not_comparable:
                why = reason_not_comparable
            else:
                accuracy = FAIL if breaches else PASS
                why = ", ".join(breaches) if breaches else "within the rule"
        else:
            why = "no top-1/top-5 in this run"
    published_fps = published.fps.get(bs) if published is not None and bs is not None else None
    ratio = None
    if published_fps and "throughput_fps" in metrics:
        ratio = metrics["throughput_fps"] / published_fps
    return Comparison(deltas, accuracy, why, published_fps, ratio)


# -- a run's summary (its MLflow Description, and lines in the terminal) --

def _number(value: float | None, decimals: int = 2) -> str:
    return "—" if value is None else f"{value:.{decimals}f}"


def _fps(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.0f}" if value >= 1000 else f"{value:.1f}"


def run_summary(title: str, metrics: Mapping[str, float], tags: Mapping[str, str],
                published: Published | None, comparison: Comparison) -> str:
    """Markdown for one run: measured, published and the differences, the verdicts."""
    lines = [f"### {title}", "",
             "| | top-1 % | top-5 % | throughput (images/s) |", "|---|---:|---:|---:|",
             f"| measured | {_number(metrics.get('top1'))} | {_number(metrics.get('top5'))} | "
             f"{_fps(metrics.get('throughput_fps'))} |"]
    if published is not None:
        ref = published.reference_accuracy
        chip_acc = published.chip_accuracy
        if ref is not None:
            lines.append(f"| published, {published.reference} | {ref[0]:g} | {ref[1]:g} | — |")
        if chip_acc is not None or comparison.published_fps is not None:
            acc = chip_acc or (None, None)
            top1 = "—" if acc[0] is None else f"{acc[0]:g}"
            top5 = "—" if acc[1] is None else f"{acc[1]:g}"
            lines.append(f"| published, {published.chip} | {top1} | {top5} | "
                         f"{_fps(comparison.published_fps)} |")
        if comparison.deltas is not None or comparison.fps_ratio is not None:
            d = comparison.deltas or (None, None)
            ratio = "—" if comparison.fps_ratio is None else f"{comparison.fps_ratio:.2f}x"
            lines.append(f"| difference | {_signed(d[0])} pt | {_signed(d[1])} pt | {ratio} |")
    lines.append("")
    rule = f" (rule: {published.rule()})" if published is not None else ""
    lines.append(f"- accuracy: **{comparison.accuracy}**, {comparison.why}{rule}")
    verdict = tags.get(VERDICT_TAG)
    if verdict:
        reasons = tags.get(REASONS_TAG, "")
        lines.append(f"- benchmark: **{verdict}**{': ' + reasons if reasons else ''}")
    if tags.get(REUSED_TAG):
        lines.append(f"- throughput reused from run {tags[REUSED_TAG]} (measured "
                     f"{tags.get('benchmark.measured_at', '?')})")
    extra = [f"{label} {metrics[key]:.{n}f}{unit}" for key, label, n, unit in (
        ("throughput_cv", "throughput_cv", 3, ""), ("latency_ms_p99", "latency p99", 2, " ms"),
        ("e2e_fps", "end to end", 1, " images/s")) if key in metrics]
    if extra:
        lines.append("- " + ", ".join(extra))
    if tags.get("accuracy_note"):
        lines.append(f"- {tags['accuracy_note']}")
    lines.append("- the full config: artifact `config/config.yaml`; environment and cache keys: "
                 "`run.json`; every metric: the Metrics table")
    return "\n".join(lines) + "\n"


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def terminal_lines(published: Published | None, comparison: Comparison,
                   metrics: Mapping[str, float]) -> list[str]:
    """The comparison in two short lines for the end of a run."""
    if published is None:
        return ["runner: no published figures for this model (model.published)"]
    lines = []
    if comparison.deltas is not None:
        d1, d5 = comparison.deltas
        lines.append(f"runner: accuracy {comparison.accuracy}: top-1 {d1:+.2f} pt, top-5 "
                     f"{d5:+.2f} pt vs {published.reference} ({comparison.why}); rule: "
                     f"{published.rule()}")
    if "throughput_fps" in metrics:
        if comparison.fps_ratio is not None:
            lines.append(f"runner: throughput {_fps(metrics['throughput_fps'])} images/s = "
                         f"{comparison.fps_ratio:.2f}x the published {published.chip} figure "
                         f"({_fps(comparison.published_fps)})")
        else:
            chips = "no figure for this chip and bs" if published.chip else "none"
            lines.append(f"runner: throughput {_fps(metrics['throughput_fps'])} images/s "
                         f"(published: {chips})")
    return [wrapped for line in lines
            for wrapped in textwrap.wrap(line, WIDTH, subsequent_indent="  ")]


# -- a sweep --

@dataclass
class Job:
    """One job of a sweep, from its MLflow run (or from its overrides when it left none)."""

    job: int | None
    model: str
    chip: str
    bs: str
    dataset: str
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    cache: str = ""
    status: str = ""
    error: str = ""
    run_id: str = ""
    precision: str = ""  # chip.precision (a param of every run; '' where unknown)

    @property
    def bs_int(self) -> int | None:
        return int(self.bs) if self.bs.isdigit() else None

    @property
    def group(self) -> tuple[str, str, str]:
        """What its accuracy is compared within: the same model, chip and dataset."""
        return (self.model, self.chip, self.dataset)

    def sort_key(self) -> tuple[Any, ...]:
        bs = self.bs_int if self.bs_int is not None else sys.maxsize
        job = self.job if self.job is not None else -1
        rank = PRECISIONS.index(self.precision) if self.precision in PRECISIONS else len(
            PRECISIONS)
        return (self.status == NO_RUN, self.model, self.chip, self.dataset, rank, bs, job)

    @property
    def published(self) -> Published | None:
        return Published.from_json(self.tags.get(PUBLISHED_TAG))

    def comparison(self) -> Comparison:
        return compare(self.published, self.bs_int, self.metrics,
                       not_comparable(self.tags.get("weights_kind", ""), self.dataset))

    @property
    def verdict(self) -> str:
        return self.tags.get(VERDICT_TAG, "")


def job_from_run(run: Any) -> Job:
    """A Job from an mlflow.entities.Run."""
    tags, params = run.data.tags, run.data.params
    cache = tags.get("cache", "")
    if not cache:  # runs of earlier versions: one cache.<stage> tag each
        states = [v for k, v in tags.items() if k.startswith("cache.")]
        cache = f"{states.count('hit')}/{len(states)} hit" if states else ""
    job = tags.get("sweep.job_num", "")
    # a sweep of -m model.preprocess.on_device=false,true compares the routes as two rows
    route = ON_DEVICE_ROW if tags.get(ROUTE_TAG) == "on_device" else ""
    return Job(job=int(job) if job.isdigit() else None, model=tags.get("model", ""),
               chip=tags.get("chip", "") + route, bs=params.get("bs", tags.get("bs", "")),
               dataset=tags.get("dataset", ""), metrics=dict(run.data.metrics), tags=dict(tags),
               cache=cache, status=run.info.status, error=tags.get("error", ""),
               run_id=run.info.run_id, precision=params.get(PRECISION_PARAM, ""))


def job_without_run(job: int, overrides: Sequence[str]) -> Job:
    """A planned job that left no run: its process died or never started."""
    given = dict(line.lstrip("+").partition("=")[::2] for line in overrides)
    return Job(job=job, model=given.get("model", given.get("model.name", "")),
               chip=given.get("chip", given.get("chip.name", "")), bs=given.get("bs", ""),
               dataset=given.get("dataset", given.get("dataset.name", "")), status=NO_RUN,
               error=f"no MLflow run was recorded for job {job} ({' '.join(overrides)})",
               precision=given.get(PRECISION_PARAM, ""))


def build_jobs(runs: Sequence[Any], planned: Sequence[Sequence[str]] | None) -> list[Job]:
    jobs = [job_from_run(run) for run in runs]
    seen = {job.job for job in jobs}
    for number, overrides in enumerate(planned or []):
        if number not in seen:
            jobs.append(job_without_run(number, overrides))
    return sorted(jobs, key=Job.sort_key)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    """A markdown table padded to line up in a terminal."""
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if i in right else c.ljust(w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2)
                          for i, w in enumerate(widths)) + "|"
    return [line(header), rule, *(line(r) for r in rows)]


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def _groups(jobs: Sequence[Job]) -> dict[tuple[str, str, str, str], list[Job]]:
    """The table's rows: jobs by model, chip, dataset and precision."""
    groups: dict[tuple[str, str, str, str], list[Job]] = {}
    for job in jobs:
        if job.status != NO_RUN:
            groups.setdefault((*job.group, job.precision), []).append(job)
    return groups


def precisions(jobs: Sequence[Job]) -> list[str]:
    """The precisions a sweep ran (chip.precision), fp32 first."""
    found = {job.precision for job in jobs if job.status != NO_RUN and job.precision}
    return sorted(found, key=lambda p: (PRECISIONS.index(p) if p in PRECISIONS else 99, p))


def is_precision_sweep(jobs: Sequence[Job]) -> bool:
    """Whether the sweep compares precisions (the table gets their columns, and a plot)."""
    return len(precisions(jobs)) > 1


def _mean_top1(jobs: Sequence[Job]) -> float | None:
    values = [j.metrics["top1"] for j in jobs if j.status == "FINISHED" and "top1" in j.metrics]
    return sum(values) / len(values) if values else None


def fp32_top1(jobs: Sequence[Job]) -> dict[tuple[str, str, str], float]:
    """The fp32 top-1 of each model, chip and dataset (over its batch sizes): what another
    precision's accuracy is measured against."""
    by_group: dict[tuple[str, str, str], list[Job]] = {}
    for job in jobs:
        if job.precision == FP32:
            by_group.setdefault(job.group, []).append(job)
    return {group: top1 for group, members in by_group.items()
            if (top1 := _mean_top1(members)) is not None}


def top1_vs_fp32(members: Sequence[Job], reference: Mapping[tuple[str, str, str], float],
                 ) -> float | None:
    """Top-1 points of jobs of one precision (a job, or a table row) minus fp32's; None for
    fp32 itself or where fp32 has no top-1."""
    if not members or members[0].precision in ("", FP32) or members[0].group not in reference:
        return None
    top1 = _mean_top1(members)
    return None if top1 is None else top1 - reference[members[0].group]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (throughput, accuracy) points no other point beats on both (higher is better),
    by throughput ascending: the best accuracy each throughput can have."""
    front: list[tuple[float, float]] = []
    for point in sorted(set(points), key=lambda p: (-p[0], -p[1])):
        if not front or point[1] > front[-1][1]:
            front.append(point)
    return front[::-1]


def _once(values: list[float]) -> str:
    """A figure that should not depend on bs: once, or its range if the runs disagree."""
    if not values:
        return "—"
    low, high = min(values), max(values)
    return f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}-{high:.2f}"


def sweep_report(jobs: Sequence[Job], title: str, extra_notes: Sequence[str] = (),
                 versus: Mapping[str, str] | None = None) -> str:
    """The guide's table for a sweep, as markdown whose lines fit `WIDTH` columns. `versus`:
    run id -> its verdict against compare.baseline, a last column (the row's worst)."""
    groups = _groups(jobs)
    several_datasets = len({key[2] for key in groups}) > 1
    by_precision = is_precision_sweep(jobs)
    reference = fp32_top1(jobs)
    sizes = sorted({j.bs_int for j in jobs if j.bs_int is not None and j.status != NO_RUN})
    rows: list[list[str]] = []
    extras: list[tuple[str, str]] = []  # each row's precision and top-1 vs fp32 cells
    published_shown: set[tuple[str, str, str]] = set()
    notes: list[str] = []
    rules: dict[str, str] = {}
    for (model, chip, dataset, precision), members in groups.items():
        label = f"{model} / {chip}" + (f" / {dataset}" if several_datasets else "")
        named = label + (f" {precision}" if by_precision else "")  # in the notes
        finished = [j for j in members if j.status == "FINISHED"]
        by_bs = {j.bs_int: j for j in members}
        cells = []
        for bs in sizes:
            job = by_bs.get(bs)
            if job is None:
                cells.append("")
            elif job.status != "FINISHED":
                cells.append(job.status)
            elif "throughput_fps" not in job.metrics:
                cells.append("—")
            else:
                mark = (INVALID_MARK if job.verdict == "INVALID" else "") + (
                    REUSED_MARK if job.tags.get(REUSED_TAG) else "")
                cells.append(_fps(job.metrics["throughput_fps"]) + mark)
        verdicts = [j.verdict for j in finished if j.verdict]
        benchmark = ("—" if not verdicts else "INVALID" if "INVALID" in verdicts else "VALID")
        comparisons = [j.comparison() for j in finished]
        accuracies = {c.accuracy for c in comparisons if c.deltas is not None}
        accuracy = (FAIL if FAIL in accuracies else PASS if PASS in accuracies
                    else NOT_APPLICABLE if accuracies else "—")
        rows.append([label, _once([j.metrics["top1"] for j in finished if "top1" in j.metrics]),
                     _once([j.metrics["top5"] for j in finished if "top5" in j.metrics]),
                     *cells, benchmark, accuracy,
                     *([_worst(versus, [j.run_id for j in members])] if versus is not None
                       else [])])
        extras.append((precision or "?", _signed(top1_vs_fp32(members, reference))))
        blank = [""] * (versus is not None)
        published = next((j.published for j in members if j.published is not None), None)
        if published is not None:
            ref = published.reference_accuracy
            # once per model, chip and dataset: every precision's row has the same figures
            first_row = (model, chip, dataset) not in published_shown
            published_shown.add((model, chip, dataset))
            # blank where the guide publishes nothing for this chip, a dash for a missing bs
            fps = [_fps(published.fps.get(bs)) if bs in by_bs and published.fps else ""
                   for bs in sizes]
            if first_row and (ref is not None or published.fps):
                rows.append([f"  published ({published.reference}"
                             f"{', ' + chip if published.fps else ''})",
                             f"{ref[0]:g}" if ref else "—", f"{ref[1]:g}" if ref else "—",
                             *fps, "", "", *blank])
                extras.append(("", ""))
            chip_acc = published.chip_accuracy
            if first_row and chip_acc is not None:
                rows.append([f"  published ({chip})", f"{chip_acc[0]:g}", f"{chip_acc[1]:g}",
                             *([""] * len(sizes)), "", "", *blank])
                extras.append(("", ""))
            deltas = [c.deltas for c in comparisons if c.deltas is not None]
            ratios = {j.bs_int: c.fps_ratio for j, c in zip(finished, comparisons, strict=True)
                      if c.fps_ratio is not None}
            if deltas or ratios:
                rows.append([f"  difference ({published.reference}; x)",
                             _once_signed([d[0] for d in deltas]),
                             _once_signed([d[1] for d in deltas]),
                             *(f"{ratios[bs]:.2f}x" if bs in ratios else "" for bs in sizes),
                             "", "", *blank])
                extras.append(("", ""))
            rules.setdefault(published.rule(), model)
            for verdict, why in sorted({(c.accuracy, c.why) for c in comparisons
                                        if c.accuracy != PASS and c.deltas is not None}):
                notes.append(f"accuracy of {named}: {verdict}, {why}")
        for job in members:
            if job.verdict == "INVALID":
                notes.append(f"{named} bs {job.bs}: INVALID: {job.tags.get(REASONS_TAG, '?')}")
            if job.tags.get(REUSED_TAG):
                measured = job.tags.get("benchmark.measured_at", "?")
                notes.append(f"{named} bs {job.bs}: throughput reused from run "
                             f"{job.tags[REUSED_TAG]} (measured {measured})")
    for job in jobs:
        if job.status not in ("FINISHED",) and job.error:
            where = f"job {job.job}" if job.job is not None else "a job"
            what = " / ".join(x for x in (job.model, job.chip) if x)
            notes.append(f"{where} ({what} bs {job.bs}) {job.status}: {job.error}")
    header = ["model / chip", "top-1 %", "top-5 %", *(f"bs{bs} img/s" for bs in sizes),
              "benchmark", "accuracy", *(["vs baseline"] if versus is not None else [])]
    lead = 3
    if by_precision:
        header, rows = _with_precision_columns(header, rows, extras)
        lead = 5
    datasets = {key[2] for key in groups}
    if len(datasets) == 1:
        title += f", dataset {datasets.pop()}"
    out = [textwrap.shorten(f"## {title}", WIDTH), ""]
    out += _fitted(header, [[_cell(c) for c in r] for r in rows],
                   fixed_tail=2 + (versus is not None), lead=lead)
    out.append("")
    legend = (f"img/s: throughput, 1000*bs / mean compute ms of one synchronous inference "
              f"(ais_bench's figure); top-k: % of images with the label in the k highest "
              f"logits; difference: points for top-k, measured/published for img/s; "
              f"`{INVALID_MARK}` INVALID figure, `{REUSED_MARK}` reused from an earlier run; "
              "benchmark: VALID/INVALID (all bs of the row); accuracy: PASS/FAIL by the rule, "
              "N/A where it does not apply (random weights, not the whole ImageNet val).")
    if by_precision:
        legend += (" precision: chip.precision; top-1 vs fp32: the row's top-1 minus fp32's on "
                   "the same model, chip and dataset, points.")
    if versus is not None:
        legend += (" vs baseline: the worst verdict of the row's runs against compare.baseline "
                   "(REGRESSED, INVALID, UNMATCHED, IMPROVED, SAME; beyond noise by the rule "
                   "below).")
    bullets = [legend, *(f"rule for {m}: {r}" for r, m in rules.items()), *notes,
               *extra_notes]
    for bullet in bullets:
        out += textwrap.wrap(bullet, WIDTH, initial_indent="- ", subsequent_indent="  ")
    return "\n".join(out) + "\n"


# runner.compare's verdicts, the worst first: a row of several runs shows its worst
COMPARE_SEVERITY = ("REGRESSED", "INVALID", "UNMATCHED", "IMPROVED", "SAME")


def _worst(versus: Mapping[str, str] | None, run_ids: Sequence[str]) -> str:
    found = [versus[r] for r in run_ids if versus and r in versus]
    return min(found, key=COMPARE_SEVERITY.index) if found else "—"


def _once_signed(values: list[float]) -> str:
    if not values:
        return "—"
    low, high = min(values), max(values)
    return f"{low:+.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:+.2f}..{high:+.2f}"


def _with_precision_columns(header: list[str], rows: list[list[str]],
                            extras: Sequence[tuple[str, str]]) -> tuple[list[str],
                                                                        list[list[str]]]:
    """A precision sweep's table: the precision after the label, top-1 vs fp32 after top-5."""
    def widened(row: Sequence[str], precision: str, delta: str) -> list[str]:
        return [row[0], precision, row[1], row[2], delta, *row[3:]]

    return (widened(header, "precision", "top-1 vs fp32 pt"),
            [widened(row, *extra) for row, extra in zip(rows, extras, strict=True)])


def _fitted(header: list[str], rows: list[list[str]], fixed_tail: int,
            lead: int = 3) -> list[str]:
    """The table, its batch-size columns split over several tables where one would be wider
    than WIDTH (the first `lead` columns repeat: label, top-1, top-5, and in a precision sweep
    the precision and top-1 vs fp32; the verdicts go with the last part)."""
    tail = fixed_tail
    middle = list(range(lead, len(header) - tail))
    parts: list[list[int]] = [[]]
    for column in middle:
        trial = [*range(lead), *parts[-1], column, *range(len(header) - tail, len(header))]
        lines = _table([header[i] for i in trial], [[r[i] for i in trial] for r in rows],
                       set(range(1, len(trial) - tail)))
        if parts[-1] and max(map(len, lines)) > WIDTH:
            parts.append([])
        parts[-1].append(column)
    out: list[str] = []
    for n, part in enumerate(parts):
        columns = [*range(lead), *part]
        if n == len(parts) - 1:
            columns += list(range(len(header) - tail, len(header)))
        if out:
            out.append("")
        out += _table([header[i] for i in columns], [[r[i] for i in columns] for r in rows],
                      set(range(1, len(columns) - (tail if n == len(parts) - 1 else 0))))
    return out


# every column of the wide CSV: one row per job, nothing left out
CSV_METRICS = ("top1", "top5", "throughput_fps", "throughput_fps_min", "throughput_fps_max",
               "throughput_cv", "latency_ms_p50", "latency_ms_p99", "e2e_fps", "benchmark_valid",
               "top1_delta_pt", "top5_delta_pt", "fps_vs_published")
CSV_COLUMNS = ("job", "model", "chip", "precision", "bs", "dataset", *CSV_METRICS,
               "top1_vs_fp32_pt", "published_top1",
               "published_top5", "published_fps", "accuracy", "accuracy_why", "verdict",
               "verdict_reasons", "reused_from", "cache", "status", "error", "run_id")


def csv_table(jobs: Sequence[Job]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    reference = fp32_top1(jobs)
    for job in jobs:
        comparison = job.comparison()
        published = job.published
        ref = published.reference_accuracy if published else None
        metrics = {**job.metrics, **comparison.metrics()}
        versus_fp32 = top1_vs_fp32([job], reference)
        writer.writerow([
            "" if job.job is None else job.job, job.model, job.chip, job.precision, job.bs,
            job.dataset,
            *(format(metrics[m], ".6g") if m in metrics else "" for m in CSV_METRICS),
            "" if versus_fp32 is None else format(versus_fp32, ".6g"),
            ref[0] if ref else "", ref[1] if ref else "",
            "" if comparison.published_fps is None else comparison.published_fps,
            comparison.accuracy if comparison.deltas is not None else "", comparison.why,
            job.verdict, job.tags.get(REASONS_TAG, ""), job.tags.get(REUSED_TAG, ""),
            job.cache, job.status, job.error, job.run_id])
    return out.getvalue()
