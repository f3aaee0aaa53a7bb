"""A data migration: seeds one author, and removes it when reversed."""
import datetime

from django.db import migrations


def seed(apps, schema_editor):
    Author = apps.get_model("library", "Author")
    Author.objects.create(name="Ursula K. Le Guin", born=datetime.date(1929, 10, 21))


def unseed(apps, schema_editor):
    apps.get_model("library", "Author").objects.filter(name="Ursula K. Le Guin").delete()


class Migration(migrations.Migration):
    dependencies = [("library", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
