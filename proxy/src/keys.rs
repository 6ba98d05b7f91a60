//! Key I/O for pgcloak-keymgr: reading the master key from a file, an environment variable or a
//! command; the keyring stores (a JSON file with lock + atomic replace, or table `pgcloak.keyring`);
//! and the `pgcloak keys` commands built on them.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use pgcloak_keymgr::{
    update_with_retry, ColumnInfo, Keyring, KeyringDoc, KeyringStore, MasterKey, Mode, StoreError,
};
use thiserror::Error;

use crate::catalog::CatalogConn;
use crate::config::{Config, KeyringLocation, MasterKeySource};

/// Errors of key handling, naming the key source or store and the fix.
#[derive(Debug, Error)]
pub enum KeysError {
    #[error(
        "master key file {0} does not exist; run `pgcloak keys init --config {1}` to create it"
    )]
    MissingFile(PathBuf, PathBuf),
    #[error("master key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("cannot read master key file {0}: {1}")]
    ReadFile(PathBuf, #[source] std::io::Error),
    #[error("environment variable {0} (keys.master_key_env) is not set; export it with the base64 master key")]
    MissingEnv(String),
    #[error("master key command `{cmd}` (keys.master_key_command) failed: {reason}")]
    Command { cmd: String, reason: String },
    #[error("master key from {source_name} is unusable: {reason}")]
    Invalid { source_name: String, reason: String },
    #[error("cannot create master key file {0}: {1}")]
    Create(PathBuf, String),
    #[error("the keyring at {0} does not exist yet; run `pgcloak keys init --config {1}`")]
    NoKeyring(String, PathBuf),
    #[error("keyring at {location}: {source}")]
    Keyring {
        location: String,
        source: pgcloak_keymgr::KeyError,
    },
    #[error("policy: {0}")]
    Policy(#[from] crate::policy_file::PolicyLoadError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("cannot create table pgcloak.keyring: {0}")]
    KeyringTable(#[source] crate::catalog::CatalogError),
    /// The keyring store (file or table) could not be read.
    #[error(transparent)]
    Store(#[from] pgcloak_keymgr::StoreError),
}

/// Where the master key was read from, for messages.
fn describe_source(s: &MasterKeySource) -> String {
    match s {
        MasterKeySource::File(p) => format!("file {}", p.display()),
        MasterKeySource::Env(n) => format!("environment variable {n}"),
        MasterKeySource::Command(c) => format!("command `{c}`"),
    }
}

/// Reads the configured master key. Refuses a key file that group or others can read.
pub fn load_master_key(cfg: &Config) -> Result<MasterKey, KeysError> {
    let source = &cfg.keys.master_key;
    let text = match source {
        MasterKeySource::File(path) => {
            let meta = std::fs::metadata(path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    KeysError::MissingFile(path.clone(), cfg.source.clone())
                } else {
                    KeysError::ReadFile(path.clone(), e)
                }
            })?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeysError::Permissions {
                        path: path.clone(),
                        mode,
                    });
                }
            }
            let _ = meta;
            zeroize::Zeroizing::new(
                std::fs::read_to_string(path).map_err(|e| KeysError::ReadFile(path.clone(), e))?,
            )
        }
        MasterKeySource::Env(name) => zeroize::Zeroizing::new(
            std::env::var(name).map_err(|_| KeysError::MissingEnv(name.clone()))?,
        ),
        MasterKeySource::Command(cmd) => {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| KeysError::Command {
                    cmd: cmd.clone(),
                    reason: e.to_string(),
                })?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                let first = err
                    .lines()
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect::<String>();
                return Err(KeysError::Command {
                    cmd: cmd.clone(),
                    reason: format!("{} ({first})", out.status),
                });
            }
            zeroize::Zeroizing::new(String::from_utf8_lossy(&out.stdout).into_owned())
        }
    };
    MasterKey::from_base64(&text).map_err(|e| KeysError::Invalid {
        source_name: describe_source(source),
        reason: e.to_string(),
    })
}

/// `keys init`: creates the master key file when configured as a file and absent (mode 0600).
/// Returns the key and whether it was created.
pub fn init_master_key(cfg: &Config) -> Result<(MasterKey, bool), KeysError> {
    if let MasterKeySource::File(path) = &cfg.keys.master_key {
        if !path.exists() {
            let key = MasterKey::generate()
                .map_err(|e| KeysError::Create(path.clone(), e.to_string()))?;
            let mut opts = OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts
                .open(path)
                .map_err(|e| KeysError::Create(path.clone(), e.to_string()))?;
            let text = key.to_base64();
            f.write_all(text.as_bytes())
                .and_then(|_| f.write_all(b"\n"))
                .and_then(|_| f.sync_all())
                .map_err(|e| KeysError::Create(path.clone(), e.to_string()))?;
            return Ok((key, true));
        }
    }
    Ok((load_master_key(cfg)?, false))
}

/// A keyring in a JSON file. Writers serialise on `<file>.lock` and replace the file atomically.
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: PathBuf) -> FileStore {
        FileStore { path }
    }

    fn lock(&self) -> Result<File, StoreError> {
        let lock_path = lock_path(&self.path);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                StoreError::Backend(format!(
                    "cannot open lock file {}: {e}",
                    lock_path.display()
                ))
            })?;
        f.lock().map_err(|e| {
            StoreError::Backend(format!("cannot lock {}: {e}", lock_path.display()))
        })?;
        Ok(f)
    }
}

fn lock_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

impl KeyringStore for FileStore {
    fn load(&self) -> Result<Option<Vec<u8>>, StoreError> {
        match std::fs::read(&self.path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Backend(format!(
                "cannot read {}: {e}",
                self.path.display()
            ))),
        }
    }

    fn store(&self, expected: Option<u64>, doc: &[u8]) -> Result<(), StoreError> {
        let _guard = self.lock()?;
        let current = match self.load()? {
            None => None,
            Some(bytes) => Some(
                KeyringDoc::peek_generation(&bytes)
                    .map_err(|e| StoreError::Backend(e.to_string()))?,
            ),
        };
        if current != expected {
            return Err(StoreError::Conflict);
        }
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            self.path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("keyring"),
            std::process::id()
        ));
        let io = |e: std::io::Error| {
            StoreError::Backend(format!("cannot write {}: {e}", self.path.display()))
        };
        {
            let mut opts = OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(doc).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// A keyring in table `pgcloak.keyring` of the `[catalog]` database, shared by a fleet of proxies.
pub struct PgStore {
    conn: CatalogConn,
}

const PG_KEYRING_DDL: &str = "CREATE SCHEMA IF NOT EXISTS pgcloak; \
     CREATE TABLE IF NOT EXISTS pgcloak.keyring (id int PRIMARY KEY CHECK (id = 1), generation bigint NOT NULL, \
     doc text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now()); \
     REVOKE ALL ON SCHEMA pgcloak FROM PUBLIC; REVOKE ALL ON pgcloak.keyring FROM PUBLIC";

impl PgStore {
    pub fn connect(cfg: &Config) -> Result<PgStore, KeysError> {
        let conn = CatalogConn::connect_blocking(cfg)?;
        conn.batch(PG_KEYRING_DDL)
            .map_err(KeysError::KeyringTable)?;
        Ok(PgStore { conn })
    }
}

impl KeyringStore for PgStore {
    fn load(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn
            .query_opt_text("SELECT doc FROM pgcloak.keyring WHERE id = 1", &[])
            .map(|o| o.map(String::into_bytes))
            .map_err(|e| StoreError::Backend(format!("reading pgcloak.keyring: {e}")))
    }

    fn store(&self, expected: Option<u64>, doc: &[u8]) -> Result<(), StoreError> {
        let text = std::str::from_utf8(doc).map_err(|e| StoreError::Backend(e.to_string()))?;
        let generation = KeyringDoc::peek_generation(doc)
            .map_err(|e| StoreError::Backend(e.to_string()))? as i64;
        let rows = match expected {
            None => self.conn.execute(
                "INSERT INTO pgcloak.keyring (id, generation, doc) VALUES (1, $1, $2) ON CONFLICT (id) DO NOTHING",
                &[&generation, &text],
            ),
            Some(g) => self.conn.execute(
                "UPDATE pgcloak.keyring SET generation = $1, doc = $2, updated_at = now() WHERE id = 1 AND generation = $3",
                &[&generation, &text, &(g as i64)],
            ),
        }
        .map_err(|e| StoreError::Backend(format!("writing pgcloak.keyring: {e}")))?;
        if rows == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }
}

/// Opens the configured keyring store.
pub fn open_store(cfg: &Config) -> Result<(Box<dyn KeyringStore>, String), KeysError> {
    match &cfg.keys.keyring {
        KeyringLocation::File(p) => {
            Ok((Box::new(FileStore::new(p.clone())), p.display().to_string()))
        }
        KeyringLocation::Postgres => Ok((
            Box::new(PgStore::connect(cfg)?),
            format!("table pgcloak.keyring in database {}", cfg.catalog.database),
        )),
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Encrypted columns of the configured policy, with their modes.
pub fn policy_encrypted_columns(cfg: &Config) -> Result<Vec<(String, Mode)>, KeysError> {
    let policy = crate::policy_file::load_policy(cfg)?;
    Ok(policy
        .columns()
        .iter()
        .filter_map(|c| {
            let mode = match c.encrypt {
                pgcloak_policy::EncryptMode::Randomized => Mode::Randomized,
                pgcloak_policy::EncryptMode::Deterministic => Mode::Deterministic,
                pgcloak_policy::EncryptMode::None => return None,
            };
            Some((c.qualified_name(), mode))
        })
        .collect())
}

/// Makes sure every encrypted policy column has a key; returns the columns that got one now.
pub fn ensure_policy_keys(
    store: &dyn KeyringStore,
    location: &str,
    master: &MasterKey,
    columns: &[(String, Mode)],
) -> Result<(Vec<String>, KeyringDoc), KeysError> {
    let created = now_rfc3339();
    update_with_retry(store, master, |doc| {
        let mut made = Vec::new();
        for (name, mode) in columns {
            if doc.ensure_column(name, *mode, &created)? {
                made.push(name.clone());
            }
        }
        Ok(made)
    })
    .map_err(|source| KeysError::Keyring {
        location: location.to_string(),
        source,
    })
}

/// Loads the keyring for serving: the master key must match it; keys for encrypted columns added to
/// the policy since are created.
pub fn load_for_serve(
    cfg: &Config,
    master: &MasterKey,
) -> Result<(Keyring, Vec<String>), KeysError> {
    let (store, location) = open_store(cfg)?;
    let columns = policy_encrypted_columns(cfg)?;
    if store.load()?.is_none() {
        return Err(KeysError::NoKeyring(location, cfg.source.clone()));
    }
    let (made, doc) = ensure_policy_keys(store.as_ref(), &location, master, &columns)?;
    let keyring = doc
        .unlock()
        .map_err(|source| KeysError::Keyring { location, source })?;
    Ok((keyring, made))
}

/// `keys rotate`: adds a version to `column` and makes it active.
pub fn rotate(cfg: &Config, column: &str) -> Result<u32, KeysError> {
    let master = load_master_key(cfg)?;
    let (store, location) = open_store(cfg)?;
    if store.load()?.is_none() {
        return Err(KeysError::NoKeyring(location, cfg.source.clone()));
    }
    let created = now_rfc3339();
    update_with_retry(store.as_ref(), &master, |doc| doc.rotate(column, &created))
        .map(|(v, _)| v)
        .map_err(|source| KeysError::Keyring { location, source })
}

/// `keys list`: the columns and versions, never key material.
pub fn list(cfg: &Config) -> Result<Vec<ColumnInfo>, KeysError> {
    let master = load_master_key(cfg)?;
    let (store, location) = open_store(cfg)?;
    let bytes = store
        .load()?
        .ok_or_else(|| KeysError::NoKeyring(location.clone(), cfg.source.clone()))?;
    let doc = KeyringDoc::open(&bytes, &master)
        .map_err(|source| KeysError::Keyring { location, source })?;
    Ok(doc.list())
}
