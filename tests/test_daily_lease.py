"""The one-writer lease of products on object stores (:class:`appa.files.ObjectLease`), on
``memory://`` and on local files through ``file://``: one holder at a time, named to the
others; a released or expired lease is taken by exactly one of its takers; a holder that lost
its lease stops before its next write and never touches its successor's record.

Leases of about a second, renewed every tenth of a second; nothing here asserts how long
anything took, only what happened in which order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import fsspec
import pytest

from appa.files import ObjectLease, WriterBusyError, WriterLostError, writer_lock

ROOT = Path(__file__).resolve().parents[1]
SHORT = {"lease_s": 1.0, "renew_s": 0.1}


@pytest.fixture(params=["memory", "file"])
def url(request, tmp_path):
    """Where an archive would be: a fresh ``memory://`` folder (removed after) or a local
    folder through ``file://``."""
    if request.param == "file":
        yield f"file://{tmp_path}/daily.zarr"
        return
    folder = f"/lease-{uuid.uuid4().hex}"
    yield f"memory://{folder}/daily.zarr"
    fs = fsspec.filesystem("memory")
    if fs.exists(folder):
        fs.rm(folder, recursive=True)


def _records(lease: ObjectLease) -> dict[str, dict]:
    """The lease folder's records by name."""
    fs = lease.fs
    return {
        p.rsplit("/", 1)[-1]: json.loads(fs.cat_file(p))
        for p in fs.ls(lease.folder, detail=False)
        if p.rsplit("/", 1)[-1].startswith("epoch-")
    }


def _record_path(lease: ObjectLease) -> str:
    (name,) = [n for n in _records(lease) if n.endswith(f"{lease.epoch:012d}")]
    return f"{lease.folder}/{name}"


def _stale(lease: ObjectLease) -> None:
    """Waits until a lease that is not renewed may be taken over."""
    time.sleep(lease.lease_s + lease.margin_s + 0.2)


def test_acquire_release_and_acquire_again(url):
    first = ObjectLease(url, **SHORT).acquire()
    try:
        first.check()
        (record,) = _records(first).values()
        assert record["token"] == first.token and record["pid"] == os.getpid()
        assert not record["released"]
    finally:
        first.release()
    (record,) = _records(first).values()
    assert record["released"]
    second = ObjectLease(url, **SHORT).acquire()  # at once: no wait for a released lease
    try:
        # the next number; the earlier record is removed by the new holder
        assert second.epoch == 2
        assert list(_records(second)) == ["epoch-000000000002"]
    finally:
        second.release()


def test_the_lease_lies_beside_the_archive_and_leaves_it_free(url):
    from appa.files import what_is

    with writer_lock(url, **SHORT) as held:
        assert held.where == f"{url}.lease"
        assert what_is(url).kind == "absent"  # claim_output still sees a free path


def test_a_second_writer_is_refused_naming_the_holder(url):
    import socket

    with writer_lock(url, **SHORT):
        with pytest.raises(WriterBusyError, match="being written by another process") as busy:
            with writer_lock(url, **SHORT):
                pass
    message = str(busy.value)
    assert f'"pid": {os.getpid()}' in message and socket.gethostname() in message
    assert url in message


def test_a_waiting_writer_acquires_once_the_holder_releases(url):
    holder = ObjectLease(url, **SHORT).acquire()
    held = holder.epoch
    got: list[ObjectLease] = []
    waiter = threading.Thread(
        target=lambda: got.append(ObjectLease(url, **SHORT).acquire(wait_s=60)), daemon=True
    )
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and not got  # held and renewed: it waits
    holder.release()
    waiter.join(60)
    assert got and got[0].epoch == held + 1
    got[0].check()
    got[0].release()


def test_a_stale_lease_is_taken_over_and_its_holder_is_lost(url):
    # a holder that stopped renewing (killed, or frozen): no heartbeat
    frozen = ObjectLease(url, lease_s=2.0, renew_s=0.1).acquire(heartbeat=False)
    with pytest.raises(WriterBusyError, match=f'"pid": {os.getpid()}'):
        ObjectLease(url, **SHORT).acquire()
    taker = ObjectLease(url, **SHORT).acquire(wait_s=60)
    try:
        assert taker.epoch == frozen.epoch + 1
        with pytest.raises(WriterLostError, match="lease was lost"):
            frozen.check()
        taker.check()
    finally:
        taker.release()


def test_a_holder_that_did_not_renew_in_time_counts_itself_lost(url):
    lease = ObjectLease(url, lease_s=0.5, renew_s=0.1).acquire(heartbeat=False)
    lease.check()
    time.sleep(0.5)
    with pytest.raises(WriterLostError, match="not renewed within"):
        lease.check()
    with pytest.raises(WriterLostError):
        lease.renew()


def _race(takers: list[ObjectLease]) -> tuple[list[ObjectLease], list[str]]:
    """Lets ``takers`` acquire at once, each in its thread: the winners and the refusals."""
    start = threading.Barrier(len(takers))
    won, refused = [], []

    def take(lease: ObjectLease) -> None:
        start.wait()
        try:
            won.append(lease.acquire(heartbeat=False))
        except WriterBusyError as error:
            refused.append(str(error))

    threads = [threading.Thread(target=take, args=(t,)) for t in takers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return won, refused


@pytest.mark.parametrize("stale", [False, True], ids=["absent", "expired"])
def test_of_racing_takers_exactly_one_wins(url, stale):
    if stale:  # a holder that stopped renewing; later rounds: the last round's winner
        ObjectLease(url, lease_s=0.3, renew_s=0.1).acquire(heartbeat=False)
    for _ in range(3):
        if stale:
            _stale(ObjectLease(url, lease_s=0.3, renew_s=0.1))
        won, refused = _race([ObjectLease(url, lease_s=0.3, renew_s=0.1) for _ in range(8)])
        assert len(won) == 1 and len(refused) == 7, refused
        assert all("being written by another process" in r for r in refused)
        (winner,) = won
        top = max(_records(winner))
        assert _records(winner)[top]["token"] == winner.token
        if not stale:
            winner.release()


def test_renewals_keep_the_lease(url):
    holder = ObjectLease(url, **SHORT).acquire()
    try:
        first = _records(holder)[f"epoch-{holder.epoch:012d}"]["expires"]
        for _ in range(25):  # well past the lease of one second
            time.sleep(0.1)
            holder.check()
        assert holder.lost is None
        assert _records(holder)[f"epoch-{holder.epoch:012d}"]["expires"] > first
        with pytest.raises(WriterBusyError):
            ObjectLease(url, **SHORT).acquire()
    finally:
        holder.release()


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_lost_lease_stops_the_writer_before_its_next_write(url, how):
    written = []
    with pytest.raises(WriterLostError, match=f"lease was lost .*{how}"):
        # no renewal during the test: an overwrite by another hand racing a renewal could be
        # overwritten back (records are only ever written by their own writer)
        with writer_lock(url, lease_s=60.0, renew_s=20.0) as held:
            for unit in range(10):
                held.check()
                written.append(unit)
                if unit == 2:  # another hand removes or overwrites the record
                    path = _record_path(held)
                    if how == "removed":
                        held.fs.rm_file(path)
                    else:
                        other = json.loads(held.fs.cat_file(path)) | {"token": "another"}
                        held.fs.pipe_file(path, json.dumps(other).encode())
    assert written == [0, 1, 2]


def test_the_heartbeat_notices_a_lost_lease(url):
    holder = ObjectLease(url, **SHORT).acquire()
    # a successor's record (as if it had taken the lease over)
    path = _record_path(holder)
    successor = json.loads(holder.fs.cat_file(path)) | {"token": "another", "pid": 1}
    after = path.replace(f"{holder.epoch:012d}", f"{holder.epoch + 1:012d}")
    holder.fs.pipe_file(after, json.dumps(successor).encode())
    for _ in range(200):
        if holder.lost is not None:
            break
        time.sleep(0.05)
    assert holder.lost is not None and f"taken as epoch {holder.epoch + 1}" in holder.lost
    holder.release()
    # the successor's record is left as it was written
    assert json.loads(holder.fs.cat_file(after)) == successor


def test_release_leaves_a_successors_lease_alone(url):
    first = ObjectLease(url, lease_s=0.5, renew_s=0.1).acquire(heartbeat=False)
    _stale(first)
    second = ObjectLease(url, **SHORT).acquire()
    try:
        first.release()
        records = _records(second)
        assert list(records) == [f"epoch-{second.epoch:012d}"]
        assert records[f"epoch-{second.epoch:012d}"]["token"] == second.token
        assert not records[f"epoch-{second.epoch:012d}"]["released"]
        second.check()
    finally:
        second.release()


def test_a_record_that_is_not_ours_holds_until_it_is_a_lease_old(url):
    probe = ObjectLease(url, lease_s=0.5, renew_s=0.1)
    probe.fs.makedirs(probe.folder, exist_ok=True)
    probe.fs.pipe_file(f"{probe.folder}/epoch-000000000007", b"not json")
    with pytest.raises(WriterBusyError, match="not a lease record"):
        probe.acquire()
    lease = ObjectLease(url, lease_s=0.5, renew_s=0.1).acquire(wait_s=60, heartbeat=False)
    assert lease.epoch == 8
    lease.release()


def test_a_killed_holder_is_taken_over(tmp_path):
    url = f"file://{tmp_path}/daily.zarr"
    code = (
        "import sys, time\n"
        "from appa.files import ObjectLease\n"
        f"ObjectLease({url!r}, lease_s=1.0, renew_s=0.1).acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(WriterBusyError, match=f'"pid": {child.pid}'):
            ObjectLease(url, **SHORT).acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    lease = ObjectLease(url, **SHORT).acquire(wait_s=60)
    lease.check()
    lease.release()


def test_a_store_without_a_create_if_absent_is_refused():
    with pytest.raises(WriterBusyError, match="no one-writer lease on http"):
        ObjectLease("http://example.invalid/daily.zarr")


def test_a_renewal_slower_than_the_lease_is_refused():
    from appa.jobs.daily import DailyConfig

    with pytest.raises(ValueError, match="renewal interval"):
        ObjectLease("memory://x/daily.zarr", lease_s=1.0, renew_s=0.9)
    with pytest.raises(ValueError, match="lease_renew_s"):
        DailyConfig.model_validate(
            {"observations": [], "first_day": "2003-03-01", "output": "memory://x/a.zarr",
             "lease_s": 30, "lease_renew_s": 30}
        )  # fmt: skip
