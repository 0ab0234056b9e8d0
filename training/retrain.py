"""The retraining job: pool -> candidate -> champion vs challenger -> register, promote, announce.

One run (docs/retraining.md):

1. **champion**: the registry's active model, copied into the run's folder and checked against
   its registered sha256 (its own folder may be replaced during the run). When none was ever
   promoted, a copy of the gates' starting model (``paths.active_model``) is registered and made
   active, so that there is something to compare with and to roll back to. A champion that
   cannot be loaded, or no champion at all, fails the run at once: a candidate is never promoted
   without a comparison;
2. **pool** (:mod:`maskgate.training.pool`): ``retrain.base_data`` + the incidents staff
   confirmed or relabelled, deduplicated by content, without the frozen evaluation images;
3. **candidate**: ``retrain.networks`` runs of :func:`maskgate.training.train.train` on one
   split from successive run seeds, in the run's work folder, averaged by
   :func:`maskgate.training.ensemble.ensemble` into a new folder under ``paths.models`` (one
   network: trained straight into it);
4. **champion / challenger** on the frozen evaluation set and on the recently reviewed
   incidents held out from training (a share chosen by content hash), both measured like the
   gate runs them (``model.tflite`` through LiteRT, :func:`maskgate.training.evaluate.evaluate_crops`);
5. **decision** (:func:`decide`): promoted only if, on every decisive set, macro-F1 and
   ``improper_mask`` recall are no worse than the champion's beyond the configured tolerances;
6. the candidate is **registered** either way (sha256, metrics, card in its folder); if promoted
   (only if the champion is still the active model: staff may have promoted or rolled back during
   the run) the retained ``<prefix>/models/active`` message is **published** and every gate reloads.

The run's trigger, times, status, log, metrics and reason are recorded by
:class:`maskgate.dashboard.jobs.RetrainingJob`, which also holds the database-wide lock, from
whatever :func:`trainer` / :class:`Retrainer` returns. Heavy modules (TensorFlow) are imported
only when a run trains, so the dashboard imports this module cheaply.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from sqlalchemy import Engine

from maskgate.config import Config, DetectorConfig, RetrainConfig, load_config, rule_problems
from maskgate.const import EXIT_OK, EXIT_RUNTIME
from maskgate.core import Label, utcnow
from maskgate.dashboard.jobs import RetrainingJob, RunResult
from maskgate.modelcard import CARD_FILE, ModelCard, ModelFileError, card_sha256, load_card
from maskgate.store import (
    EventStore,
    ModelRegistry,
    ModelVersion,
    RunStatus,
    RunTrigger,
    TrainingRun,
    TrainingRuns,
    make_engine,
)
from maskgate.store.registry import ActiveModelChanged
from maskgate.training.datasets import DataSpec
from maskgate.training.label_review import LabelReview, LabelReviewError
from maskgate.training.metrics import GATE_BAND
from maskgate.training.pool import (
    BasePool,
    FrozenSet,
    IncidentCounts,
    PoolError,
    Scans,
    base_pool,
    drop_known,
    frozen_set,
    hold_out,
    parse_specs,
    reviewed_incidents,
    write_incident_source,
)

if TYPE_CHECKING:  # TensorFlow is imported only when a run trains
    from maskgate.training.train import TrainConfig, TrainResult

log = logging.getLogger(__name__)

Log = Callable[[str], None]
TrainFn = Callable[
    ..., Any
]  # maskgate.training.train.train: (specs, out, config, cache, datasets) -> TrainResult
Announce = Callable[[ModelVersion], Any]

FROZEN = "frozen"
INCIDENTS = "incidents"
EPSILON = 1e-9  # float noise must not turn "equal" into "worse"
MODEL_FILES_ROUTE = "/api/v1/models/{version}/files"  # the dashboard's download endpoint for gates


class RetrainError(RuntimeError):
    """A run cannot go on (its reason is recorded as the run's)."""


# -- champion / challenger ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Scores:
    """What the decision looks at, on faces of at least 32 px (the gate's band)."""

    faces: int
    macro_f1: float
    improper_recall: float
    improper_support: int

    @classmethod
    def from_report(cls, report: Mapping[str, Any]) -> Scores:
        band = report["bands"][GATE_BAND]
        improper = band["per_class"][Label.IMPROPER_MASK.value]
        return cls(
            int(band["count"]), float(band["macro_f1"]), float(improper["recall"]), int(improper["support"])
        )

    def to_json(self) -> dict[str, float | int]:
        return {
            "faces": self.faces,
            "macro_f1": round(self.macro_f1, 4),
            "improper_recall": round(self.improper_recall, 4),
            "improper_support": self.improper_support,
        }


@dataclass(frozen=True)
class Comparison:
    champion: Scores | None  # None: no active model
    challenger: Scores

    def to_json(self) -> dict[str, object]:
        return {
            "champion": self.champion.to_json() if self.champion else None,
            "challenger": self.challenger.to_json(),
        }


@dataclass(frozen=True)
class Check:
    """One comparison: the challenger may be worse than the champion by at most `tolerance`."""

    evaluation: str  # FROZEN or INCIDENTS
    metric: str  # "macro_f1" or "improper_recall"
    champion: float
    challenger: float
    tolerance: float
    decisive: bool = True  # False: recorded, but too few faces to reject on

    @property
    def passed(self) -> bool:
        return self.challenger >= self.champion - self.tolerance - EPSILON

    def describe(self) -> str:
        relation = ">=" if self.passed else "<"
        return (
            f"{self.evaluation} {self.metric} {self.challenger:.4f} {relation} "
            f"{self.champion:.4f} - {self.tolerance:g}"
        )


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reason: str
    checks: tuple[Check, ...] = ()


def checks_for(name: str, comparison: Comparison, config: RetrainConfig, decisive: bool) -> list[Check]:
    champion, challenger = comparison.champion, comparison.challenger
    assert champion is not None
    checks = [
        Check(name, "macro_f1", champion.macro_f1, challenger.macro_f1, config.tolerance_macro_f1, decisive)
    ]
    if challenger.improper_support:  # no improper faces in the set: recall means nothing there
        checks.append(
            Check(
                name,
                "improper_recall",
                champion.improper_recall,
                challenger.improper_recall,
                config.tolerance_improper_recall,
                decisive,
            )
        )
    return checks


def decide(comparisons: Mapping[str, Comparison], config: RetrainConfig, champion: str | None) -> Verdict:
    """Promote only if no decisive check fails, and at least one was made (never promote blind)."""
    if champion is None:
        return Verdict(False, "not promoted: no active model to compare with")
    checks: list[Check] = []
    notes: list[str] = []
    for name, comparison in comparisons.items():
        faces = comparison.challenger.faces
        if faces == 0:
            notes.append(f"{name}: no faces to compare on")
            continue
        # A handful of incidents is noise: they are reported, and reject only once there are enough.
        decisive = name != INCIDENTS or faces >= config.min_incident_faces
        if not decisive:
            notes.append(f"{name}: {faces} faces < retrain.min_incident_faces, not decisive")
        checks += checks_for(name, comparison, config, decisive)
    decisive_checks = [c for c in checks if c.decisive]
    failed = [c for c in decisive_checks if not c.passed]
    suffix = f" ({'; '.join(notes)})" if notes else ""
    if not decisive_checks:
        return Verdict(False, f"not promoted: nothing to compare with {champion} on{suffix}", tuple(checks))
    if failed:
        reason = f"not promoted: worse than {champion}: " + "; ".join(c.describe() for c in failed)
        return Verdict(False, reason + suffix, tuple(checks))
    reason = f"promoted: not worse than {champion}: " + "; ".join(c.describe() for c in decisive_checks)
    return Verdict(True, reason + suffix, tuple(checks))


# -- announcing the active model -------------------------------------------------------------------


class AnnounceError(RuntimeError):
    """The active model was not announced to the gates (bad folder, broker unreachable)."""


def active_model_message(config: Config, model: ModelVersion):
    """The retained message for `model`: the dashboard's download URL, or the folder's path."""
    from maskgate.gate.comms.payloads import ActiveModel

    if config.rollout.url:
        route = MODEL_FILES_ROUTE.format(version=quote(model.version, safe=""))
        location = config.rollout.url.rstrip("/") + route
    else:
        location = str(Path(model.path).resolve())
    if model.card_sha256 is None:  # verify_model_folder refuses such a version before this
        raise ModelFileError(f"model {model.version} was registered without its card's sha256")
    return ActiveModel(
        version=model.version, sha256=model.sha256, card_sha256=model.card_sha256, location=location
    )


def register_folder(
    registry: ModelRegistry, folder: Path, card: ModelCard, metrics: Mapping[str, Any]
) -> ModelVersion:
    """Register the model folder `folder` (whose card is `card`) as a candidate, pinned by the
    sha256 of its model file and of its card."""
    return registry.register(
        card.version, str(folder.resolve()), card.sha256, metrics, card_sha256=card_sha256(folder)
    )


def verify_model_folder(model: ModelVersion) -> ModelCard:
    """`model`'s card, if its folder is what the registry says (else ModelFileError): every file the
    card lists unchanged, the registered card, model.tflite and version. What a gate checks once it
    has it."""
    card = load_card(model.path)
    if card.sha256 != model.sha256 or card.version != model.version:
        raise ModelFileError(
            f"its folder holds {card.version} ({card.sha256[:12]}), the registry says {model.sha256[:12]}"
        )
    if model.card_sha256 is None:
        raise ModelFileError(
            "it was registered before the registry kept the sha256 of card.json, and its card was "
            "not the registered one when that began: register the folder again under a new version"
        )
    if card_sha256(model.path) != model.card_sha256:
        raise ModelFileError(f"its {CARD_FILE} is not the registered one (altered?)")
    return card


def announce(config: Config, model: ModelVersion):
    """Check that `model`'s folder is what the registry says, then publish it as the active model.

    A folder that gates would refuse is never announced: they would only log the refusal.
    """
    from maskgate.gate.comms.client import MqttConfigError, MqttConnectError
    from maskgate.gate.comms.models import PublishError, publish_active_model

    try:
        verify_model_folder(model)
    except ModelFileError as exc:
        raise AnnounceError(f"model {model.version} not announced: {exc}") from None
    message = active_model_message(config, model)
    try:
        publish_active_model(config, message)
    except (PublishError, MqttConfigError, MqttConnectError, OSError) as exc:  # the broker is down, ...
        raise AnnounceError(f"model {model.version} not announced: {exc}") from None
    return message


def model_announcer(config: Config) -> Callable[[ModelVersion], None]:
    """The dashboard's `on_model_change` hook: announce after every promote and roll back.

    The registry has changed already (the dashboard checked the folder first, with
    :func:`verify_model_folder`): a failure is logged and raised as AnnounceError, which the
    dashboard shows; promoting the same version again re-sends the announcement.
    """

    def on_model_change(model: ModelVersion) -> None:
        try:
            message = announce(config, model)
        except AnnounceError as exc:
            log.error("%s; promote it again to re-send", exc)
            raise
        log.info("announced model %s to the gates (%s)", model.version, message.location)

    return on_model_change


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Pool:
    specs: list[DataSpec]  # what the candidate trains on: base sources and incidents
    frozen: FrozenSet
    base: BasePool
    held_out: DataSpec | None  # recent incidents kept out of training, to evaluate on
    incident_counts: IncidentCounts
    review: LabelReview | None  # corrected source labels, for training and both evaluation sets

    def to_json(self) -> dict[str, object]:
        return {
            "base": self.base.counts.to_json(),
            "incidents": self.incident_counts.to_json(),
            "frozen": self.frozen.to_json(),
            "label_review": self.review.to_json() if self.review else None,
        }


@dataclass(frozen=True)
class Champion:
    version: str
    folder: Path  # the run's own verified copy


@dataclass
class Phases:
    """Seconds per phase of the run, for the run's metrics."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - started, 1)


class Retrainer:
    """The ``trainer(run, log) -> RunResult`` hook, bound to a config and a database.

    `train_fn` and `announce_fn` are there for tests (a deliberately worse candidate, a broker
    that is not there); `echo` also prints the job's own lines (the CLI).
    """

    def __init__(
        self,
        config: Config,
        engine: Engine,
        *,
        train_fn: TrainFn | None = None,
        announce_fn: Announce | None = None,
        progress: bool = False,
        echo: Log | None = None,
    ):
        self.config = config
        self.engine = engine
        self.registry = ModelRegistry(engine)
        self.train_fn = train_fn
        self.announce_fn = announce_fn or (lambda model: announce(config, model))
        self.progress = progress
        self.echo = echo

    def __call__(self, run: TrainingRun, log: Log) -> RunResult:
        def say(line: str) -> None:
            log(line)
            if self.echo is not None:
                self.echo(line)

        with forward_training_logs(log):
            try:
                return self._run(run, say)
            except (PoolError, RetrainError) as exc:
                return RunResult(RunStatus.FAILED, reason=str(exc))

    def _run(self, run: TrainingRun, say: Log) -> RunResult:
        check_settings(self.config.retrain)
        review = load_label_review(self.config.retrain)
        phases = Phases()
        with phases("prepare"):
            work = fresh_work_dir(Path(self.config.retrain.work_dir), run.run_id)
            champion = self._champion(work, say)
            pool = self._pool(work, review, say)
        with phases("train"):
            card, folder = self._train(run, pool, work, say)
        with phases("evaluate"):
            comparisons = self._evaluate(champion, folder, pool, say)
        verdict = decide(comparisons, self.config.retrain, champion.version)
        say(verdict.reason)
        metrics = {
            "champion": champion.version,
            "pool": pool.to_json(),
            **{name: comparison.to_json() for name, comparison in comparisons.items()},
            "decision": "promote" if verdict.promote else "reject",
            "seconds": phases.seconds,
        }
        model = register_folder(self.registry, folder, card, model_metrics(comparisons, run.run_id))
        say(f"registered {model.version} (sha256 {model.sha256})")
        if not verdict.promote:
            return RunResult(RunStatus.REJECTED, model.version, metrics, verdict.reason)
        try:
            reason = self._promote(model, verdict, champion, say)
        except ActiveModelChanged as exc:  # staff promoted or rolled back meanwhile: theirs stands
            reason = (
                f"not promoted: the active model changed during the run ({exc.expected} -> {exc.actual}); "
                f"the candidate was compared with {exc.expected}"
            )
            say(reason)
            return RunResult(RunStatus.REJECTED, model.version, metrics, reason)
        return RunResult(RunStatus.SUCCEEDED, model.version, metrics, reason)

    def _champion(self, work: Path, say: Log) -> Champion:
        """The active model, copied into the run's folder: its own folder may be replaced during the
        hour a run takes (models/default is, when a new default ships), and the comparison must be
        with the model the gates were told to run."""
        active = self.registry.active() or self._bootstrap(say)
        try:
            folder = snapshot_model(Path(active.path), work / "champion", active.sha256)
        except ModelFileError as exc:
            raise RetrainError(
                f"the active model {active.version} cannot be loaded to compare with: {exc}"
            ) from None
        say(f"champion: {active.version} ({active.path})")
        return Champion(active.version, folder)

    def _bootstrap(self, say: Log) -> ModelVersion:
        """Register the gates' starting model as active: the comparison and the first rollback need it.

        What is registered is a copy under paths.models: the starting folder (models/default) is
        replaced when a new default ships, and a registered version must never change. Without a
        starting model that verifies the run fails: a candidate is never promoted without a comparison.
        """
        folder = Path(self.config.paths.active_model)
        try:
            card = load_card(folder)
            known = self.registry.get(card.version)
            if known is None:
                copy = fresh_model_folder(Path(self.config.paths.models), card.version)
                snapshot_model(folder, copy, card.sha256)
                known = register_folder(self.registry, copy, card, card_metrics(card))
        except ModelFileError as exc:
            raise RetrainError(
                f"no model is active and the gates' starting model paths.active_model ({folder}) cannot "
                f"be the champion: {exc}"
            ) from None
        try:
            promoted = self.registry.promote(known.version, first=True)
        except ActiveModelChanged:  # staff promoted a version meanwhile: that one is the champion
            active = self.registry.active()
            if active is None:  # and rolled it back at once: nothing to compare with, try again later
                raise RetrainError("the active model changed while the run was starting; run again") from None
            say(f"a model became active while the run started: {active.version}")
            return active
        say(f"no model was active: registered the gates' starting model {known.version} ({folder})")
        return promoted

    def _pool(self, work: Path, review: LabelReview | None, say: Log) -> Pool:
        retrain, paths = self.config.retrain, self.config.paths
        scans = Scans()
        base_specs = parse_specs(retrain.base_data, paths.datasets, "base_data")
        eval_specs = parse_specs(retrain.eval_data, paths.datasets, "eval_data")
        manifest = Path(retrain.eval_manifest) if retrain.eval_manifest else None
        frozen = frozen_set(eval_specs, manifest, retrain.eval_split, work / "frozen", scans)
        base = base_pool(base_specs, frozen.hashes, work / "base", scans)
        crops, counts = reviewed_incidents(EventStore(self.engine), Path(paths.snapshots))
        crops, known = drop_known(crops, base.hashes | frozen.hashes)
        counts.duplicates += known
        since = utcnow() - timedelta(days=retrain.incident_days)
        train_crops, held = hold_out(crops, since, retrain.incident_holdout)
        incident_spec, unreadable = write_incident_source(train_crops, work / "incidents")
        held_spec, unreadable_held = write_incident_source(held, work / "incident-eval")
        counts.no_snapshot += unreadable + unreadable_held
        counts.used = len(train_crops) - unreadable
        counts.held_out = len(held) - unreadable_held
        specs = [*base.specs, *([incident_spec] if incident_spec else [])]
        if not specs:
            raise PoolError("nothing to train on: no base data and no reviewed incidents")
        say(
            f"pool: {base.counts.images} base images from {len(base.specs)} sources "
            f"({base.counts.frozen_excluded} frozen evaluation images, {base.counts.duplicates} duplicates "
            f"left out) + {counts.used} reviewed incidents {counts.to_json()}"
        )
        say(
            f"frozen evaluation set: {frozen.images} images, digest {frozen.digest} "
            f"({frozen.missing} listed but missing or changed)"
        )
        if review:
            say(f"label review: {review.name} ({len(review.faces)} faces, sha256 {review.sha256[:12]})")
        return Pool(specs, frozen, base, held_spec, counts, review)

    def _train(self, run: TrainingRun, pool: Pool, work: Path, say: Log) -> tuple[ModelCard, Path]:
        out = fresh_model_folder(Path(self.config.paths.models), f"retrain-{run.run_id}")
        retrain = self.config.retrain
        config = train_config(retrain, self.progress, self.config.detector, pool.review)
        train_fn = self.train_fn or _default_train_fn()
        if retrain.networks == 1:
            say(f"training a {retrain.arch} candidate into {out} (at most {retrain.epochs} epochs)")
            folder = Path(self._train_network(train_fn, pool, out, config, say).folder)
        else:
            say(
                f"training {retrain.networks} {retrain.arch} networks (at most {retrain.epochs} epochs "
                f"each), averaged into the candidate {out}"
            )
            networks = [
                self._train_network(
                    train_fn,
                    pool,
                    work / "networks" / f"{out.name}-n{index}",
                    replace(config, run_seed=config.effective_run_seed + index),
                    say,
                ).folder
                for index in range(retrain.networks)
            ]
            folder = self._average(networks, out, pool)
        card = load_card(folder)  # what is registered is what is on disk, verified
        say(f"candidate {card.version}: sha256 {card.sha256}")
        return card, folder

    def _train_network(
        self, train_fn: TrainFn, pool: Pool, out: Path, config: TrainConfig, say: Log
    ) -> TrainResult:
        result = train_fn(
            pool.specs, out, config, Path(self.config.retrain.cache), self.config.paths.datasets
        )
        epochs = result.card.training.get("epochs_run", "?")
        say(f"trained {result.card.version} (run seed {config.effective_run_seed}): {epochs} epochs")
        return result

    def _average(self, networks: Sequence[Path], out: Path, pool: Pool) -> Path:
        from maskgate.training.ensemble import EnsembleError, ensemble

        cache = Path(self.config.retrain.cache)
        try:
            return Path(
                ensemble(
                    networks,
                    out,
                    cache,
                    pool.specs,
                    self.config.paths.datasets,
                    self.config.detector,
                    self.progress,
                    pool.review,
                ).folder
            )
        except EnsembleError as exc:
            raise RetrainError(f"the trained networks cannot be averaged: {exc}") from None

    def _evaluate(self, champion: Champion, folder: Path, pool: Pool, say: Log) -> dict[str, Comparison]:
        comparisons = {FROZEN: self._compare(champion, folder, pool.frozen.specs, FROZEN, pool.review, say)}
        if pool.held_out is not None:
            comparisons[INCIDENTS] = self._compare(
                champion, folder, [pool.held_out], INCIDENTS, pool.review, say
            )
        else:
            say("incidents: none reviewed recently and held out from training; frozen set only")
        return comparisons

    def _compare(
        self,
        champion: Champion,
        folder: Path,
        specs: Sequence[DataSpec],
        name: str,
        review: LabelReview | None,
        say: Log,
    ) -> Comparison:
        cache = Path(self.config.retrain.cache)
        detector = self.config.detector  # photos are cropped as the gate crops

        def scores(model: Path) -> Scores:  # both judged against the same (reviewed) labels
            return evaluate_scores(model, specs, cache, self.progress, detector, review)

        challenger = scores(folder)
        comparison = Comparison(scores(champion.folder), challenger)
        say(f"{name}: {comparison.to_json()}")
        return comparison

    def _promote(self, model: ModelVersion, verdict: Verdict, champion: Champion, say: Log) -> str:
        self.registry.promote(model.version, expected_active=champion.version)
        say(f"{model.version} is the active model")
        try:
            message = self.announce_fn(model)
        except AnnounceError as exc:
            say(str(exc))
            return f"{verdict.reason}; NOT announced to the gates: {exc} (promote it again to re-send)"
        say(f"announced to the gates: {getattr(message, 'location', message)}")
        return verdict.reason


def snapshot_model(folder: Path, dest: Path, sha256: str) -> Path:
    """A copy of the model in `folder` (its card and the files it lists) that is the registered one.

    Raises ModelFileError when the folder does not verify or holds another model than `sha256`.
    """
    card = load_card(folder)
    dest.mkdir(parents=True)
    for name in [*card.files, CARD_FILE]:
        if Path(name).name != name or name.startswith("."):
            raise ModelFileError(f"{folder}: the card lists {name!r}, not a plain file name")
        shutil.copyfile(folder / name, dest / name)
    copied = load_card(dest)  # the folder may have changed while it was copied
    if copied.sha256 != sha256:
        raise ModelFileError(
            f"{folder} holds model.tflite {copied.sha256[:12]}, not the registered {sha256[:12]}"
        )
    return dest


def load_label_review(retrain: RetrainConfig) -> LabelReview | None:
    """The reviewed labels `retrain.label_review` names (None for ""): a file that is missing or
    malformed fails the run before it trains, rather than training on labels known to be wrong."""
    if not retrain.label_review:
        return None
    try:
        return LabelReview.load(Path(retrain.label_review))
    except LabelReviewError as exc:
        raise RetrainError(f"retrain.label_review: {exc}") from None


def check_settings(retrain: RetrainConfig) -> None:
    """Refuse settings that would make a run meaningless, before it spends an hour training (a
    config file is checked when loaded; this also covers settings built in code)."""
    problems = rule_problems(retrain, "retrain.")
    if problems:
        raise RetrainError("; ".join(problems))


def evaluate_scores(
    folder: Path,
    specs: Sequence[DataSpec],
    cache: Path,
    progress: bool,
    detector: DetectorConfig | None = None,
    review: LabelReview | None = None,
) -> Scores:
    """The model in `folder` on `specs`, as the gate runs it (its TFLite file through LiteRT, photos
    cropped by the gate's `detector`), against the labels as `review` corrects them."""
    from maskgate.training.evaluate import EvaluationError, evaluate_crops

    try:
        report = evaluate_crops(folder, specs, "all", cache, progress, detector, review=review)
    except EvaluationError:
        return Scores(0, 0.0, 0.0, 0)
    return Scores.from_report(report)


def model_metrics(comparisons: Mapping[str, Comparison], run_id: int) -> dict[str, object]:
    """What the models page shows for a candidate: its scores on the frozen set (and incidents)."""
    frozen = comparisons[FROZEN].challenger
    metrics: dict[str, object] = {
        "macro_f1": round(frozen.macro_f1, 4),
        "recall": {Label.IMPROPER_MASK.value: round(frozen.improper_recall, 4)},
        "evaluated_on": "frozen evaluation set, faces >= 32 px",
        "faces": frozen.faces,
        "run_id": run_id,
    }
    if INCIDENTS in comparisons:
        metrics[INCIDENTS] = comparisons[INCIDENTS].challenger.to_json()
    return metrics


def card_metrics(card: ModelCard) -> dict[str, object]:
    """A bootstrapped model's own held-out metrics from its card (faces >= 32 px)."""
    test = card.metrics.get("test") or card.metrics.get("val") or {}
    band = test.get(GATE_BAND)
    if not band:
        return {}
    recall = band["per_class"][Label.IMPROPER_MASK.value]["recall"]
    return {
        "macro_f1": round(band["macro_f1"], 4),
        "recall": {Label.IMPROPER_MASK.value: round(recall, 4)},
        "evaluated_on": "its own test split, faces >= 32 px",
    }


def train_config(
    retrain: RetrainConfig,
    progress: bool,
    detector: DetectorConfig | None = None,
    review: LabelReview | None = None,
):
    from maskgate.training.archs import ARCHS
    from maskgate.training.split import SplitConfig
    from maskgate.training.train import TrainConfig

    crop = replace(ARCHS[retrain.arch].crop, size=retrain.crop_size) if retrain.crop_size else None
    # No test split: the frozen set and the held-out incidents are the tests, and every other image trains.
    return TrainConfig(
        split=SplitConfig(val=retrain.val_share, test=0.0),
        arch=retrain.arch,
        crop=crop,
        epochs=retrain.epochs,
        patience=retrain.patience,
        learning_rate=retrain.learning_rate or None,
        batch_size=retrain.batch_size,
        threads=retrain.threads,
        progress=progress,
        detector=detector or DetectorConfig(),
        label_review=review,
    )


def _default_train_fn() -> TrainFn:
    from maskgate.training.train import train

    return train


def fresh_model_folder(models: Path, name: str) -> Path:
    """A folder that does not exist yet: `train` empties its output, and a registered model must stay."""
    candidate, n = models / name, 1
    while candidate.exists():
        n += 1
        candidate = models / f"{name}-{n}"
    return candidate


def fresh_work_dir(root: Path, run_id: int) -> Path:
    """This run's work folder; earlier runs' folders go (links to the data, incident copies, the
    champion's copy and the networks averaged into a candidate: the candidate keeps them all)."""
    if root.is_dir():
        for old in root.glob("run-*"):
            shutil.rmtree(old, ignore_errors=True)
    work = root / f"run-{run_id}"
    work.mkdir(parents=True)
    return work


class _Forward(logging.Handler):
    def __init__(self, log: Log):
        super().__init__(logging.INFO)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # the run's log must never break the run
            self.log(record.getMessage())


@contextlib.contextmanager
def forward_training_logs(log: Log) -> Iterator[None]:
    """The training modules' log lines (sources read, split, class weights) go into the run's log too."""
    logger = logging.getLogger("maskgate.training")
    handler, level = _Forward(log), logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# -- entry points ------------------------------------------------------------------------------------


def trainer(run: TrainingRun, log: Log) -> RunResult:
    """The hook :func:`maskgate.dashboard.jobs.load_trainer` finds; config from $MASKGATE_CONFIG.

    `maskgate dashboard` passes a :class:`Retrainer` bound to its own config instead.
    """
    config = load_config()
    engine = make_engine(config.database_url)
    try:
        return Retrainer(config, engine)(run, log)
    finally:
        engine.dispose()


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def command(_args: argparse.Namespace, config: Config) -> int:
    """`maskgate retrain`: one run now, under the same lock as the dashboard's."""
    from maskgate.store import migrate

    engine = make_engine(config.database_url)
    migrate.require_head(engine)
    runs = TrainingRuns(engine)
    retrainer = Retrainer(
        config, engine, progress=sys.stderr.isatty(), echo=lambda line: print(line, flush=True)
    )
    job = RetrainingJob(runs, retrainer)
    run = job.start(RunTrigger.CLI)
    if run is None:
        holder = runs.running()
        which = (
            f"run {holder.run_id} ({holder.trigger.value}, since {holder.started_at:%Y-%m-%d %H:%M:%SZ})"
            if holder
            else "a run"
        )
        print(f"maskgate retrain: {which} is in progress; one run at a time", file=sys.stderr)
        return EXIT_RUNTIME
    previous = signal.signal(signal.SIGTERM, _interrupt)  # systemd, kill: stop like Ctrl-C does
    try:
        finished = job.execute(run.run_id)
    except KeyboardInterrupt:  # not an Exception: release the lock here, or it stays taken for hours
        runs.finish(run.run_id, RunStatus.FAILED, reason="interrupted")
        print(f"maskgate retrain: run {run.run_id} interrupted", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"run {finished.run_id} {finished.status.value}: {finished.reason or ''}", flush=True)
    return EXIT_OK if finished.status is not RunStatus.FAILED else EXIT_RUNTIME
