"""The agent's side of a model rollout: fetch what ``<prefix>/models/active`` announces, verify, load, swap.

:class:`ModelWatcher` gets each announcement from the MQTT link (``DoorLink(on_active_model=
watcher.offer)``), which must return at once; its own thread does the slow part:

1. **fetch** the model folder into ``rollout.cache/<version>`` through a staging folder: from
   the dashboard's authenticated download endpoint when the location is a URL on
   ``rollout.url``, or by copying from a path (shared storage). Only the files the card lists
   are taken, by plain names; a copy means a file changed on the share later cannot reach the
   running model;
2. **verify**: :func:`maskgate.modelcard.load_card` checks every file against the card's sha256,
   and the card's own sha256, its ``model.tflite`` sha256 and version must be the announced ones;
3. **load** a :class:`MaskClassifier` and classify one blank crop, off the agent's thread;
4. **swap**: :meth:`Agent.swap_classifier` takes effect at the start of the next frame.

Anything wrong (a wrong sha256, a corrupted or missing file, a location elsewhere, a model LiteRT
cannot load) is **refused**: logged, kept in :attr:`ModelWatcher.refused` (the latest
:data:`MAX_REFUSALS`), passed to `on_refused`, and the running model stays. Network failures are
retried a few times before refusing. Only the newest announcement matters: one that arrives while
another loads replaces the waiting one. A fetch in progress when the agent stops is given up, not
refused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlsplit

import numpy as np

from maskgate.config import RolloutConfig
from maskgate.core import utcnow
from maskgate.gate.classifier import MaskClassifier
from maskgate.gate.comms.payloads import ActiveModel
from maskgate.modelcard import CARD_FILE, ModelCard, ModelFileError, card_sha256, load_card

log = logging.getLogger(__name__)

FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # a plain file name: no path, no dot file
MAX_CARD_BYTES = 1_000_000
MAX_FILE_BYTES = 512 * 1024 * 1024
CHUNK = 1 << 20
RETRY_DELAYS_S = (1.0, 3.0)  # after the first failed fetch, then the second
# Refusals kept in ModelWatcher.refused: a refused retained announcement is delivered, and refused,
# again on every reconnection to the broker, for as long as the gate runs.
MAX_REFUSALS = 100


class ArtifactError(ValueError):
    """The announced model is not what it claims to be (or not somewhere we may fetch it from)."""


class FetchError(OSError):
    """The model could not be fetched (network, server, missing file); worth another try."""


class FetchCancelled(Exception):
    """The fetch was given up because the watcher is stopping: no refusal, the model is not at fault."""


class SwapTarget(Protocol):
    """What the watcher hands a loaded model to: :class:`maskgate.gate.agent.Agent`."""

    classifier: MaskClassifier

    def swap_classifier(self, classifier: MaskClassifier) -> None: ...


@dataclass(frozen=True)
class Refusal:
    version: str
    sha256: str
    reason: str
    at: datetime = field(default_factory=utcnow)


# -- fetching and verifying -------------------------------------------------------------------------


def is_url(location: str) -> bool:
    return urlsplit(location).scheme in ("http", "https")


def is_https(url: str) -> bool:
    return urlsplit(url).scheme == "https"


def check_name(name: object) -> str:
    """A file name from a card: one plain name inside the folder, never a path."""
    if not isinstance(name, str) or not FILE_NAME.match(name):
        raise ArtifactError(f"the card lists {name!r}, which is not a plain file name")
    return name


def folder_name(version: str) -> str:
    """A version as a folder name (versions may hold ':' and '+'; the card says the real one)."""
    return "v-" + re.sub(r"[^A-Za-z0-9_.-]", "_", version)


def listed_files(card_bytes: bytes) -> list[str]:
    """The files a card lists, checked, before anything else in it is trusted."""
    if len(card_bytes) > MAX_CARD_BYTES:
        raise ArtifactError(f"{CARD_FILE} is larger than {MAX_CARD_BYTES} bytes")
    try:
        files = json.loads(card_bytes)["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{CARD_FILE} is not a model card: {exc}") from None
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{CARD_FILE} lists no files")
    return [check_name(name) for name in files]


def verify(folder: Path, message: ActiveModel) -> ModelCard:
    """The folder's card, if every file matches it and it is the model that was announced."""
    try:
        card = load_card(folder)
    except ModelFileError as exc:
        raise ArtifactError(str(exc)) from None
    if card.sha256 != message.sha256:
        raise ArtifactError(f"model.tflite has sha256 {card.sha256}, the announcement says {message.sha256}")
    # The card says what each output means: the same model file under another card is another model.
    if (digest := card_sha256(folder)) != message.card_sha256:
        raise ArtifactError(f"{CARD_FILE} has sha256 {digest}, the announcement says {message.card_sha256}")
    if card.version != message.version:
        raise ArtifactError(
            f"the folder holds version {card.version}, the announcement says {message.version}"
        )
    return card


class Fetcher:
    """Brings an announced model folder into `rollout.cache`, verified; reuses a verified copy."""

    def __init__(self, rollout: RolloutConfig, stopping: threading.Event | None = None):
        self.rollout = rollout
        self.cache = Path(rollout.cache)
        self.stopping = stopping  # once set, a copy or download in progress ends at its next block

    def fetch(self, message: ActiveModel) -> Path:
        target = self.cache / folder_name(message.version)
        if self._cached(target, message):
            return target
        staging = self.cache / f".incoming-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            if is_url(message.location):
                self._download(message.location, staging)
            else:
                self._copy(Path(message.location), staging)
            verify(staging, message)
            if target.exists():  # a damaged or different copy: replaced only by one that verified
                shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    @staticmethod
    def _cached(target: Path, message: ActiveModel) -> bool:
        """A copy fetched before is reused if it still verifies. One that does not (damaged, or
        not what this announcement says) is left alone until a fresh fetch verifies: a wrong
        announcement must not cost the gate a good copy."""
        if not target.is_dir():
            return False
        try:
            verify(target, message)
        except ArtifactError as exc:
            log.info("cached copy of model %s not used: %s", message.version, exc)
            return False
        return True

    def _copy(self, source: Path, staging: Path) -> None:
        try:
            card_bytes = _read_limited(source / CARD_FILE)
            names = listed_files(card_bytes)
            for name in names:
                if not (source / name).is_file():
                    raise ArtifactError(f"{source}: {name} is missing")
                _copy_limited(source / name, staging / name, MAX_FILE_BYTES, self.stopping)
        except FileNotFoundError:
            raise ArtifactError(f"{source}: not a model folder (no {CARD_FILE})") from None
        except OSError as exc:
            raise FetchError(f"cannot copy from {source}: {exc}") from None
        (staging / CARD_FILE).write_bytes(card_bytes)

    def _download(self, base: str, staging: Path) -> None:
        headers = self._headers(base)
        card_bytes = self._get(
            f"{base.rstrip('/')}/{CARD_FILE}", headers, staging / CARD_FILE, MAX_CARD_BYTES
        )
        for name in listed_files(card_bytes):
            self._get(f"{base.rstrip('/')}/{quote(name)}", headers, staging / name, MAX_FILE_BYTES)

    def _headers(self, base: str) -> dict[str, str]:
        """The bearer token goes only to the configured dashboard (same scheme, host and port)."""
        mine = urlsplit(self.rollout.url) if self.rollout.url else None
        theirs = urlsplit(base)
        if mine is None or (mine.scheme, mine.netloc) != (theirs.scheme, theirs.netloc):
            raise ArtifactError(
                f"{base} is not on rollout.url ({self.rollout.url or 'not set'}): not fetched"
            )
        return {"Authorization": f"Bearer {self.rollout.token}"} if self.rollout.token else {}

    def _get(self, url: str, headers: dict[str, str], path: Path, limit: int) -> bytes:
        """Stream `url` into `path`, at most `limit` bytes; returns the bytes when small (the card)."""
        request = urllib.request.Request(url, headers=headers)
        context = ssl.create_default_context(cafile=self.rollout.ca_file or None) if is_https(url) else None
        opener = urllib.request.build_opener(_NoRedirects(), urllib.request.HTTPSHandler(context=context))
        try:
            with opener.open(request, timeout=self.rollout.timeout_s) as response:
                too_large = f"{url} is larger than {limit} bytes"
                keep = limit <= MAX_CARD_BYTES
                return _write_limited(response, path, limit, too_large, keep=keep, stopping=self.stopping)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise ArtifactError(f"{url}: {exc.code} {exc.reason} (check rollout.token)") from None
            raise FetchError(f"{url}: {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise FetchError(f"{url}: {getattr(exc, 'reason', exc)}") from None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirect to another host with the Authorization header still on."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # the 30x becomes an HTTPError: the dashboard never redirects a download


def _copy_limited(source: Path, target: Path, limit: int, stopping: threading.Event | None = None) -> None:
    """Copy at most `limit` bytes, as a download: a larger file is refused before copying, one
    that grows past the limit during the copy as soon as it does."""
    with source.open("rb") as stream:
        if os.fstat(stream.fileno()).st_size > limit:
            raise ArtifactError(f"{source} is larger than {limit} bytes, the limit for a model file")
        too_large = f"{source} grew past {limit} bytes, the limit for a model file"
        _write_limited(stream, target, limit, too_large, stopping=stopping)


def _write_limited(
    stream,
    path: Path,
    limit: int,
    too_large: str,
    keep: bool = False,
    stopping: threading.Event | None = None,
) -> bytes:
    """Write `stream` into `path` in chunks, refusing it (ArtifactError `too_large`) as soon as it passes
    `limit` bytes; returns what was written when `keep` (the card), else nothing.

    Once `stopping` is set it ends at the next block (:class:`FetchCancelled`): a 512 MB download must
    not hold up the agent's exit. Blocks are what has arrived (``read1``), not a full chunk, so that a
    slow server cannot keep one read waiting for a whole megabyte.
    """
    read = getattr(stream, "read1", stream.read)
    size, kept = 0, bytearray()
    with path.open("wb") as out:
        while block := read(CHUNK):
            if stopping is not None and stopping.is_set():
                raise FetchCancelled(f"{path.name}: fetch given up, the agent is stopping")
            size += len(block)
            if size > limit:
                raise ArtifactError(too_large)
            out.write(block)
            if keep:
                kept += block
    return bytes(kept)


def _read_limited(path: Path) -> bytes:
    with path.open("rb") as stream:
        data = stream.read(MAX_CARD_BYTES + 1)
    if len(data) > MAX_CARD_BYTES:
        raise ArtifactError(f"{path} is larger than {MAX_CARD_BYTES} bytes")
    return data


def load_classifier(folder: Path) -> MaskClassifier:
    """Build the classifier and run it once, so the first real frame pays no set-up."""
    classifier = MaskClassifier(folder)
    crop = classifier.crop
    try:
        classifier.classify([np.zeros((crop.size, crop.size, crop.channels), np.uint8)])
    except (ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{folder}: the model does not run: {exc}") from None
    return classifier


# -- the watcher ------------------------------------------------------------------------------------


class ModelWatcher:
    """Loads announced models on its own thread and hands them to the agent between frames."""

    def __init__(
        self,
        rollout: RolloutConfig,
        *,
        on_refused: Callable[[Refusal], None] | None = None,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
    ):
        self._stopping = threading.Event()
        self.fetcher = Fetcher(rollout, stopping=self._stopping)
        self.on_refused = on_refused
        self.retry_delays_s = tuple(retry_delays_s)
        self.loaded: list[str] = []  # versions handed to the agent, in order
        self.refused: list[Refusal] = []  # the latest MAX_REFUSALS, oldest first
        self._target: SwapTarget | None = None
        # (version, sha256) of the model last handed to the target, which may not run it yet (the
        # swap takes effect at its next frame): announcements are compared with this, not with
        # target.classifier, so a rollback to the running model still replaces a pending swap.
        self._handed: tuple[str, str] | None = None
        self._pending: ActiveModel | None = None
        self._busy = False
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None

    def attach(self, target: SwapTarget) -> None:
        self._target = target
        self._handed = (target.classifier.version, target.classifier.card.sha256)

    def offer(self, message: ActiveModel) -> None:
        """An announcement (MQTT thread): remembered, newest wins; returns at once."""
        with self._condition:
            self._pending = message
            self._condition.notify_all()

    def start(self) -> ModelWatcher:
        if self._target is None:
            raise RuntimeError("attach the agent before starting the model watcher")
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """:meth:`request_stop`, then :meth:`join`."""
        self.request_stop()
        return self.join(timeout)

    def request_stop(self) -> None:
        """Ask the watcher to end without waiting: a fetch in progress ends at its next block, and
        nothing is refused for it."""
        self._stopping.set()
        with self._condition:
            self._condition.notify_all()

    def join(self, timeout: float) -> bool:
        """Wait at most `timeout` s for the watcher's thread; whether it ended. One still loading a
        model (LiteRT does not stop half-way) is a daemon and cannot hold up the exit."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            return False
        self._thread = None
        return True

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no announcement is waiting or being handled (tests)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while self._pending is not None or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(remaining)
        return True

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._condition:
                while self._pending is None and not self._stopping.is_set():
                    self._condition.wait()
                message, self._pending = self._pending, None
                self._busy = message is not None
            try:
                if message is not None:
                    self.handle(message)
            except Exception:  # a bug here must not end the watcher: the next announcement may work
                log.exception("model reload failed")
            finally:
                with self._condition:
                    self._busy = False
                    self._condition.notify_all()

    def handle(self, message: ActiveModel) -> None:
        """Fetch, verify, load and hand over `message`'s model, or refuse it."""
        assert self._target is not None
        if self._handed == (message.version, message.sha256):
            log.info("model %s announced: already running it (or handed over)", message.version)
            return
        log.info("model %s announced (%s): fetching", message.version, message.location)
        try:
            classifier = load_classifier(self._fetch(message))
        except FetchCancelled as exc:
            log.info("model %s not loaded: %s", message.version, exc)
            return
        except (ArtifactError, FetchError, ModelFileError) as exc:
            self._refuse(message, str(exc))
            return
        self._target.swap_classifier(classifier)
        self._handed = (message.version, message.sha256)
        self.loaded.append(message.version)
        log.info("model %s loaded; it runs from the next frame", message.version)

    def _fetch(self, message: ActiveModel) -> Path:
        for delay in (*self.retry_delays_s, None):
            try:
                return self.fetcher.fetch(message)
            except FetchError as exc:
                if self._stopping.is_set():
                    raise FetchCancelled(f"fetching failed ({exc}) and the agent is stopping") from None
                if delay is None:
                    raise
                log.warning("fetching model %s failed (%s); again in %.0f s", message.version, exc, delay)
                self._stopping.wait(delay)
        raise AssertionError("unreachable")

    def _refuse(self, message: ActiveModel, reason: str) -> None:
        refusal = Refusal(message.version, message.sha256, reason)
        self.refused.append(refusal)
        del self.refused[:-MAX_REFUSALS]
        running = self._target.classifier.version if self._target else "?"
        log.error("model %s refused: %s; still running %s", message.version, reason, running)
        if self.on_refused is not None:
            self.on_refused(refusal)
