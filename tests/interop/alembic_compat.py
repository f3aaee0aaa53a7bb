"""Alembic against availdb (SQLAlchemy 2 + psycopg): autogenerate a
revision from models (tables, a foreign key, an index, a unique
constraint), upgrade to it, compare again and find nothing to do
(`integer` columns read back as integer, `bigint` as bigint), downgrade
to base (everything dropped). Works in a temporary directory.
Usage: alembic_compat.py CONNINFO PORT"""
import pathlib
import sys
import tempfile

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

url = f"postgresql+psycopg://availdb@127.0.0.1:{sys.argv[2]}/availdb"
MODELS = '''
import sqlalchemy as sa

metadata = sa.MetaData()
sa.Table(
    "customer", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(200), nullable=False, unique=True),
)
sa.Table(
    "invoice", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customer.id"), nullable=False),
    sa.Column("total", sa.Numeric(10, 2)),
    sa.Column("issued", sa.DateTime(timezone=True)),
    sa.Index("invoice_issued", "issued"),
)
'''

with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    (tmp / "models.py").write_text(MODELS)
    sys.path.insert(0, str(tmp))
    import models  # noqa: E402

    cfg = Config(str(tmp / "alembic.ini"))
    command.init(cfg, str(tmp / "migrations"))
    cfg = Config(str(tmp / "alembic.ini"))
    cfg.set_main_option("script_location", str(tmp / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url)
    env = tmp / "migrations" / "env.py"
    env.write_text(env.read_text().replace("target_metadata = None", "from models import metadata as target_metadata"))

    command.revision(cfg, message="first", autogenerate=True)
    scripts = list((tmp / "migrations" / "versions").glob("*.py"))
    assert len(scripts) == 1, scripts
    text = scripts[0].read_text()
    for wanted in ["create_table('customer'", "create_table('invoice'", "ForeignKeyConstraint", "create_index"]:
        assert wanted in text, (wanted, text)
    command.upgrade(cfg, "head")

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), models.metadata)
        # The database as upgraded equals the models: `integer` columns
        # read back as INTEGER (int4), `bigint` as BIGINT.
        assert diff == [], diff
        conn.execute(sa.text("INSERT INTO customer (email) VALUES ('a@example.com')"))
        conn.commit()

    command.downgrade(cfg, "base")
    with engine.connect() as conn:
        left = set(sa.inspect(conn).get_table_names())
        assert left <= {"alembic_version"}, left

print("alembic_compat.py: ok")
