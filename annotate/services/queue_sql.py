"""The SQL of the annotation hot paths (next item, submit), for PostgreSQL and SQLite.

On PostgreSQL the common next and the common answer are one autocommitted statement each;
rarer paths, and SQLite (which has no data-modifying CTEs), take a few statements in the
caller's transaction. The locking clauses apply on PostgreSQL (SQLite serialises writers
and has none). Results come back as light model instances carrying only what the caller
uses.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone

from django.contrib.auth import get_user_model
from django.db import connection
from django.utils.dateparse import parse_datetime

from annotate.models import Assignment, Judgment, Prompt, Study, StudyItem, StudyMembership

ITEM = StudyItem._meta.db_table
LEASE = Assignment._meta.db_table
JUDGMENT = Judgment._meta.db_table
SKIP = "annotate_skip"
PROMPT = Prompt._meta.db_table
MEMBERSHIP = StudyMembership._meta.db_table
USER = get_user_model()._meta.db_table
_UUID_FIELD = StudyItem._meta.get_field("public_id")


def takes_locks() -> bool:
    return connection.features.has_select_for_update_skip_locked


def uuid_param(value) -> object:
    """A UUID as this database stores it (raises on a value that is not a UUID)."""
    return _UUID_FIELD.get_db_prep_value(value, connection)


def uuid_or_none(value) -> object | None:
    try:
        return uuid_param(value)
    except Exception:  # not a UUID: it names nothing
        return None


def _uuid_out(value) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _dt(value: datetime):
    return connection.ops.adapt_datetimefield_value(value)


def _dt_out(value) -> datetime:
    if isinstance(value, str):
        value = parse_datetime(value)
    return value if value.tzinfo else value.replace(tzinfo=dt_timezone.utc)


def _bool_out(value) -> bool | None:
    return None if value is None else bool(value)


def from_db(model, values: dict):
    """An instance from the named values; the fields not given are deferred (they load on
    access, never silently default). Model.from_db wants values in field order: done here."""
    names = [f.attname for f in model._meta.concrete_fields if f.attname in values]
    if len(names) != len(values):
        raise ValueError(f"not fields of {model.__name__}: {sorted(set(values) - set(names))}")
    return model.from_db(connection.alias, names, [values[n] for n in names])


def _fetchone(sql: str, params: list):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def _item(item_id, public_id, judgment_count, prompt_id=None, prompt_text=None) -> StudyItem:
    # from_db: the fields not read here are deferred and load on access, never silently default.
    item = from_db(StudyItem, {"id": item_id, "public_id": _uuid_out(public_id), "judgment_count": judgment_count})
    if prompt_id is not None:
        item.prompt = from_db(Prompt, {"id": prompt_id, "text": prompt_text})
    return item


def _lease(lease_id, item: StudyItem, annotator, a_on_left, leased_at, expires_at) -> Assignment:
    lease = from_db(Assignment, {
        "id": lease_id, "item_id": item.id, "annotator_id": annotator.pk, "state": Assignment.State.ACTIVE,
        "a_on_left": _bool_out(a_on_left), "leased_at": _dt_out(leased_at), "expires_at": _dt_out(expires_at)})
    lease.item = item
    lease.annotator = annotator
    return lease


_MEMBERSHIP_FIELDS = ["id", "study_id", "annotator_id", "is_paused", "paused_reason", "answered_count",
                      "skipped_count", "cursor_rank", "completion_code"]
_STUDY_FIELDS = ["id", "public_id", "name", "kind", "status", "question", "rating_scale", "redundancy",
                 "lease_seconds", "items_per_annotator", "item_order", "item_count", "completion_code",
                 "gold_min_accuracy", "gold_min_answers", "max_open_leases"]


MEMBERSHIP_COLUMNS = ", ".join([f"m.{f}" for f in _MEMBERSHIP_FIELDS] + [f"s.{f}" for f in _STUDY_FIELDS])
MEMBERSHIP_JOIN = f"{MEMBERSHIP} m JOIN {Study._meta.db_table} s ON s.id = m.study_id"


# PostgreSQL keeps a generic plan per prepared statement for the connection's life. One made
# while a study's tables were nearly empty (a new deployment) chooses sequential scans that
# get slower as the tables grow, and without autovacuum's ANALYZE nothing replaces it: the
# hot path drops its prepared statements now and then so they are planned again as they are.
PLANS_MAX_AGE_S = 30.0


def plans_refresh_now_and_then() -> None:
    if connection.vendor != "postgresql" or connection.connection is None or connection.in_atomic_block:
        return
    raw, born = getattr(connection, "_calibra_plans", (None, 0.0))
    now = time.monotonic()
    if raw is not connection.connection:
        connection._calibra_plans = (connection.connection, now)
    elif now - born >= PLANS_MAX_AGE_S:
        with connection.cursor() as cursor:
            cursor.execute("DEALLOCATE ALL")  # psycopg sees it and forgets its own names too
        connection._calibra_plans = (raw, now)


def membership_from_row(values, annotator) -> StudyMembership | None:
    """A membership with its study from the MEMBERSHIP_COLUMNS of a row (None when absent)."""
    if values[0] is None:
        return None
    m = dict(zip(_MEMBERSHIP_FIELDS, values[:len(_MEMBERSHIP_FIELDS)]))
    st = dict(zip(_STUDY_FIELDS, values[len(_MEMBERSHIP_FIELDS):]))
    m["is_paused"] = bool(m["is_paused"])
    st["public_id"] = _uuid_out(st["public_id"])
    membership = from_db(StudyMembership, m)
    membership.study = from_db(Study, st)
    membership.annotator = annotator
    return membership


def membership_with_study(*, annotator, study_public_id) -> StudyMembership | None:
    """The annotator's membership of the study, with the study, in one statement."""
    if (key := uuid_or_none(study_public_id)) is None:
        return None
    row = _fetchone(f"SELECT {MEMBERSHIP_COLUMNS} FROM {MEMBERSHIP_JOIN}"
                    f" WHERE s.public_id = %s AND m.annotator_id = %s", [key, annotator.pk])
    return None if row is None else membership_from_row(row, annotator)


def _held_sql(exclude: list) -> tuple[str, dict]:
    """The annotator's oldest unsettled lease in the study (lapsed or not: its slot is still
    theirs until released), on an item not in ``exclude``."""
    not_in = ""
    params: dict = {}
    if exclude:
        names = [f"x{n}" for n in range(len(exclude))]
        not_in = f" AND i.public_id NOT IN ({', '.join(f'%({n})s' for n in names)})"
        params = {n: uuid_param(e) for n, e in zip(names, exclude)}
    return (f"SELECT a.id AS lease_id, a.a_on_left, a.leased_at, a.expires_at, i.id, i.public_id,"
            f" i.judgment_count, p.id AS prompt_id, p.text, i.rank"
            f" FROM {LEASE} a JOIN {ITEM} i ON i.id = a.item_id JOIN {PROMPT} p ON p.id = i.prompt_id"
            f" WHERE a.annotator_id = %(annotator)s AND a.state = 'active'"
            f" AND i.study_id = %(study)s{not_in} ORDER BY a.leased_at LIMIT 1"), params


# The lease columns of a candidate row (none), typed to match the held lease's in a UNION.
_NO_LEASE = ("CAST(NULL AS bigint) AS lease_id, CAST(NULL AS boolean) AS a_on_left,"
             " CAST(NULL AS timestamp with time zone) AS leased_at, CAST(NULL AS timestamp with time zone) AS expires_at")


def _candidate_sql(*, band: int, after_start: bool, passed_over: list[int]) -> tuple[str, dict]:
    """One range of the walk: the first item by rank from the annotator's starting point (or
    before it) among the items with ``band`` slots taken, that the annotator has not
    answered, skipped or leased. The equality on ``taken`` makes the rank range a bounded
    scan of the queue index; full items are in no range. The annotator's own rows are looked
    up per candidate (subqueries with LIMIT, which the planner keeps as index probes rather
    than joins over everything the annotator has answered).

    The row lock skips rows other requests hold; a row changed since this statement began is
    re-read and its ``taken`` checked again before it is locked (PostgreSQL's recheck), so a
    slot counted here is a slot free now.
    """
    names = [f"p{n}" for n in range(len(passed_over))]
    skip_passed = f" AND i.id NOT IN ({', '.join(f'%({n})s' for n in names)})" if passed_over else ""
    lock = " FOR UPDATE OF i SKIP LOCKED" if takes_locks() else ""
    return (f"SELECT {_NO_LEASE}, i.id, i.public_id, i.judgment_count, p.id AS prompt_id, p.text, i.rank"
            f" FROM {ITEM} i JOIN {PROMPT} p ON p.id = i.prompt_id"
            f" WHERE i.study_id = %(study)s AND i.taken = {int(band)}"
            f" AND i.rank {'>=' if after_start else '<'} %(start)s{skip_passed}"
            f" AND NOT EXISTS (SELECT 1 FROM {JUDGMENT} j WHERE j.item_id = i.id AND j.annotator_id = %(annotator)s)"
            f" AND NOT EXISTS (SELECT 1 FROM {LEASE} m WHERE m.item_id = i.id AND m.annotator_id = %(annotator)s"
            f"                 AND m.state = 'active')"
            f" AND NOT EXISTS (SELECT 1 FROM {SKIP} k WHERE k.item_id = i.id AND k.annotator_id = %(annotator)s)"
            f" ORDER BY i.rank LIMIT 1{lock}"), dict(zip(names, passed_over))


def _pick_sql(*, study, annotator, now, exclude, closest, start, passed_over, with_held, new) -> tuple[str, dict]:
    """The held lease, or else the best candidate, as a chain of parts tried in order until
    one gives a row: an outer LIMIT 1 stops the rest from running. Never a scan or sort of
    the study.

    Closest to completion: the bands from most slots taken to fewest, each from the
    annotator's start and then before it (wrapping around); only the chosen item is locked.
    Random order: by rank from the annotator's start over all bands (the first of each
    band's range, merged), then before it; the other bands' rows stay locked only for the
    rest of this statement.
    """
    params: dict = {"study": study.pk, "annotator": annotator.pk, "now": _dt(now), "start": start,
                    "redundancy": study.redundancy}
    parts = []
    if with_held:
        held_sql, held_params = _held_sql(exclude)
        params |= held_params
        parts.append(f"SELECT * FROM ({held_sql}) h")

    def ranges(bands, after_start):
        out = []
        for band in bands:
            sql, passed = _candidate_sql(band=band, after_start=after_start, passed_over=passed_over)
            params.update(passed)
            out.append(f"SELECT * FROM ({sql}) r{len(parts)}_{len(out)}")
        return out

    bands = range(study.redundancy - 1, -1, -1) if new else ()
    if closest:
        for band in bands:
            parts += ranges([band], True) + ranges([band], False)
    elif bands:
        for after_start in (True, False):
            parts.append(f"SELECT * FROM ({' UNION ALL '.join(ranges(bands, after_start))}"
                         f" ORDER BY rank LIMIT 1) m{len(parts)}")
    return f"{' UNION ALL '.join(parts)} LIMIT 1", params


def lease_held_or_new(*, study, annotator, now: datetime, expires_at: datetime, a_on_left, exclude: list,
                      closest: bool, start: int, passed_over: list[int], with_held: bool = True, new: bool = True
                      ) -> tuple[Assignment | None, int | None]:
    """The annotator's held lease (renewed when it has lapsed), or a new lease on the best
    candidate, which takes one of its slots. Returns (lease, None), or (None, item id) when
    the candidate could not be leased (a concurrent request of the same annotator leased it:
    pass it over and ask again), or (None, None) when nothing is left. ``new=False`` looks
    for the held lease only.

    On PostgreSQL this is one statement, committed without waiting for the WAL flush: a lease
    lost in a crash just returns its item to the pool; judgments stay durable. On SQLite,
    whose writers are serialised, it is three statements in the caller's transaction.
    """
    if not (with_held or new):
        return None, None
    pick, params = _pick_sql(study=study, annotator=annotator, now=now, exclude=exclude, closest=closest,
                             start=start, passed_over=passed_over, with_held=with_held, new=new)
    params |= {"a_on_left": a_on_left, "expires": _dt(expires_at)}
    if connection.vendor == "postgresql":
        row = _fetchone(
            f"WITH pick AS ({pick}),"
            f" lease AS (INSERT INTO {LEASE} (item_id, annotator_id, state, a_on_left, leased_at, expires_at)"
            f"  SELECT id, %(annotator)s, 'active', %(a_on_left)s, %(now)s, %(expires)s FROM pick"
            f"  WHERE lease_id IS NULL ON CONFLICT (item_id, annotator_id) WHERE state = 'active' DO NOTHING"
            f"  RETURNING id, item_id),"
            f" took AS (UPDATE {ITEM} SET taken = taken + 1 WHERE id IN (SELECT item_id FROM lease))"
            f" SELECT pick.*, (SELECT id FROM lease), set_config('synchronous_commit', 'off', true) FROM pick",
            params)
        if row is None:
            return None, None
        new_lease_id = row[10]
    else:
        row = _fetchone(pick, params)
        if row is None:
            return None, None
        new_lease_id = None
        if row[0] is None:
            with connection.cursor() as cursor:
                cursor.execute(f"UPDATE {ITEM} SET taken = taken + 1 WHERE id = %s", [row[4]])
                cursor.execute(
                    f"INSERT INTO {LEASE} (item_id, annotator_id, state, a_on_left, leased_at, expires_at)"
                    f" VALUES (%s, %s, 'active', %s, %s, %s) RETURNING id",
                    [row[4], annotator.pk, a_on_left, _dt(now), _dt(expires_at)])
                new_lease_id = cursor.fetchone()[0]
    item = _item(*row[4:9])
    if row[0] is not None:  # held
        lease = _lease(row[0], item, annotator, row[1], row[2], row[3])
        if lease.expires_at <= now and not lease_renew(lease=lease, now=now, expires_at=expires_at):
            return None, item.id  # released or answered since it was read: not held any more
        return lease, None
    if new_lease_id is None:
        return None, item.id
    return _lease(new_lease_id, item, annotator, a_on_left, now, expires_at), None


def lease_renew(*, lease: Assignment, now: datetime, expires_at: datetime) -> bool:
    """Whether the lease, still unsettled, was renewed (a release or an answer may have come
    between reading it and this)."""
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {LEASE} SET leased_at = %s, expires_at = %s WHERE id = %s AND state = 'active'",
                       [_dt(now), _dt(expires_at), lease.id])
        if cursor.rowcount != 1:
            return False
    lease.leased_at, lease.expires_at = now, expires_at
    return True


def leases_release_lapsed(*, now: datetime, study_id: int | None = None, limit: int = 1000) -> int:
    """Release lapsed leases, and those of deactivated accounts (at most ``limit``; found with
    the partial index of unsettled leases): each gives its slot back to its item.
    Returns how many. Rows other requests hold are left for the next round (SKIP LOCKED), so
    this never waits on, or deadlocks with, an answer being stored."""
    params: dict = {"now": _dt(now), "limit": limit}
    in_study = ""
    if study_id is not None:
        in_study, params["study"] = " AND i.study_id = %(study)s", study_id
    # A deactivated account's leases count as lapsed: whoever deactivates an annotator, their
    # slots come back with the next release.
    lapsed = (f"SELECT a.id, a.item_id FROM {LEASE} a JOIN {ITEM} i ON i.id = a.item_id"
              f" WHERE a.state = 'active' AND (a.expires_at <= %(now)s"
              f" OR a.annotator_id IN (SELECT id FROM {USER} WHERE NOT is_active)){in_study}"
              f" ORDER BY a.id LIMIT %(limit)s")
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"WITH lapsed AS ({lapsed} FOR UPDATE OF a, i SKIP LOCKED),"
                f" released AS (UPDATE {LEASE} SET state = 'expired' WHERE id IN (SELECT id FROM lapsed)"
                f"  RETURNING item_id),"
                f" freed AS (UPDATE {ITEM} i SET taken = i.taken - r.n"
                f"  FROM (SELECT item_id, COUNT(*) AS n FROM released GROUP BY item_id) r WHERE i.id = r.item_id)"
                f" SELECT COUNT(*) FROM released", params)
            return cursor.fetchone()[0]
        cursor.execute(lapsed, params)
        rows = cursor.fetchall()
        for lease_id, item_id in rows:
            cursor.execute(f"UPDATE {LEASE} SET state = 'expired' WHERE id = %s", [lease_id])
            cursor.execute(f"UPDATE {ITEM} SET taken = taken - 1 WHERE id = %s", [item_id])
        return len(rows)


def open_lease_count(*, study, annotator) -> int:
    return _fetchone(
        f"SELECT COUNT(*) FROM {LEASE} a JOIN {ITEM} i ON i.id = a.item_id"
        f" WHERE a.annotator_id = %s AND a.state = 'active' AND i.study_id = %s", [annotator.pk, study.pk])[0]


def membership_lock(*, membership_id: int) -> bool:
    """Lock the annotator's membership row until the transaction ends; returns whether they are
    paused now. Every write of one annotator's answers takes it after the item's lock (never
    before: one order, no deadlock), so their concurrent requests settle one after another."""
    lock = " FOR UPDATE" if takes_locks() else ""
    return bool(_fetchone(f"SELECT is_paused FROM {MEMBERSHIP} WHERE id = %s{lock}", [membership_id])[0])


# The first key of the advisory locks that serialise one annotator's next-item requests.
_NEXT_LOCK_CLASS = 0x4E58  # "NX"


def next_requests_serialise(*, membership_id: int) -> None:
    """Until the transaction ends, this annotator's other next-item requests in the study wait:
    each then sees the leases the one before it made (its held lease comes back instead of a new
    one), so a cap on open leases holds however many requests race. An advisory lock, not the
    membership's row, which answers lock after items: the two never wait on each other."""
    if connection.vendor == "postgresql":
        _fetchone("SELECT pg_advisory_xact_lock(%s, %s)", [_NEXT_LOCK_CLASS, membership_id])


def item_lock(*, item_id: int) -> None:
    if takes_locks():
        _fetchone(f"SELECT id FROM {ITEM} WHERE id = %s FOR UPDATE", [item_id])


@dataclass(frozen=True)
class LockedItem:
    id: int
    judgment_count: int
    taken: int
    is_gold: bool
    gold_answer: str


@dataclass(frozen=True)
class AnswerLease:
    id: int
    a_on_left: bool | None
    state: str
    latest: bool  # no later lease of the annotator's on the item: the display it made is current
    taken_back_client_id: uuid.UUID | None

    @property
    def unsettled(self) -> bool:
        return self.state == Assignment.State.ACTIVE


def item_lock_with_lease(*, study, item_public_id, annotator, lease_id) -> tuple[LockedItem | None, AnswerLease | None]:
    """The item, locked, and the annotator's lease ``lease_id`` on it (None when no lease of
    theirs on this item has that id).

    Two statements: the lease is read after the item's lock is held, so that its state is the
    latest (a lease released just before the lock was taken is seen as released), and no
    release can change it before this transaction ends (releasing takes the item's lock too).
    """
    if (key := uuid_or_none(item_public_id)) is None:
        return None, None
    lock = " FOR UPDATE" if takes_locks() else ""
    row = _fetchone(f"SELECT id, judgment_count, taken, is_gold, gold_answer FROM {ITEM}"
                    f" WHERE study_id = %s AND public_id = %s{lock}", [study.pk, key])
    if row is None:
        return None, None
    item = LockedItem(row[0], row[1], row[2], bool(row[3]), row[4])
    lease = _fetchone(
        f"SELECT id, a_on_left, state, NOT EXISTS (SELECT 1 FROM {LEASE} n WHERE n.item_id = a.item_id"
        f" AND n.annotator_id = a.annotator_id AND n.id > a.id), taken_back_client_id FROM {LEASE} a"
        f" WHERE a.id = %s AND a.item_id = %s AND a.annotator_id = %s",
        [lease_id, item.id, annotator.pk]) if isinstance(lease_id, int) else None
    if lease is None:
        return item, None
    taken_back = None if lease[4] is None else _uuid_out(lease[4])
    return item, AnswerLease(lease[0], _bool_out(lease[1]), lease[2], bool(lease[3]), taken_back)


def judgment_insert(*, item_id: int, annotator, assignment_id: int, client_id, choice: str, score, reason: str,
                    a_on_left, time_spent_ms, gold_correct, now: datetime) -> int | None:
    """The new judgment's id, or None when a unique constraint (client id, or one judgment
    per annotator and item) already holds it."""
    row = _fetchone(
        f"INSERT INTO {JUDGMENT} (item_id, annotator_id, assignment_id, client_id, created_at, choice, score,"
        f" reason, a_on_left, time_spent_ms, gold_correct, is_flagged, flag_reason)"
        f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, '') ON CONFLICT DO NOTHING RETURNING id",
        [item_id, annotator.pk, assignment_id, uuid_param(client_id), _dt(now), choice, score, reason, a_on_left,
         time_spent_ms, gold_correct, False])
    return None if row is None else row[0]


def _member_answered_sql(*, rank: str, gold: str, correct: str) -> str:
    """The annotator's counts after an answer, its gold grade included whatever the item:
    ``gold`` and ``correct`` are 0/1 expressions (0 off gold), so that gold and other answers do
    the same work and cannot be told apart by their timing. Crossing below the study's gold
    accuracy pauses the annotator in the same statement."""
    answered, right = f"(gold_answered + {gold})", f"(gold_correct + {correct})"
    fails = (f"{gold} > 0 AND NOT is_paused AND {answered} >= %(gold_min)s"
             f" AND CAST({right} AS DOUBLE PRECISION) / NULLIF({answered}, 0) < %(gold_accuracy)s")
    return (f"UPDATE {MEMBERSHIP} SET answered_count = answered_count + 1, cursor_rank = {rank},"
            f" gold_answered = {answered}, gold_correct = {right},"
            f" is_paused = CASE WHEN {fails} THEN TRUE ELSE is_paused END,"
            f" paused_reason = CASE WHEN {fails} THEN %(gold_prefix)s || ' ' || CAST({right} AS TEXT) || '/'"
            f" || CAST({answered} AS TEXT) || ' is below ' || %(gold_percent)s ELSE paused_reason END")


# The start of the reason the gold check writes; the annotator is not told it (it would say
# which items are gold, and how they did on them): only a researcher's own reason is shown.
GOLD_PAUSE_PREFIX = "gold accuracy"


def _gold_params(study) -> dict:
    return {"gold_min": study.gold_min_answers, "gold_accuracy": study.gold_min_accuracy,
            "gold_prefix": GOLD_PAUSE_PREFIX, "gold_percent": f"{study.gold_min_accuracy:.0%}"}


def answer_settle(*, study, lease_id: int, item_id: int, membership_id: int, takes_slot: bool,
                  gold: bool, correct: bool) -> tuple[int, int, bool]:
    """Close the lease as answered, count the judgment on the item (and a slot, when its lease
    had been released) and on the annotator, gold graded; returns the annotator's (answered,
    skipped, paused)."""
    lease_sql = f"UPDATE {LEASE} SET state = 'answered' WHERE id = %(lease)s"
    item_sql = (f"UPDATE {ITEM} SET judgment_count = judgment_count + 1,"
                f" taken = taken + {1 if takes_slot else 0} WHERE id = %(item)s")
    member_sql = (_member_answered_sql(rank=f"(SELECT rank FROM {ITEM} WHERE id = %(item)s)",
                                       gold="%(gold)s", correct="%(correct)s")
                  + " WHERE id = %(membership)s RETURNING answered_count, skipped_count, is_paused")
    params = {"lease": lease_id, "item": item_id, "membership": membership_id, "gold": int(gold),
              "correct": int(correct), **_gold_params(study)}
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":  # one round trip
            cursor.execute(f"WITH l AS ({lease_sql}), i AS ({item_sql}) {member_sql}", params)
        else:
            cursor.execute(lease_sql, params)
            cursor.execute(item_sql, params)
            cursor.execute(member_sql, params)
        answered, skipped, paused = cursor.fetchone()
    return answered, skipped, bool(paused)


def answer_in_one_statement(*, study, item_public_id, lease_id: int, annotator, membership_id: int, client_id,
                            choice: str, score, reason: str, time_spent_ms, now: datetime,
                            answer: str) -> tuple[int, int, int, bool] | None:
    """The common answer, on PostgreSQL, in one autocommitted statement: under the annotator's
    unsettled lease ``lease_id`` on the item (its slot is theirs, lapsed or not), a new judgment
    with that lease's sides, gold graded (``answer`` is the answer in item terms for choices
    without a side), the lease settled, the item's and the annotator's counts raised. Returns
    (judgment id, answered, skipped, paused), or None when any of that does not hold (not that
    lease, a client id or item already answered, SQLite): then nothing was written, and the
    caller takes the general path.

    Item and lease are both locked, so a lease released meanwhile is re-read as released
    (and the statement writes nothing) rather than answered with a slot it no longer has.
    """
    if connection.vendor != "postgresql" or (key := uuid_or_none(item_public_id)) is None:
        return None
    sided = choice in ("left", "right")
    row = _fetchone(
        f"WITH it AS (SELECT i.id AS item_id, i.rank, a.id AS lease_id, a.a_on_left, i.is_gold,"
        f"  CASE WHEN i.is_gold THEN (CASE WHEN %(sided)s THEN (CASE WHEN %(left)s = a.a_on_left THEN 'a'"
        f"  ELSE 'b' END) ELSE %(answer)s END) = i.gold_answer END AS correct"
        f"  FROM {ITEM} i JOIN {LEASE} a ON a.item_id = i.id AND a.id = %(lease)s"
        f"  AND a.annotator_id = %(annotator)s AND a.state = 'active'"
        f"  AND a.taken_back_client_id IS DISTINCT FROM %(client)s"
        f"  WHERE i.study_id = %(study)s AND i.public_id = %(item)s FOR UPDATE OF i, a),"
        f" ins AS (INSERT INTO {JUDGMENT} (item_id, annotator_id, assignment_id, client_id, created_at, choice,"
        f"  score, reason, a_on_left, time_spent_ms, gold_correct, is_flagged, flag_reason)"
        f"  SELECT item_id, %(annotator)s, lease_id, %(client)s, %(now)s, %(choice)s, %(score)s, %(reason)s,"
        f"  a_on_left, %(spent)s, correct, FALSE, '' FROM it ON CONFLICT DO NOTHING"
        f"  RETURNING id, item_id, assignment_id),"
        f" l AS (UPDATE {LEASE} SET state = 'answered' WHERE id IN (SELECT assignment_id FROM ins)),"
        f" c AS (UPDATE {ITEM} SET judgment_count = judgment_count + 1 WHERE id IN (SELECT item_id FROM ins)) "
        + _member_answered_sql(rank="(SELECT rank FROM it)",
                               gold="(SELECT CASE WHEN is_gold THEN 1 ELSE 0 END FROM it)",
                               correct="(SELECT CASE WHEN correct THEN 1 ELSE 0 END FROM it)")
        + " WHERE id = %(membership)s AND EXISTS (SELECT 1 FROM ins)"
          " RETURNING (SELECT id FROM ins), answered_count, skipped_count, is_paused",
        {"annotator": annotator.pk, "study": study.pk, "item": key, "lease": lease_id, "client": uuid_param(client_id),
         "now": _dt(now), "choice": choice, "score": score, "reason": reason, "spent": time_spent_ms,
         "membership": membership_id, "sided": sided, "left": choice == "left", "answer": answer,
         **_gold_params(study)})
    return None if row is None else (row[0], row[1], row[2], bool(row[3]))


def answer_take_back(*, judgment_id: int, client_id, item_id: int, lease_id: int, membership_id: int,
                     gold: bool, correct: bool) -> bool:
    """Delete a judgment and undo its counts (its gold grade included, the same work for any
    item), its lease open again and remembering the answer's client id; False when it was gone
    already."""
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {JUDGMENT} WHERE id = %s", [judgment_id])
        if cursor.rowcount != 1:
            return False
        cursor.execute(f"UPDATE {ITEM} SET judgment_count = judgment_count - 1 WHERE id = %s", [item_id])
        cursor.execute(f"UPDATE {MEMBERSHIP} SET answered_count = answered_count - 1,"
                       f" gold_answered = gold_answered - %s, gold_correct = gold_correct - %s WHERE id = %s",
                       [int(gold), int(gold and correct), membership_id])
        cursor.execute(f"UPDATE {LEASE} SET state = 'active', taken_back_client_id = %s WHERE id = %s",
                       [uuid_param(client_id), lease_id])
    return True


def judgment_by_client_id(*, annotator, client_id) -> tuple[int, uuid.UUID] | None:
    row = _fetchone(f"SELECT j.id, i.public_id FROM {JUDGMENT} j JOIN {ITEM} i ON i.id = j.item_id"
                    f" WHERE j.annotator_id = %s AND j.client_id = %s", [annotator.pk, uuid_param(client_id)])
    return None if row is None else (row[0], _uuid_out(row[1]))
