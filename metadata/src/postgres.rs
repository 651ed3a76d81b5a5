//! The shared backend: a PostgreSQL database (or an engine that speaks its protocol and SQL,
//! such as CockroachDB or YugabyteDB), reached with `tokio-postgres`. Each connection has a
//! single-threaded runtime of its own and is driven by the thread that waits for its answer
//! (see [`Driver`]).
//!
//! Tables (see docs/FORMAT.md): `spoolfs_schema (id, version)` with one row, and
//! `spoolfs_kv (k bytea primary key, v bytea)`. Only plain tables, primary keys, `ON CONFLICT`
//! upserts and `unnest` of arrays are used: no stored procedures, no advisory locks.
//!
//! How a transaction maps to round trips:
//! - `BEGIN` is sent with the first read (pipelined), so a read costs one round trip.
//! - [`KvRead::prefetch`] fetches the keys and ranges a transaction is about to read in one
//!   round trip (one statement for the keys, one per range, pipelined); reads of them are then
//!   served from the transaction's own copy.
//! - Writes (`put`, `delete`) are buffered in the transaction (its reads see them) and sent at
//!   commit, pipelined with `COMMIT`: one multi-row upsert, one multi-key delete, `COMMIT`,
//!   all in one round trip.
//! - A view, or a transaction that ends with an error, is ended with a `COMMIT`/`ROLLBACK`
//!   that is sent and not waited for: the connection's next request queues behind it.
//!
//! Updates run `SERIALIZABLE`; views `REPEATABLE READ READ ONLY` (a snapshot, as redb gives,
//! which never fails with a serialization error). An update that fails with a serialization
//! failure (40001) or a deadlock (40P01) runs again after a backoff, up to a limit.
//!
//! Optimistic commits: the store remembers (boundedly, see `known.rs`) what its own
//! transactions last read or wrote. An update may read keys, and prefetched ranges, from that
//! instead of the database; it then sends, ahead of its writes in the commit's round trip, a
//! statement that fails with `division_by_zero` (22012) unless every row it read that way still
//! holds that value (and every such range that many rows). Under `SERIALIZABLE` those rows are
//! in the transaction's read set as if it had read them, so the outcome is that of a
//! transaction that did. A failed assertion drops what was remembered and runs the transaction
//! again reading the database (an optimistic miss, counted; not an error). A transaction whose
//! closure fails after such reads also runs again reading the database, so that no error comes
//! from a stale memory. Views never read from it: a read-only call sees the database.

use crate::known::Known;
use crate::pgpass;
use crate::pgtls::{PgTls, SslMode, TlsParams};
use crate::write_set::{BuffersWrites, WriteSet};
use crate::{
    Durability, Entries, KvRead, KvStore, MetaError, Result, StoreStats, UpdateFn, ViewFn,
};
use futures::FutureExt;
use futures::future::OptionFuture;
use parking_lot::{Condvar, Mutex};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};

/// The schema version this build creates and understands.
pub const SCHEMA_VERSION: i32 = 1;

const CREATE_SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS spoolfs_schema (id INT PRIMARY KEY, version INT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS spoolfs_kv (k BYTEA PRIMARY KEY, v BYTEA NOT NULL)",
];
const READ_VERSION: &str = "SELECT version FROM spoolfs_schema WHERE id = 1";
const BEGIN_UPDATE: &str = "BEGIN ISOLATION LEVEL SERIALIZABLE";
/// An update whose commit need not wait for the server's WAL flush ([`Durability::Visible`]):
/// it is committed (every later transaction on every node sees it) when `COMMIT` returns, and
/// on the server's disk a moment later (PostgreSQL: within three `wal_writer_delay`), or at
/// the next commit that waits, whoever makes it (the WAL is one sequence).
const BEGIN_UPDATE_NO_FLUSH: &str =
    "BEGIN ISOLATION LEVEL SERIALIZABLE; SET LOCAL synchronous_commit TO off";
/// The key a flush ([`PgStore::flush`]) writes and deletes in one transaction, so that its
/// commit has WAL to wait for: after every key the engine uses, followed by the store's shard.
const FLUSH_KEY_PREFIX: &[u8] = b"\xff\xffflush/";
const BEGIN_VIEW: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// Limits of a PostgreSQL store, set with query parameters of the metadata URL
/// (`?connections=8&retries=40&connect_timeout=10&known_keys=4096`), and its TLS parameters
/// (libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, see `pgtls.rs`); the other
/// parameters are passed to tokio-postgres's libpq-style parser.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Most connections open at once (concurrent transactions beyond it wait).
    pub connections: usize,
    /// Most times a transaction runs again after a serialization failure or a deadlock.
    pub retries: u32,
    pub connect_timeout: Duration,
    /// About how many keys' values this process remembers for optimistic commits (0: none,
    /// every transaction reads the database).
    pub known_keys: usize,
    /// Which commits wait for the server's WAL flush: only those that must survive a crash
    /// of the database server (`commit_wait=durable`, the default), or every one
    /// (`commit_wait=all`).
    pub commit_wait: CommitWait,
    /// `sslmode`, `sslrootcert`, `sslcert`, `sslkey` as given in the URL.
    pub tls: TlsParams,
}

/// See [`PgOptions::commit_wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitWait {
    /// [`Durability::Durable`] commits and flushes wait; [`Durability::Visible`] ones do not.
    Durable,
    /// Every commit waits for the server's flush.
    All,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            connections: 8,
            retries: 40,
            connect_timeout: Duration::from_secs(10),
            known_keys: 4096,
            commit_wait: CommitWait::Durable,
            tls: TlsParams::default(),
        }
    }
}

/// Whether `open` creates the schema (format) or requires it (everything else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaMode {
    Create,
    Require,
}

struct Statements {
    get: Statement,
    get_many: Statement,
    scan: Statement,
    scan_back: Statement,
    upsert: Statement,
    delete: Statement,
    /// Fails with 22012 unless every key holds the value given (NULL: no such key).
    assert_keys: Statement,
    /// Fails with 22012 unless every range `[start, end)` holds the number of rows given.
    assert_ranges: Statement,
}

/// A connection's I/O, driven by the thread that waits for its answers: the connection
/// future is polled inside the same `block_on` as the request, on a single-threaded runtime of
/// the connection's own (where its socket is registered). A round trip then wakes no other
/// thread; with the connection task on a shared multi-threaded runtime, each one woke a worker
/// to send the request and read the answer, then woke the caller, which on a machine of two
/// busy CPUs cost as much as the database's own work.
struct Driver {
    runtime: tokio::runtime::Runtime,
    /// `None` once it has ended (the server went away, or the client was dropped).
    connection: Mutex<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>,
}

/// What [`Driver::connect`] gives: the client and its driver, or the connection's error.
type Connected = std::result::Result<(Client, Driver), tokio_postgres::Error>;

impl Driver {
    /// Connects with `connect` on a new runtime of the connection's own. `Err`: the runtime
    /// could not start.
    fn connect<S, T>(
        connect: impl Future<
            Output = std::result::Result<
                (Client, tokio_postgres::Connection<S, T>),
                tokio_postgres::Error,
            >,
        >,
    ) -> std::result::Result<Connected, String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a PostgreSQL connection's runtime: {e}"))?;
        Ok(runtime.block_on(connect).map(|(client, connection)| {
            let connection: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
                let _ = connection.await;
            });
            (
                client,
                Driver {
                    runtime,
                    connection: Mutex::new(Some(connection)),
                },
            )
        }))
    }

    /// Runs `fut` (requests of this connection's client) to completion, driving the
    /// connection meanwhile.
    fn block_on<T>(&self, fut: impl Future<Output = T>) -> T {
        let mut connection = self.connection.lock();
        let mut fut = std::pin::pin!(fut);
        self.runtime.block_on(std::future::poll_fn(|cx| {
            // The request is queued by the future's poll, sent and answered by the
            // connection's; the answer wakes this task, which polls the future again.
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            if let Some(c) = connection.as_mut()
                && c.as_mut().poll(cx).is_ready()
            {
                // Ended: the future's requests fail now.
                *connection = None;
                return fut.as_mut().poll(cx);
            }
            Poll::Pending
        }))
    }

    /// Sends what is queued on the connection (a request not waited for) without waiting
    /// for anything: one poll of the connection. Its answer is read at the next request.
    fn push(&self) {
        let mut connection = self.connection.lock();
        let Some(c) = connection.as_mut() else { return };
        let ended = self.runtime.block_on(std::future::poll_fn(|cx| {
            Poll::Ready(c.as_mut().poll(cx).is_ready())
        }));
        if ended {
            *connection = None;
        }
    }
}

struct Conn {
    client: Client,
    driver: Driver,
    stmts: Statements,
    /// The counter shard of the transactions run on this connection (see
    /// [`KvRead::counter_shard`]): one per connection slot, so that two transactions of this
    /// process running at once never update the same counter row.
    counter_shard: u32,
    /// The server accepts `SET LOCAL synchronous_commit` (engines that always replicate a
    /// commit before answering, such as CockroachDB, may refuse it; they need no flush).
    may_skip_flush: bool,
}

#[derive(Default)]
struct Counters {
    round_trips: AtomicU64,
    transactions: AtomicU64,
    retries: AtomicU64,
    connections: AtomicU64,
    optimistic_misses: AtomicU64,
    flushes: AtomicU64,
    waited_commits: AtomicU64,
}

pub struct PgStore {
    config: tokio_postgres::Config,
    /// The TLS connector (also when TLS is off: tokio-postgres asks for one).
    tls: PgTls,
    options: PgOptions,
    describe: String,
    /// Where the password came from, or why none was found (for authentication errors).
    password_note: String,
    idle: Mutex<Vec<Conn>>,
    /// See [`KvRead::counter_shard`]: this process's first, drawn at open; its connections
    /// use it and the next `connections - 1` numbers.
    counter_shard: u32,
    /// Connections open (idle or in use).
    open: Mutex<usize>,
    returned: Condvar,
    counters: Counters,
    /// What this process's transactions last read or wrote (`None`: `known_keys=0`).
    known: Option<Mutex<Known>>,
}

/// Why a statement failed, as the retry loop needs to know it.
#[derive(Debug)]
enum Failure {
    /// A serialization failure or deadlock: run the transaction again.
    Conflict(String),
    /// The connection is unusable (closed, I/O error): drop it.
    Broken(String),
    /// Anything else the database refused.
    Refused(String),
    /// A value read from memory was no longer in the database: run again, reading it.
    Stale,
}

impl Failure {
    fn from_pg(e: &tokio_postgres::Error) -> Failure {
        let text = describe_pg_error(e);
        match e.code() {
            Some(c)
                if *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::T_R_DEADLOCK_DETECTED =>
            {
                Failure::Conflict(text)
            }
            Some(c) if *c == SqlState::DIVISION_BY_ZERO => Failure::Stale,
            Some(_) => Failure::Refused(text),
            None => Failure::Broken(text),
        }
    }

    fn to_meta(&self) -> MetaError {
        match self {
            Failure::Conflict(m) => MetaError::Io(format!("PostgreSQL: {m}")),
            Failure::Broken(m) => MetaError::Unavailable(format!("PostgreSQL connection: {m}")),
            Failure::Refused(m) => MetaError::Io(format!("PostgreSQL: {m}")),
            Failure::Stale => MetaError::Io("PostgreSQL: a remembered row changed".into()),
        }
    }
}

/// The server's message (and detail) for a database error, else the client's.
fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(": ");
                s.push_str(d);
            }
            s
        }
        None => {
            // tokio-postgres's own text, plus its cause ("Connection refused (os error 111)").
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                s.push_str(": ");
                s.push_str(&cause.to_string());
                source = cause.source();
            }
            s
        }
    }
}

/// Splits spoolfs's own query parameters off a PostgreSQL URL; the rest is for libpq's parser.
fn split_options(url: &str) -> Result<(String, PgOptions)> {
    let bad = |reason: String| MetaError::BadUrl {
        url: redact(url),
        reason,
    };
    let mut parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let mut options = PgOptions::default();
    let mut rest = Vec::new();
    for (k, v) in parsed.query_pairs() {
        let number = |what: &str| -> Result<u64> {
            v.parse::<u64>()
                .map_err(|_| bad(format!("{what}={v:?} is not a number")))
        };
        match &*k {
            "connections" => {
                options.connections = number("connections")?.clamp(1, 1024) as usize;
            }
            "retries" => options.retries = number("retries")?.min(10_000) as u32,
            "known_keys" => options.known_keys = number("known_keys")?.min(1 << 24) as usize,
            "commit_wait" => {
                options.commit_wait = match &*v {
                    "durable" => CommitWait::Durable,
                    "all" => CommitWait::All,
                    _ => return Err(bad(format!("commit_wait={v:?}: use durable or all"))),
                }
            }
            "connect_timeout" => {
                options.connect_timeout = Duration::from_secs(number("connect_timeout")?.max(1));
            }
            "sslmode" => {
                options.tls.mode = Some(
                    SslMode::parse(&v)
                        .ok_or_else(|| bad(format!("sslmode={v:?}: use {}", SslMode::ALLOWED)))?,
                )
            }
            "sslrootcert" => options.tls.root_cert = Some(v.into_owned()),
            "sslcert" => options.tls.cert = Some(v.into_owned()),
            "sslkey" => options.tls.key = Some(v.into_owned()),
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    if rest.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(rest);
    }
    Ok((parsed.to_string(), options))
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("*****"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(unparsable PostgreSQL URL)".to_string(),
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://` or `postgresql://`) and checks, or in
    /// [`SchemaMode::Create`] creates, the schema.
    pub fn open(url: &str, mode: SchemaMode) -> Result<PgStore> {
        let (libpq_url, options) = split_options(url)?;
        let mut config: tokio_postgres::Config =
            libpq_url
                .parse()
                .map_err(|e: tokio_postgres::Error| MetaError::BadUrl {
                    url: redact(url),
                    reason: e.to_string(),
                })?;
        if config.get_user().is_none() {
            let user = std::env::var("PGUSER")
                .ok()
                .filter(|u| !u.is_empty())
                .or_else(|| std::env::var("USER").ok().filter(|u| !u.is_empty()))
                .unwrap_or_else(|| "postgres".into());
            config.user(user);
        }
        if config.get_hosts().is_empty() {
            config.host("localhost");
        }
        let user = config.get_user().unwrap_or_default().to_string();
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        config.dbname(&dbname);
        config.connect_timeout(options.connect_timeout);
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let (host, host_text) = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => (Some(h.clone()), h.clone()),
            Some(tokio_postgres::config::Host::Unix(p)) => (None, p.display().to_string()),
            None => (None, "localhost".into()),
        };
        let password_note = if config.get_password().is_some() {
            "the password in the URL".to_string()
        } else {
            let target = pgpass::Target {
                host: host.as_deref(),
                port,
                database: &dbname,
                user: &user,
            };
            match pgpass::find(&target) {
                pgpass::Found::Password(p, source) => {
                    config.password(p);
                    format!("the password from {source}")
                }
                pgpass::Found::None(why) => match why {
                    Some(why) => format!("no password ({why})"),
                    None => "no password (none in the URL, PGPASSWORD or ~/.pgpass)".into(),
                },
            }
        };
        let describe = format!("postgres://{user}@{host_text}:{port}/{dbname}");
        let tls = PgTls::new(&options.tls, &mut config, &|reason| MetaError::BadUrl {
            url: redact(url),
            reason,
        })?;
        let known = (options.known_keys > 0).then(|| Mutex::new(Known::new(options.known_keys)));
        let store = PgStore {
            config,
            tls,
            options,
            describe,
            password_note,
            idle: Mutex::new(Vec::new()),
            counter_shard: random_shard(),
            open: Mutex::new(0),
            returned: Condvar::new(),
            counters: Counters::default(),
            known,
        };
        store.check_schema(mode)?;
        Ok(store)
    }

    /// The limits in force.
    pub fn options(&self) -> &PgOptions {
        &self.options
    }

    /// Reads (and in `Create` mode first creates) the schema version, on a connection made
    /// for that alone (the pooled ones prepare statements on the tables).
    fn check_schema(&self, mode: SchemaMode) -> Result<()> {
        let (client, driver) = self.connect_client()?;
        let version = driver.block_on(async {
            if mode == SchemaMode::Create {
                for sql in CREATE_SCHEMA {
                    client.batch_execute(sql).await?;
                }
                client
                    .execute(
                        "INSERT INTO spoolfs_schema (id, version) VALUES (1, $1) \
                         ON CONFLICT (id) DO NOTHING",
                        &[&SCHEMA_VERSION],
                    )
                    .await?;
            }
            client
                .query_opt(READ_VERSION, &[])
                .await
                .map(|row| row.map(|r| r.get::<_, i32>(0)))
        });
        let missing = || {
            MetaError::Schema(format!(
                "database {} has no spoolfs schema: run `spoolfs format --meta URL` first",
                self.describe
            ))
        };
        match version {
            Ok(Some(SCHEMA_VERSION)) => Ok(()),
            Ok(Some(other)) => Err(MetaError::Schema(format!(
                "database {} has spoolfs schema version {other}; this spoolfs uses version \
                 {SCHEMA_VERSION}",
                self.describe
            ))),
            Ok(None) => Err(missing()),
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Err(missing()),
            Err(e) => Err(Failure::from_pg(&e).to_meta()),
        }
    }

    /// One new connection, with the driver of its I/O.
    fn connect_client(&self) -> Result<(Client, Driver)> {
        let connected =
            Driver::connect(self.config.connect(self.tls.clone())).map_err(MetaError::Io)?;
        let (client, driver) = connected.map_err(|e| self.connect_error(&e))?;
        self.counters.connections.fetch_add(1, Ordering::Relaxed);
        Ok((client, driver))
    }

    fn connect_error(&self, e: &tokio_postgres::Error) -> MetaError {
        let auth = e.code().is_some_and(|c| {
            *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        }) || describe_pg_error(e).contains("password missing");
        if auth {
            return MetaError::Unavailable(format!(
                "cannot log in to {}: {} (tried {})",
                self.describe,
                describe_pg_error(e),
                self.password_note
            ));
        }
        let mut text = describe_pg_error(e);
        if text.contains("server does not support TLS") {
            text.push_str(
                " (enable ssl on the server, or give sslmode=disable to send the \
                           password and metadata in clear text)",
            );
        }
        MetaError::Unavailable(format!(
            "cannot connect to {} (sslmode={}): {text}",
            self.describe,
            self.tls.mode().name(),
        ))
    }

    fn connect(&self) -> Result<Conn> {
        // Slots are reused as connections come and go, so a process has at most
        // `connections` counter rows (two live connections sharing one only costs conflicts).
        let slot =
            self.counters.connections.load(Ordering::Relaxed) % self.options.connections as u64;
        let counter_shard = self.counter_shard.wrapping_add(slot as u32).max(1);
        let (client, driver) = self.connect_client()?;
        // Serializable transactions lock what they read; a sequential scan (which the planner
        // picks for a small table) locks the whole table, so that every concurrent write
        // conflicts with it. Index scans lock only the pages they visit. (Engines without the
        // setting refuse it; they have no such scans to avoid.)
        let _ = driver.block_on(client.batch_execute("SET enable_seqscan = off"));
        // Whether the server knows the setting and the value, asked in a transaction block of
        // its own (outside one, PostgreSQL accepts `SET LOCAL` with a warning in the log).
        let may_skip_flush = self.options.commit_wait == CommitWait::Durable && {
            let probe = driver.block_on(
                client.batch_execute("BEGIN; SET LOCAL synchronous_commit TO off; COMMIT"),
            );
            if probe.is_err() {
                // The refused statement left the block open and aborted.
                let _ = driver.block_on(client.batch_execute("ROLLBACK"));
            }
            probe.is_ok()
        };
        let stmts =
            driver.block_on(async {
                let (get, get_many, scan, scan_back, upsert, delete, assert_keys, assert_ranges) =
                    futures::join!(
                client.prepare("SELECT v FROM spoolfs_kv WHERE k = $1"),
                client.prepare("SELECT k, v FROM spoolfs_kv WHERE k = ANY($1::BYTEA[])"),
                client.prepare(
                    "SELECT k, v FROM spoolfs_kv WHERE k >= $1 AND k < $2 ORDER BY k LIMIT $3"
                ),
                client.prepare(
                    "SELECT k, v FROM spoolfs_kv WHERE k >= $1 AND k < $2 ORDER BY k DESC LIMIT $3"
                ),
                client.prepare(
                    "INSERT INTO spoolfs_kv (k, v) SELECT * FROM unnest($1::BYTEA[], $2::BYTEA[]) \
                     ON CONFLICT (k) DO UPDATE SET v = excluded.v"
                ),
                client.prepare("DELETE FROM spoolfs_kv WHERE k = ANY($1::BYTEA[])"),
                // A correlated point read per key (an index lookup each, whatever the plan).
                client.prepare(
                    "SELECT 1 / (CASE WHEN EXISTS (SELECT 1 FROM unnest($1::BYTEA[], $2::BYTEA[]) \
                     AS a (k, v) WHERE (SELECT s.v FROM spoolfs_kv s WHERE s.k = a.k) \
                     IS DISTINCT FROM a.v) THEN 0 ELSE 1 END)"
                ),
                client.prepare(
                    "SELECT 1 / (CASE WHEN EXISTS (SELECT 1 FROM unnest($1::BYTEA[], $2::BYTEA[], \
                     $3::INT8[]) AS r (s, e, n) WHERE (SELECT count(*) FROM spoolfs_kv \
                     WHERE k >= r.s AND k < r.e) <> r.n) THEN 0 ELSE 1 END)"
                ),
            );
                Ok::<_, tokio_postgres::Error>(Statements {
                    get: get?,
                    get_many: get_many?,
                    scan: scan?,
                    scan_back: scan_back?,
                    upsert: upsert?,
                    delete: delete?,
                    assert_keys: assert_keys?,
                    assert_ranges: assert_ranges?,
                })
            });
        let stmts = stmts.map_err(|e| Failure::from_pg(&e).to_meta())?;
        Ok(Conn {
            client,
            driver,
            stmts,
            counter_shard,
            may_skip_flush,
        })
    }

    /// An idle connection, a new one while fewer than the limit are open, else waits for one.
    fn checkout(&self) -> Result<Conn> {
        loop {
            if let Some(conn) = self.idle.lock().pop() {
                if conn.client.is_closed() {
                    self.forget_one();
                    continue;
                }
                return Ok(conn);
            }
            let mut open = self.open.lock();
            if *open < self.options.connections {
                *open += 1;
                drop(open);
                return self.connect().inspect_err(|_| self.forget_one());
            }
            // Wait for a connection to come back (or to be dropped).
            self.returned
                .wait_for(&mut open, Duration::from_millis(100));
        }
    }

    fn give_back(&self, conn: Conn) {
        if conn.client.is_closed() {
            self.forget_one();
        } else {
            self.idle.lock().push(conn);
            self.returned.notify_one();
        }
    }

    /// Returns a connection after use; a broken one is dropped and its slot freed.
    fn put_back(&self, conn: Conn, broken: bool) {
        if broken {
            drop(conn);
            self.forget_one();
        } else {
            self.give_back(conn);
        }
    }

    fn forget_one(&self) {
        let mut open = self.open.lock();
        *open = open.saturating_sub(1);
        self.returned.notify_one();
    }

    /// Makes every transaction committed before the call durable on the server, whichever
    /// node committed it: one transaction that writes (and removes) a row of its own and
    /// waits for its commit's WAL flush, which covers every earlier commit record.
    fn flush(&self) -> Result<()> {
        let mut key = FLUSH_KEY_PREFIX.to_vec();
        key.extend_from_slice(&self.counter_shard.to_be_bytes());
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        // Two statements in one simple query: one implicit transaction, committed with the
        // session's `synchronous_commit` (on unless the server was set otherwise).
        let sql = format!(
            "INSERT INTO spoolfs_kv (k, v) VALUES ('\\x{hex}'::BYTEA, ''::BYTEA) \
             ON CONFLICT (k) DO NOTHING; DELETE FROM spoolfs_kv WHERE k = '\\x{hex}'::BYTEA"
        );
        let mut attempt = 0u32;
        loop {
            let conn = self.checkout()?;
            let done = conn.driver.block_on(conn.client.batch_execute(&sql));
            self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
            self.counters.flushes.fetch_add(1, Ordering::Relaxed);
            let failure = match done {
                Ok(()) => {
                    self.give_back(conn);
                    return Ok(());
                }
                Err(e) => Failure::from_pg(&e),
            };
            self.put_back(conn, matches!(failure, Failure::Broken(_)));
            match failure {
                Failure::Conflict(_) if attempt < self.options.retries => {
                    attempt += 1;
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(backoff(attempt));
                }
                other => return Err(other.to_meta()),
            }
        }
    }

    /// Runs `f` in one transaction on a pooled connection, again after a conflict.
    fn run(
        &self,
        begin: &'static str,
        durability: Durability,
        f: &mut dyn FnMut(&mut PgTxn) -> Result<()>,
    ) -> Result<()> {
        let mut attempt = 0u32;
        // Only an update's first run may read from memory: its commit checks what it used.
        let mut optimistic = begin == BEGIN_UPDATE && self.known.is_some();
        loop {
            let conn = self.checkout()?;
            self.counters.transactions.fetch_add(1, Ordering::Relaxed);
            let stamp = self.known.as_ref().map_or(0, |k| k.lock().stamp());
            let begin = if begin == BEGIN_UPDATE
                && durability == Durability::Visible
                && conn.may_skip_flush
            {
                BEGIN_UPDATE_NO_FLUSH
            } else {
                begin
            };
            let mut txn = PgTxn {
                store: self,
                conn: &conn,
                begin,
                began: Cell::new(false),
                writes: BTreeMap::new(),
                fetched: RefCell::new(Fetched::default()),
                failure: RefCell::new(None),
                optimistic,
                stamp,
                asserted: RefCell::new(BTreeMap::new()),
                asserted_ranges: RefCell::new(Vec::new()),
                noted_empty: RefCell::new(Vec::new()),
                expected_absent: RefCell::new(Default::default()),
            };
            let result = f(&mut txn).and_then(|()| txn.finish());
            let failure = txn.failure.take();
            if result.is_err() || failure.is_some() {
                txn.abandon();
            }
            let used_memory = txn.used_memory();
            match (&failure, &result) {
                (None, Ok(())) => txn.learn(true),
                // The closure failed (`ENOENT` of a lookup): its reads were the database's,
                // unless it used remembered ones (then it runs again below).
                (None, Err(_)) if !used_memory => txn.learn(false),
                (None, Err(_)) => {}
                (Some(Failure::Stale | Failure::Conflict(_)), _) => txn.forget_used(false),
                // The commit may or may not have happened.
                (Some(Failure::Broken(_) | Failure::Refused(_)), _) => txn.forget_used(true),
            }
            drop(txn);
            self.put_back(conn, matches!(failure, Some(Failure::Broken(_))));
            optimistic = false;
            match (failure, result) {
                (Some(Failure::Stale), _) => {
                    self.counters
                        .optimistic_misses
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("PostgreSQL transaction runs again: a remembered row changed");
                }
                // An error drawn from remembered rows must be the database's own.
                (None, Err(_)) if used_memory => {}
                // A refusal of a commit that carried checks (an engine refusing the check
                // statements themselves included): the run reading the database decides.
                (Some(Failure::Refused(why)), _) if used_memory => {
                    tracing::debug!("PostgreSQL transaction runs again without memory: {why}");
                }
                (Some(Failure::Conflict(why)), _) => {
                    if attempt >= self.options.retries {
                        return Err(MetaError::Io(format!(
                            "PostgreSQL: transaction still conflicting after {attempt} retries: \
                             {why}"
                        )));
                    }
                    attempt += 1;
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("PostgreSQL transaction runs again (attempt {attempt}): {why}");
                    std::thread::sleep(backoff(attempt));
                }
                (Some(other), _) => return Err(other.to_meta()),
                (None, result) => return result,
            }
        }
    }
}

/// A counter shard for this store handle: random, never 0.
fn random_shard() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() as u32).max(1)
}

/// Exponential backoff with jitter: 1 ms doubling to 100 ms, each a random 50-100 % of it.
fn backoff(attempt: u32) -> Duration {
    let base_us = (1000u64 << attempt.min(7)).min(100_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let jitter = (nanos ^ (nanos >> 7)) % (base_us / 2 + 1);
    Duration::from_micros(base_us / 2 + jitter)
}

/// Committed changes of a transaction not yet sent: `Some` is a put, `None` a delete.
type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// What a transaction has prefetched: stored values of keys (`None`: no such key) and the
/// ranges whose every stored row is in `values`.
#[derive(Default)]
struct Fetched {
    values: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Fetched {
    fn covers(&self, start: &[u8], end: &[u8]) -> bool {
        self.ranges
            .iter()
            .any(|(s, e)| s.as_slice() <= start && end <= e.as_slice())
    }

    fn get(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        if let Some(v) = self.values.get(key) {
            return Some(v.clone());
        }
        let mut end = key.to_vec();
        end.push(0);
        self.covers(key, &end).then_some(None)
    }

    /// Stored rows of a covered range, in order (or reverse), at most `limit`.
    fn rows(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        backwards: bool,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let range = self
            .values
            .range::<[u8], _>((
                std::ops::Bound::Included(start),
                std::ops::Bound::Excluded(end),
            ))
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())));
        if backwards {
            range.rev().take(limit).collect()
        } else {
            range.take(limit).collect()
        }
    }
}

/// A range read from memory: `[start, end)` and its number of rows.
type AssertedRange = (Vec<u8>, Vec<u8>, i64);

struct PgTxn<'a> {
    store: &'a PgStore,
    conn: &'a Conn,
    begin: &'static str,
    /// `BEGIN` has been sent.
    began: Cell<bool>,
    writes: Writes,
    fetched: RefCell<Fetched>,
    /// The first failure of a statement: the transaction is dead on the server.
    failure: RefCell<Option<Failure>>,
    /// Reads may be served from what the process remembers (an update's first run).
    optimistic: bool,
    /// The process's memory when the transaction began (see [`Known::stamp`]).
    stamp: u64,
    /// Keys read from memory, with the value used: asserted at commit.
    asserted: RefCell<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    /// Ranges read from memory, with their number of rows: asserted at commit.
    asserted_ranges: RefCell<Vec<AssertedRange>>,
    /// Ranges the caller said were empty (see [`KvRead::note_empty`]).
    noted_empty: RefCell<Vec<(Vec<u8>, Vec<u8>)>>,
    /// Keys the caller expects absent (see [`KvRead::expect_absent`]).
    expected_absent: RefCell<std::collections::BTreeSet<Vec<u8>>>,
}

impl PgTxn<'_> {
    /// The value of `key` as this process remembers it, on an optimistic run.
    fn remembered(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        if !self.optimistic {
            return None;
        }
        let remembered = self.store.known.as_ref()?.lock().get(key);
        remembered.or_else(|| self.expected(key))
    }

    /// `Some(None)` for a key the caller expects absent (checked at commit like a remembered
    /// absence).
    fn expected(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.expected_absent.borrow().contains(key).then_some(None)
    }

    /// Serves a whole prefetch from what the process remembers, or nothing of it (a round
    /// trip is paid anyway then, and fresh rows need no assertion).
    fn serve_from_memory(&self, keys: &[&[u8]], ranges: &[(&[u8], &[u8])]) -> bool {
        let Some(known) = self.store.known.as_ref().filter(|_| self.optimistic) else {
            return false;
        };
        let mut known = known.lock();
        let mut values = Vec::with_capacity(keys.len());
        for k in keys {
            match known.get(k).or_else(|| self.expected(k)) {
                Some(v) => values.push(v),
                None => return false,
            }
        }
        let mut range_rows = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match known.range(s, e) {
                Some(rows) => range_rows.push(rows),
                None => return false,
            }
        }
        drop(known);
        let mut fetched = self.fetched.borrow_mut();
        // What the transaction has read already must agree with memory: a row it saw must
        // not change under it, nor be checked for another value than the one it saw.
        let agrees = |k: &[u8], v: &Option<Vec<u8>>| fetched.get(k).is_none_or(|seen| seen == *v);
        let ranges_agree = ranges.iter().zip(&range_rows).all(|((s, e), rows)| {
            rows.iter().all(|(k, v)| agrees(k, &Some(v.clone())))
                && fetched
                    .rows(s, e, usize::MAX, false)
                    .iter()
                    .all(|(k, v)| rows.iter().any(|(rk, rv)| rk == k && rv == v))
        });
        if !ranges_agree || !keys.iter().zip(&values).all(|(k, v)| agrees(k, v)) {
            return false;
        }
        let mut asserted = self.asserted.borrow_mut();
        for (k, v) in keys.iter().zip(values) {
            asserted.insert(k.to_vec(), v.clone());
            fetched.values.insert(k.to_vec(), v);
        }
        let mut asserted_ranges = self.asserted_ranges.borrow_mut();
        for ((s, e), rows) in ranges.iter().zip(range_rows) {
            asserted_ranges.push((s.to_vec(), e.to_vec(), rows.len() as i64));
            for (k, v) in rows {
                asserted.insert(k.clone(), Some(v.clone()));
                fetched.values.insert(k, Some(v));
            }
            fetched.ranges.push((s.to_vec(), e.to_vec()));
        }
        true
    }

    /// Whether the transaction read anything from memory.
    fn used_memory(&self) -> bool {
        !self.asserted.borrow().is_empty() || !self.asserted_ranges.borrow().is_empty()
    }

    /// After a commit (`wrote`), or a run that read without a failure of the store: what the
    /// transaction read, and wrote, is what the process now knows.
    fn learn(&self, wrote: bool) {
        let Some(known) = &self.store.known else {
            return;
        };
        let fetched = self.fetched.borrow();
        let mut known = known.lock();
        for (s, e) in &fetched.ranges {
            let rows = fetched
                .values
                .range::<[u8], _>((
                    std::ops::Bound::Included(s.as_slice()),
                    std::ops::Bound::Excluded(e.as_slice()),
                ))
                .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
                .collect();
            known.learn_range(s, e, rows, self.stamp);
        }
        for (k, v) in &fetched.values {
            known.learn_read(k, v.clone(), self.stamp);
        }
        if !wrote || (self.writes.is_empty() && self.noted_empty.borrow().is_empty()) {
            return;
        }
        let commit = known.begin_commit();
        for (s, e) in self.noted_empty.borrow().iter() {
            known.learn_empty(s, e, commit);
        }
        for (k, v) in &self.writes {
            known.learn_write(k, v.as_deref(), commit);
        }
    }

    /// After a failure: what the transaction read from memory, and (when the outcome of its
    /// commit is unknown) what it wrote, is forgotten.
    fn forget_used(&self, with_writes: bool) {
        let Some(known) = &self.store.known else {
            return;
        };
        let mut known = known.lock();
        for k in self.asserted.borrow().keys() {
            known.forget(k);
        }
        for (s, e, _) in self.asserted_ranges.borrow().iter() {
            known.forget_range(s, e);
        }
        if with_writes {
            for k in self.writes.keys() {
                known.forget(k);
            }
        }
    }

    /// One round trip: `fut` (with `BEGIN` pipelined ahead of it if not yet sent).
    fn round_trip<T>(
        &self,
        fut: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        if let Some(f) = &*self.failure.borrow() {
            return Err(f.to_meta());
        }
        let begin: OptionFuture<_> = (!self.began.get())
            .then(|| self.conn.client.batch_execute(self.begin))
            .into();
        self.began.set(true);
        let (begun, out) = self
            .conn
            .driver
            .block_on(async { futures::join!(begin, fut) });
        self.store
            .counters
            .round_trips
            .fetch_add(1, Ordering::Relaxed);
        let out = match begun {
            Some(Err(e)) => Err(e),
            _ => out,
        };
        out.map_err(|e| {
            let failure = Failure::from_pg(&e);
            let meta = failure.to_meta();
            *self.failure.borrow_mut() = Some(failure);
            meta
        })
    }

    fn scan_dir(&self, start: &[u8], end: &[u8], limit: usize, backwards: bool) -> Result<Entries> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let own: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = self
            .writes
            .range::<[u8], _>((
                std::ops::Bound::Included(start),
                std::ops::Bound::Excluded(end),
            ))
            .collect();
        // A whole range the process remembers is read like a prefetched one (checked at commit).
        if !self.fetched.borrow().covers(start, end) {
            self.serve_from_memory(&[], &[(start, end)]);
        }
        // Every buffered delete may hide one stored row: ask for that many more.
        let deletes = own.iter().filter(|(_, v)| v.is_none()).count();
        let want = (limit.saturating_add(deletes)).min(i64::MAX as usize) as i64;
        let fetched = self.fetched.borrow();
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = if fetched.covers(start, end) {
            fetched
                .rows(start, end, want as usize, backwards)
                .into_iter()
                .collect()
        } else {
            drop(fetched);
            let stmt = if backwards {
                &self.conn.stmts.scan_back
            } else {
                &self.conn.stmts.scan
            };
            let rows = self.round_trip(self.conn.client.query(stmt, &[&start, &end, &want]))?;
            rows.into_iter()
                .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                .collect()
        };
        // Stored rows past the last one fetched are unknown: own puts beyond it must not
        // overtake them.
        let fetched_all = (merged.len() as i64) < want;
        let bound = if backwards {
            merged.keys().next().cloned()
        } else {
            merged.keys().next_back().cloned()
        };
        for (k, v) in own {
            let beyond = match (&bound, fetched_all) {
                (_, true) | (None, _) => false,
                (Some(b), false) => {
                    if backwards {
                        k < b
                    } else {
                        k > b
                    }
                }
            };
            match v {
                Some(v) if !beyond => {
                    merged.insert(k.clone(), v.clone());
                }
                Some(_) => {}
                None => {
                    merged.remove(k);
                }
            }
        }
        let out: Vec<_> = if backwards {
            merged.into_iter().rev().take(limit).collect()
        } else {
            merged.into_iter().take(limit).collect()
        };
        Ok(out)
    }

    /// Sends the buffered writes and `COMMIT` in one round trip (none for a transaction that
    /// neither read nor wrote).
    fn finish(&self) -> Result<()> {
        if let Some(f) = &*self.failure.borrow() {
            return Err(f.to_meta());
        }
        if self.writes.is_empty() && !self.used_memory() {
            if self.began.get() {
                if self.begin == BEGIN_VIEW {
                    // Nothing to wait for: a read-only snapshot ends when the server gets it.
                    self.send_and_forget("COMMIT");
                    self.began.set(false);
                } else {
                    let committed = self.round_trip(self.conn.client.batch_execute("COMMIT"));
                    // Committed or not, the transaction is over: nothing to roll back.
                    self.began.set(false);
                    committed?;
                }
            }
            return Ok(());
        }
        let mut put_keys: Vec<&[u8]> = Vec::new();
        let mut put_values: Vec<&[u8]> = Vec::new();
        let mut deletes: Vec<&[u8]> = Vec::new();
        for (k, v) in &self.writes {
            match v {
                Some(v) => {
                    put_keys.push(k);
                    put_values.push(v);
                }
                None => deletes.push(k),
            }
        }
        let client = &self.conn.client;
        let stmts = &self.conn.stmts;
        // What was read from memory, checked ahead of the writes in the same round trip.
        let asserted = self.asserted.borrow();
        let asserted_keys: Vec<&[u8]> = asserted.keys().map(Vec::as_slice).collect();
        let asserted_values: Vec<Option<&[u8]>> = asserted.values().map(|v| v.as_deref()).collect();
        let asserted_ranges = self.asserted_ranges.borrow();
        let range_starts: Vec<&[u8]> = asserted_ranges.iter().map(|r| r.0.as_slice()).collect();
        let range_ends: Vec<&[u8]> = asserted_ranges.iter().map(|r| r.1.as_slice()).collect();
        let range_counts: Vec<i64> = asserted_ranges.iter().map(|r| r.2).collect();
        type Param<'p> = &'p (dyn tokio_postgres::types::ToSql + Sync);
        let assert_key_params: [Param; 2] = [&asserted_keys, &asserted_values];
        let assert_range_params: [Param; 3] = [&range_starts, &range_ends, &range_counts];
        let assert_keys: OptionFuture<_> = (!asserted_keys.is_empty())
            .then(|| client.execute(&stmts.assert_keys, &assert_key_params))
            .into();
        let assert_ranges: OptionFuture<_> = (!range_starts.is_empty())
            .then(|| client.execute(&stmts.assert_ranges, &assert_range_params))
            .into();
        let upsert_params: [Param; 2] = [&put_keys, &put_values];
        let delete_params: [Param; 1] = [&deletes];
        let upsert: OptionFuture<_> = (!put_keys.is_empty())
            .then(|| client.execute(&stmts.upsert, &upsert_params))
            .into();
        let delete: OptionFuture<_> = (!deletes.is_empty())
            .then(|| client.execute(&stmts.delete, &delete_params))
            .into();
        let commit = client.batch_execute("COMMIT");
        let (keys_held, ranges_held, upserted, deleted, committed) = self.round_trip(async {
            let (k, r, u, d, c) =
                futures::join!(assert_keys, assert_ranges, upsert, delete, commit);
            Ok((k, r, u, d, c))
        })?;
        // `COMMIT` ended the transaction whatever happened (a failed one rolls back): a
        // `ROLLBACK` after it would only draw "there is no transaction in progress".
        self.began.set(false);
        if self.begin != BEGIN_UPDATE_NO_FLUSH {
            self.store
                .counters
                .waited_commits
                .fetch_add(1, Ordering::Relaxed);
        }
        // The first failure is the cause; later statements fail because of it, and a
        // `COMMIT` of a failed transaction is a rollback that reports success.
        for r in [
            keys_held.map(|r| r.map(drop)),
            ranges_held.map(|r| r.map(drop)),
            upserted.map(|r| r.map(drop)),
            deleted.map(|r| r.map(drop)),
            Some(committed),
        ]
        .into_iter()
        .flatten()
        {
            if let Err(e) = r {
                let failure = Failure::from_pg(&e);
                let meta = failure.to_meta();
                *self.failure.borrow_mut() = Some(failure);
                return Err(meta);
            }
        }
        Ok(())
    }

    /// Ends a transaction that will not commit (its closure failed, or a statement did).
    fn abandon(&self) {
        if self.began.get() {
            self.send_and_forget("ROLLBACK");
        }
    }

    /// Sends `sql` without waiting for its answer: the connection's next request queues behind
    /// it, and the answer is dropped when it arrives.
    fn send_and_forget(&self, sql: &str) {
        // The request is queued on the connection in the future's first poll, and sent by
        // the connection's next poll, at once: a view's snapshot must not stay open on the
        // server while the connection waits in the pool.
        let _ = self.conn.client.batch_execute(sql).now_or_never();
        self.conn.driver.push();
    }
}

impl KvRead for PgTxn<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = self.fetched.borrow().get(key) {
            return Ok(v);
        }
        if let Some(v) = self.remembered(key) {
            self.asserted.borrow_mut().insert(key.to_vec(), v.clone());
            self.fetched
                .borrow_mut()
                .values
                .insert(key.to_vec(), v.clone());
            return Ok(v);
        }
        let row = self.round_trip(self.conn.client.query_opt(&self.conn.stmts.get, &[&key]))?;
        let value = row.map(|r| r.get::<_, Vec<u8>>(0));
        self.fetched
            .borrow_mut()
            .values
            .insert(key.to_vec(), value.clone());
        Ok(value)
    }
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries> {
        self.scan_dir(start, end, limit, false)
    }
    fn scan_back(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries> {
        self.scan_dir(start, end, limit, true)
    }
    fn counter_shard(&self) -> Option<u32> {
        Some(self.conn.counter_shard)
    }
    fn expect_absent(&self, key: &[u8]) {
        if self.optimistic {
            self.expected_absent.borrow_mut().insert(key.to_vec());
        }
    }
    fn guess(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.store.known.as_ref()?.lock().get(key)
    }
    fn note_empty(&self, start: &[u8], end: &[u8]) {
        if start < end {
            self.noted_empty
                .borrow_mut()
                .push((start.to_vec(), end.to_vec()));
        }
    }
    fn prefetch(&self, keys: &[&[u8]], ranges: &[(&[u8], &[u8])]) -> Result<()> {
        // Only what is neither written by the transaction nor fetched already.
        let (keys, ranges) = {
            let fetched = self.fetched.borrow();
            let keys: Vec<&[u8]> = keys
                .iter()
                .copied()
                .filter(|k| !self.writes.contains_key(*k) && fetched.get(k).is_none())
                .collect();
            let ranges: Vec<(&[u8], &[u8])> = ranges
                .iter()
                .copied()
                .filter(|(s, e)| s < e && !fetched.covers(s, e))
                .collect();
            (keys, ranges)
        };
        if keys.is_empty() && ranges.is_empty() {
            return Ok(());
        }
        if self.serve_from_memory(&keys, &ranges) {
            return Ok(());
        }
        let client = &self.conn.client;
        let all = i64::MAX;
        type Param<'p> = &'p (dyn tokio_postgres::types::ToSql + Sync);
        let key_params: [Param; 1] = [&keys];
        let range_params: Vec<[Param; 3]> = ranges
            .iter()
            .map(|(s, e)| [s as Param, e as Param, &all as Param])
            .collect();
        let by_key: OptionFuture<_> = (!keys.is_empty())
            .then(|| client.query(&self.conn.stmts.get_many, &key_params))
            .into();
        let by_range = futures::future::join_all(
            range_params
                .iter()
                .map(|p| client.query(&self.conn.stmts.scan, p)),
        );
        let (key_rows, range_rows) = self.round_trip(async {
            let (k, r) = futures::join!(by_key, by_range);
            let k = k.transpose()?;
            let r = r.into_iter().collect::<std::result::Result<Vec<_>, _>>()?;
            Ok((k, r))
        })?;
        let mut fetched = self.fetched.borrow_mut();
        for k in &keys {
            fetched.values.insert(k.to_vec(), None);
        }
        for row in key_rows
            .into_iter()
            .flatten()
            .chain(range_rows.into_iter().flatten())
        {
            fetched
                .values
                .insert(row.get::<_, Vec<u8>>(0), Some(row.get::<_, Vec<u8>>(1)));
        }
        fetched
            .ranges
            .extend(ranges.iter().map(|(s, e)| (s.to_vec(), e.to_vec())));
        Ok(())
    }
}

impl BuffersWrites for PgTxn<'_> {
    fn write_set(&mut self) -> &mut WriteSet {
        &mut self.writes
    }
}

impl KvStore for PgStore {
    fn view(&self, f: ViewFn<'_>) -> Result<()> {
        self.run(BEGIN_VIEW, Durability::Visible, &mut |t| f(t))
    }

    /// A [`Durability::Durable`] update's commit waits for the server's WAL flush; a
    /// [`Durability::Visible`] one does not (with `commit_wait=durable`, on a server that
    /// allows it): both are committed, visible to every node, when this returns.
    fn update(&self, durability: Durability, f: UpdateFn<'_>) -> Result<()> {
        self.run(BEGIN_UPDATE, durability, &mut |t| f(t))
    }

    /// Waits for the server's WAL flush over every commit made before the call, by any node.
    fn persist(&self) -> Result<()> {
        self.flush()
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            round_trips: self.counters.round_trips.load(Ordering::Relaxed),
            transactions: self.counters.transactions.load(Ordering::Relaxed),
            retries: self.counters.retries.load(Ordering::Relaxed),
            connections: self.counters.connections.load(Ordering::Relaxed),
            optimistic_misses: self.counters.optimistic_misses.load(Ordering::Relaxed),
            flushes: self.counters.flushes.load(Ordering::Relaxed),
            waited_commits: self.counters.waited_commits.load(Ordering::Relaxed),
        }
    }

    fn describe(&self) -> String {
        format!("{} ({})", self.describe, self.tls.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KvTxn;

    #[test]
    fn own_parameters_are_split_off_and_passwords_redacted() {
        let (rest, o) =
            split_options("postgres://u:pw@h:5/db?connections=3&retries=7&application_name=x")
                .unwrap();
        assert_eq!(rest, "postgres://u:pw@h:5/db?application_name=x");
        assert_eq!((o.connections, o.retries), (3, 7));
        let (rest, _) = split_options("postgresql://u@h/db?connect_timeout=2").unwrap();
        assert_eq!(rest, "postgresql://u@h/db");
        assert!(split_options("postgres://h/db?retries=many").is_err());
        assert_eq!(
            redact("postgres://u:secret@h:5/db"),
            "postgres://u:*****@h:5/db"
        );
        assert!(!redact("postgres://u:secret@h/db").contains("secret"));
        let (_, o) = split_options("postgres://h/db?commit_wait=all").unwrap();
        assert_eq!(o.commit_wait, CommitWait::All);
        assert_eq!(PgOptions::default().commit_wait, CommitWait::Durable);
        let err = split_options("postgres://h/db?commit_wait=never").unwrap_err();
        assert!(err.to_string().contains("durable or all"), "{err}");
        // TLS parameters are spoolfs's to apply (tokio-postgres knows only three modes).
        let (rest, o) =
            split_options("postgres://h/db?sslmode=verify-full&sslrootcert=/ca.pem&sslcert=/c")
                .unwrap();
        assert_eq!(rest, "postgres://h/db");
        assert_eq!(o.tls.mode, Some(SslMode::VerifyFull));
        assert_eq!(o.tls.root_cert.as_deref(), Some("/ca.pem"));
        assert_eq!(o.tls.cert.as_deref(), Some("/c"));
        assert_eq!(PgOptions::default().tls.mode, None);
        let err = split_options("postgres://u:pw@h/db?sslmode=allow").unwrap_err();
        assert!(
            err.to_string().contains("sslmode=\"allow\": use disable"),
            "{err}"
        );
        assert!(!err.to_string().contains("pw@"), "{err}");
    }

    /// The server's `synchronous_commit` inside an update of `durability` on `store`.
    fn synchronous_commit_in(store: &PgStore, durability: Durability) -> String {
        let mut seen = String::new();
        store
            .run(BEGIN_UPDATE, durability, &mut |t| {
                let row = t.round_trip(t.conn.client.query_one("SHOW synchronous_commit", &[]))?;
                seen = row.get(0);
                t.put(b"touched", durability_name(durability).as_bytes())
            })
            .unwrap();
        seen
    }

    fn durability_name(d: Durability) -> &'static str {
        match d {
            Durability::Visible => "visible",
            Durability::Durable => "durable",
        }
    }

    /// A `Visible` commit does not wait for the server's WAL flush, a `Durable` one does, and
    /// `commit_wait=all` makes every commit wait; a flush makes earlier commits durable.
    #[test]
    fn only_durable_commits_wait_for_the_servers_flush() {
        let Some(server) = spoolfs_testkit::pg::server(module_path!()) else {
            return;
        };
        let url = server.url(&server.new_database());
        let store = PgStore::open(&url, SchemaMode::Create).unwrap();
        assert_eq!(synchronous_commit_in(&store, Durability::Visible), "off");
        assert_eq!(synchronous_commit_in(&store, Durability::Durable), "on");
        // A read-only view and the next update on the same connection start from the
        // session's own setting: `SET LOCAL` ended with its transaction.
        assert_eq!(synchronous_commit_in(&store, Durability::Durable), "on");

        // After a commit that did not wait, a flush covers its WAL.
        synchronous_commit_in(&store, Durability::Visible);
        let conn = store.checkout().unwrap();
        let inserted: String = conn
            .driver
            .block_on(
                conn.client
                    .query_one("SELECT pg_current_wal_insert_lsn()::TEXT", &[]),
            )
            .unwrap()
            .get(0);
        store.give_back(conn);
        let (rt, flushes) = (store.stats().round_trips, store.stats().flushes);
        store.persist().unwrap();
        assert_eq!(
            store.stats().round_trips - rt,
            1,
            "a flush is one round trip"
        );
        assert_eq!(store.stats().flushes - flushes, 1);
        let conn = store.checkout().unwrap();
        let covered: bool = conn
            .driver
            .block_on(conn.client.query_one(
                "SELECT pg_current_wal_flush_lsn() >= $1::TEXT::PG_LSN",
                &[&inserted],
            ))
            .unwrap()
            .get(0);
        store.give_back(conn);
        assert!(covered, "the flush reached the WAL written before it");
        // The flush leaves no row behind.
        store
            .view(&mut |r| {
                assert!(r.scan(b"\xff", &[0xff; 16], 10)?.is_empty());
                assert_eq!(r.get(b"touched")?.as_deref(), Some(&b"visible"[..]));
                Ok(())
            })
            .unwrap();

        let all = PgStore::open(&format!("{url}?commit_wait=all"), SchemaMode::Require).unwrap();
        assert_eq!(synchronous_commit_in(&all, Durability::Visible), "on");
    }
}
