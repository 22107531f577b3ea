"""Webhook notifications of a study: :class:`Notifier`.

The study's ``notify:`` section (:class:`~llenergymeasure.config.notify.NotifyConfig`) lists
webhooks; each gets a JSON POST when an experiment run ends and when the study ends::

    executor ──enqueue(event)──► queue per webhook ──► worker thread ──POST──► endpoint
       (never waits)                                  timeout_s per attempt; on an error or
                                                      a 429/5xx answer, retry after
                                                      backoff_s, 2x, 4x ... (retries times)

A failing or slow webhook never fails or delays the study: enqueuing does not block, every
failure is logged and dropped, and at the end :meth:`Notifier.close` waits at most
``timeout_s`` for what is still queued, then leaves it (the workers are daemon threads).

Signature: with ``secret_env``, the header ``X-LLEM-Signature: sha256=<hex>`` carries the
HMAC-SHA256 of the exact body bytes under the secret read from that environment variable
(verify with ``hmac.compare_digest``). ``X-LLEM-Event`` names the event.

The HTTP client is httpx, the ``webhooks`` extra; a study with webhooks is refused at load
time without it (:mod:`llenergymeasure.config.loader`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from llenergymeasure import __version__
from llenergymeasure.config.notify import NotifyConfig, WebhookConfig
from llenergymeasure.errors import ConfigError

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-LLEM-Signature"
EVENT_HEADER = "X-LLEM-Event"
_STOP = object()


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value of ``body``: ``sha256=<hex HMAC>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class _Worker:
    """One webhook: a queue and a daemon thread that POSTs what is put on it."""

    def __init__(
        self,
        hook: WebhookConfig,
        secret: bytes | None,
        cfg: NotifyConfig,
        sleep: Callable[[float], None],
    ) -> None:
        self.hook = hook
        self.secret = secret
        self.cfg = cfg
        self.sleep = sleep
        self.queue: queue.Queue[Any] = queue.Queue()
        self.delivered = 0
        self.failed = 0
        self.last_error: str | None = None
        self.thread = threading.Thread(
            target=self._loop, name=f"llem-notify-{hook.url[:40]}", daemon=True
        )

    def put(self, item: Any) -> None:
        """Queue ``item``; the thread starts with the first one (none for an unused hook)."""
        self.queue.put(item)
        if not self.thread.is_alive() and self.thread.ident is None:
            self.thread.start()

    def _loop(self) -> None:
        import httpx

        with httpx.Client(timeout=self.cfg.timeout_s, follow_redirects=False) as client:
            while True:
                item = self.queue.get()
                try:
                    if item is _STOP:
                        return
                    event, body = item
                    self._deliver(client, event, body)
                finally:
                    self.queue.task_done()

    def _deliver(self, client: Any, event: str, body: bytes) -> None:
        import httpx

        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"llenergymeasure/{__version__}",
            EVENT_HEADER: event,
        }
        if self.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        delay = self.cfg.backoff_s
        for attempt in range(1, self.cfg.retries + 2):
            try:
                resp = client.post(self.hook.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code < 400:
                    self.delivered += 1
                    logger.info("webhook %s: %s delivered (%s)", self.hook.url, event, attempt)
                    return
                why = f"HTTP {resp.status_code}"
                if resp.status_code < 500 and resp.status_code != 429:
                    break  # the endpoint refuses this request; repeating it will not help
            if attempt <= self.cfg.retries:
                logger.warning(
                    "webhook %s: %s attempt %d failed (%s); retrying in %.1f s",
                    self.hook.url,
                    event,
                    attempt,
                    why,
                    delay,
                )
                self.sleep(delay)
                delay *= 2
        self.failed += 1
        self.last_error = why
        logger.warning("webhook %s: %s not delivered (%s)", self.hook.url, event, why)


class Notifier:
    """Sends study events to the configured webhooks, in the background.

    Build it with :meth:`for_study`; call :meth:`send` (never blocks) and :meth:`close` once.
    """

    def __init__(
        self,
        cfg: NotifyConfig,
        secrets: Mapping[int, bytes] | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg = cfg
        secrets = secrets or {}
        self.workers = [_Worker(h, secrets.get(i), cfg, sleep) for i, h in enumerate(cfg.webhooks)]
        self.closed = False

    @classmethod
    def for_study(
        cls, cfg: NotifyConfig, environ: Mapping[str, str] | None = None
    ) -> Notifier | None:
        """A notifier for ``cfg``, or None when it has no webhook.

        Raises:
            ConfigError: a ``secret_env`` names an environment variable that is not set.
        """
        if not cfg.webhooks:
            return None
        env = os.environ if environ is None else environ
        secrets: dict[int, bytes] = {}
        missing = []
        for i, hook in enumerate(cfg.webhooks):
            if hook.secret_env is None:
                continue
            value = env.get(hook.secret_env)
            if not value:
                missing.append(f"notify.webhooks[{i}].secret_env: {hook.secret_env} is not set")
            else:
                secrets[i] = value.encode()
        if missing:
            raise ConfigError(
                "webhook secret missing from the environment",
                problems=missing,
                hint="export the variable before `llem run` (its value is the HMAC key)",
            )
        return cls(cfg, secrets)

    def send(self, event: str, payload: Mapping[str, Any]) -> None:
        """Queue ``payload`` for every webhook subscribed to ``event``; returns at once."""
        if self.closed:
            return
        body = json.dumps({"event": event, **payload}, default=str).encode()
        for w in self.workers:
            if event in w.hook.events:
                w.put((event, body))

    def close(self, wait_s: float | None = None) -> list[str]:
        """Let queued events go for at most ``wait_s`` (default ``timeout_s``), then leave.

        Returns:
            One line per webhook that lost events, for the console (empty when all arrived).
        """
        if self.closed:
            return []
        self.closed = True
        deadline = time.monotonic() + (self.cfg.timeout_s if wait_s is None else wait_s)
        for w in self.workers:
            if w.thread.ident is not None:
                w.queue.put(_STOP)
        for w in self.workers:
            if w.thread.ident is None:
                continue
            w.thread.join(max(0.0, deadline - time.monotonic()))
            if w.thread.is_alive():
                logger.warning(
                    "webhook %s: still busy at the end of the study; %d event(s) left undelivered",
                    w.hook.url,
                    max(0, w.queue.qsize() - 1),
                )
        lines = []
        for w in self.workers:
            pending = max(0, w.queue.qsize() - 1) + (1 if w.thread.is_alive() else 0)
            if w.failed or pending:
                why = f" (last: {w.last_error})" if w.last_error else ""
                lines.append(
                    f"webhook {w.hook.url}: {w.delivered} delivered, {w.failed} failed, "
                    f"{pending} abandoned at the end{why}"
                )
        return lines


def experiment_payload(study: Mapping[str, Any], run: Any, n_runs: int) -> dict[str, Any]:
    """The ``experiment_end`` body for a :class:`~llenergymeasure.results.study.RunSummary`."""
    return {**study, "n_runs": n_runs, "run": run.model_dump(mode="json")}


def study_payload(result: Any) -> dict[str, Any]:
    """The ``study_end`` body for a :class:`~llenergymeasure.results.study.StudyResult`."""
    ci = result.confidence_intervals
    experiments = []
    if ci is not None:
        for h, stats in ci.experiments.items():
            experiments.append(
                {
                    "config_hash": h,
                    "n_cycles_completed": stats.n_cycles_completed,
                    "flags": stats.flags,
                    "j_per_output_token": stats.metrics["j_per_output_token"].model_dump(),
                    "output_tokens_per_s": stats.metrics["output_tokens_per_s"].model_dump(),
                }
            )
    return {
        "study_id": result.study_id,
        "study_name": result.study_name,
        "state": result.state,
        "message": result.message,
        "n_runs": result.n_runs,
        "n_completed": result.n_completed,
        "n_failed": result.n_failed,
        "wall_s": result.wall_s,
        "study_dir": result.study_dir,
        "paths": {
            "study_result": "study_result.json",
            "results_parquet": "results.parquet",
            "summary_csv": "summary.csv",
        },
        "experiments": experiments,
    }
