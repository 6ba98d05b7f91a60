//! Per-session lookup structures on the hot path: prepared statements and portals by name, and the
//! statements a session parsed recently.
//!
//! Most drivers use the unnamed statement and portal for every execution (pgbench `-M extended`,
//! libpq's `PQexecParams`, psycopg, JDBC below `prepareThreshold`), so the unnamed slot is a field
//! rather than a hashed key, and a Parse repeating one of the last few texts reuses the analysis.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::context::StmtCtx;

/// FNV-1a for statement and portal names: short keys looked up on every Bind, where SipHash costs
/// more than the rest of the lookup. The names come from the session's own client, so colliding
/// names can only slow that session down.
#[derive(Debug, Clone, Copy)]
pub struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        NameHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for NameHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Values by protocol name (`""` = unnamed).
#[derive(Debug)]
pub struct NameMap<T> {
    unnamed: Option<T>,
    named: HashMap<Vec<u8>, T, BuildHasherDefault<NameHasher>>,
}

impl<T> Default for NameMap<T> {
    fn default() -> Self {
        NameMap {
            unnamed: None,
            named: HashMap::default(),
        }
    }
}

impl<T> NameMap<T> {
    pub fn get(&self, name: &[u8]) -> Option<&T> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.named.get(name)
        }
    }

    pub fn get_mut(&mut self, name: &[u8]) -> Option<&mut T> {
        if name.is_empty() {
            self.unnamed.as_mut()
        } else {
            self.named.get_mut(name)
        }
    }

    pub fn insert(&mut self, name: &[u8], value: T) {
        if name.is_empty() {
            self.unnamed = Some(value);
        } else {
            self.named.insert(name.to_vec(), value);
        }
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<T> {
        if name.is_empty() {
            self.unnamed.take()
        } else {
            self.named.remove(name)
        }
    }
}

/// How many distinct recent Parse bodies are remembered.
const RECENT: usize = 16;

/// The contexts of statements this session parsed recently that name no protected table, keyed by
/// the exact Parse body after the statement name (text and declared parameter types). The analysis of
/// such a statement depends only on those bytes and the policy, so a hit under the same policy
/// (generation, [`crate::services::Services::policy_generation`]) is the same context. Statements with a
/// plan are never kept: their role is re-resolved every time (revocation applies from the next
/// statement).
#[derive(Debug, Default)]
pub struct RecentParses {
    generation: Option<u64>,
    entries: Vec<(Box<[u8]>, Arc<StmtCtx>)>,
    next: usize,
}

impl RecentParses {
    /// Forgets everything remembered under another policy generation than `generation` (a reloaded
    /// policy may protect tables these statements name); says whether anything may still be
    /// remembered.
    fn under(&mut self, generation: u64) -> bool {
        if self.generation == Some(generation) {
            return true;
        }
        self.entries.clear();
        self.next = 0;
        self.generation = Some(generation);
        false
    }

    /// The remembered context for `key` under policy generation `generation`.
    pub fn get(&mut self, generation: u64, key: &[u8]) -> Option<Arc<StmtCtx>> {
        if !self.under(generation) {
            return None;
        }
        self.entries
            .iter()
            .find(|(k, _)| **k == *key)
            .map(|(_, c)| c.clone())
    }

    /// Remembers `ctx` for `key` when it was analysed under a policy read after `generation`, and
    /// carries no plan or refusal.
    pub fn remember(&mut self, generation: u64, key: &[u8], ctx: &Arc<StmtCtx>) {
        if ctx.plan.is_some() || ctx.data.is_some() || ctx.refusal.is_some() {
            return;
        }
        self.under(generation);
        let entry = (Box::<[u8]>::from(key), ctx.clone());
        if self.entries.len() < RECENT {
            self.entries.push(entry);
        } else {
            self.entries[self.next] = entry;
            self.next = (self.next + 1) % RECENT;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgcloak_policy::StatementKind;

    fn ctx() -> Arc<StmtCtx> {
        Arc::new(StmtCtx::plain(StatementKind::Select, "SELECT $1".into(), 1))
    }

    #[test]
    fn unnamed_and_named_are_separate() {
        let mut m = NameMap::default();
        m.insert(b"", 1);
        m.insert(b"s1", 2);
        assert_eq!(m.get(b""), Some(&1));
        assert_eq!(m.get(b"s1"), Some(&2));
        *m.get_mut(b"").unwrap() = 3;
        assert_eq!(m.remove(b""), Some(3));
        assert_eq!(m.get(b""), None);
        assert_eq!(m.get(b"s1"), Some(&2));
        assert_eq!(m.remove(b"s1"), Some(2));
        assert_eq!(m.remove(b"s1"), None);
    }

    #[test]
    fn recent_parses_hit_only_under_the_same_policy() {
        let (p1, p2) = (1, 2);
        let mut r = RecentParses::default();
        let c = ctx();
        assert!(r.get(p1, b"SELECT 1\0\0\0").is_none());
        r.remember(p1, b"SELECT 1\0\0\0", &c);
        assert!(Arc::ptr_eq(&r.get(p1, b"SELECT 1\0\0\0").unwrap(), &c));
        assert!(r.get(p1, b"SELECT 2\0\0\0").is_none());
        // A reloaded policy (another generation) forgets everything.
        assert!(r.get(p2, b"SELECT 1\0\0\0").is_none());
        assert!(r.get(p1, b"SELECT 1\0\0\0").is_none());
    }

    #[test]
    fn refused_statements_are_not_remembered() {
        let p = 7;
        let mut r = RecentParses::default();
        let refused = Arc::new(StmtCtx::refused("42501", "pgcloak: no".into()));
        r.remember(p, b"x", &refused);
        assert!(r.get(p, b"x").is_none());
    }

    #[test]
    fn recent_parses_stay_bounded() {
        let p = 7;
        let mut r = RecentParses::default();
        for i in 0..100u32 {
            r.remember(p, &i.to_be_bytes(), &ctx());
        }
        assert_eq!(r.entries.len(), RECENT);
        assert!(r.get(p, &99u32.to_be_bytes()).is_some());
        assert!(r.get(p, &0u32.to_be_bytes()).is_none());
    }
}
