// node-postgres against availdb: columns declared integer/int/int4 (also
// `integer PRIMARY KEY`, SQLite's rowid), SERIAL and smallint come back as
// numbers (announced as int4 and int2), bigint as strings (int8, as from
// PostgreSQL), whether the value comes from a simple query or a prepared
// one; `::int` casts are int4, sums and other integer expressions int8.
// Usage: node pg_ints.js PORT
const { Client } = require('pg');

const INT2 = 21, INT4 = 23, INT8 = 20;

async function main() {
  const client = new Client({ host: '127.0.0.1', port: Number(process.argv[2]), user: 'availdb', database: 'availdb' });
  await client.connect();
  const check = (what, got, want) => {
    if (got !== want) throw new Error(`${what}: got ${JSON.stringify(got)} (${typeof got}), want ${JSON.stringify(want)}`);
  };

  await client.query('CREATE TABLE item (id serial PRIMARY KEY, qty int4, small smallint, big bigint, name text, ok boolean)');
  await client.query('BEGIN');
  const inserted = await client.query(
    'INSERT INTO item (qty, small, big, name, ok) VALUES ($1, $2, $3, $4, $5) RETURNING id', [7, 2, '9007199254740993', 'x', true]);
  await client.query('COMMIT');
  check('RETURNING id', inserted.rows[0].id, 1);
  const { rows, fields } = await client.query('SELECT id, qty, small, big, name, ok FROM item WHERE id = $1', [1]);
  check('id', rows[0].id, 1);
  check('qty', rows[0].qty, 7);
  check('small', rows[0].small, 2);
  check('big', rows[0].big, '9007199254740993');
  check('ok', rows[0].ok, true);
  check('qty type', fields[1].dataTypeID, INT4);

  // `integer` spelled as SQLite and SQLAlchemy spell it: the rowid key
  // and a plain column, both int4.
  await client.query('CREATE TABLE plain (id INTEGER PRIMARY KEY, n integer, i int, w int8)');
  await client.query("INSERT INTO plain (n, i, w) VALUES (40, -3, 5), (2, 0, 6)");
  for (const [sql, params] of [['SELECT id, n, i, w FROM plain ORDER BY id', []],
                               ['SELECT id, n, i, w FROM plain WHERE id >= $1 ORDER BY id', [1]]]) {
    const r = await client.query(sql, params);
    check(`${sql}: id`, r.rows[0].id, 1);
    check(`${sql}: n`, r.rows[0].n, 40);
    check(`${sql}: i`, r.rows[0].i, -3);
    check(`${sql}: w`, r.rows[0].w, '5');
    check(`${sql}: types`, r.fields.map((f) => f.dataTypeID).join(','), [INT4, INT4, INT4, INT8].join(','));
  }
  // An integer parameter bound to an int4 column is a number both ways.
  const upd = await client.query('UPDATE plain SET n = $1 WHERE id = $2 RETURNING n', [41, 1]);
  check('UPDATE … RETURNING n', upd.rows[0].n, 41);

  const e = await client.query('SELECT count(*)::int AS c, count(*) AS c8, sum(n) AS s, max(n) AS m, n + 1 AS plus FROM plain GROUP BY n ORDER BY n DESC LIMIT 1');
  check('count(*)::int', e.rows[0].c, 1);
  check('count(*)', e.rows[0].c8, '1');
  check('sum(n)', e.rows[0].s, '41');
  check('max(n)', e.rows[0].m, 41);
  check('n + 1', e.rows[0].plus, '42');
  check('expression types', e.fields.map((f) => f.dataTypeID).join(','), [INT4, INT8, INT8, INT4, INT8].join(','));

  // SQLite keeps any 64-bit integer in an int4 column; node-postgres reads
  // text, which carries it as stored.
  await client.query('INSERT INTO plain (n) VALUES (3000000000)');
  const wide = await client.query('SELECT n FROM plain WHERE n > $1', [2147483647]);
  check('a stored value wider than int4, in text', wide.rows[0].n, 3000000000);
  await client.end();
  console.log('pg_ints.js: ok');
}

main().catch((e) => { console.error(e); process.exit(1); });
