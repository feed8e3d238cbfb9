"""Power loss: every frame acknowledged to the board, the broker or the station survives a power
cut that discards whatever was not synced -- the edge outbox, the relay archive and its state.

Each test plays three write-and-cut rounds on a powerfs disk (tests/powerloss/harness.py) with
the stores unmodified, and a final reopen; docs/testing.md, "Power-loss tests".  The mutant cases
run the same harness on a store with one sync removed and require it to report lost data: the
harness itself cannot pass by not looking.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tests.powerloss import harness
from tests.powerloss.scenarios import MUTANTS


@pytest.fixture(scope="module")
def relay_keys(tmp_path_factory) -> tuple[str, ...]:
    ks, tr = harness.make_keys(tmp_path_factory.mktemp("powerloss-keys"))
    return ("--keystore", str(ks), "--trust", str(tr))


def test_outbox_keeps_every_frame_and_ack_point_acknowledged_to_the_board(powerfs_works, tmp_path):
    result = harness.run(tmp_path, "outbox", rounds=3)
    assert result.checked == 4 and len(result.cuts) == 3 and result.acks >= 3 * 15
    # The cuts fell while SQLite was working, with data in flight that the cut discarded.
    assert all(c["fsync"] > 0 for c in result.cuts)


def test_outbox_cut_right_after_an_acknack_deletion_is_not_reported_as_loss(powerfs_works, tmp_path):
    """The cut falls the instant the outbox's deletion of what the relay acknowledged returns
    (the writer stops inside the call): the frames are durably gone, and that is no loss -- the
    relay has them.  The writer must have reported the acknack *before* asking the outbox to
    delete; reported after, this cut reports "acknowledged frame ... lost" (it once did, rarely,
    on a loaded machine: docs/testing.md, "Power-loss tests")."""
    result = harness.run(tmp_path, "outbox", rounds=1, extra=("--hold-after-acknack",), cut_at_hold=True)
    assert result.checked == 2 and len(result.cuts) == 1
    hi = result.ledger.released_through
    held = {seq for _, seq, _ in result.seen[-1]["frames"]}
    # The window is real: the deletion was durable before the cut ...
    assert hi > 0 and not {s for s in held if s <= hi}
    # ... and the frames above it, acknowledged to the board, are still required and held.
    assert result.ledger.frames and set(result.ledger.frames) <= held and min(result.ledger.frames) > hi


def test_relay_keeps_every_frame_acknowledged_to_the_broker_or_the_station(powerfs_works, tmp_path, relay_keys):
    result = harness.run(tmp_path, "relay", rounds=3, extra=relay_keys)
    assert result.checked == 4 and len(result.cuts) == 3 and result.acks >= 3 * 15
    assert all(c["fsync"] > 0 for c in result.cuts)
    # The check has something to lose: frames archived and acknacked, not only quarantined (frames
    # outside the relay's time window once were, and every state mutant went unnoticed).
    assert len(result.ledger.frames) >= 20 and len(result.ledger.acknacked) >= 10


@pytest.fixture(scope="module")
def pg_cluster():
    """A private PostgreSQL (not on the powerfs disk: its own durability is not under test)."""
    from ims_station.pglocal import PgCluster
    from tests.conftest import need_postgresql

    need_postgresql()
    cluster = PgCluster(fast=True).start()
    try:
        yield cluster, cluster.create_database("powerloss")
    finally:
        cluster.remove()


def pg_args(pg_cluster, tmp_path: Path) -> tuple[str, ...]:
    import hashlib

    return ("--dsn", pg_cluster[1], "--schema", "p" + hashlib.blake2b(str(tmp_path).encode(), digest_size=6).hexdigest())


def test_relay_on_postgresql_keeps_every_frame_acknowledged(powerfs_works, tmp_path, relay_keys, pg_cluster):
    """The PostgreSQL backend: its content-addressed objects on the powerfs disk, its index in
    PostgreSQL; a row committed there must never name bytes the cut took."""
    result = harness.run(tmp_path, "relay-pg", rounds=3, extra=(*relay_keys, *pg_args(pg_cluster, tmp_path)))
    assert result.checked == 4 and len(result.cuts) == 3 and result.acks >= 3 * 15
    assert all(c["fsync"] > 0 for c in result.cuts)
    assert len(result.ledger.frames) >= 20 and len(result.ledger.acknacked) >= 10


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_the_harness_detects_a_store_that_does_not_sync(powerfs_works, tmp_path, relay_keys, mutant, request):
    scenario = "outbox" if mutant.startswith("outbox") else "relay-pg" if mutant.startswith("pg-") else "relay"
    extra = () if scenario == "outbox" else relay_keys
    if scenario == "relay-pg":
        extra = (*extra, *pg_args(request.getfixturevalue("pg_cluster"), tmp_path))
    with pytest.raises(harness.DataLoss) as err:
        harness.run(tmp_path, scenario, rounds=2, mutant=mutant, cut_after=(5, 20), extra=extra)
    assert "after cut 1" in str(err.value) or "after cut 2" in str(err.value)


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_every_mutant_still_matches_its_source_line(mutant):
    """A mutant whose line was rewritten would make its test fail for the wrong reason."""
    module, old, _ = MUTANTS[mutant]
    src = Path(importlib.import_module(module).__file__).read_text()
    assert src.count(old) == 1, f"{mutant}: update MUTANTS in tests/powerloss/scenarios.py"
