"""PostgreSQL: vacuum the annotation queue's hot tables early.

Every judgment rewrites its item's row and queue-index entry (the index holds
judgment_count) and settles a lease; with the default thresholds the dead entries pile up
at the head of the queue index faster than autovacuum clears them, and each next-item scan
walks over them.
"""
from django.db import migrations

TABLES = ["annotate_studyitem", "annotate_assignment", "annotate_studymembership"]
SETTINGS = ("autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 2000, "
            "autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0.02")


def tune(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in TABLES:
        schema_editor.execute(f"ALTER TABLE {table} SET ({SETTINGS})")


def untune(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in TABLES:
        schema_editor.execute(f"ALTER TABLE {table} RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,"
                              f" autovacuum_vacuum_cost_delay, autovacuum_analyze_scale_factor)")


class Migration(migrations.Migration):
    dependencies = [("annotate", "0001_initial")]
    operations = [migrations.RunPython(tune, untune)]
