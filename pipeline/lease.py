"""One writer per output: a job holds a lease on its output for as long as it runs.

Two jobs writing one output would both narrate the ids they share and both
record them. So a job takes its output's lease before it reads what earlier
runs recorded, renews it while it runs and releases it at the end; a second
job on the same output refuses to start with one line naming the holder (host,
process id, since when). The lease is ``.bark/lease`` in the output, in the
job's own namespace (see :mod:`pipeline.storage`), and holds a
:class:`LeaseRecord`.

- **Local folder**: an exclusive ``flock`` on the lease file, held through an
  open descriptor. The kernel drops it the moment the holder's process ends,
  however it ends, so a killed job never blocks the next one: its record, left
  in the file, is taken over with a warning. A record from another host (an
  output on a shared file system, where locks may not cross hosts) still counts
  until it expires.
- **S3**: the lease object is created with ``If-None-Match: *`` (of two racing
  jobs exactly one wins) and renewed with ``If-Match: <etag>``. A lease not
  renewed for its holder's ``lease.expiry_s`` (judged by the server's clock, so
  hosts need not agree on the time), or held by a process of this host that no
  longer exists, is taken over (``If-Match`` on the ETag that was judged, so
  two takers cannot both win), with a warning. A holder whose renewal finds
  the lease taken over stops (``on_lost``).

**Shards** (``--shard I/N``, :mod:`pipeline.shards`): the drivers of one job
split by input shard write disjoint items, so each holds a lease of its own,
``.bark/lease.shard-I-of-N``, taken exactly as above: two drivers of one shard
exclude each other, drivers of different shards run together. Two leases
overlap when their items do: an unsharded job's (``.bark/lease``) overlaps
every shard's, and shards of different counts overlap each other. A job takes
its own lease first, writes its record, and then looks for a live overlapping
lease (locally: one whose ``flock`` it cannot share, or a live record from
another host; on S3: one not judged gone); if it finds one it gives its own
back and stops with the same one-line refusal. Of two overlapping jobs that
start at the same instant each finds the other, and both may stop (a rerun
settles it), but two never run together.
"""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
import re
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.config import LeaseConfig
from pipeline.object_store import LocalStore, ObjectNotFound, PreconditionFailed, S3Storage, StorageError
from pipeline.shards import Shard
from pipeline.storage import BOOKKEEPING_DIR

log = logging.getLogger(__name__)

LEASE_NAME = "lease"
LEASE_KEY = f"{BOOKKEEPING_DIR}/{LEASE_NAME}"
# A shard's lease, directly in .bark/: the only other names read as leases.
SHARD_LEASE_NAME = re.compile(r"lease\.shard-(0|[1-9][0-9]*)-of-([1-9][0-9]*)")
RENEWALS_PER_EXPIRY = 4  # a holder renews this often within one expiry period
# Takeover races (a lease released, or taken by a third job, between our read and our write).
ACQUIRE_ATTEMPTS = 5
# A local record is padded to this size (JSON allows trailing spaces), so a rewrite never
# changes the file's length and a reader never sees the tail of a longer old record.
LOCAL_RECORD_BYTES = 1024
MAX_RECORD_BYTES = 4096  # a record is ~250 bytes; anything far larger is not ours


class LeaseRecord(BaseModel):
    """Who holds an output: what the second job's refusal names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    pid: int
    run_id: str
    started: datetime.datetime
    renewed: datetime.datetime
    expiry_s: float
    shard: str | None = None  # "I/N" for a driver of one shard

    def describe(self) -> str:
        shard = f", shard {self.shard}" if self.shard else ""
        return f"host {self.host}, pid {self.pid}{shard}, since {_utc(self.started)}"


def lease_key(shard: Shard | None) -> str:
    """The lease of an unsharded job, or of the driver of one shard."""
    return LEASE_KEY if shard is None else f"{BOOKKEEPING_DIR}/lease.shard-{shard.index}-of-{shard.count}"


def overlaps(shard: Shard | None, name: str) -> bool:
    """Whether the lease named ``name`` (in ``.bark/``) guards items of ``shard``'s driver, other than its own.

    Only the names the job makes count: ``lease`` and :data:`SHARD_LEASE_NAME`.
    """
    if name == LEASE_NAME:
        return shard is not None
    match = SHARD_LEASE_NAME.fullmatch(name)
    if match is None:
        return False
    return shard is None or int(match.group(2)) != shard.count


class LeaseHeld(StorageError):
    """Another job holds the output's lease: this one must not start."""


class LeaseLost(StorageError):
    """Raised inside renewal: someone else holds the lease now."""


OnLost = Callable[[str], None]


class Lease:
    """A held lease, renewed in a daemon thread until :meth:`release`; see the module docstring."""

    def __init__(self, where: str, run_id: str, config: LeaseConfig, on_lost: OnLost | None, shard: Shard | None) -> None:
        self.where = where
        self.config = config
        self.shard = shard
        self.key = lease_key(shard)
        now = _now()
        self.record = LeaseRecord(
            host=socket.gethostname(), pid=os.getpid(), run_id=run_id, started=now, renewed=now, expiry_s=config.expiry_s,
            shard=None if shard is None else str(shard),
        )
        self.takeover: str | None = None  # whose record was taken over, logged once the lease is ours
        self.lost: str | None = None  # why the lease is no longer ours, once it is not
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._lock = threading.Lock()  # renewal and release never run at once
        self._thread: threading.Thread | None = None
        self._released = False

    @property
    def held(self) -> bool:
        return not self._released and self.lost is None

    def _start_renewing(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="bark-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        interval = self.config.expiry_s / RENEWALS_PER_EXPIRY
        while not self._stop.wait(interval):
            with self._lock:
                if not self.held:
                    return
                self.record = self.record.model_copy(update={"renewed": _now()})
                try:
                    self._renew()
                except LeaseLost as exc:
                    self.lost = str(exc)
                except StorageError as exc:  # an outage: the next renewal tries again
                    log.warning("could not renew the lease on %s: %s", self.where, exc)
            if self.lost is not None:
                if self._on_lost is not None:
                    self._on_lost(self.lost)
                return

    def release(self) -> None:
        """Stops renewing and gives the output back; idempotent, never raises (it runs in cleanups)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.config.expiry_s)
        with self._lock:
            if self._released:
                return
            self._released = True
            try:
                if self.lost is None:
                    self._release()
            except StorageError as exc:
                log.warning("could not release the lease on %s (the next job takes it over): %s", self.where, exc)
            finally:
                self._close()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    # Backends fill these in.
    def _acquire(self) -> None:
        raise NotImplementedError

    def _refuse_if_overlapped(self) -> None:
        """LeaseHeld when a live lease of a job whose items overlap ours is there (see the module docstring)."""
        raise NotImplementedError

    def _renew(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        """Frees what the lease holds open (after a release, or when it was lost)."""


def take_lease(
    storage, run_id: str, config: LeaseConfig, on_lost: OnLost | None = None, shard: Shard | None = None
) -> Lease:
    """The output's lease for this run (or for this run's ``shard`` of the job), renewed until released;
    LeaseHeld if another job has it, or has a lease over some of the same items."""
    if isinstance(storage, LocalStore):
        lease: Lease = _LocalLease(storage.root, run_id, config, on_lost, shard)
    elif isinstance(storage, S3Storage):
        lease = _S3Lease(storage, run_id, config, on_lost, shard)
    else:
        raise TypeError(f"no lease for {type(storage).__name__}")
    lease._acquire()
    try:
        lease._refuse_if_overlapped()
    except BaseException:
        lease.release()
        raise
    if lease.takeover is not None:
        log.warning("taking over the lease on %s from %s", lease.where, lease.takeover)
    lease._start_renewing()
    return lease


class _LocalLease(Lease):
    """``flock`` on ``<root>/.bark/lease``; the file holds the record, emptied on release."""

    def __init__(self, root: Path, run_id: str, config: LeaseConfig, on_lost: OnLost | None, shard: Shard | None) -> None:
        super().__init__(str(root), run_id, config, on_lost, shard)
        self.path = Path(root).joinpath(*self.key.split("/"))
        self._fd: int | None = None

    def _acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot take the lease {self.path}: {exc.strerror}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _held(self.where, _parse(_read_fd(fd)), "it is running") from None
            except OSError as exc:
                raise StorageError(f"cannot lock {self.path}: {exc.strerror}") from exc
            previous = _parse(_read_fd(fd))
            if previous is not None:
                age = (_now() - previous.renewed).total_seconds()
                if previous.host != self.record.host and age <= previous.expiry_s:
                    # Locks need not cross hosts on a shared file system: trust the record until it expires.
                    raise _held(self.where, previous, f"renewed {age:.0f} s ago on another host")
                self.takeover = f"{previous.describe()}: that job ended without releasing it"
            self._fd = fd
            self._write()
        except BaseException:
            self._fd = None
            os.close(fd)  # drops the lock if this process took it
            raise

    def _refuse_if_overlapped(self) -> None:
        """Probes each overlapping lease file with a shared, non-blocking ``flock``: a holder's exclusive
        lock refuses it. The probe's lock is dropped at once."""
        folder = self.path.parent
        for name in sorted(os.listdir(folder)):
            if not overlaps(self.shard, name):
                continue
            try:
                fd = os.open(folder / name, os.O_RDONLY)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(f"cannot read the lease {folder / name}: {exc.strerror}") from exc
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise _held(self.where, _parse(_read_fd(fd)), "it is running") from None
                holder = _parse(_read_fd(fd))
                if holder is not None and holder.host != self.record.host:
                    age = (_now() - holder.renewed).total_seconds()
                    if age <= holder.expiry_s:
                        raise _held(self.where, holder, f"renewed {age:.0f} s ago on another host")
            finally:
                os.close(fd)

    def _write(self) -> None:
        data = self.record.model_dump_json().encode("utf-8").ljust(LOCAL_RECORD_BYTES)
        try:
            os.pwrite(self._fd, data, 0)
            os.ftruncate(self._fd, len(data))
            os.fsync(self._fd)
        except OSError as exc:
            raise StorageError(f"cannot write the lease {self.path}: {exc.strerror}") from exc

    def _renew(self) -> None:
        try:
            same_file = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            same_file = False
        if not same_file:
            raise LeaseLost(f"the lease file {self.path} was removed: another job may be writing {self.where}")
        self._write()

    def _release(self) -> None:
        try:
            os.ftruncate(self._fd, 0)  # an empty lease file: released cleanly
        except OSError as exc:
            raise StorageError(f"cannot clear the lease {self.path}: {exc.strerror}") from exc

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock
            self._fd = None


class _S3Lease(Lease):
    """The object ``.bark/lease`` (or a shard's) under the output prefix, written only conditionally."""

    def __init__(self, storage: S3Storage, run_id: str, config: LeaseConfig, on_lost: OnLost | None, shard: Shard | None) -> None:
        super().__init__(f"s3://{storage.bucket}/{storage.prefix}".rstrip("/"), run_id, config, on_lost, shard)
        self.storage = storage
        self._etag: str | None = None

    def _body(self) -> bytes:
        return self.record.model_dump_json().encode("utf-8")

    def _acquire(self) -> None:
        for _ in range(ACQUIRE_ATTEMPTS):
            try:
                self._etag = self.storage.create(self.key, self._body())
                return
            except PreconditionFailed:
                pass
            try:
                current = self.storage.read_tagged(self.key)
            except ObjectNotFound:
                continue  # released between our two requests
            holder = _parse(current.data)
            gone = _why_gone(holder, current.age_s, self.record.host, self.config.expiry_s)
            if gone is None:
                raise _held(self.where, holder, f"renewed {current.age_s:.0f} s ago")
            try:
                self._etag = self.storage.replace(self.key, self._body(), current.etag)
            except PreconditionFailed:
                continue  # another job took it (or it was released) first: look again
            who = holder.describe() if holder is not None else "an unreadable lease record"
            self.takeover = f"{who}: {gone}"
            return
        raise StorageError(f"cannot take the lease on {self.where}: it changed {ACQUIRE_ATTEMPTS} times while we tried")

    def _refuse_if_overlapped(self) -> None:
        """Reads each overlapping lease object: one whose holder is not judged gone refuses."""
        folder = f"{BOOKKEEPING_DIR}/"
        for key in list(self.storage.list_keys(f"{folder}{LEASE_NAME}")):
            if not overlaps(self.shard, key[len(folder):]):
                continue
            try:
                current = self.storage.read_tagged(key)
            except ObjectNotFound:
                continue  # released meanwhile
            holder = _parse(current.data)
            if _why_gone(holder, current.age_s, self.record.host, self.config.expiry_s) is None:
                raise _held(self.where, holder, f"renewed {current.age_s:.0f} s ago")

    def _renew(self) -> None:
        try:
            self._etag = self.storage.replace(self.key, self._body(), self._etag)
        except PreconditionFailed:
            try:
                holder = _parse(self.storage.read_tagged(self.key).data)
            except StorageError:
                holder = None
            who = holder.describe() if holder is not None else "another job"
            raise LeaseLost(f"the lease on {self.where} was taken over by {who}; stopping") from None

    def _release(self) -> None:
        try:
            self.storage.delete_tagged(self.key, self._etag)
        except (PreconditionFailed, ObjectNotFound):
            pass  # not ours any more: leave it to its holder


def _why_gone(holder: LeaseRecord | None, age_s: float, this_host: str, default_expiry_s: float) -> str | None:
    """Why a lease's holder counts as gone, or None while it may still be at work."""
    expiry = holder.expiry_s if holder is not None else default_expiry_s
    if age_s > expiry:
        return f"not renewed for {age_s:.0f} s (it expires after {expiry:.0f} s)"
    if holder is not None and holder.host == this_host and not _process_alive(holder.pid):
        return f"process {holder.pid} no longer exists on this host"
    return None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    except (OverflowError, ValueError):
        return False
    return True


def _held(where: str, holder: LeaseRecord | None, state: str) -> LeaseHeld:
    who = f"{holder.describe()}, {state}" if holder is not None else state
    return LeaseHeld(
        f"{where} is in use by another job ({who}); wait for it to finish "
        "(a job that is gone gives its output up by itself)"
    )


def _parse(data: bytes) -> LeaseRecord | None:
    if not data.strip() or len(data) > MAX_RECORD_BYTES:
        return None
    try:
        return LeaseRecord.model_validate_json(data)
    except ValidationError:
        return None


def _read_fd(fd: int) -> bytes:
    return os.pread(fd, MAX_RECORD_BYTES + 1, 0)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _utc(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
