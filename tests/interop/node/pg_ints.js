// node-postgres against availdb: SERIAL ids and int/int4/smallint columns
// come back as numbers (announced as int4 and int2), bigint as strings
// (int8, as from PostgreSQL); parameters and a transaction.
// Usage: node pg_ints.js PORT
const { Client } = require('pg');

async function main() {
  const client = new Client({ host: '127.0.0.1', port: Number(process.argv[2]), user: 'availdb', database: 'availdb' });
  await client.connect();
  await client.query('CREATE TABLE item (id serial PRIMARY KEY, qty int4, small smallint, big bigint, name text, ok boolean)');
  await client.query('BEGIN');
  const inserted = await client.query(
    'INSERT INTO item (qty, small, big, name, ok) VALUES ($1, $2, $3, $4, $5) RETURNING id', [7, 2, '9007199254740993', 'x', true]);
  await client.query('COMMIT');
  const check = (what, got, want) => {
    if (got !== want) throw new Error(`${what}: got ${JSON.stringify(got)} (${typeof got}), want ${JSON.stringify(want)}`);
  };
  check('RETURNING id', inserted.rows[0].id, 1);
  const { rows, fields } = await client.query('SELECT id, qty, small, big, name, ok FROM item WHERE id = $1', [1]);
  check('id', rows[0].id, 1);
  check('qty', rows[0].qty, 7);
  check('small', rows[0].small, 2);
  check('big', rows[0].big, '9007199254740993');
  check('ok', rows[0].ok, true);
  check('qty type', fields[1].dataTypeID, 23);
  await client.end();
  console.log('pg_ints.js: ok');
}

main().catch((e) => { console.error(e); process.exit(1); });
