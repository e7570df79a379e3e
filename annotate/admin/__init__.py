"""The admin: a researcher's management tool for every model of the domain.

Researchers are staff and hold no Django model permissions: their group is their role, so
every admin here grants them what it allows (``ResearcherPermissions``); other staff fall back
to Django's permissions, and annotators, who are not staff, never reach the admin.

What the admin writes goes through the services where one exists: adding a checkpoint,
reward model, generation or scoring job, study or report calls its ``*_create`` /
``*_register`` / ``*_request`` service (``ServiceAddAdmin``: the service's error, which starts
with the field's name, becomes that field's error, and nothing is written); the actions open,
close, retry, cancel, pause and resume through theirs and report what they did and what they
skipped, and why. Rows that workers or the annotation engine own (images, scores, leases,
judgments, skips, the counters of items and memberships) are read-only here.

Every add, change, deletion and action here is also written to the audit log
(``AuditedAdmin``; the auth app's users and groups too); an add through a service is recorded
by the service's own event (``study.create``, ``generation_job.create``...) instead of a second
``admin.add``. The log itself is read-only here.

The tables with millions of rows (images, scores, labels, items, leases, judgments, skips)
never show a count of their children, skip the full-table count, use raw-id widgets for
their foreign keys and filter by date with ``created_at`` list filters rather than a date
hierarchy (which reads MIN/MAX and DISTINCT days over the whole table on every page).

Its modules: ``base`` (what the admins share), ``datasets``, ``checkpoints``, ``scores``,
``studies`` and ``audit_log``; importing this package registers them all.
"""
from django.contrib import admin

from annotate.admin import audit_log, checkpoints, datasets, scores, studies  # noqa: F401 - they register
from annotate.admin.base import LargeTablePaginator  # noqa: F401 - named by tests

admin.site.site_header = admin.site.site_title = "Calibra administration"
admin.site.index_title = "Data, models, jobs, studies and the audit log"

audit_log.audit_auth_admins()
