"""A tiny background-job runner for long work (ingest, train, evaluate).

Each job runs in its own daemon thread; its progress lives in a `Job` that any session (any
Streamlit page, any test) can read through the process-wide `runner()`. No Streamlit here.

    job = runner().submit("train", "train medical-v2", lambda report: train(cfg, progress=...))
    runner().get(job.id).progress  # 0.0 .. 1.0
"""
from __future__ import annotations

import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable


class JobCancelled(Exception):
    """Raised inside a job at its next progress report after `JobRunner.cancel`."""


@dataclass
class Job:
    id: str
    kind: str  # "ingest" | "train" | "evaluate" | anything
    title: str
    targets: tuple[str, ...] = ()  # what the job writes (index or adapter names), so it is not started twice
    status: str = "queued"  # -> "running" -> "done" | "failed" | "cancelled"
    progress: float = 0.0  # 0..1
    message: str = ""
    metrics: list[dict[str, Any]] = field(default_factory=list)  # e.g. {"step": 3, "loss": 1.2}
    result: Any = None
    error: str | None = None  # one readable line; the traceback is kept in `detail`
    detail: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_requested: bool = False

    @property
    def active(self) -> bool:
        return self.status in ("queued", "running")

    @property
    def elapsed_s(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started


class Reporter:
    """Handed to the job function: `report(progress, message, **metric)`; metrics are appended. A report after
    `JobRunner.cancel` raises JobCancelled, so a job stops at its next step (training and evaluation install or
    write nothing unless they finish)."""

    def __init__(self, job: Job, lock: threading.Lock):
        self._job, self._lock = job, lock

    def __call__(self, progress: float | None = None, message: str | None = None, **metric: Any) -> None:
        if self._job.cancel_requested:
            raise JobCancelled(f"{self._job.title}: cancelled")
        with self._lock:
            if progress is not None:
                self._job.progress = min(1.0, max(0.0, float(progress)))
            if message is not None:
                self._job.message = message
            if metric:
                self._job.metrics.append(dict(metric))

    def steps(self, done: int, total: int, message: str | None = None, **metric: Any) -> None:
        """Convenience for `progress(done, total, ...)` callbacks."""
        self(done / total if total else None, message, **metric)


class JobRunner:
    def __init__(self, max_history: int = 50):
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._max_history = max_history

    def submit(self, kind: str, title: str, fn: Callable[[Reporter], Any], targets: tuple[str, ...] = ()) -> Job:
        """Start `fn(report)` in a thread now; its return value becomes `job.result`."""
        job = Job(id=uuid.uuid4().hex[:12], kind=kind, title=title, targets=tuple(targets))
        with self._lock:
            self._jobs[job.id] = job
            self._trim()
        thread = threading.Thread(target=self._run, args=(job, fn), name=f"loracle-job-{job.id}", daemon=True)
        self._threads[job.id] = thread
        thread.start()
        return job

    def _run(self, job: Job, fn: Callable[[Reporter], Any]) -> None:
        with self._lock:
            job.status, job.started = "running", time.time()
        try:
            result = fn(Reporter(job, self._lock))
        except JobCancelled:
            with self._lock:
                job.status, job.error, job.finished = "cancelled", "cancelled before it finished", time.time()
            return
        except BaseException as exc:  # noqa: BLE001 - a job must never kill the server thread silently
            with self._lock:
                job.status = "failed"
                job.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                job.detail = traceback.format_exc()
                job.finished = time.time()
            return
        with self._lock:
            job.result, job.status, job.progress, job.finished = result, "done", 1.0, time.time()

    def _trim(self) -> None:
        finished = [j for j in self._jobs.values() if not j.active]
        for old in sorted(finished, key=lambda j: j.created)[: max(0, len(self._jobs) - self._max_history)]:
            self._jobs.pop(old.id, None)
            self._threads.pop(old.id, None)

    def cancel(self, job_id: str) -> Job:
        """Ask a job to stop: it ends, as "cancelled", at its next progress report."""
        job = self.get(job_id)
        with self._lock:
            if job.active:
                job.cancel_requested = True
        return job

    def get(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise KeyError(f"no job with id '{job_id}' (it finished long ago or belongs to another process)") from None

    def list(self, kind: str | None = None) -> list[Job]:
        with self._lock:
            jobs = [j for j in self._jobs.values() if kind is None or j.kind == kind]
        return sorted(jobs, key=lambda j: j.created, reverse=True)

    def active(self, kind: str | None = None) -> list[Job]:
        return [j for j in self.list(kind) if j.active]

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job ends (or `timeout` passes); returns the job either way."""
        thread = self._threads.get(job_id)
        if thread is not None:
            thread.join(timeout)
        return self.get(job_id)


_RUNNER: JobRunner | None = None
_RUNNER_LOCK = threading.Lock()


def runner() -> JobRunner:
    """The process-wide runner shared by every session."""
    global _RUNNER
    with _RUNNER_LOCK:
        if _RUNNER is None:
            _RUNNER = JobRunner()
        return _RUNNER


def build_missing_indexes() -> list[Job]:
    """Start one background ingest job that builds the shipped indexes not built yet, one after the other in
    SHIPPED_INDEXES order (the small pubmedqa ones first, then medquad: on 2 cores, two builds side by side
    would each take twice as long). `loracle ui` and `loracle serve` call this after the default index is
    ready, so nothing waits for it. An index whose writer lock another process holds is left to that
    process; one a running job builds is not started twice."""
    from ingest.folders import IndexLockedError, index_path, writer_lock
    from ingest.pipeline import build_shipped_index, missing_shipped_indexes

    names = []
    for name in missing_shipped_indexes():
        if any(name in j.targets for j in runner().active("ingest")):
            continue
        try:
            with writer_lock(index_path(name)):
                pass
        except IndexLockedError:
            continue
        names.append(name)
    if not names:
        return []

    def job(report):
        reports = []
        for i, name in enumerate(names):
            reports.append(build_shipped_index(name, progress=lambda done, total, *a, name=name, i=i: report(
                (i + (done / total if total else 0)) / len(names), f"{name}: {done}/{total} documents")))
        return reports

    title = "build shipped " + ("index " if len(names) == 1 else "indexes ") + ", ".join(f"'{n}'" for n in names)
    return [runner().submit("ingest", title, job, targets=tuple(names))]
