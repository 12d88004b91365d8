"""Telling real differences from noise, with a secondary: the primary's version run twice.

Real services answer with timestamps, generated ids and random orderings, so two healthy
responses differ. A *secondary* (a second instance of the primary's version) gets the same
mirrored requests as the candidate; where it differs from the primary, the difference cannot
be the candidate's fault. The model counts, per endpoint and per place (``where`` and the path
with array indices generalised, ``/items/3/price`` -> ``/items/*/price``), over the
exchanges the secondary answered:

- R: exchanges in which the candidate differed from the primary there,
- N: exchanges in which the secondary differed from the primary there,
- T: exchanges of the endpoint compared.

A candidate difference is noise when the secondary has differed at its place (N > 0) and the
candidate does not differ there clearly more often: it is real again when R > N and
|R-N|/(R+N) > ``relative`` and |R-N|/T > ``absolute`` (Diffy's rule, 20% and 0.03% by
default). Call ``classify`` (``observe`` then ``split``) once per compared exchange: what the
current exchange teaches applies to it already and to every later exchange of the endpoint.

Decisions:

- No secondary answer (not configured, or it failed): every difference of that exchange stays
  real, and nothing is counted; a model never hides a difference it has no evidence for. R
  is weighed against N, so both count over the same exchanges: counting R alone while the
  secondary is down would keep real, long after it is back, what is noise.
- Memory is bounded: at most ``max_endpoints`` endpoints and ``max_paths`` places per endpoint,
  first come, first kept, and places longer than ``MAX_PATH_CHARS`` are not tracked. What does
  not fit is counted in ``untracked`` and its differences stay real. About 150 bytes a place
  besides its path: the defaults (500 x 200) take some 15 MB when every table is full of
  typical paths, more for paths near ``MAX_PATH_CHARS``.
- A place counts once per exchange however often it differs there (``/items/0/ts`` and
  ``/items/1/ts`` are one place, ``/items/*/ts``), as in the report.
- A place includes the kind of difference: a secondary whose ``/ts`` changes makes the
  candidate's changed ``/ts`` noise, never a ``/ts`` it dropped (``removed``) or turned into a
  string (``type``).
- A secondary that answers with another status than the primary's (a 503 while the primary
  said 200) gives no evidence: its body differs everywhere, and counting it would make every
  place of the candidate's noise while the secondary is down.
- Only listed differences can be classed: a comparison keeps the first ``diff.max_differences``
  and counts the rest, and ``without_noise`` counts those unlisted ones as real.
- A text or binary body differs at the place "" (the whole body): when the secondary's body
  differs too, say because a page prints the time, the candidate's body differences are noise
  unless they are clearly more frequent. Structured (JSON, form) bodies do not have that
  problem.
- Counts never decay; delete the state file to start afresh (after the primary's version
  changes, for instance).

Everything here is synchronous and cheap (dictionary lookups, cached path generalisation: a
few microseconds per exchange) and meant for the event loop; none of it is thread-safe.
Persistence: ``save_async`` (from the loop; encodes and writes on a thread) or ``save``
(blocking) write a JSON file atomically, ``load`` reads it back. Each worker process keeps its
own model and file (``state_file``). In the proxy, per worker::

    path = state_file(config.noise.state_path, worker) if config.noise.state_path else None
    model = NoiseModel.load(path, config.noise) if path else NoiseModel.from_config(config.noise)
    ...
    real, noise = model.classify(exchange.endpoint, comparison.differences, secondary_diffs)
    record = build_record(exchange, without_noise(comparison, real, noise), noise=noise)
    ...
    if model.dirty: await model.save_async(path)    # every noise.save_interval, and at exit
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from shadowproxy.compare.model import Comparison, Difference, Kind, Where
from shadowproxy.config import Config, NoiseConfig
from shadowproxy.exchange import Failure, Response
from shadowproxy.period import Period
from shadowproxy.report.aggregate import generalise_path

__all__ = [
    "MAX_PATH_CHARS",
    "NoiseModel",
    "NoiseStateError",
    "PlaceCounts",
    "generalise",
    "gives_evidence",
    "state_file",
    "without_noise",
    "write_state",
]

MAX_PATH_CHARS = 512
"""Longer places are not tracked (their differences stay real) rather than cut and merged."""
STATE_FORMAT = "shadowproxy-noise"
STATE_VERSION = 2
"""Version 1 kept no kind per place; its places are read as ``changed``."""

generalise = generalise_path
"""``/items/3/price`` -> ``/items/*/price``: every all-digit segment becomes ``*``.

A JSON Pointer cannot tell an array index from an all-digit object key, so both are
generalised; the report groups paths the same way (it is the same function)."""

Place = tuple[str, str, str]
"""(where, path, kind): the path generalised for body places, the header name for headers."""


class NoiseStateError(Exception):
    """A state file that cannot be read or is not one; the message names it."""


@dataclass(slots=True)
class PlaceCounts:
    raw: int = 0
    """R: exchanges where the candidate differed from the primary here."""
    noise: int = 0
    """N: exchanges where the secondary differed from the primary here."""


class _Endpoint:
    __slots__ = ("places", "requests")

    def __init__(self) -> None:
        self.requests = 0
        """T: compared exchanges of this endpoint."""
        self.places: dict[Place, PlaceCounts] = {}


def _key(where: Where, path: str, kind: Kind) -> Place:
    return (where, generalise_path(path) if where is Where.BODY else path, kind)


def _place(difference: Difference) -> Place:
    where = difference.where
    if where is Where.BODY:
        return (where, generalise_path(difference.path), difference.kind)
    return (where, difference.path, difference.kind)


def gives_evidence(primary: Response, secondary: Response | Failure | None) -> bool:
    """Whether the secondary's answer can tell noise: it answered, with the primary's status."""
    return isinstance(secondary, Response) and secondary.status == primary.status


def _places(differences: Iterable[Difference]) -> set[Place]:
    return {_place(d) for d in differences}


def state_file(state_path: str, worker: int | None) -> str:
    """The file one process keeps its counts in: ``state_path``, or ``state_path.N`` for
    worker N, so workers never overwrite each other's counts."""
    return state_path if worker is None else f"{state_path}.{worker}"


def write_state(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` atomically: a temporary file beside ``path``, synced, then renamed over
    it, so a crash leaves the old file or the new one, never half of one. Raises OSError."""
    target = Path(path)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def without_noise(
    comparison: Comparison, real: Sequence[Difference], noise: Sequence[Difference]
) -> Comparison:
    """``comparison`` with the noise taken out of its differences and its total, so that an
    exchange whose every difference is noise is a match. Differences the comparison counted
    but did not list (beyond ``diff.max_differences``) stay in the total: they are unknown."""
    if not noise:
        return comparison
    total = max(comparison.total - len(noise), len(real))
    return replace(comparison, differences=tuple(real), total=total)


class NoiseModel:
    """Per-endpoint, per-place counts of candidate and secondary differences; see the module."""

    __slots__ = (
        "_endpoints",
        "absolute",
        "dirty",
        "max_endpoints",
        "max_paths",
        "relative",
        "untracked",
    )

    def __init__(
        self,
        *,
        relative: float = 0.2,
        absolute: float = 0.0003,
        max_endpoints: int = 500,
        max_paths: int = 200,
    ) -> None:
        self.relative = relative
        self.absolute = absolute
        self.max_endpoints = max_endpoints
        self.max_paths = max_paths
        self._endpoints: dict[str, _Endpoint] = {}
        self.dirty = False
        """True when counts changed since the last ``snapshot`` (or ``save``)."""
        self.untracked = 0
        """Observations not counted because a cap was reached: endpoints (one per exchange)
        and places (one per place and exchange). Their differences stay real."""

    @classmethod
    def from_config(cls, config: NoiseConfig) -> NoiseModel:
        model = cls()
        model.configure(config)
        return model

    def configure(self, config: NoiseConfig) -> None:
        """Take new thresholds and caps (on a config reload); the counts are kept. Lower caps
        apply to endpoints and places seen from now on."""
        self.relative = config.relative
        self.absolute = config.absolute
        self.max_endpoints = config.max_endpoints
        self.max_paths = config.max_paths

    # --- learning and classifying -----------------------------------------------------------

    def observe(
        self,
        endpoint: str,
        candidate_diffs: Sequence[Difference],
        secondary_diffs: Sequence[Difference] | None,
    ) -> None:
        """Count one compared exchange: ``candidate_diffs`` are primary vs candidate,
        ``secondary_diffs`` primary vs secondary, None when there is no secondary answer (the
        exchange is then not counted at all: N could not be, and R and T without it would
        outweigh N at every place the secondary makes noisy)."""
        if secondary_diffs is None:
            return
        stats = self._endpoints.get(endpoint)
        if stats is None:
            if len(self._endpoints) >= self.max_endpoints:
                self.untracked += 1
                return
            stats = self._endpoints[endpoint] = _Endpoint()
        stats.requests += 1
        self.dirty = True
        if candidate_diffs:
            for place in _places(candidate_diffs):
                counts = self._counts(stats, place)
                if counts is not None:
                    counts.raw += 1
        for place in _places(secondary_diffs):
            counts = self._counts(stats, place)
            if counts is not None:
                counts.noise += 1

    def _counts(self, stats: _Endpoint, place: Place) -> PlaceCounts | None:
        counts = stats.places.get(place)
        if counts is None:
            if len(stats.places) >= self.max_paths or len(place[1]) > MAX_PATH_CHARS:
                self.untracked += 1
                return None
            counts = stats.places[place] = PlaceCounts()
        return counts

    def split(
        self,
        endpoint: str,
        candidate_diffs: Sequence[Difference],
        secondary_diffs: Sequence[Difference] | None,
    ) -> tuple[list[Difference], list[Difference]]:
        """``(real, noise)``: the candidate's differences, in their order, parted by what has
        been observed so far (``observe`` this exchange first, or call ``classify``). With no
        secondary answer (``secondary_diffs`` None) every difference is real."""
        if secondary_diffs is None or not candidate_diffs:
            return list(candidate_diffs), []
        stats = self._endpoints.get(endpoint)
        if stats is None:
            return list(candidate_diffs), []
        places = stats.places
        requests = stats.requests
        verdicts: dict[Place, bool] = {}
        real: list[Difference] = []
        noise: list[Difference] = []
        for difference in candidate_diffs:
            place = _place(difference)
            noisy = verdicts.get(place)
            if noisy is None:
                counts = places.get(place)
                noisy = verdicts[place] = counts is not None and self._noisy(counts, requests)
            (noise if noisy else real).append(difference)
        return real, noise

    def classify(
        self,
        endpoint: str,
        candidate_diffs: Sequence[Difference],
        secondary_diffs: Sequence[Difference] | None,
    ) -> tuple[list[Difference], list[Difference]]:
        """``observe`` the exchange, then ``split`` its differences: the one call per compared
        exchange, so noise the current secondary shows applies to the current exchange."""
        self.observe(endpoint, candidate_diffs, secondary_diffs)
        return self.split(endpoint, candidate_diffs, secondary_diffs)

    def _noisy(self, counts: PlaceCounts, requests: int) -> bool:
        raw, noise = counts.raw, counts.noise
        if noise == 0:
            return False
        excess = raw - noise
        clearly_more = (
            excess > 0
            and excess / (raw + noise) > self.relative
            and excess / max(requests, 1) > self.absolute
        )
        return not clearly_more

    def is_noise(self, endpoint: str, where: Where, path: str, kind: Kind = Kind.CHANGED) -> bool:
        """Whether a candidate difference at this place would be classed as noise now."""
        stats = self._endpoints.get(endpoint)
        if stats is None:
            return False
        counts = stats.places.get(_key(where, path, kind))
        return counts is not None and self._noisy(counts, stats.requests)

    # --- reading the counts -----------------------------------------------------------------

    def counts(
        self, endpoint: str, where: Where, path: str, kind: Kind = Kind.CHANGED
    ) -> PlaceCounts | None:
        """R and N at a place (``path`` raw or generalised), None when not tracked."""
        stats = self._endpoints.get(endpoint)
        if stats is None:
            return None
        return stats.places.get(_key(where, path, kind))

    def requests(self, endpoint: str) -> int:
        """T: compared exchanges of the endpoint (0 when not tracked)."""
        stats = self._endpoints.get(endpoint)
        return 0 if stats is None else stats.requests

    def noisy_places(self, endpoint: str) -> list[tuple[Where, str, Kind, PlaceCounts]]:
        """The places of an endpoint where candidate differences are noise now."""
        stats = self._endpoints.get(endpoint)
        if stats is None:
            return []
        return [
            (Where(where), path, Kind(kind), counts)
            for (where, path, kind), counts in stats.places.items()
            if self._noisy(counts, stats.requests)
        ]

    @property
    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    # --- persistence ------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The counts as the JSON a state file holds; clears ``dirty``. Takes about 1 ms per
        thousand places on the calling thread: on the event loop prefer ``save_async``."""
        self.dirty = False
        return _encode(self._freeze())

    def save(self, path: str | os.PathLike[str]) -> None:
        """``snapshot`` and ``write_state`` in one, blocking (at shutdown, in tests). OSError
        when it cannot write; ``dirty`` is then set again."""
        data = self.snapshot()
        try:
            write_state(path, data)
        except BaseException:
            self.dirty = True
            raise

    async def save_async(self, path: str | os.PathLike[str]) -> None:
        """Save from the event loop: the tables are copied on the loop (a fraction of a
        millisecond), encoded and written on a thread. OSError when it cannot write; ``dirty``
        is then set again, so the next periodic save retries."""
        frozen = self._freeze()
        self.dirty = False
        try:
            await asyncio.to_thread(_encode_and_write, path, frozen)
        except BaseException:
            self.dirty = True
            raise

    def _freeze(self) -> list[tuple[str, int, dict[Place, PlaceCounts]]]:
        # Shallow copies: later observations add no place to them. The counts inside may still
        # move on while a thread encodes them; a count one exchange newer does no harm.
        return [(name, e.requests, e.places.copy()) for name, e in self._endpoints.items()]

    @classmethod
    def load(cls, path: str | os.PathLike[str], config: NoiseConfig | None = None) -> NoiseModel:
        """A model with the counts saved at ``path``, configured by ``config`` (defaults when
        None); empty when the file does not exist. NoiseStateError when it cannot be read or
        is not a state file. Caps apply: what does not fit is left out."""
        model = cls.from_config(config) if config is not None else cls()
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            return model
        except OSError as error:
            raise NoiseStateError(f"{path}: cannot read: {error.strerror or error}") from None
        try:
            document = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise NoiseStateError(f"{path}: not JSON: not a noise state file") from None
        try:
            model._restore(document)
        except (TypeError, ValueError, KeyError) as error:
            raise NoiseStateError(f"{path}: not a valid noise state file: {error}") from None
        model.dirty = False
        return model

    def _restore(self, document: Any) -> None:
        if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
            raise ValueError(f'"format" must be "{STATE_FORMAT}"')
        version = document.get("version")
        if version not in (1, STATE_VERSION):
            raise ValueError(f"unsupported version {version!r}")
        endpoints = document["endpoints"]
        if not isinstance(endpoints, dict):
            raise TypeError('"endpoints" must be an object')
        for name, saved in endpoints.items():
            requests = saved["requests"]
            places = saved["places"]
            if not _count(requests) or not isinstance(places, list):
                raise TypeError(f"endpoint {name!r}: bad requests or places")
            stats = self._endpoints.get(name)
            if stats is None:
                if len(self._endpoints) >= self.max_endpoints:
                    continue
                stats = self._endpoints[name] = _Endpoint()
            stats.requests += requests
            for item in places:
                if version == 1 and isinstance(item, list) and len(item) == 4:
                    item = [*item[:2], Kind.CHANGED.value, *item[2:]]
                if not (isinstance(item, list) and len(item) == 5):
                    raise TypeError(f"endpoint {name!r}: a place must be [where, path, kind, R, N]")
                where, place_path, kind, raw, noise = item
                if not (isinstance(place_path, str) and _count(raw) and _count(noise)):
                    raise TypeError(f"endpoint {name!r}: bad place {item!r}")
                counts = self._counts(stats, (Where(where), place_path, Kind(kind)))
                if counts is not None:
                    counts.raw += raw
                    counts.noise += noise
        self.untracked = 0


def _encode(frozen: list[tuple[str, int, dict[Place, PlaceCounts]]]) -> bytes:
    return orjson.dumps(
        {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "endpoints": {
                name: {
                    "requests": requests,
                    "places": [
                        (where, path, kind, counts.raw, counts.noise)
                        for (where, path, kind), counts in places.items()
                    ],
                }
                for name, requests, places in frozen
            },
        }
    )


def _encode_and_write(
    path: str | os.PathLike[str], frozen: list[tuple[str, int, dict[Place, PlaceCounts]]]
) -> None:
    write_state(path, _encode(frozen))


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


class NoiseFilter:
    """The running proxy's use of the model: learn from every exchange, move noise aside, and
    keep the counts across restarts when ``noise.state_path`` is set."""

    def __init__(self, config: Config, worker: int | None, log: Any) -> None:
        self._log = log
        self._active = config.secondary is not None
        noise = config.noise
        self._path = state_file(noise.state_path, worker) if noise.state_path else None
        self._period = Period(noise.save_interval)
        self._saver: asyncio.Task[None] | None = None
        self.model = NoiseModel.from_config(noise)
        if self._path is not None:
            try:
                self.model = NoiseModel.load(self._path, noise)
            except NoiseStateError as error:
                # Never written over: it may be another file named by mistake, or a newer
                # version's state. The counts start afresh and stay in memory.
                log.error(
                    "noise_state_unreadable",
                    path=self._path,
                    error=str(error),
                    detail="counts are not saved until the file is moved or deleted",
                )
                self._path = None

    def configure(self, config: Config) -> None:
        """Take a reloaded config; ``noise.state_path`` is kept (it needs a restart)."""
        self._active = config.secondary is not None
        self.model.configure(config.noise)
        self._period.set(config.noise.save_interval)

    def apply(
        self,
        endpoint: str,
        comparison: Comparison | None,
        secondary: Comparison | None,
        secondary_answered: bool,
    ) -> tuple[Comparison | None, list[Difference]]:
        """The comparison without its noise, and the noise; unchanged without a secondary.

        ``secondary_answered`` False (it failed, or its comparison was skipped) gives no
        evidence: the candidate's differences stay real.
        """
        if not self._active or comparison is None:
            return comparison, []
        evidence = secondary.differences if secondary_answered and secondary else None
        real, noise = self.model.classify(endpoint, comparison.differences, evidence)
        if not noise:
            return comparison, []
        return without_noise(comparison, real, noise), noise

    def start(self) -> None:
        if self._path is not None:
            self._saver = asyncio.get_running_loop().create_task(self._save_periodically())

    async def _save_periodically(self) -> None:
        assert self._path is not None
        while True:
            await self._period.wait()
            if self.model.dirty:
                try:
                    await self.model.save_async(self._path)
                except OSError as error:
                    self._log.error("noise_state_not_saved", path=self._path, error=str(error))

    async def close(self) -> None:
        if self._saver is not None:
            self._saver.cancel()
            await asyncio.gather(self._saver, return_exceptions=True)
        if self._path is not None and self.model.dirty:
            try:
                self.model.save(self._path)
            except OSError as error:
                self._log.error("noise_state_not_saved", path=self._path, error=str(error))
