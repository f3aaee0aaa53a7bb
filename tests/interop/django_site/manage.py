#!/usr/bin/env python3
"""The Django project tests/pg_compat.rs drives against availdb
(tests/interop/django_compat.py runs its commands)."""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_conf.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
