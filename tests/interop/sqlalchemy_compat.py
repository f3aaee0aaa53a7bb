"""SQLAlchemy 2 (postgresql+psycopg) against availdb: create_all with
SERIAL keys, a foreign key, an index and a unique constraint; ORM insert,
query through a relationship, update, delete; inspect() reflection of
tables, columns, keys, indexes and unique constraints.
Usage: sqlalchemy_compat.py CONNINFO PORT"""
import datetime
import decimal
import sys

from sqlalchemy import (Boolean, Column, DateTime, ForeignKey, Integer, Numeric, String, Text,
                        create_engine, inspect, select)
from sqlalchemy.orm import Session, declarative_base, relationship

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
print("sqlalchemy_compat.py: ok")
