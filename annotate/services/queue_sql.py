"""The SQL of the annotation hot paths (next item, submit), for PostgreSQL and SQLite.

Each function is one statement. Callers hold the transaction; the locking clauses apply on
PostgreSQL (SQLite serialises writers and has none). Results come back as light model
instances carrying only what the caller uses.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone as dt_timezone

from django.db import connection
from django.utils.dateparse import parse_datetime

from annotate.models import Assignment, Judgment, Prompt, Study, StudyItem, StudyMembership

ITEM = StudyItem._meta.db_table
LEASE = Assignment._meta.db_table
JUDGMENT = Judgment._meta.db_table
SKIP = "annotate_skip"
PROMPT = Prompt._meta.db_table
MEMBERSHIP = StudyMembership._meta.db_table
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
                      "skipped_count"]
_STUDY_FIELDS = ["id", "public_id", "name", "kind", "status", "question", "rating_scale", "redundancy",
                 "lease_seconds", "items_per_annotator", "item_order", "item_count", "completion_code",
                 "gold_min_accuracy", "gold_min_answers"]


MEMBERSHIP_COLUMNS = ", ".join([f"m.{f}" for f in _MEMBERSHIP_FIELDS] + [f"s.{f}" for f in _STUDY_FIELDS])
MEMBERSHIP_JOIN = f"{MEMBERSHIP} m JOIN {Study._meta.db_table} s ON s.id = m.study_id"


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
    not_in = ""
    params: dict = {}
    if exclude:
        names = [f"x{n}" for n in range(len(exclude))]
        not_in = f" AND i.public_id NOT IN ({', '.join(f'%({n})s' for n in names)})"
        params = {n: uuid_param(e) for n, e in zip(names, exclude)}
    return (f"SELECT a.id AS lease_id, a.a_on_left, a.leased_at, a.expires_at, i.id, i.public_id,"
            f" i.judgment_count, p.id AS prompt_id, p.text"
            f" FROM {LEASE} a JOIN {ITEM} i ON i.id = a.item_id JOIN {PROMPT} p ON p.id = i.prompt_id"
            f" WHERE a.annotator_id = %(annotator)s AND a.state = 'active' AND a.expires_at > %(now)s"
            f" AND i.study_id = %(study)s{not_in} ORDER BY a.leased_at LIMIT 1"), params


# The lease columns of a candidate row (none), typed to match the held lease's in a UNION.
_NO_LEASE = ("CAST(NULL AS bigint), CAST(NULL AS boolean), CAST(NULL AS timestamp with time zone),"
             " CAST(NULL AS timestamp with time zone)")


def _candidate_sql(*, band: int | None, after_start: bool, passed_over: list[int]) -> tuple[str, dict]:
    """One range of the walk: the first open item by rank from the annotator's starting
    point (or before it), among the items with ``band`` judgments (or all open items). An
    equality on judgment_count keeps the rank range a bounded scan of the queue index."""
    names = [f"p{n}" for n in range(len(passed_over))]
    skip_passed = f" AND i.id NOT IN ({', '.join(f'%({n})s' for n in names)})" if passed_over else ""
    count = "i.judgment_count < %(redundancy)s" if band is None else f"i.judgment_count = {int(band)}"
    lock = " FOR UPDATE OF i SKIP LOCKED" if takes_locks() else ""
    return (f"SELECT {_NO_LEASE}, i.id, i.public_id, i.judgment_count, p.id, p.text"
            f" FROM {ITEM} i JOIN {PROMPT} p ON p.id = i.prompt_id"
            f" WHERE i.study_id = %(study)s AND {count} AND i.rank {'>=' if after_start else '<'} %(start)s"
            f"{skip_passed}"
            f" AND NOT EXISTS (SELECT 1 FROM {JUDGMENT} j WHERE j.item_id = i.id AND j.annotator_id = %(annotator)s)"
            f" AND NOT EXISTS (SELECT 1 FROM {SKIP} k WHERE k.item_id = i.id AND k.annotator_id = %(annotator)s)"
            f" AND NOT EXISTS (SELECT 1 FROM {LEASE} m WHERE m.item_id = i.id AND m.annotator_id = %(annotator)s"
            f"                 AND m.state = 'active' AND m.expires_at > %(now)s)"
            f" AND i.judgment_count + (SELECT COUNT(*) FROM {LEASE} o WHERE o.item_id = i.id"
            f"                         AND o.state = 'active' AND o.expires_at > %(now)s) < %(redundancy)s"
            f" ORDER BY i.rank LIMIT 1{lock}"), dict(zip(names, passed_over))


def held_lease_or_candidate(*, study, annotator, now: datetime, exclude: list, closest: bool, start: int,
                            passed_over: list[int], with_held: bool = True) -> Assignment | StudyItem | None:
    """In one statement: the annotator's oldest open lease in the study on an item not in
    ``exclude`` (an Assignment), or else the best open item for them, locked (a StudyItem),
    or None when nothing is left.

    The best item is the closest to completion (when asked), then the next by rank from the
    annotator's starting point, wrapping around. The statement is a chain of ranges, each a
    bounded index scan with LIMIT 1, tried in order until one gives a row (an outer LIMIT 1
    stops the rest from running, so only the chosen item is locked): never a scan or sort of
    the whole study.
    """
    params: dict = {"study": study.pk, "annotator": annotator.pk, "now": _dt(now), "start": start,
                    "redundancy": study.redundancy}
    bands = range(study.redundancy - 1, -1, -1) if closest else [None]
    ranges = []
    for band in bands:
        for after_start in (True, False):
            sql, passed = _candidate_sql(band=band, after_start=after_start, passed_over=passed_over)
            ranges.append(f"SELECT * FROM ({sql}) r{len(ranges)}")
            params |= passed
    held = ""
    if with_held:
        held_sql, held_params = _held_sql(exclude)
        params |= held_params
        held = f"SELECT * FROM ({held_sql}) h UNION ALL "
    row = _fetchone(f"{held}{' UNION ALL '.join(ranges)} LIMIT 1", params)
    if row is None:
        return None
    if row[0] is not None:
        return _lease(row[0], _item(*row[4:9]), annotator, row[1], row[2], row[3])
    return _item(*row[4:9])


def open_lease_count(*, study, annotator, now: datetime) -> int:
    return _fetchone(
        f"SELECT COUNT(*) FROM {LEASE} a JOIN {ITEM} i ON i.id = a.item_id"
        f" WHERE a.annotator_id = %s AND a.state = 'active' AND a.expires_at > %s AND i.study_id = %s",
        [annotator.pk, _dt(now), study.pk])[0]


def open_leases_on(*, item_id: int, now: datetime, besides=None) -> int:
    sql = f"SELECT COUNT(*) FROM {LEASE} WHERE item_id = %s AND state = 'active' AND expires_at > %s"
    params = [item_id, _dt(now)]
    if besides is not None:
        sql += " AND annotator_id <> %s"
        params.append(besides.pk)
    return _fetchone(sql, params)[0]


def lease_insert(*, item: StudyItem, annotator, now: datetime, expires_at: datetime, a_on_left,
                 redundancy: int) -> Assignment | None:
    """A new lease, or the renewal of the annotator's own lapsed lease on the same item; None
    when the item has no room left once counted afresh.

    The caller holds the item's row lock, but its candidate query counted leases before one
    that another request committed just before the lock was taken: this statement counts
    again (a new statement sees it) and inserts only while the item still has room.

    On PostgreSQL the transaction's COMMIT then does not wait for the WAL flush (set here to
    save a round trip): a lease lost in a crash just returns its item to the pool, and
    judgments, committed in transactions of their own, stay durable.
    """
    relaxed = "set_config('synchronous_commit', 'off', true) IS NOT NULL AND " \
        if connection.vendor == "postgresql" else ""
    row = _fetchone(
        f"INSERT INTO {LEASE} (item_id, annotator_id, state, a_on_left, leased_at, expires_at)"
        f" SELECT %s, %s, 'active', %s, %s, %s"
        f" WHERE {relaxed}(SELECT judgment_count FROM {ITEM} WHERE id = %s)"
        f"     + (SELECT COUNT(*) FROM {LEASE} WHERE item_id = %s AND state = 'active' AND expires_at > %s) < %s"
        f" ON CONFLICT (item_id, annotator_id) WHERE state = 'active'"
        f" DO UPDATE SET a_on_left = excluded.a_on_left, leased_at = excluded.leased_at,"
        f" expires_at = excluded.expires_at RETURNING id",
        [item.id, annotator.pk, a_on_left, _dt(now), _dt(expires_at), item.id, item.id, _dt(now), redundancy])
    return None if row is None else _lease(row[0], item, annotator, a_on_left, now, expires_at)


@dataclass(frozen=True)
class LockedItem:
    id: int
    judgment_count: int
    is_gold: bool
    gold_answer: str


@dataclass(frozen=True)
class AnswerLease:
    id: int
    a_on_left: bool | None
    live: bool


def item_lock_with_lease(*, study, item_public_id, annotator, now: datetime
                         ) -> tuple[LockedItem | None, AnswerLease | None]:
    """The item, locked, and the annotator's lease on it that no answer or skip has settled
    yet (at most one: a lease stays 'active' until settled, one per annotator and item)."""
    if (key := uuid_or_none(item_public_id)) is None:
        return None, None
    lock = " FOR UPDATE OF i" if takes_locks() else ""
    row = _fetchone(
        f"SELECT i.id, i.judgment_count, i.is_gold, i.gold_answer, a.id, a.a_on_left,"
        f" CASE WHEN a.expires_at > %s THEN 1 ELSE 0 END"
        f" FROM {ITEM} i LEFT JOIN {LEASE} a ON a.item_id = i.id AND a.annotator_id = %s AND a.state = 'active'"
        f" WHERE i.study_id = %s AND i.public_id = %s{lock}", [_dt(now), annotator.pk, study.pk, key])
    if row is None:
        return None, None
    item = LockedItem(row[0], row[1], bool(row[2]), row[3])
    return item, (None if row[4] is None else AnswerLease(row[4], _bool_out(row[5]), bool(row[6])))


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


def answer_settle(*, lease_id: int, item_id: int, membership_id: int) -> tuple[int, int]:
    """Close the lease as answered, count the judgment on the item and the annotator; returns
    the annotator's (answered, skipped) counts."""
    lease_sql = f"UPDATE {LEASE} SET state = 'answered' WHERE id = %s"
    item_sql = f"UPDATE {ITEM} SET judgment_count = judgment_count + 1 WHERE id = %s"
    member_sql = (f"UPDATE {MEMBERSHIP} SET answered_count = answered_count + 1 WHERE id = %s"
                  f" RETURNING answered_count, skipped_count")
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":  # one round trip
            cursor.execute(f"WITH l AS ({lease_sql}), i AS ({item_sql}) {member_sql}",
                           [lease_id, item_id, membership_id])
        else:
            cursor.execute(lease_sql, [lease_id])
            cursor.execute(item_sql, [item_id])
            cursor.execute(member_sql, [membership_id])
        return cursor.fetchone()


def answer_in_one_statement(*, study, item_public_id, annotator, membership_id: int, client_id, choice: str,
                            score, reason: str, time_spent_ms, now: datetime) -> tuple[int, int, int] | None:
    """The common answer, on PostgreSQL, in one autocommitted statement: to a non-gold item
    under a live lease of the annotator's, a new judgment, its lease settled, the item's and
    the annotator's counts raised. Returns (judgment id, answered, skipped), or None when any
    of that does not hold (no live lease, a gold item, a client id or item already answered,
    SQLite): then nothing was written, and the caller takes the general path.

    The item's row lock orders it with concurrent answers and leases, as the general path does.
    """
    if connection.vendor != "postgresql" or (key := uuid_or_none(item_public_id)) is None:
        return None
    row = _fetchone(
        f"WITH it AS (SELECT i.id AS item_id, a.id AS lease_id, a.a_on_left"
        f"  FROM {ITEM} i JOIN {LEASE} a ON a.item_id = i.id AND a.annotator_id = %(annotator)s"
        f"  AND a.state = 'active' AND a.expires_at > %(now)s"
        f"  WHERE i.study_id = %(study)s AND i.public_id = %(item)s AND NOT i.is_gold FOR UPDATE OF i),"
        f" ins AS (INSERT INTO {JUDGMENT} (item_id, annotator_id, assignment_id, client_id, created_at, choice,"
        f"  score, reason, a_on_left, time_spent_ms, gold_correct, is_flagged, flag_reason)"
        f"  SELECT item_id, %(annotator)s, lease_id, %(client)s, %(now)s, %(choice)s, %(score)s, %(reason)s,"
        f"  a_on_left, %(spent)s, NULL, FALSE, '' FROM it ON CONFLICT DO NOTHING"
        f"  RETURNING id, item_id, assignment_id),"
        f" l AS (UPDATE {LEASE} SET state = 'answered' WHERE id IN (SELECT assignment_id FROM ins)),"
        f" c AS (UPDATE {ITEM} SET judgment_count = judgment_count + 1 WHERE id IN (SELECT item_id FROM ins))"
        f" UPDATE {MEMBERSHIP} SET answered_count = answered_count + 1"
        f" WHERE id = %(membership)s AND EXISTS (SELECT 1 FROM ins)"
        f" RETURNING (SELECT id FROM ins), answered_count, skipped_count",
        {"annotator": annotator.pk, "now": _dt(now), "study": study.pk, "item": key,
         "client": uuid_param(client_id), "choice": choice, "score": score, "reason": reason,
         "spent": time_spent_ms, "membership": membership_id})
    return None if row is None else tuple(row)


def judgment_by_client_id(*, annotator, client_id) -> tuple[int, uuid.UUID] | None:
    row = _fetchone(f"SELECT j.id, i.public_id FROM {JUDGMENT} j JOIN {ITEM} i ON i.id = j.item_id"
                    f" WHERE j.annotator_id = %s AND j.client_id = %s", [annotator.pk, uuid_param(client_id)])
    return None if row is None else (row[0], _uuid_out(row[1]))
