//! The store: resource versions as JSON in SQLite, the current version of each resource
//! indexed, identifiers, codes and references in side tables.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::config::DbConfig;
use rusqlite::types::Value as Sql;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde_json::Value;

use crate::index::entries;
use crate::search::{is_id, is_resource_type, SearchQuery};
use crate::sql::search_sql;
use crate::StoreError;

// Every row of a resource is keyed by its `current.seq` (the rowid of its `current` row, given in
// order of creation), not by its id: ids are hashes (the reference's SHA-256 ids), so a key
// holding the id put each new resource's version and index rows at random places of their
// B-trees, and a Bundle of 250 creates dirtied (and wrote to the WAL) a page of every such tree
// per entry, about 20 KB per Observation. Keyed by `seq`, a new resource's rows are appended
// at the end of their key's range; only `current`'s indexes by `(type, id)` and by date take
// inserts spread over their trees.
//
// The side tables are clustered on their search key (no rowid table beside an index) and have
// no index by resource: an update removes the rows of the stored version it no longer has by
// their key, the stored version's rows being `index::entries` of its JSON. A token search by
// system alone (`identifier=system|`) walks the parameter's range of the key.
//
// `user_version` 2 is this layout; a database of an earlier one (rows keyed by type and id) is
// migrated when it is opened (see `migrate`).
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS current (
    seq INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated_ms INTEGER NOT NULL,
    date_start INTEGER,
    date_end INTEGER,
    UNIQUE (type, id)
);
CREATE INDEX IF NOT EXISTS current_date ON current (type, date_start);
CREATE INDEX IF NOT EXISTS current_updated ON current (type, last_updated_ms);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER NOT NULL,
    version INTEGER NOT NULL,
    last_updated TEXT NOT NULL,
    json TEXT NOT NULL,
    UNIQUE (seq, version)
);
CREATE TABLE IF NOT EXISTS tokens (
    type TEXT NOT NULL,
    param TEXT NOT NULL,
    value TEXT NOT NULL,
    system TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (type, param, value, system, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS refs (
    type TEXT NOT NULL,
    param TEXT NOT NULL,
    target_id TEXT NOT NULL,
    target_type TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (type, param, target_id, target_type, seq)
) WITHOUT ROWID;
PRAGMA user_version = 2;
"#;

/// A token row of a resource (kept when the row exists).
const INSERT_TOKEN: &str =
    "INSERT OR IGNORE INTO tokens (type, param, value, system, seq) VALUES (?1, ?2, ?3, ?4, ?5)";
/// A reference row of a resource (kept when the row exists).
const INSERT_REF: &str =
    "INSERT OR IGNORE INTO refs (type, param, target_id, target_type, seq) VALUES (?1, ?2, ?3, ?4, ?5)";

/// The layout of `SCHEMA`.
const SCHEMA_VERSION: i64 = 2;

/// Moves a database of the layout before `SCHEMA` (history, tokens and refs keyed by type and
/// id; every earlier version of this store wrote that layout, with or without indexes by
/// resource) to `SCHEMA`, in one transaction: the old tables renamed, the new ones filled from
/// them through `current`, the old ones dropped. Nothing else changes (ids, versions, JSON).
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let old_layout = conn
        .prepare("SELECT 1 FROM pragma_table_info('tokens') WHERE name = 'id'")?
        .exists([])?;
    if !old_layout {
        return Ok(());
    }
    let resources: i64 = conn.query_row("SELECT count(*) FROM current", [], |r| r.get(0))?;
    tracing::info!(
        resources,
        "FHIR store: moving the database to this version's layout (rows keyed by resource sequence); once."
    );
    conn.execute_batch("BEGIN IMMEDIATE")?;
    if let Err(e) = conn.execute_batch(&format!(
        "
         ALTER TABLE history RENAME TO history_before_v2;
         ALTER TABLE tokens RENAME TO tokens_before_v2;
         ALTER TABLE refs RENAME TO refs_before_v2;
         {SCHEMA}
         INSERT INTO history (seq, version, last_updated, json)
           SELECT c.seq, h.version, h.last_updated, h.json
             FROM history_before_v2 h JOIN current c ON c.type = h.type AND c.id = h.id
             ORDER BY c.seq, h.version;
         DROP TABLE history_before_v2;
         DROP TABLE tokens_before_v2;
         DROP TABLE refs_before_v2;"
    )) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e.into());
    }
    // The index rows are computed again from each current version (an older store may have
    // indexed other elements), as a write computes them.
    let rebuilt = (|| -> Result<(), StoreError> {
        let mut current = conn.prepare(
            "SELECT c.seq, c.type, c.id, h.json FROM current c JOIN history h
               ON h.seq = c.seq AND h.version = c.version",
        )?;
        let mut rows = current.query([])?;
        let mut tok = conn.prepare(INSERT_TOKEN)?;
        let mut rf = conn.prepare(INSERT_REF)?;
        while let Some(row) = rows.next()? {
            let (seq, t, id, json): (i64, String, String, String) =
                (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
            let idx = entries(&t, &decode(&t, &id, &json)?);
            for (param, system, value) in &idx.tokens {
                tok.execute(params![t, param, value, system, seq])?;
            }
            for (param, target_type, target_id) in &idx.references {
                rf.execute(params![t, param, target_id, target_type, seq])?;
            }
        }
        Ok(())
    })();
    match rebuilt {
        Ok(()) => conn.execute_batch("COMMIT")?,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    }
    Ok(())
}

/// A FHIR resource store on an embedded SQLite database. Cheap to clone (shared handle).
///
/// All operations are synchronous and serialized on one connection; every write is one
/// `BEGIN IMMEDIATE` transaction, so a version check (`If-Match`) and the write it guards are
/// atomic, also against another process using the same file.
#[derive(Debug, Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

/// The result of a create or update.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The resource as stored, with `id`, `meta.versionId` and `meta.lastUpdated`.
    pub resource: Value,
    /// Its version id (`"1"`, `"2"`, ...).
    pub version: String,
    /// Whether the resource did not exist before.
    pub created: bool,
    /// Whether a new version was written (false when the content equals the current version).
    pub changed: bool,
}

/// One page of search results.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    /// How many resources match in all.
    pub total: u64,
    /// This page's resources, in order.
    pub resources: Vec<Value>,
}

fn rfc3339_ms(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn check_type(resource_type: &str) -> Result<(), StoreError> {
    if is_resource_type(resource_type) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{resource_type:?} is not a resource type"
        )))
    }
}

fn check_id(id: &str) -> Result<(), StoreError> {
    if is_id(id) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{id:?} is not a valid logical id ([A-Za-z0-9-.], 1 to 64 characters)"
        )))
    }
}

/// The version number in an `If-Match` value: `W/"3"`, `"3"` or `3`.
pub fn parse_if_match(value: &str) -> String {
    let v = value.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    v.trim_matches('"').to_string()
}

/// The resource without `meta.versionId` and `meta.lastUpdated` (and without an empty `meta`).
#[cfg(test)]
fn content(resource: &Value) -> Value {
    let mut c = resource.clone();
    if let Some(obj) = c.as_object_mut() {
        match obj.get("meta").map(meta_content) {
            Some(Some(meta)) => {
                obj.insert("meta".into(), meta);
            }
            Some(None) => {
                obj.remove("meta");
            }
            None => {}
        }
    }
    c
}

/// `meta` without `versionId` and `lastUpdated` (`None` when nothing else is in it).
fn meta_content(meta: &Value) -> Option<Value> {
    match meta.as_object() {
        Some(m) => {
            let rest: serde_json::Map<String, Value> = m
                .iter()
                .filter(|(k, _)| *k != "versionId" && *k != "lastUpdated")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (!rest.is_empty()).then_some(Value::Object(rest))
        }
        None => Some(meta.clone()),
    }
}

/// `content(a) == content(b)` without copying the resources (only their `meta`).
fn same_content(a: &Value, b: &Value) -> bool {
    let (Some(x), Some(y)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    let others = |o: &serde_json::Map<String, Value>| o.keys().filter(|k| *k != "meta").count();
    others(x) == others(y)
        && x.iter()
            .filter(|(k, _)| *k != "meta")
            .all(|(k, v)| y.get(k) == Some(v))
        && x.get("meta").and_then(meta_content) == y.get("meta").and_then(meta_content)
}

fn decode(resource_type: &str, id: &str, json: &str) -> Result<Value, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
        detail: e.to_string(),
    })
}

impl Store {
    /// Opens (creating if needed) the store in the SQLite file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        Store::init(conn, true)
    }

    /// A store in memory, gone when the last handle is dropped (for tests and throw-away demos).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::init(Connection::open_in_memory()?, false)
    }

    fn init(conn: Connection, file: bool) -> Result<Store, StoreError> {
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.set_prepared_statement_cache_capacity(64);
        // The query planner's stability guarantee: a cached statement keeps its plan whatever
        // is bound. Without it SQLite marks a statement whose plan could depend on a bound value
        // (a search page's `LIMIT ?`) as expired at every bind and parses and plans it again at
        // its next step, a third of a search's CPU; our statements have one good plan each.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        // Statement journals in memory, not in temporary files written page by page.
        conn.execute_batch("PRAGMA temp_store = MEMORY")?;
        if file {
            // WAL: readers do not block the writer; NORMAL sync is durable across process
            // crashes (a power cut may lose the last commits, acceptable for a development store).
            conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
            // A larger page cache and memory-mapped reads (the store's one connection reads
            // what it just wrote), and checkpoints every ~64 MiB of WAL rather than 4 MiB (fewer
            // copies of the index pages every Bundle rewrites):
            // Bundles of hundreds of writes otherwise spend their time in pread and fsync.
            conn.execute_batch(
                "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -65536; \
                 PRAGMA mmap_size = 268435456; PRAGMA wal_autocheckpoint = 16000",
            )?;
        }
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Invalid(format!(
                "the database was written by a newer version of this store (layout {version}; this one reads {SCHEMA_VERSION})"
            )));
        }
        if version < SCHEMA_VERSION {
            migrate(&conn)?;
        }
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-written transaction behind (it rolls
        // back when dropped), so the connection is still good.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current version of `resource_type/id`.
    pub fn read(&self, resource_type: &str, id: &str) -> Result<Value, StoreError> {
        read_in(&self.lock(), resource_type, id)
    }

    /// Version `version` of `resource_type/id`.
    pub fn vread(&self, resource_type: &str, id: &str, version: &str) -> Result<Value, StoreError> {
        vread_in(&self.lock(), resource_type, id, version)
    }

    /// Every version of `resource_type/id`, newest first.
    pub fn history(&self, resource_type: &str, id: &str) -> Result<Vec<Value>, StoreError> {
        history_in(&self.lock(), resource_type, id)
    }

    /// Creates a resource with a new server-assigned id (any `id` in `resource` is ignored).
    pub fn create(
        &self,
        resource_type: &str,
        resource: Value,
        now: DateTime<Utc>,
    ) -> Result<Written, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let written = create_in(&tx, resource_type, resource, now)?;
        tx.commit()?;
        Ok(written)
    }

    /// Updates `resource_type/id`, or creates it with that id when it does not exist.
    ///
    /// With `if_match` (a version id, or an `If-Match` header value such as `W/"3"`), only when
    /// the current version is that one; otherwise [`StoreError::VersionConflict`] (HTTP 412).
    /// When the content (ignoring `meta.versionId` and `meta.lastUpdated`) equals the current
    /// version, nothing is written and the current version is returned (`changed: false`).
    pub fn update(
        &self,
        resource_type: &str,
        id: &str,
        resource: Value,
        if_match: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Written, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let written = update_in(&tx, resource_type, id, resource, if_match, now)?;
        tx.commit()?;
        Ok(written)
    }

    /// Runs a search on `resource_type`.
    pub fn search(
        &self,
        resource_type: &str,
        query: &SearchQuery,
    ) -> Result<SearchPage, StoreError> {
        search_in(&self.lock(), resource_type, query)
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed when it returns `Ok` and rolled
    /// back otherwise (what a `batch` or `transaction` Bundle runs in).
    pub(crate) fn in_transaction<T>(
        &self,
        f: impl FnOnce(&mut rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&mut tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Deletes every resource and version (the `--dev-reset` operation).
    pub fn reset(&self) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(
            "DELETE FROM history; DELETE FROM current; DELETE FROM tokens; DELETE FROM refs;",
        )?;
        tx.commit()?;
        Ok(())
    }
}

/// The current version of `resource_type/id`, on `conn`.
pub(crate) fn read_in(
    conn: &Connection,
    resource_type: &str,
    id: &str,
) -> Result<Value, StoreError> {
    check_type(resource_type)?;
    check_id(id)?;
    let json: Option<String> = conn
        .query_row(
            "SELECT h.json FROM current c JOIN history h
                   ON h.seq = c.seq AND h.version = c.version
                 WHERE c.type = ?1 AND c.id = ?2",
            params![resource_type, id],
            |r| r.get(0),
        )
        .optional()?;
    match json {
        Some(j) => decode(resource_type, id, &j),
        None => Err(StoreError::NotFound {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
        }),
    }
}

/// Version `version` of `resource_type/id`, on `conn`.
pub(crate) fn vread_in(
    conn: &Connection,
    resource_type: &str,
    id: &str,
    version: &str,
) -> Result<Value, StoreError> {
    check_type(resource_type)?;
    check_id(id)?;
    let not_found = || StoreError::VersionNotFound {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
        version: version.to_string(),
    };
    let Ok(v) = version.parse::<i64>() else {
        return Err(not_found());
    };
    let json: Option<String> = conn
        .query_row(
            "SELECT h.json FROM current c JOIN history h ON h.seq = c.seq
                 WHERE c.type = ?1 AND c.id = ?2 AND h.version = ?3",
            params![resource_type, id, v],
            |r| r.get(0),
        )
        .optional()?;
    match json {
        Some(j) => decode(resource_type, id, &j),
        None => Err(not_found()),
    }
}

/// Every version of `resource_type/id`, newest first, on `conn`.
pub(crate) fn history_in(
    conn: &Connection,
    resource_type: &str,
    id: &str,
) -> Result<Vec<Value>, StoreError> {
    check_type(resource_type)?;
    check_id(id)?;
    let mut stmt = conn.prepare_cached(
        "SELECT h.json FROM current c JOIN history h ON h.seq = c.seq
          WHERE c.type = ?1 AND c.id = ?2 ORDER BY h.version DESC",
    )?;
    let rows = stmt
        .query_map(params![resource_type, id], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    if rows.is_empty() {
        return Err(StoreError::NotFound {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
        });
    }
    rows.iter().map(|j| decode(resource_type, id, j)).collect()
}

/// Creates a resource with a new server-assigned id inside `tx`.
pub(crate) fn create_in(
    tx: &Connection,
    resource_type: &str,
    mut resource: Value,
    now: DateTime<Utc>,
) -> Result<Written, StoreError> {
    check_type(resource_type)?;
    check_body(resource_type, &resource)?;
    let id: String = tx.query_row("SELECT lower(hex(randomblob(16)))", [], |r| r.get(0))?;
    let id = format!(
        "{}-{}-{}-{}-{}",
        &id[0..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..32]
    );
    resource["id"] = Value::String(id.clone());
    write_version(tx, resource_type, &id, resource, None, now)
}

/// Updates (or creates) `resource_type/id` inside `tx`; see [`Store::update`].
pub(crate) fn update_in(
    tx: &Connection,
    resource_type: &str,
    id: &str,
    mut resource: Value,
    if_match: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Written, StoreError> {
    check_type(resource_type)?;
    check_id(id)?;
    check_body(resource_type, &resource)?;
    match resource.get("id") {
        None => resource["id"] = Value::String(id.to_string()),
        Some(Value::String(s)) if s == id => {}
        Some(other) => {
            return Err(StoreError::Invalid(format!(
                "the resource's id {other} does not match the id in the URL ({id:?})"
            )))
        }
    }
    let expected = if_match.map(parse_if_match);
    write_version(tx, resource_type, id, resource, expected, now)
}

/// Runs a search on `resource_type`, on `conn`.
pub(crate) fn search_in(
    conn: &Connection,
    resource_type: &str,
    query: &SearchQuery,
) -> Result<SearchPage, StoreError> {
    check_type(resource_type)?;
    let (count_sql, page_sql, args) = search_sql(resource_type, query);
    let mut resources = Vec::new();
    if query.count > 0 {
        let mut page_args = args.clone();
        page_args.push(Sql::Integer(i64::try_from(query.count).unwrap_or(i64::MAX)));
        page_args.push(Sql::Integer(
            i64::try_from(query.offset).unwrap_or(i64::MAX),
        ));
        let mut stmt = conn.prepare_cached(&page_sql)?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(page_args.iter()), |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        for (id, json) in rows {
            resources.push(decode(resource_type, &id, &json)?);
        }
    }
    // A first page that is not full holds every match: its length is the total, and the
    // COUNT is not needed (most searches, e.g. by identifier, find one resource or none).
    let total = if query.offset == 0 && query.count > 0 && resources.len() < query.count {
        resources.len() as u64
    } else {
        let n: i64 = conn
            .prepare_cached(&count_sql)?
            .query_row(rusqlite::params_from_iter(args.iter()), |r| r.get(0))?;
        u64::try_from(n).unwrap_or(0)
    };
    Ok(SearchPage { total, resources })
}

fn check_body(resource_type: &str, resource: &Value) -> Result<(), StoreError> {
    let Some(obj) = resource.as_object() else {
        return Err(StoreError::Invalid(
            "the body is not a FHIR resource (a JSON object)".into(),
        ));
    };
    match obj.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == resource_type => Ok(()),
        Some(t) => Err(StoreError::Invalid(format!(
            "the body is a {t}, but the URL names {resource_type}"
        ))),
        None => Err(StoreError::Invalid("the body has no resourceType".into())),
    }
}

/// Writes a new version inside `tx` (or returns the current one when nothing changed).
fn write_version(
    tx: &Connection,
    resource_type: &str,
    id: &str,
    mut resource: Value,
    expected: Option<String>,
    now: DateTime<Utc>,
) -> Result<Written, StoreError> {
    let current: Option<(i64, String, i64)> = tx
        .prepare_cached(
            "SELECT c.version, h.json, c.seq FROM current c JOIN history h
               ON h.seq = c.seq AND h.version = c.version
             WHERE c.type = ?1 AND c.id = ?2",
        )?
        .query_row(params![resource_type, id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    if let Some(expected) = expected {
        if current.as_ref().map(|(v, _, _)| v.to_string()) != Some(expected.clone()) {
            return Err(StoreError::VersionConflict {
                resource_type: resource_type.to_string(),
                id: id.to_string(),
                expected,
                current: current.map(|(v, _, _)| v.to_string()),
            });
        }
    }
    // The stored version's index rows, when the new version would write the same ones (an
    // Observation update usually changes its value and period, not its codes and references).
    let mut stored_index = None;
    if let Some((version, json, _)) = &current {
        let stored = decode(resource_type, id, json)?;
        if same_content(&stored, &resource) {
            return Ok(Written {
                resource: stored,
                version: version.to_string(),
                created: false,
                changed: false,
            });
        }
        stored_index = Some(entries(resource_type, &stored));
    }
    let version = current.as_ref().map_or(1, |(v, _, _)| v + 1);
    let last_updated = rfc3339_ms(now);
    {
        let Some(obj) = resource.as_object_mut() else {
            return Err(StoreError::Invalid("the body is not a JSON object".into()));
        };
        let meta = obj
            .entry("meta")
            .or_insert_with(|| Value::Object(Default::default()));
        if !meta.is_object() {
            *meta = Value::Object(Default::default());
        }
        meta["versionId"] = Value::String(version.to_string());
        meta["lastUpdated"] = Value::String(last_updated.clone());
    }
    let json = serde_json::to_string(&resource)
        .map_err(|e| StoreError::Invalid(format!("cannot encode the resource: {e}")))?;
    // From here on only the database can fail (a `batch` Bundle relies on it: an entry that
    // failed otherwise has written nothing).
    let idx = entries(resource_type, &resource);
    let (date_start, date_end) = match idx.date {
        Some((a, b)) => (Some(a), Some(b)),
        None => (None, None),
    };
    let seq = match &current {
        Some((_, _, seq)) => {
            tx.prepare_cached(
                "UPDATE current SET version = ?2, last_updated_ms = ?3, date_start = ?4, date_end = ?5
                 WHERE seq = ?1",
            )?
            .execute(params![
                seq,
                version,
                now.timestamp_millis(),
                date_start,
                date_end
            ])?;
            *seq
        }
        None => {
            tx.prepare_cached(
                "INSERT INTO current (type, id, version, last_updated_ms, date_start, date_end)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                resource_type,
                id,
                version,
                now.timestamp_millis(),
                date_start,
                date_end
            ])?;
            tx.last_insert_rowid()
        }
    };
    tx.prepare_cached(
        "INSERT INTO history (seq, version, last_updated, json) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![seq, version, last_updated, json])?;
    // The rows of the stored version the new one does not have go; the new version's rows
    // it did not have come (INSERT OR IGNORE keeps the ones both have).
    let old = stored_index.unwrap_or_default();
    if current.is_some() && old.tokens == idx.tokens && old.references == idx.references {
        return Ok(Written {
            resource,
            version: version.to_string(),
            created: false,
            changed: true,
        });
    }
    {
        let mut del = tx.prepare_cached(
            "DELETE FROM tokens WHERE type = ?1 AND param = ?2 AND value = ?3 AND system = ?4 AND seq = ?5",
        )?;
        for (param, system, value) in old.tokens.iter().filter(|t| !idx.tokens.contains(t)) {
            del.execute(params![resource_type, param, value, system, seq])?;
        }
        let mut del = tx.prepare_cached(
            "DELETE FROM refs WHERE type = ?1 AND param = ?2 AND target_id = ?3 AND target_type = ?4 AND seq = ?5",
        )?;
        for (param, target_type, target_id) in old
            .references
            .iter()
            .filter(|r| !idx.references.contains(r))
        {
            del.execute(params![resource_type, param, target_id, target_type, seq])?;
        }
        let mut ins = tx.prepare_cached(INSERT_TOKEN)?;
        for (param, system, value) in &idx.tokens {
            ins.execute(params![resource_type, param, value, system, seq])?;
        }
        let mut ins = tx.prepare_cached(INSERT_REF)?;
        for (param, target_type, target_id) in &idx.references {
            ins.execute(params![resource_type, param, target_id, target_type, seq])?;
        }
    }
    Ok(Written {
        resource,
        version: version.to_string(),
        created: current.is_none(),
        changed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An update that keeps the index rows (a new value) keeps them findable; one that changes
    /// them (a new identifier, a new subject) replaces them.
    #[test]
    fn updates_keep_or_replace_the_index_rows() {
        let store = Store::open_in_memory().unwrap();
        let rows = || -> (i64, i64) {
            let conn = store.lock();
            let count = |t: &str| {
                conn.query_row(
                    &format!(
                        "SELECT count(*) FROM {t} WHERE seq = (SELECT seq FROM current WHERE id = 'o1')"
                    ),
                    [],
                    |r| r.get(0),
                )
                .unwrap()
            };
            (count("tokens"), count("refs"))
        };
        let find = |params: &[(&str, &str)]| {
            let params: Vec<(String, String)> = params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let q = SearchQuery::parse(&params).unwrap();
            store.search("Observation", &q).unwrap().total
        };
        let obs = |identifier: &str, patient: &str, value: i64| {
            json!({"resourceType": "Observation", "id": "o1", "status": "final",
                   "identifier": [{"system": "urn:s", "value": identifier}],
                   "subject": {"reference": format!("Patient/{patient}")},
                   "valueQuantity": {"value": value}})
        };
        let now = Utc::now();
        store
            .update("Observation", "o1", obs("a", "p1", 1), None, now)
            .unwrap();
        let w = store
            .update("Observation", "o1", obs("a", "p1", 2), Some("1"), now)
            .unwrap();
        assert!(w.changed && w.version == "2");
        assert_eq!(find(&[("identifier", "urn:s|a")]), 1);
        assert_eq!(find(&[("subject", "Patient/p1")]), 1);
        store
            .update("Observation", "o1", obs("b", "p2", 2), Some("2"), now)
            .unwrap();
        assert_eq!(find(&[("identifier", "urn:s|a")]), 0);
        assert_eq!(find(&[("identifier", "urn:s|b")]), 1);
        assert_eq!(find(&[("subject", "Patient/p1")]), 0);
        assert_eq!(find(&[("subject", "Patient/p2")]), 1);
        // One identifier; subject and patient: no row of the first version left.
        assert_eq!(rows(), (1, 2));
        assert_eq!(
            store.read("Observation", "o1").unwrap()["valueQuantity"]["value"],
            2
        );
    }

    /// A database of the layout every earlier version wrote (rows keyed by type and id, indexes
    /// by resource) opens in this one: moved to the new layout once, every version, search and
    /// update as before, and an index row no current version yields (an older indexer's) gone.
    #[test]
    fn databases_of_the_earlier_layout_are_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                r#"
                CREATE TABLE history (type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
                    last_updated TEXT NOT NULL, json TEXT NOT NULL,
                    PRIMARY KEY (type, id, version)) WITHOUT ROWID;
                CREATE TABLE current (seq INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT NOT NULL,
                    id TEXT NOT NULL, version INTEGER NOT NULL, last_updated_ms INTEGER NOT NULL,
                    date_start INTEGER, date_end INTEGER, UNIQUE (type, id));
                CREATE INDEX current_date ON current (type, date_start);
                CREATE INDEX current_updated ON current (type, last_updated_ms);
                CREATE TABLE tokens (type TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL,
                    system TEXT NOT NULL, value TEXT NOT NULL);
                CREATE INDEX tokens_value ON tokens (type, param, value, system);
                CREATE INDEX tokens_system ON tokens (type, param, system);
                CREATE INDEX tokens_resource ON tokens (type, id);
                CREATE TABLE refs (type TEXT NOT NULL, id TEXT NOT NULL, param TEXT NOT NULL,
                    target_type TEXT NOT NULL, target_id TEXT NOT NULL);
                CREATE INDEX refs_target ON refs (type, param, target_id, target_type);
                CREATE INDEX refs_resource ON refs (type, id);
                INSERT INTO history VALUES
                  ('Patient', 'p1', 1, '2026-01-01T00:00:00.000Z',
                   '{"resourceType":"Patient","id":"p1","meta":{"versionId":"1","lastUpdated":"2026-01-01T00:00:00.000Z"},"identifier":[{"value":"pat-1"}]}'),
                  ('Observation', 'o1', 1, '2026-01-01T00:00:00.000Z',
                   '{"resourceType":"Observation","id":"o1","meta":{"versionId":"1","lastUpdated":"2026-01-01T00:00:00.000Z"},"status":"final","identifier":[{"system":"urn:s","value":"a"}],"subject":{"reference":"Patient/p1"},"valueQuantity":{"value":1}}'),
                  ('Observation', 'o1', 2, '2026-01-02T00:00:00.000Z',
                   '{"resourceType":"Observation","id":"o1","meta":{"versionId":"2","lastUpdated":"2026-01-02T00:00:00.000Z"},"status":"amended","identifier":[{"system":"urn:s","value":"a"}],"subject":{"reference":"Patient/p1"},"valueQuantity":{"value":2}}');
                INSERT INTO current (type, id, version, last_updated_ms) VALUES
                  ('Patient', 'p1', 1, 1767225600000), ('Observation', 'o1', 2, 1767312000000);
                INSERT INTO tokens VALUES
                  ('Patient', 'p1', 'identifier', '', 'pat-1'),
                  ('Observation', 'o1', 'identifier', 'urn:s', 'a'),
                  ('Observation', 'o1', 'identifier', 'urn:s', 'stale');
                INSERT INTO refs VALUES ('Observation', 'o1', 'subject', 'Patient', 'p1');
                "#,
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let find = |params: &[(&str, &str)]| {
            let params: Vec<(String, String)> = params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let q = SearchQuery::parse(&params).unwrap();
            store.search("Observation", &q).unwrap()
        };
        let o1 = store.read("Observation", "o1").unwrap();
        assert_eq!(o1["meta"]["versionId"], "2");
        assert_eq!(o1["valueQuantity"]["value"], 2);
        assert_eq!(store.history("Observation", "o1").unwrap().len(), 2);
        assert_eq!(
            store.vread("Observation", "o1", "1").unwrap()["valueQuantity"]["value"],
            1
        );
        assert_eq!(find(&[("identifier", "urn:s|a")]).total, 1);
        assert_eq!(find(&[("identifier", "urn:s|stale")]).total, 0);
        assert_eq!(find(&[("subject", "Patient/p1")]).total, 1);
        {
            let conn = store.lock();
            let v: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(v, SCHEMA_VERSION);
            let old: i64 = conn
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name LIKE '%before_v2' OR name IN ('tokens_resource', 'tokens_value')",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(old, 0);
        }
        let mut next = o1.clone();
        next["valueQuantity"]["value"] = json!(3);
        let w = store
            .update("Observation", "o1", next, Some("2"), Utc::now())
            .unwrap();
        assert_eq!((w.version.as_str(), w.changed), ("3", true));
        drop(store);
        // Opened again: nothing to move, the same state.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.history("Observation", "o1").unwrap().len(), 3);
        assert_eq!(
            store.read("Patient", "p1").unwrap()["identifier"][0]["value"],
            "pat-1"
        );
    }

    /// Searches by identifier, reference and id go through the side tables' indexes: no step
    /// of the plan scans a table.
    #[test]
    fn indexed_searches_scan_no_table() {
        let store = Store::open_in_memory().unwrap();
        let conn = store.lock();
        for params in [
            vec![("identifier", "urn:s|v")],
            vec![("identifier", "v"), ("_count", "10")],
            vec![("identifier", "|v,w")],
            vec![
                ("subject", "Patient/p1"),
                ("code", "http://loinc.org|8867-4"),
            ],
            vec![("patient", "p1"), ("_sort", "-date")],
            vec![("device", "d1")],
            vec![("_id", "a,b")],
        ] {
            let params: Vec<(String, String)> = params
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            let q = SearchQuery::parse(&params).unwrap();
            let (count_sql, page_sql, args) = search_sql("Observation", &q);
            let mut page_args = args.clone();
            page_args.extend([Sql::Integer(10), Sql::Integer(0)]);
            for (sql, args) in [(count_sql, args), (page_sql, page_args)] {
                let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
                let plan: Vec<String> = stmt
                    .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                        r.get::<_, String>(3)
                    })
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                assert!(plan.iter().any(|step| step.contains("USING")), "{plan:?}");
                // Resources found by token or reference rows are looked up by their rowid,
                // not found by walking the type's resources through another index.
                if params
                    .iter()
                    .any(|(k, _)| *k != "_id" && !k.starts_with('_'))
                {
                    assert!(
                        plan.iter()
                            .any(|step| step.starts_with("SEARCH c USING INTEGER PRIMARY KEY")),
                        "{params:?}: {plan:#?}"
                    );
                }
                assert!(
                    plan.iter().all(|step| !step.starts_with("SCAN")),
                    "{params:?}: {plan:#?}"
                );
            }
        }
    }

    #[test]
    fn if_match_forms() {
        assert_eq!(parse_if_match("W/\"3\""), "3");
        assert_eq!(parse_if_match("\"3\""), "3");
        assert_eq!(parse_if_match(" 3 "), "3");
    }

    #[test]
    fn content_ignores_version_and_time_only() {
        let a = json!({"resourceType": "Patient", "meta": {"versionId": "1", "lastUpdated": "x"}});
        let b = json!({"resourceType": "Patient"});
        assert_eq!(content(&a), content(&b));
        let c = json!({"resourceType": "Patient", "meta": {"tag": [{"code": "t"}]}});
        assert_ne!(content(&c), content(&b));
        for (x, y) in [(&a, &b), (&c, &b), (&a, &c), (&b, &b)] {
            assert_eq!(same_content(x, y), content(x) == content(y), "{x} {y}");
            assert_eq!(same_content(y, x), content(x) == content(y), "{y} {x}");
        }
        let d = json!({"resourceType": "Patient", "active": true});
        assert!(!same_content(&b, &d) && !same_content(&d, &b));
    }
}
