"""Django 5 against availdb: the project in tests/interop/django_site (two
apps with foreign keys, indexes, a unique constraint and a data
migration) — migrate, createsuperuser --noinput, makemigrations --check,
and manage.py test (its model tests and the admin's list page, in a test
database Django creates and drops). Usage: django_compat.py CONNINFO PORT"""
import os
import pathlib
import subprocess
import sys

site = pathlib.Path(__file__).resolve().parent / "django_site"
env = dict(os.environ, AVAILDB_PORT=sys.argv[2], DJANGO_SUPERUSER_PASSWORD="not-secret")


def manage(*args):
    out = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=site, env=env, capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout + out.stderr


manage("migrate", "--noinput")
manage("createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com")
assert "No changes detected" in manage("makemigrations", "--check", "--dry-run")
tested = manage("test", "--noinput")
assert "OK" in tested, tested
print("django_compat.py: ok")
