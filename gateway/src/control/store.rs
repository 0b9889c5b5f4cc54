//! The coordination server's persistent state in SQLite (`control.db` in the state dir).
//!
//! WAL journal, `synchronous=FULL`, foreign keys on; every change is one transaction, so a
//! `kill -9` at any point leaves either the old or the new state. The schema is created and
//! upgraded by numbered migrations recorded in `schema_migrations`; a database written by a
//! newer server (higher version than this build knows) is refused rather than misread.
//!
//! Tables: `server_state` (the Noise private key and other singletons, written once in a
//! transaction), `users`, `auth_keys` (only a SHA-256 of the secret part is stored), `nodes`
//! (keys, addresses, unique hostname, expiry, last seen, ephemeral flag, route priority) and
//! `routes` (per node and prefix: advertised, approved, primary, when first advertised).
//!
//! Times are Unix seconds except `routes.advertised_at` (milliseconds, for tie-breaks).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use ipnet::IpNet;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::wg::Key;

/// The database file name inside the state dir.
pub const DB_FILE: &str = "control.db";

/// Schema migrations, applied in order; never edit one that has shipped, add a new one.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    r#"
    CREATE TABLE server_state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE users (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE auth_keys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key_id TEXT NOT NULL UNIQUE,
        secret_hash BLOB NOT NULL,
        user_id INTEGER NOT NULL REFERENCES users(id),
        reusable INTEGER NOT NULL,
        ephemeral INTEGER NOT NULL,
        tags TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        used_at INTEGER,
        used_by INTEGER,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE nodes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        machine_key TEXT NOT NULL UNIQUE,
        node_key TEXT NOT NULL,
        name TEXT NOT NULL UNIQUE,
        requested_name TEXT NOT NULL,
        user_id INTEGER NOT NULL REFERENCES users(id),
        tags TEXT NOT NULL,
        ipv4 TEXT NOT NULL UNIQUE,
        ipv6 TEXT NOT NULL UNIQUE,
        os TEXT NOT NULL,
        ephemeral INTEGER NOT NULL,
        route_priority INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        key_expiry INTEGER,
        last_seen INTEGER,
        auth_key_id INTEGER
    );
    CREATE TABLE routes (
        node_id INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
        prefix TEXT NOT NULL,
        advertised INTEGER NOT NULL,
        approved INTEGER NOT NULL,
        is_primary INTEGER NOT NULL DEFAULT 0,
        advertised_at INTEGER NOT NULL,
        PRIMARY KEY (node_id, prefix)
    );
    "#,
)];

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix milliseconds now.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_i64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A user (owner of auth keys and untagged nodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Row id.
    pub id: i64,
    /// Name, e.g. `alice@example.com`.
    pub name: String,
    /// Creation time.
    pub created_at: u64,
}

/// An auth key (the secret is not stored, only its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthKeyRecord {
    /// Row id.
    pub id: i64,
    /// The public part of the key (`tgkey-<key_id>-<secret>`).
    pub key_id: String,
    /// SHA-256 of the secret part.
    pub secret_hash: Vec<u8>,
    /// Owner.
    pub user_id: i64,
    /// Owner's name.
    pub user: String,
    /// May register any number of machines.
    pub reusable: bool,
    /// Nodes registered with it are ephemeral.
    pub ephemeral: bool,
    /// Tags given to nodes registered with it.
    pub tags: Vec<String>,
    /// Creation time.
    pub created_at: u64,
    /// Expiry, if any.
    pub expires_at: Option<u64>,
    /// First use.
    pub used_at: Option<u64>,
    /// The node that used it (single-use keys).
    pub used_by: Option<u64>,
    /// Revoked by an admin.
    pub revoked: bool,
}

/// One route of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRecord {
    /// The prefix (host bits zero).
    pub prefix: IpNet,
    /// Currently advertised by the node.
    pub advertised: bool,
    /// Approved (admin or autoApprovers).
    pub approved: bool,
    /// The node is the primary router for it.
    pub primary: bool,
    /// When the node (last) began advertising it, Unix ms.
    pub advertised_at: u64,
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Row id (never reused).
    pub id: u64,
    /// Noise static key of the machine (its identity towards the server).
    pub machine_key: Key,
    /// WireGuard public key.
    pub node_key: Key,
    /// Unique hostname.
    pub name: String,
    /// Hostname as last requested (sanitized).
    pub requested_name: String,
    /// Owner id.
    pub user_id: i64,
    /// Owner name.
    pub user: String,
    /// ACL tags.
    pub tags: Vec<String>,
    /// Tailnet IPv4 address.
    pub ipv4: Ipv4Addr,
    /// Tailnet IPv6 address.
    pub ipv6: Ipv6Addr,
    /// Reported OS.
    pub os: String,
    /// Deleted after going offline.
    pub ephemeral: bool,
    /// HA priority (higher preferred).
    pub route_priority: u32,
    /// Registration time.
    pub created_at: u64,
    /// Node-key expiry, `None` for never.
    pub key_expiry: Option<u64>,
    /// Last connect/disconnect.
    pub last_seen: Option<u64>,
    /// The auth key it registered with.
    pub auth_key_id: Option<i64>,
    /// Its routes, ordered by prefix text.
    pub routes: Vec<RouteRecord>,
}

impl NodeRecord {
    /// Whether the node key has expired at `now` (Unix seconds).
    pub fn expired(&self, now: u64) -> bool {
        self.key_expiry.is_some_and(|e| e <= now)
    }
}

/// The SQLite store.
pub struct Store {
    conn: Connection,
}

fn tags_to_text(tags: &[String]) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "[]".into())
}

fn tags_from_text(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

fn parse_key(s: &str) -> rusqlite::Result<Key> {
    Key::from_base64(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn parse_text<T: std::str::FromStr>(s: &str) -> rusqlite::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    s.parse::<T>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

impl Store {
    /// Opens (creating if needed) the store in `dir` (created mode 0700) and migrates it.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating state dir {}", dir.display()))?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path)
            .with_context(|| format!("opening database {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(anyhow!(
                "{}: cannot enable WAL (got {mode})",
                path.display()
            ));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut store = Store { conn };
        store
            .migrate()
            .with_context(|| format!("migrating {}", path.display()))?;
        Ok(store)
    }

    /// The schema version after migration.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self.conn.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )?)
    }

    fn migrate(&mut self) -> Result<()> {
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version INTEGER PRIMARY KEY,
                applied_at INTEGER NOT NULL
            )",
        )?;
        let current = self.schema_version()?;
        let newest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
        if current > newest {
            return Err(anyhow!(
                "the database has schema version {current}, newer than this tailgate knows ({newest}); upgrade tailgate"
            ));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)
                .with_context(|| format!("migration {version}"))?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![version, to_i64(unix_now())],
            )?;
            tx.commit()?;
            log::info!("control store: applied schema migration {version}");
        }
        Ok(())
    }

    /// Runs `f` in one transaction, committed if it returns `Ok`.
    pub fn tx<T>(&mut self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let tx = self.conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// The server's Noise private key, generated and stored on first call.
    pub fn server_private_key(&mut self) -> Result<Key> {
        self.tx(|tx| {
            let existing: Option<String> = tx
                .query_row(
                    "SELECT value FROM server_state WHERE key = 'private_key'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(s) = existing {
                return Key::from_base64(&s).map_err(|e| anyhow!("stored server key: {e}"));
            }
            let key = Key::generate_private();
            tx.execute(
                "INSERT INTO server_state (key, value) VALUES ('private_key', ?1)",
                params![key.to_base64()],
            )?;
            log::info!("control store: generated the server key");
            Ok(key)
        })
    }

    /// Reads a singleton value.
    pub fn get_state(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT value FROM server_state WHERE key = ?1",
                params![key],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Writes a singleton value.
    pub fn set_state(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO server_state (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    // ---- users ----

    /// Creates a user; fails if the name exists.
    pub fn create_user(&mut self, name: &str) -> Result<UserRecord> {
        let now = unix_now();
        self.conn
            .execute(
                "INSERT INTO users (name, created_at) VALUES (?1, ?2)",
                params![name, to_i64(now)],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    anyhow!("user {name:?} already exists")
                }
                e => e.into(),
            })?;
        Ok(UserRecord {
            id: self.conn.last_insert_rowid(),
            name: name.to_string(),
            created_at: now,
        })
    }

    /// The user with this name.
    pub fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, name, created_at FROM users WHERE name = ?1",
                params![name],
                |r| {
                    Ok(UserRecord {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        created_at: from_i64(r.get(2)?),
                    })
                },
            )
            .optional()?)
    }

    /// All users by id.
    pub fn list_users(&self) -> Result<Vec<UserRecord>> {
        let mut st = self
            .conn
            .prepare("SELECT id, name, created_at FROM users ORDER BY id")?;
        let rows = st.query_map([], |r| {
            Ok(UserRecord {
                id: r.get(0)?,
                name: r.get(1)?,
                created_at: from_i64(r.get(2)?),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ---- auth keys ----

    /// Stores a new auth key.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_auth_key(
        &mut self,
        key_id: &str,
        secret_hash: &[u8],
        user: &UserRecord,
        reusable: bool,
        ephemeral: bool,
        tags: &[String],
        expires_at: Option<u64>,
    ) -> Result<AuthKeyRecord> {
        let now = unix_now();
        self.conn.execute(
            "INSERT INTO auth_keys (key_id, secret_hash, user_id, reusable, ephemeral, tags,
                                    created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                key_id,
                secret_hash,
                user.id,
                reusable,
                ephemeral,
                tags_to_text(tags),
                to_i64(now),
                expires_at.map(to_i64)
            ],
        )?;
        Ok(AuthKeyRecord {
            id: self.conn.last_insert_rowid(),
            key_id: key_id.to_string(),
            secret_hash: secret_hash.to_vec(),
            user_id: user.id,
            user: user.name.clone(),
            reusable,
            ephemeral,
            tags: tags.to_vec(),
            created_at: now,
            expires_at,
            used_at: None,
            used_by: None,
            revoked: false,
        })
    }

    const AUTH_KEY_COLUMNS: &'static str =
        "k.id, k.key_id, k.secret_hash, k.user_id, u.name, k.reusable, k.ephemeral, k.tags,
         k.created_at, k.expires_at, k.used_at, k.used_by, k.revoked";

    fn auth_key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuthKeyRecord> {
        Ok(AuthKeyRecord {
            id: r.get(0)?,
            key_id: r.get(1)?,
            secret_hash: r.get(2)?,
            user_id: r.get(3)?,
            user: r.get(4)?,
            reusable: r.get(5)?,
            ephemeral: r.get(6)?,
            tags: tags_from_text(&r.get::<_, String>(7)?),
            created_at: from_i64(r.get(8)?),
            expires_at: r.get::<_, Option<i64>>(9)?.map(from_i64),
            used_at: r.get::<_, Option<i64>>(10)?.map(from_i64),
            used_by: r.get::<_, Option<i64>>(11)?.map(from_i64),
            revoked: r.get(12)?,
        })
    }

    /// The auth key with this public id.
    pub fn auth_key(&self, key_id: &str) -> Result<Option<AuthKeyRecord>> {
        let sql = format!(
            "SELECT {} FROM auth_keys k JOIN users u ON u.id = k.user_id WHERE k.key_id = ?1",
            Self::AUTH_KEY_COLUMNS
        );
        Ok(self
            .conn
            .query_row(&sql, params![key_id], Self::auth_key_row)
            .optional()?)
    }

    /// All auth keys by id.
    pub fn list_auth_keys(&self) -> Result<Vec<AuthKeyRecord>> {
        let sql = format!(
            "SELECT {} FROM auth_keys k JOIN users u ON u.id = k.user_id ORDER BY k.id",
            Self::AUTH_KEY_COLUMNS
        );
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map([], Self::auth_key_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Revokes an auth key; returns whether it existed.
    pub fn revoke_auth_key(&mut self, key_id: &str) -> Result<bool> {
        Ok(self.conn.execute(
            "UPDATE auth_keys SET revoked = 1 WHERE key_id = ?1",
            params![key_id],
        )? > 0)
    }

    /// Records the use of an auth key (inside a registration transaction).
    pub fn mark_auth_key_used(tx: &Transaction<'_>, id: i64, node: u64, now: u64) -> Result<()> {
        tx.execute(
            "UPDATE auth_keys SET used_at = COALESCE(used_at, ?2), used_by = COALESCE(used_by, ?3)
             WHERE id = ?1",
            params![id, to_i64(now), to_i64(node)],
        )?;
        Ok(())
    }

    // ---- nodes ----

    /// Every node with its routes, by id.
    pub fn load_nodes(&self) -> Result<Vec<NodeRecord>> {
        let mut st = self.conn.prepare(
            "SELECT n.id, n.machine_key, n.node_key, n.name, n.requested_name, n.user_id, u.name,
                    n.tags, n.ipv4, n.ipv6, n.os, n.ephemeral, n.route_priority, n.created_at,
                    n.key_expiry, n.last_seen, n.auth_key_id
             FROM nodes n JOIN users u ON u.id = n.user_id ORDER BY n.id",
        )?;
        let rows = st.query_map([], |r| {
            Ok(NodeRecord {
                id: from_i64(r.get(0)?),
                machine_key: parse_key(&r.get::<_, String>(1)?)?,
                node_key: parse_key(&r.get::<_, String>(2)?)?,
                name: r.get(3)?,
                requested_name: r.get(4)?,
                user_id: r.get(5)?,
                user: r.get(6)?,
                tags: tags_from_text(&r.get::<_, String>(7)?),
                ipv4: parse_text(&r.get::<_, String>(8)?)?,
                ipv6: parse_text(&r.get::<_, String>(9)?)?,
                os: r.get(10)?,
                ephemeral: r.get(11)?,
                route_priority: u32::try_from(r.get::<_, i64>(12)?).unwrap_or(0),
                created_at: from_i64(r.get(13)?),
                key_expiry: r.get::<_, Option<i64>>(14)?.map(from_i64),
                last_seen: r.get::<_, Option<i64>>(15)?.map(from_i64),
                auth_key_id: r.get(16)?,
                routes: Vec::new(),
            })
        })?;
        let mut nodes: Vec<NodeRecord> = rows.collect::<rusqlite::Result<_>>()?;
        let mut st = self.conn.prepare(
            "SELECT node_id, prefix, advertised, approved, is_primary, advertised_at
             FROM routes ORDER BY node_id, prefix",
        )?;
        let routes = st.query_map([], |r| {
            Ok((
                from_i64(r.get(0)?),
                RouteRecord {
                    prefix: parse_text(&r.get::<_, String>(1)?)?,
                    advertised: r.get(2)?,
                    approved: r.get(3)?,
                    primary: r.get(4)?,
                    advertised_at: from_i64(r.get(5)?),
                },
            ))
        })?;
        for row in routes {
            let (node_id, route) = row?;
            if let Some(n) = nodes.iter_mut().find(|n| n.id == node_id) {
                n.routes.push(route);
            }
        }
        Ok(nodes)
    }

    /// Inserts a new node (its `id` is ignored) and returns its id.
    pub fn insert_node(tx: &Transaction<'_>, n: &NodeRecord) -> Result<u64> {
        tx.execute(
            "INSERT INTO nodes (machine_key, node_key, name, requested_name, user_id, tags, ipv4,
                                ipv6, os, ephemeral, route_priority, created_at, key_expiry,
                                last_seen, auth_key_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                n.machine_key.to_base64(),
                n.node_key.to_base64(),
                n.name,
                n.requested_name,
                n.user_id,
                tags_to_text(&n.tags),
                n.ipv4.to_string(),
                n.ipv6.to_string(),
                n.os,
                n.ephemeral,
                i64::from(n.route_priority),
                to_i64(n.created_at),
                n.key_expiry.map(to_i64),
                n.last_seen.map(to_i64),
                n.auth_key_id,
            ],
        )?;
        Ok(from_i64(tx.last_insert_rowid()))
    }

    /// Writes every column of an existing node (not its routes).
    pub fn update_node(tx: &Transaction<'_>, n: &NodeRecord) -> Result<()> {
        let changed = tx.execute(
            "UPDATE nodes SET node_key = ?2, name = ?3, requested_name = ?4, user_id = ?5,
                              tags = ?6, os = ?7, ephemeral = ?8, route_priority = ?9,
                              key_expiry = ?10, last_seen = ?11, auth_key_id = ?12
             WHERE id = ?1",
            params![
                to_i64(n.id),
                n.node_key.to_base64(),
                n.name,
                n.requested_name,
                n.user_id,
                tags_to_text(&n.tags),
                n.os,
                n.ephemeral,
                i64::from(n.route_priority),
                n.key_expiry.map(to_i64),
                n.last_seen.map(to_i64),
                n.auth_key_id,
            ],
        )?;
        if changed == 0 {
            return Err(anyhow!("node {} does not exist", n.id));
        }
        Ok(())
    }

    /// Replaces a node's routes.
    pub fn replace_routes(tx: &Transaction<'_>, node: u64, routes: &[RouteRecord]) -> Result<()> {
        tx.execute(
            "DELETE FROM routes WHERE node_id = ?1",
            params![to_i64(node)],
        )?;
        let mut st = tx.prepare(
            "INSERT INTO routes (node_id, prefix, advertised, approved, is_primary, advertised_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for r in routes {
            st.execute(params![
                to_i64(node),
                r.prefix.to_string(),
                r.advertised,
                r.approved,
                r.primary,
                to_i64(r.advertised_at)
            ])?;
        }
        Ok(())
    }

    /// Sets the primary flag of one route.
    pub fn set_primary(
        tx: &Transaction<'_>,
        node: u64,
        prefix: &IpNet,
        primary: bool,
    ) -> Result<()> {
        tx.execute(
            "UPDATE routes SET is_primary = ?3 WHERE node_id = ?1 AND prefix = ?2",
            params![to_i64(node), prefix.to_string(), primary],
        )?;
        Ok(())
    }

    /// Records when a node was last seen.
    pub fn set_last_seen(&mut self, node: u64, when: u64) -> Result<()> {
        self.conn.execute(
            "UPDATE nodes SET last_seen = ?2 WHERE id = ?1",
            params![to_i64(node), to_i64(when)],
        )?;
        Ok(())
    }

    /// Deletes a node and its routes.
    pub fn delete_node(&mut self, node: u64) -> Result<()> {
        self.tx(|tx| {
            tx.execute(
                "DELETE FROM routes WHERE node_id = ?1",
                params![to_i64(node)],
            )?;
            tx.execute("DELETE FROM nodes WHERE id = ?1", params![to_i64(node)])?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "tg-store-{tag}-{}-{}",
            std::process::id(),
            unix_now_ms()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn survives_reopen_with_migrations_and_key() {
        let dir = temp_dir("reopen");
        let _c = Cleanup(dir.clone());
        let mut s = Store::open(&dir).unwrap();
        assert_eq!(s.schema_version().unwrap(), 1);
        let key = s.server_private_key().unwrap();
        let user = s.create_user("alice").unwrap();
        assert!(s.create_user("alice").is_err());
        let ak = s
            .insert_auth_key(
                "abc",
                b"hash",
                &user,
                false,
                true,
                &["tag:x".into()],
                Some(5),
            )
            .unwrap();
        let node = NodeRecord {
            id: 0,
            machine_key: Key::generate_private().public_key(),
            node_key: Key::generate_private().public_key(),
            name: "n".into(),
            requested_name: "n".into(),
            user_id: user.id,
            user: user.name.clone(),
            tags: vec!["tag:x".into()],
            ipv4: "100.64.0.1".parse().unwrap(),
            ipv6: "fd7a:115c:a1e0::6440:1".parse().unwrap(),
            os: "linux".into(),
            ephemeral: true,
            route_priority: 7,
            created_at: 1,
            key_expiry: Some(99),
            last_seen: None,
            auth_key_id: Some(ak.id),
            routes: vec![],
        };
        let route = RouteRecord {
            prefix: "192.168.1.0/24".parse().unwrap(),
            advertised: true,
            approved: false,
            primary: false,
            advertised_at: 123,
        };
        let id = s
            .tx(|tx| {
                let id = Store::insert_node(tx, &node)?;
                Store::replace_routes(tx, id, std::slice::from_ref(&route))?;
                Store::mark_auth_key_used(tx, ak.id, id, 10)?;
                Ok(id)
            })
            .unwrap();
        drop(s);

        let mut s = Store::open(&dir).unwrap();
        assert_eq!(s.schema_version().unwrap(), 1);
        assert_eq!(s.server_private_key().unwrap(), key);
        let nodes = s.load_nodes().unwrap();
        assert_eq!(nodes.len(), 1);
        let expected = NodeRecord {
            id,
            routes: vec![route],
            ..node
        };
        assert_eq!(nodes[0], expected);
        let ak = s.auth_key("abc").unwrap().unwrap();
        assert_eq!((ak.used_by, ak.used_at), (Some(id), Some(10)));
        assert_eq!(ak.tags, vec!["tag:x".to_string()]);
        s.delete_node(id).unwrap();
        assert!(s.load_nodes().unwrap().is_empty());
        let mode = std::fs::metadata(dir.join(DB_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = temp_dir("newer");
        let _c = Cleanup(dir.clone());
        let s = Store::open(&dir).unwrap();
        s.conn
            .execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)",
                [],
            )
            .unwrap();
        drop(s);
        let e = Store::open(&dir).err().unwrap();
        assert!(format!("{e:#}").contains("newer"), "{e:#}");
    }
}
