"""SQLAlchemy 2 (postgresql+psycopg) against availdb: create_all with
SERIAL keys, a foreign key, an index and a unique constraint; ORM insert,
query through a relationship, update, delete; inspect() reflection of
tables, columns, keys, indexes and unique constraints. Then 2.0-style
typed models (an IDENTITY key starting at 10, timestamp, date and uuid
columns, a named CHECK constraint, reflected) queried with string, timestamp, date and uuid parameters and a
text() statement, through postgresql+psycopg and postgresql+asyncpg.
Usage: sqlalchemy_compat.py CONNINFO PORT"""
import asyncio
import datetime
import decimal
import sys
import uuid

from sqlalchemy import (Boolean, CheckConstraint, Column, Date, DateTime, ForeignKey, Identity, Integer, Numeric,
                        String, Text, Uuid, create_engine, inspect, select, text)
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import (DeclarativeBase, Mapped, Session, declarative_base, mapped_column,
                            relationship)

engine = create_engine("postgresql+psycopg://availdb@127.0.0.1:%s/availdb" % sys.argv[2])
Base = declarative_base()


class Author(Base):
    __tablename__ = "author"
    id = Column(Integer, primary_key=True)
    name = Column(String(40), nullable=False, unique=True)
    books = relationship("Book", back_populates="author")


class Book(Base):
    __tablename__ = "book"
    id = Column(Integer, primary_key=True)
    title = Column(Text, nullable=False, index=True)
    author_id = Column(Integer, ForeignKey("author.id"))
    published = Column(DateTime(timezone=True))
    in_print = Column(Boolean)
    price = Column(Numeric(8, 2))
    author = relationship("Author", back_populates="books")


Base.metadata.create_all(engine)
when = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone.utc)
with Session(engine) as s:
    ann = Author(name="ann")
    s.add_all([ann, Book(title="first", author=ann, in_print=True, price=decimal.Decimal("3.50"),
                         published=when),
               Book(title="second", author=ann, in_print=False)])
    s.commit()
    assert ann.id == 1, ann.id
    book = s.scalars(select(Book).where(Book.title == "first")).one()
    assert book.author.name == "ann"
    assert book.published == when, book.published
    assert book.in_print is True
    assert book.price == decimal.Decimal("3.50"), book.price
    book.title = "renamed"
    s.commit()
    assert [b.title for b in s.scalars(select(Book).order_by(Book.id))] == ["renamed", "second"]
    s.delete(book)
    s.commit()
    assert s.scalars(select(Book)).all()[0].title == "second"

insp = inspect(engine)
assert {"author", "book"} <= set(insp.get_table_names()), insp.get_table_names()
columns = {c["name"]: c for c in insp.get_columns("book")}
assert list(columns) == ["id", "title", "author_id", "published", "in_print", "price"], list(columns)
assert columns["title"]["nullable"] is False and columns["price"]["type"].precision == 8
assert columns["published"]["type"].timezone is True
assert insp.get_pk_constraint("book")["constrained_columns"] == ["id"]
fks = insp.get_foreign_keys("book")
assert [(f["constrained_columns"], f["referred_table"], f["referred_columns"]) for f in fks] == [
    (["author_id"], "author", ["id"])], fks
indexes = insp.get_indexes("book")
assert [(i["name"], i["column_names"], i["unique"]) for i in indexes] == [
    ("ix_book_title", ["title"], False)], indexes
uniques = insp.get_unique_constraints("author")
assert [u["column_names"] for u in uniques] == [["name"]], uniques
Base.metadata.drop_all(engine)
assert "book" not in inspect(engine).get_table_names()


class Typed(DeclarativeBase):
    pass


class Event(Typed):
    __tablename__ = "event"
    __table_args__ = (CheckConstraint("length(name) > 0", name="event_name_not_empty"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), index=True)
    at: Mapped[datetime.datetime] = mapped_column(DateTime)
    day: Mapped[datetime.date | None] = mapped_column(Date)
    ref: Mapped[uuid.UUID | None] = mapped_column(Uuid)


class Tick(Typed):
    __tablename__ = "tick"
    id: Mapped[int] = mapped_column(Integer, Identity(start=10), primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("event.id"))


Typed.metadata.create_all(engine)
t0 = datetime.datetime(2024, 5, 6, 7, 8, 9)
with Session(engine) as s:
    events = [Event(name=f"e{i}", at=t0 + datetime.timedelta(hours=i),
                    day=datetime.date(2024, 1, 1 + i), ref=uuid.UUID(int=i)) for i in range(5)]
    s.add_all(events)
    s.flush()
    s.add_all([Tick(event_id=e.id) for e in events])
    s.commit()
    assert [e.id for e in events] == [1, 2, 3, 4, 5], [e.id for e in events]
    got = s.scalars(select(Event).where(Event.name == "e3", Event.at >= t0, Event.ref == uuid.UUID(int=3),
                                        Event.day == datetime.date(2024, 1, 4))).one()
    assert (got.id, got.at, got.day) == (4, t0 + datetime.timedelta(hours=3), datetime.date(2024, 1, 4)), got
    assert s.scalars(select(Tick.id).order_by(Tick.id)).all() == [10, 11, 12, 13, 14], "IDENTITY starts at 10"
    assert s.execute(text("SELECT count(*) FROM event WHERE at < :t AND name LIKE :n"),
                     {"t": t0 + datetime.timedelta(hours=2), "n": "e%"}).scalar() == 2
columns = {c["name"]: c for c in inspect(engine).get_columns("event")}
assert [str(c["type"]) for c in columns.values()] == ["INTEGER", "VARCHAR(50)", "TIMESTAMP", "DATE", "UUID"], columns
checks = inspect(engine).get_check_constraints("event")
assert [(c["name"], c["sqltext"]) for c in checks] == [("event_name_not_empty", "length(name) > 0")], checks


async def through_asyncpg():
    engine = create_async_engine("postgresql+asyncpg://availdb@127.0.0.1:%s/availdb" % sys.argv[2])
    ref = uuid.uuid4()
    async with AsyncSession(engine) as s:
        s.add(Event(name="async", at=t0, day=datetime.date(2024, 2, 29), ref=ref))
        await s.commit()
        got = (await s.scalars(select(Event).where(Event.name == "async", Event.at == t0))).one()
        assert (got.id, got.day, got.ref) == (6, datetime.date(2024, 2, 29), ref), got
    async with engine.connect() as c:
        names = await c.run_sync(lambda sync: [col["name"] for col in inspect(sync).get_columns("event")])
        assert names == ["id", "name", "at", "day", "ref"], names
    await engine.dispose()


asyncio.run(through_asyncpg())
Typed.metadata.drop_all(engine)
print("sqlalchemy_compat.py: ok")
