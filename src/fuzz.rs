//! Seeded random-input tests of every decoder that reads bytes from
//! outside the process (safety rule 6: bad input gets a clear error and
//! loses nothing — and never a panic).
//!
//! Each target starts from valid inputs (encoded messages, the WAL
//! fixtures, real statements), mutates them with a deterministic
//! pseudo-random generator (bit flips, random bytes, interesting integers,
//! insertions, deletions, truncations, splices of two inputs, pure noise)
//! and feeds the result to the decoder, a bounded number of times. Framed
//! formats get their length and checksum fixed up on half the inputs, so
//! the mutations reach the payload parsers behind the checksum. A panic is
//! reported with the seed, the iteration and the input in hex; each one
//! found becomes a named regression test beside its decoder.
//!
//! Runs on stable as ordinary unit tests (`cargo test --lib fuzz`); the
//! seed is fixed, so a run is reproducible, and `AVAILDB_FUZZ_ITERATIONS`
//! multiplies the iterations for a longer hunt.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// SplitMix64: small, fast and good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Integers that sit on boundaries decoders check.
const INTERESTING: [u32; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    64 << 20,
    80877103,
];

/// One mutated input from the corpus.
fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut data = corpus[rng.below(corpus.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(9) {
            0 if len > 0 => {
                let at = rng.below(len);
                data[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                data[at] = rng.next() as u8;
            }
            2 if len >= 4 => {
                let at = rng.below(len - 3);
                let value = INTERESTING[rng.below(INTERESTING.len())];
                let bytes = if rng.below(2) == 0 {
                    value.to_le_bytes()
                } else {
                    value.to_be_bytes()
                };
                data[at..at + 4].copy_from_slice(&bytes);
            }
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let extra: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(at..at, extra);
            }
            4 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(16)).min(len);
                data.drain(at..end);
            }
            5 => data.truncate(rng.below(len + 1)),
            6 if len > 0 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(32)).min(len);
                let copy = data[at..end].to_vec();
                let to = rng.below(len + 1);
                data.splice(to..to, copy);
            }
            7 => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            _ => {
                let n = rng.below(64);
                data = (0..n).map(|_| rng.next() as u8).collect();
            }
        }
    }
    data
}

/// How many inputs a target gets: `base`, times `AVAILDB_FUZZ_ITERATIONS`
/// when set.
fn iterations(base: usize) -> usize {
    let factor = std::env::var("AVAILDB_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1);
    base * factor.max(1)
}

/// Feeds `runs` mutated inputs to `target`; panics naming the first input
/// that made it panic.
fn fuzz(name: &str, seed: u64, runs: usize, corpus: &[Vec<u8>], mut target: impl FnMut(&[u8])) {
    assert!(!corpus.is_empty(), "{name}: an empty corpus");
    let mut rng = Rng(seed);
    for corpus_input in corpus {
        target(corpus_input);
    }
    for i in 0..iterations(runs) {
        let input = mutate(&mut rng, corpus);
        let outcome = catch_unwind(AssertUnwindSafe(|| target(&input)));
        if outcome.is_err() {
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            panic!("{name}: seed {seed:#x}, iteration {i}: the decoder panicked on {hex}");
        }
    }
}

/// Text inputs: the bytes read as UTF-8, invalid sequences replaced.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

mod targets {
    use super::*;
    use crate::replication::wire::{self, DatabasePosition, Message};

    fn wire_corpus() -> Vec<Vec<u8>> {
        let messages = [
            Message::Hello {
                cluster_id: "c1".into(),
                group: "ag1".into(),
                from_replica: "r1".into(),
                to_replica: "r2".into(),
                epoch: 3,
            },
            Message::Welcome {
                replica: "r2".into(),
                databases: vec![DatabasePosition {
                    database: "app".into(),
                    epoch: 2,
                    end_lsn: 4096,
                    redone_lsn: 4000,
                    epoch_history: vec![(1, 0), (2, 2048)],
                    last_record: Some((3000, 0xdead_beef)),
                }],
            },
            Message::Refuse {
                reason: "no".into(),
            },
            Message::Records {
                database: "app".into(),
                records: vec![vec![1, 2, 3].into(), vec![4; 40].into()],
            },
            Message::Progress {
                database: "app".into(),
                hardened_lsn: 10,
                redone_lsn: 9,
                first_lsn: 0,
            },
            Message::Ping { sent_us: 77 },
            Message::DatabaseState {
                database: "app".into(),
                suspended: true,
            },
            Message::GeoHello {
                from_server: "east".into(),
                cluster_id: "c2".into(),
                source_database: "app".into(),
                database: "app".into(),
                epoch: 1,
                create: true,
                readable: false,
                succeeds: Some(("west".into(), "app".into())),
                read_only: false,
            },
        ];
        messages
            .iter()
            .map(|m| {
                let mut out = Vec::new();
                wire::encode(m, &mut out).expect("a sample message encodes");
                out
            })
            .collect()
    }

    /// Gives a mutated frame a consistent length field and checksum, so
    /// the payload decoders see it.
    fn fix_frame(mut frame: Vec<u8>) -> Vec<u8> {
        if frame.len() >= 10 {
            let n = frame.len() - 4;
            frame[..4].copy_from_slice(&(n as u32).to_le_bytes());
            let crc = crc32c::crc32c(&frame[4..n]);
            frame[n..].copy_from_slice(&crc.to_le_bytes());
        }
        frame
    }

    /// The replication message decoder: never panics, and whatever it
    /// accepts re-encodes to the same bytes (the encoding is canonical).
    #[test]
    fn fuzz_replication_wire_decoder() {
        let corpus = wire_corpus();
        let mut flip = false;
        fuzz("replication wire", 0x5EED_0001, 40_000, &corpus, |input| {
            flip = !flip;
            let input = if flip {
                fix_frame(input.to_vec())
            } else {
                input.to_vec()
            };
            // An older version's Refuse still decodes, and re-encodes as this one.
            let current = input.get(4) == Some(&wire::VERSION);
            if let (Ok((message, used)), true) = (wire::decode(&input), current) {
                let mut again = Vec::new();
                wire::encode(&message, &mut again).expect("a decoded message encodes");
                assert_eq!(again, input[..used], "canonical encoding");
            }
        });
    }

    fn record_corpus() -> Vec<Vec<u8>> {
        use crate::log::Record;
        let records = [
            Record {
                lsn: 4096,
                epoch: 3,
                commit_time_us: 1_700_000_000_000_000,
                db_size: 7,
                page_size: 512,
                pages: vec![(1, vec![1; 512]), (7, vec![7; 512])],
                flags: Record::IMAGE_START | Record::IMAGE_MORE,
            },
            Record {
                lsn: 0,
                epoch: 1,
                commit_time_us: 5,
                db_size: 2,
                page_size: 512,
                pages: vec![(2, vec![9; 512])],
                flags: Record::TX_MORE,
            },
            Record {
                lsn: 4096,
                epoch: 2,
                commit_time_us: 6,
                db_size: 3,
                page_size: 512,
                pages: vec![
                    (1, [vec![5; 100], vec![0; 300], vec![6; 112]].concat()),
                    (3, vec![8; 512]),
                ],
                flags: Record::HOLES,
            },
        ];
        records
            .iter()
            .map(|r| {
                let mut out = Vec::new();
                r.encode_into(&mut out);
                out
            })
            .collect()
    }

    /// The log record decoder: never panics, what it accepts passes
    /// through encode and decode unchanged (so a replica that appends the
    /// bytes it received holds what re-encoding would write), and
    /// `Record::check` takes and refuses exactly what it does.
    #[test]
    fn fuzz_log_record_decoder() {
        use crate::log::Record;
        let corpus = record_corpus();
        let mut flip = false;
        fuzz("log record", 0x5EED_0002, 20_000, &corpus, |input| {
            flip = !flip;
            let mut input = input.to_vec();
            if flip && input.len() >= 8 {
                let n = input.len() - 4;
                let crc = crc32c::crc32c(&input[..n]);
                input[n..].copy_from_slice(&crc.to_le_bytes());
            }
            let checked = Record::check(&input);
            match Record::decode(&input) {
                Ok((record, used)) => {
                    let _ = record.check_contents();
                    let mut again = Vec::new();
                    record.encode_into(&mut again);
                    assert_eq!(again.len(), used, "a decoded record's length");
                    // Records passed on unread are the records decode takes.
                    assert_eq!(again, input[..used], "a decoded record's bytes");
                    let header = checked.expect("check takes what decode takes");
                    assert_eq!(
                        (header.lsn, header.commit_time_us, header.len),
                        (record.lsn, record.commit_time_us, used)
                    );
                }
                Err(e) => assert_eq!(checked, Err(e), "check refuses what decode refuses"),
            }
        });
    }

    /// The WAL reader on damaged WAL files (the fixtures of
    /// `engine/wal.rs`, mutated): errors, never panics.
    #[test]
    fn fuzz_wal_reader() {
        use crate::engine::wal::WalReader;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wal");
        let corpus: Vec<Vec<u8>> = ["ok.wal", "restart-1.wal", "rolled-back-spill-1.wal"]
            .iter()
            .map(|f| std::fs::read(dir.join(f)).expect("a WAL fixture"))
            .collect();
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join("fuzz.db-wal");
        fuzz("WAL reader", 0x5EED_0003, 1_500, &corpus, |input| {
            std::fs::write(&path, input).expect("write the WAL");
            let mut reader = WalReader::new(&path);
            let _ = reader.read_committed();
            // A second read after more bytes: the reader's resume path.
            let mut longer = input.to_vec();
            longer.extend_from_slice(&input[..input.len().min(1100)]);
            std::fs::write(&path, &longer).expect("write the WAL");
            let _ = reader.read_committed();
        });
    }

    /// The listener's start-up packet decoder.
    #[test]
    fn fuzz_startup_packet_decoder() {
        use crate::listener::packet;
        let startup = packet::Startup {
            version: 196608,
            params: vec![
                ("user".into(), "availdb".into()),
                ("database".into(), "app".into()),
                ("options".into(), "-c application_intent=read_only".into()),
            ],
        }
        .encode();
        let corpus = vec![
            startup[4..].to_vec(),
            80877103u32.to_be_bytes().to_vec(),
            [
                80877102u32.to_be_bytes(),
                7u32.to_be_bytes(),
                9u32.to_be_bytes(),
            ]
            .concat(),
        ];
        fuzz("start-up packet", 0x5EED_0004, 40_000, &corpus, |input| {
            let _ = packet::body_len(u32::from_be_bytes(
                input
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or([0; 4]),
            ));
            if let Ok(packet::FirstPacket::Startup(s)) = packet::decode_first(input) {
                let _ = s.database();
                let _ = s.encode();
            }
            let _ = packet::error_fields(input);
            let _ = packet::error_sqlstate(input);
        });
    }

    /// What the front end parses itself from client messages: `options`
    /// and settings, COPY data (text, CSV, binary) and parameter values in
    /// text and binary format for every type it announces.
    #[test]
    fn fuzz_frontend_value_and_copy_decoders() {
        use crate::frontend::encode::{decode_binary_field, decode_text};
        use pgwire::api::Type;
        let types = [
            Type::BOOL,
            Type::INT2,
            Type::INT4,
            Type::INT8,
            Type::FLOAT4,
            Type::FLOAT8,
            Type::NUMERIC,
            Type::TEXT,
            Type::BYTEA,
            Type::DATE,
            Type::TIME,
            Type::TIMESTAMP,
            Type::TIMESTAMPTZ,
            Type::INTERVAL,
            Type::UUID,
            Type::JSON,
            Type::JSONB,
            Type::INT4_ARRAY,
            Type::TEXT_ARRAY,
        ];
        let mut binary_copy = b"PGCOPY\n\xff\r\n\0".to_vec();
        binary_copy.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        binary_copy.extend_from_slice(&2u16.to_be_bytes());
        binary_copy.extend_from_slice(&4u32.to_be_bytes());
        binary_copy.extend_from_slice(&7u32.to_be_bytes());
        binary_copy.extend_from_slice(&(-1i32).to_be_bytes());
        binary_copy.extend_from_slice(&(-1i16).to_be_bytes());
        let corpus = vec![
            b"2024-02-29 13:45:00.123+02".to_vec(),
            b"1 year 2 mons -3 days 04:05:06.7".to_vec(),
            b"{1,2,NULL,\"a\\\"b\"}".to_vec(),
            b"-12345.6789e-3".to_vec(),
            b"\\x00ff".to_vec(),
            b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".to_vec(),
            b"-c application_intent=read_only -c statement_timeout=5s --search_path=x".to_vec(),
            b"1\tone\t\\N\n2\t\\\\two\n".to_vec(),
            b"\"a,b\",\"c\"\"d\",\n1,,x\n".to_vec(),
            [0, 0, 0, 0, 0, 1, 0x86, 0xa0].to_vec(),
            binary_copy,
        ];
        fuzz("front-end values", 0x5EED_0005, 20_000, &corpus, |input| {
            let text_input = text(input);
            for ty in &types {
                let _ = decode_text(ty, &text_input);
                let _ = decode_binary_field(ty, input);
            }
            let _ = crate::frontend::parse_options(&text_input);
            let mut settings = crate::frontend::Settings::default();
            for (name, value) in crate::frontend::parse_options(&text_input) {
                let _ = settings.set(&name, Some(&value));
            }
            let _ = crate::sql::pg::copy::parse_binary(input);
            for spec in [
                "COPY t FROM STDIN",
                "COPY t FROM STDIN WITH (FORMAT csv, HEADER true)",
                "COPY t FROM STDIN WITH (FORMAT csv, DELIMITER ';', QUOTE '''', NULL 'n')",
            ] {
                if let crate::sql::pg::Translated::Copy(spec) = crate::sql::pg::translate(spec) {
                    let _ = spec.parse_rows(&text_input);
                }
            }
        });
    }

    /// The AG DDL parser on mangled statements.
    #[test]
    fn fuzz_ag_ddl_parser() {
        let corpus: Vec<Vec<u8>> = [
            "CREATE AVAILABILITY GROUP ag1 WITH (CLUSTER_TYPE = NONE, REQUIRED_SYNCHRONIZED_SECONDARIES_TO_COMMIT = 1) FOR DATABASE app, b REPLICA ON 'r1' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:7001', AVAILABILITY_MODE = SYNCHRONOUS_COMMIT, FAILOVER_MODE = AUTOMATIC, SESSION_TIMEOUT = 10, SECONDARY_ROLE (ALLOW_CONNECTIONS = READ_ONLY, READ_ONLY_ROUTING_URL = 'tcp://h:5433')), 'r2' WITH (ENDPOINT_URL = 'tcp://[::1]:7002', AVAILABILITY_MODE = ASYNCHRONOUS_COMMIT, FAILOVER_MODE = MANUAL) LISTENER 'l' (PORT = 5440)",
            "ALTER AVAILABILITY GROUP ag1 MODIFY REPLICA ON 'r2' WITH (PRIMARY_ROLE (READ_ONLY_ROUTING_LIST = (('r2', 'r3'), 'r1')))",
            "ALTER AVAILABILITY GROUP ag1 FORCE_FAILOVER_ALLOW_DATA_LOSS",
            "ALTER AVAILABILITY GROUP ag1 JOIN WITH (CLUSTER_TYPE = EXTERNAL)",
            "ALTER AVAILABILITY GROUP ag1 ADD DATABASE app",
            "ALTER DATABASE app SET HADR SUSPEND",
            "ALTER CLUSTER ADD NODE 'w1' WITH (ENDPOINT_URL = 'tcp://127.0.0.1:7009', VOTE = OFF)",
            "DROP AVAILABILITY GROUP ag1",
            "ALTER AVAILABILITY GROUP ag1 ADD SECONDARY ON SERVER 'west' WITH (DATABASE_NAME = 'app', ALLOW_CONNECTIONS = ALL)",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        fuzz("AG DDL", 0x5EED_0006, 20_000, &corpus, |input| {
            let sql = text(input);
            if crate::sql::ag::is_ag_statement(&sql) {
                let _ = crate::sql::ag::parse(&sql);
            }
            let _ = crate::sql::ag::parse(&sql);
            let _ = crate::sql::ag::parse_tcp_url(&sql);
        });
    }

    /// The SQL layer: splitting, classifying and the PostgreSQL
    /// translation, on mangled PostgreSQL.
    #[test]
    fn fuzz_sql_translation() {
        let corpus: Vec<Vec<u8>> = [
            "SELECT a::int, E'x\\ny', ARRAY[1,2] FROM t WHERE b ~* 'x' AND c = ANY($1) LIMIT 3; SELECT 1",
            "CREATE TABLE t (id SERIAL PRIMARY KEY, v varchar(10) DEFAULT now()::text, j jsonb)",
            "COPY t (a, b) FROM STDIN WITH (FORMAT csv)",
            "INSERT INTO t VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET v = excluded.v RETURNING id",
            "SELECT c.relname FROM pg_catalog.pg_class c WHERE pg_catalog.pg_table_is_visible(c.oid) ORDER BY 1",
            "BEGIN ISOLATION LEVEL SERIALIZABLE; SET statement_timeout = '5s'; SHOW search_path",
            "DECLARE c CURSOR FOR SELECT * FROM t; FETCH 10 FROM c; CLOSE c",
            "CREATE TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; END; DROP TABLE a, b",
            "ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES u(id)",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        /// Every table has an integer and a text column.
        struct AnySchema;
        impl crate::sql::typing::Schema for AnySchema {
            fn column_type(&self, _: &str, column: &str) -> Option<crate::sql::types::ValueType> {
                use crate::sql::types::ValueType;
                Some(if column.len().is_multiple_of(2) {
                    ValueType::Int8
                } else {
                    ValueType::Text
                })
            }
            fn table_columns(&self, _: &str) -> Option<Vec<crate::sql::types::ValueType>> {
                use crate::sql::types::ValueType;
                Some(vec![ValueType::Int8, ValueType::Text])
            }
        }
        fuzz("SQL translation", 0x5EED_0007, 4_000, &corpus, |input| {
            let sql = text(input);
            for statement in crate::sql::split::split_statements(&sql) {
                let _ = crate::sql::command::classify(statement);
                let _ = crate::sql::pg::temp_object(statement);
                let translated = match crate::sql::pg::translate(statement) {
                    crate::sql::pg::Translated::Sql(sqlite) => sqlite,
                    _ => statement.to_string(),
                };
                let _ = crate::sql::typing::infer_parameter_types(&translated, 3, &AnySchema);
                let _ =
                    crate::sql::typing::infer_column_types(&translated, &[None, None], &AnySchema);
            }
        });
    }
}
