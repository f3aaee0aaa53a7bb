"""pandas through SQLAlchemy 2 + psycopg against availdb: to_sql (create,
replace, append) and read_sql_table / read_sql_query give the frame back
with its types. Usage: pandas_compat.py CONNINFO PORT"""
import sys

import pandas as pd
import sqlalchemy as sa

engine = sa.create_engine(f"postgresql+psycopg://availdb@127.0.0.1:{sys.argv[2]}/availdb")
frame = pd.DataFrame(
    {
        "a": [1, 2, 3],
        "b": ["x", "y", "z"],
        "c": [1.5, 2.5, None],
        "d": pd.to_datetime(["2024-01-01 00:00:00", "2024-01-02 03:04:05", None]),
        "e": [True, False, True],
    }
)
frame.to_sql("frame", engine, index=False)
frame.to_sql("frame", engine, index=False, if_exists="replace")
frame.iloc[:1].to_sql("frame", engine, index=False, if_exists="append")
back = pd.read_sql_table("frame", engine)
assert list(back.columns) == ["a", "b", "c", "d", "e"], back.columns
assert len(back) == 4, back
assert back["a"].tolist() == [1, 2, 3, 1], back["a"].tolist()
assert str(back["a"].dtype) == "int64" and str(back["c"].dtype) == "float64", back.dtypes
assert str(back["d"].dtype).startswith("datetime64"), back.dtypes
assert back["d"].iloc[1] == pd.Timestamp("2024-01-02 03:04:05"), back["d"].tolist()
assert back["e"].tolist() == [True, False, True, True], back["e"].tolist()
total = pd.read_sql_query(sa.text("SELECT sum(a) AS total FROM frame WHERE b <> :b"), engine, params={"b": "z"})
assert total["total"].iloc[0] == 4, total
print("pandas_compat.py: ok")
