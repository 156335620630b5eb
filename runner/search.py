"""A constrained search: the fastest setting within a latency and accuracy budget.

Triton's Model Analyzer idea inside Hydra: `hydra/sweeper=optuna` (conf/experiment/search_cpu.yaml)
proposes settings (bs, chip.precision, chip.threads ...), each one an ordinary run of the runner
with every figure. After its stages a run is judged here: feasible when its `latency_ms_p99` is
within `search.max_p99_ms` and the guide's accuracy rule does not FAIL it (with
`search.require_accuracy_pass=true`, only a PASS); the run is tagged `search.*`, and under the
optuna sweeper the job returns its objective (`search.objective`, images/s) or, infeasible,
`INFEASIBLE`, which optuna ranks below every measured figure. The sweep's parent run
(runner/sweep.py) then states the best feasible setting and why each other trial lost
(`search_report`). A basic sweep with `search.max_p99_ms` set (the exhaustive grid) is judged
and reported the same way, which is how benchmarks/search.py compares the two.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner import report
from runner.config import RunConfig, SearchConfig
from runner.errors import ConfigError

OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
# what an infeasible or failed trial returns to optuna: below any measured figure, and a float
# optuna 2.10 accepts (its TPE sampler ranks it last; the study's best trial is never one)
INFEASIBLE = -math.inf
# which stage measures each objective, and the latency of the budget
OBJECTIVE_STAGES = {"throughput_fps": "benchmark", "e2e_fps": "e2e"}
LATENCY = "latency_ms_p99"
LATENCY_STAGE = "benchmark"
FEASIBLE_TAG, REASONS_TAG, NOTES_TAG = "search.feasible", "search.why", "search.notes"
OBJECTIVE_TAG, BUDGET_TAG = "search.objective", "search.max_p99_ms"


def active(cfg: RunConfig, sweeper_target: str | None) -> bool:
    """Whether this run is a search trial: a latency budget is set, or optuna sweeps it."""
    return cfg.search.max_p99_ms is not None or sweeper_target == OPTUNA_SWEEPER


def active_in(config: DictConfig, sweeper_target: str | None) -> bool:
    """`active` from a composed config that may not validate (a job refused before its run)."""
    return (OmegaConf.select(config, "search.max_p99_ms", default=None) is not None
            or sweeper_target == OPTUNA_SWEEPER)


def check(cfg: RunConfig) -> None:
    """Before any work: the stages must measure what the search reads."""
    check_stages(cfg.search, cfg.stage.name, cfg.stage.stages)


def check_stages(settings: SearchConfig, preset: str, stages: Sequence[str]) -> None:
    needed = {OBJECTIVE_STAGES[settings.objective]: f"search.objective={settings.objective}"}
    if settings.max_p99_ms is not None:
        needed.setdefault(LATENCY_STAGE, f"search.max_p99_ms ({LATENCY})")
    for stage, what in needed.items():
        if stage not in stages:
            raise ConfigError(
                f"{what} is measured by the {stage} stage, which stage={preset} leaves "
                f"out ({','.join(stages)}): use stage=all or stage=performance"
                + (" plus e2e" if stage == "e2e" else ""))


def check_sweeper(config: DictConfig) -> None:
    """Once, before the first trial of an optuna search: its settings the runs cannot check."""
    if OmegaConf.select(config, "hydra.sweeper._target_", default=None) != OPTUNA_SWEEPER:
        return
    direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
    name = getattr(direction, "name", direction)
    if str(name) != "maximize":
        raise ConfigError(
            f"hydra.sweeper.direction={name}: the search returns search.objective (images/s, "
            "infeasible trials -inf), which only maximize ranks right: set "
            "hydra.sweeper.direction=maximize (as experiment=search_cpu does)")
    storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
    if storage is not None:
        raise ConfigError(
            f"hydra.sweeper.storage={storage}: optuna 2.10's database storage fails on the "
            "SQLAlchemy 2 that MLflow needs (both pinned in requirements.lock): leave it null; a "
            "search resumes from the stage cache instead (rerun it with "
            "cache.reuse_measurements=true, docs/search.md)")
    raw = OmegaConf.select(config, "search", default=None)
    try:  # the block's own checks (max_p99_ms > 0 ...): once here, not once per trial
        settings = SearchConfig(**(OmegaConf.to_container(raw, resolve=True)
                                   if raw is not None else {}))
    except TypeError as error:
        raise ConfigError(f"invalid config (key search): {error}") from None
    stages = OmegaConf.select(config, "stage.stages", default=None)
    if stages is not None:
        check_stages(settings, str(OmegaConf.select(config, "stage.name", default="?")),
                     [str(s) for s in stages])


@dataclass(frozen=True)
class Judgement:
    """One run as a trial of the search."""

    feasible: bool
    objective: str
    value: float | None  # the run's objective figure; None where it has none
    budget_ms: float | None
    reasons: tuple[str, ...]  # why it is infeasible
    notes: tuple[str, ...]  # what held it to less than the whole rule (accuracy N/A ...)

    def returned(self) -> float:
        """What the job gives the sweeper to maximize."""
        return self.value if self.feasible and self.value is not None else INFEASIBLE

    def tags(self) -> dict[str, str]:
        tags = {FEASIBLE_TAG: "yes" if self.feasible else "no",
                OBJECTIVE_TAG: self.objective,
                BUDGET_TAG: "none" if self.budget_ms is None else f"{self.budget_ms:g}"}
        if self.reasons:
            tags[REASONS_TAG] = "; ".join(self.reasons)[:5000]
        if self.notes:
            tags[NOTES_TAG] = "; ".join(self.notes)[:5000]
        return tags

    def line(self) -> str:
        """The run's verdict as a trial, for the terminal."""
        figure = "—" if self.value is None else f"{self.value:.1f}"
        if self.feasible:
            return f"runner: search: feasible, {self.objective} {figure}" + (
                f" ({'; '.join(self.notes)})" if self.notes else "")
        return f"runner: search: infeasible: {'; '.join(self.reasons)}"


def judge(settings: SearchConfig, metrics: Mapping[str, float],
          accuracy: report.Comparison) -> Judgement:
    """A finished run against the budget: `accuracy` is its comparison with the guide's
    published figures (report.compare), whose PASS/FAIL/N/A is the guide's rule."""
    reasons: list[str] = []
    notes: list[str] = []
    value = metrics.get(settings.objective)
    if value is None:
        reasons.append(f"no {settings.objective} in this run")
    budget = settings.max_p99_ms
    if budget is not None:
        p99 = metrics.get(LATENCY)
        if p99 is None:
            reasons.append(f"no {LATENCY} in this run")
        elif p99 > budget:
            reasons.append(f"p99 {p99:.1f} ms > budget {budget:g} ms")
    if accuracy.accuracy == report.FAIL:
        reasons.append(f"accuracy FAIL: {accuracy.why}")
    elif accuracy.accuracy == report.NOT_APPLICABLE:
        if settings.require_accuracy_pass:
            reasons.append(f"accuracy N/A ({accuracy.why}) and search.require_accuracy_pass="
                           "true")
        else:
            notes.append(f"accuracy not judged: N/A, {accuracy.why}")
    return Judgement(not reasons, settings.objective, value, budget, tuple(reasons),
                     tuple(notes))


# -- the parent run's report --

def space_keys(config: DictConfig) -> list[str]:
    """The keys a sweep searches: hydra.sweeper.params' (a preset's) and the command line's
    sweeps (`bs=1,4`, `bs=choice(1,4)`), in that order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = [str(k) for k in (OmegaConf.select(config, "hydra.sweeper.params") or {})]
    try:
        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    except Exception:  # Hydra accepted them already: the report goes with the preset's keys
        parsed = []
    for override in parsed:
        if override.is_sweep_override() and override.key_or_group not in keys:
            keys.append(override.key_or_group)
    return keys


def setting_of(params: Mapping[str, str], keys: Sequence[str]) -> str:
    """A trial's setting, `bs=16 chip.precision=int8`, from its run's params."""
    return " ".join(f"{key}={params.get(key, '?')}" for key in keys)


@dataclass(frozen=True)
class Trial:
    job: report.Job
    setting: str

    @property
    def judged(self) -> bool:
        return self.job.tags.get(FEASIBLE_TAG) in ("yes", "no")

    @property
    def feasible(self) -> bool:
        return self.job.status == "FINISHED" and self.job.tags.get(FEASIBLE_TAG) == "yes"

    def value(self, objective: str) -> float | None:
        return self.job.metrics.get(objective)


@dataclass(frozen=True)
class Outcome:
    """The search's result, as the parent run states it."""

    text: str
    best: Trial | None
    objective: str
    trials: int
    feasible: int


def is_search(jobs: Sequence[report.Job]) -> bool:
    return any(job.tags.get(FEASIBLE_TAG) for job in jobs)


def _one(values: set[str], default: str) -> str:
    return values.pop() if len(values) == 1 else (default if not values else "per trial")


def outcome(jobs: Sequence[report.Job], settings: Mapping[str, str], sampler: str = ""
            ) -> Outcome:
    """The search's section of the parent run's report: the best feasible trial, each other
    trial and why it lost, in a table. `settings`: run id -> the trial's setting."""
    trials = [Trial(job, settings.get(job.run_id, f"bs={job.bs}")) for job in jobs]
    objective = _one({t.job.tags[OBJECTIVE_TAG] for t in trials
                      if OBJECTIVE_TAG in t.job.tags}, "throughput_fps")
    budget = _one({t.job.tags[BUDGET_TAG] for t in trials if BUDGET_TAG in t.job.tags}, "none")
    feasible = [t for t in trials if t.feasible and t.value(objective) is not None]
    feasible.sort(key=lambda t: -(t.value(objective) or 0.0))
    best = feasible[0] if feasible else None
    first_of: dict[str, int] = {}
    for trial in sorted(trials, key=lambda t: t.job.job if t.job.job is not None else -1):
        if trial.job.job is not None:
            first_of.setdefault(trial.setting, trial.job.job)

    def lost(trial: Trial) -> str:
        if trial.job.status != "FINISHED":
            return f"failed ({trial.job.status}): {trial.job.error or '?'}"
        if not trial.judged:
            return "not judged (no search.* tags: run outside the search)"
        if not trial.feasible:
            return "infeasible: " + trial.job.tags.get(REASONS_TAG, "?")
        if trial is best:
            return "best feasible"
        value, top = trial.value(objective), best.value(objective) if best else None
        if value is None or not top:
            return f"feasible, no {objective}"
        return f"feasible, {100 * (1 - value / top):.1f}% slower"

    def rank(trial: Trial) -> tuple[Any, ...]:
        value = trial.value(objective)
        group = 0 if trial.feasible else 1 if trial.job.status == "FINISHED" else 2
        return (group, -(value or 0.0), trial.job.job or 0)

    rows = []
    for trial in sorted(trials, key=rank):
        job = trial.job
        again = first_of.get(trial.setting)
        repeat = (f" (as job {again})" if again is not None and job.job is not None
                  and again != job.job else "")
        mark = report.INVALID_MARK if job.verdict == "INVALID" else ""
        rows.append(["" if job.job is None else str(job.job), trial.setting + repeat,
                     _number(trial.value(objective)) + mark, _number(job.metrics.get(LATENCY)),
                     lost(trial)])
    limit = {"none": "the guide's accuracy rule (no latency budget)",
             "per trial": f"{LATENCY} within each trial's search.max_p99_ms and the guide's "
                          "accuracy rule"}.get(
        budget, f"{LATENCY} <= {budget} ms and the guide's accuracy rule")
    title = f"## Constrained search: maximize {objective} subject to {limit}"
    out = [textwrap.shorten(title, report.WIDTH), ""]
    distinct = len({t.setting for t in trials})
    infeasible = sum(1 for t in trials if t.judged and not t.feasible
                     and t.job.status == "FINISHED")
    failed = sum(1 for t in trials if t.job.status != "FINISHED")
    if best is not None:
        job = best.job
        headline = (f"best feasible setting: {best.setting} (job {job.job}, run {job.run_id}): "
                    f"{objective} {_number(best.value(objective))}, {LATENCY} "
                    f"{_number(job.metrics.get(LATENCY))} ms, accuracy "
                    f"{job.comparison().accuracy}, benchmark {job.verdict or '—'}")
    else:
        headline = "no feasible setting: every trial is over the budget, failed the rule or failed"
    bullets = [headline,
               f"{len(trials)} trials, {distinct} distinct settings: {len(feasible)} feasible, "
               f"{infeasible} infeasible, {failed} failed" + (f"; {sampler}" if sampler else "")]
    notes = {n for t in trials for n in t.job.tags.get(NOTES_TAG, "").split("; ") if n}
    bullets += [f"note: {n}" for n in sorted(notes)]
    measured: dict[str, list[float]] = {}
    for trial in trials:
        value = trial.value(objective)
        if trial.job.status == "FINISHED" and value is not None:
            measured.setdefault(trial.setting, []).append(value)
    repeats = [f"{setting} {min(v):.1f}-{max(v):.1f} over {len(v)} trials"
               for setting, v in measured.items() if len(v) > 1]
    if repeats:  # the spread of one setting's figures: how much a close call can trust
        bullets.append(f"measured more than once ({objective}): {', '.join(repeats)}")
    bullets.append(f"p99: {LATENCY} of the benchmark, ms per batch; `{report.INVALID_MARK}`: "
                   "an INVALID figure (unstable, or measured while others used the device), "
                   "where close calls between trials may go either way (benchmark.require_valid"
                   "=true fails such runs); (as job N): a setting the sampler proposed again, "
                   "measured again; the accuracy of each trial: the table above")
    for bullet in bullets:
        out += textwrap.wrap(bullet, report.WIDTH, initial_indent="- ", subsequent_indent="  ")
    out.append("")
    header = ["job", "setting", objective, "p99 ms", "outcome"]
    # the outcome, last, gets what the other columns leave of the report's width
    used = sum(max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(4)) if rows else 0
    room = max(24, report.WIDTH - used - 3 * len(header) - 1)
    cells = [[report._cell(c) for c in r[:-1]] + [textwrap.shorten(report._cell(r[-1]), room)]
             for r in rows]
    table = report._table(header, cells, {2, 3})
    out += table
    return Outcome("\n".join(out) + "\n", best, objective, len(trials), len(feasible))


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def sampler_of(config: DictConfig) -> str:
    """The optuna sweeper's sampler and budget, for the report ('' for another sweeper)."""
    if OmegaConf.select(config, "hydra.sweeper._target_", default=None) != OPTUNA_SWEEPER:
        return ""
    target = str(OmegaConf.select(config, "hydra.sweeper.sampler._target_", default="?"))
    seed = OmegaConf.select(config, "hydra.sweeper.sampler.seed", default=None)
    trials = OmegaConf.select(config, "hydra.sweeper.n_trials", default="?")
    return (f"optuna {target.rsplit('.', 1)[-1]}, seed {seed}, n_trials {trials}")
