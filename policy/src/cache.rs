//! The plan cache, shared by every session: keyed by normalised statement text, literal count, policy role,
//! policy version and catalog tag.
//!
//! Plans reference literals by index and parameters by number, so a cached plan applies to every statement
//! with the same normalised text. The literal count is part of the key because a normalised `$n` may stand
//! for a parameter in one statement and a literal in another (`VALUES ($1)` vs `VALUES ('x')`); given the
//! text and the count, which placeholders are literals is determined. Plans whose decision depends on the
//! content of literals (`Plan::cacheable == false`) are never stored.
//!
//! Bounded: when an insert finds the cache at capacity, about an eighth of the entries (chosen by key
//! hash, rotating through eight slices) are evicted at once — cheap, lock one shard at a time, and
//! frequently used plans come straight back.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::catalog::Catalog;
use crate::lexer::Lexed;
use crate::model::Policy;
use crate::plan::Plan;

/// What a cached plan depends on (borrowed: building a key allocates nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanKey<'a> {
    pub normalized: &'a str,
    pub literals: usize,
    pub role: &'a str,
    pub policy_version: u64,
    pub catalog_tag: u64,
}

impl<'a> PlanKey<'a> {
    /// The key of a lexed statement string for a role under a policy and catalog.
    pub fn of(lexed: &'a Lexed, role: &'a str, policy: &Policy, catalog: &Catalog) -> PlanKey<'a> {
        PlanKey {
            normalized: &lexed.normalized,
            literals: lexed.literals.len(),
            role,
            policy_version: policy.version(),
            catalog_tag: catalog.cache_tag(),
        }
    }

    fn hash(&self, fingerprint: u64) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write_u64(fingerprint);
        h.write_usize(self.literals);
        h.write(self.role.as_bytes());
        h.write_u64(self.policy_version);
        h.write_u64(self.catalog_tag);
        h.finish()
    }
}

struct Entry {
    normalized: Box<str>,
    literals: usize,
    role: Box<str>,
    policy_version: u64,
    catalog_tag: u64,
    plan: Arc<Plan>,
}

impl Entry {
    fn matches(&self, k: &PlanKey<'_>) -> bool {
        self.literals == k.literals
            && self.policy_version == k.policy_version
            && self.catalog_tag == k.catalog_tag
            && &*self.role == k.role
            && &*self.normalized == k.normalized
    }
}

/// Identity hasher: keys are already well-mixed 64-bit hashes.
#[derive(Default, Clone, Copy)]
struct PreHashed;

struct PreHasher(u64);

impl Hasher for PreHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl BuildHasher for PreHashed {
    type Hasher = PreHasher;
    fn build_hasher(&self) -> PreHasher {
        PreHasher(0)
    }
}

/// A bounded, concurrent plan cache.
pub struct PlanCache {
    map: DashMap<u64, Entry, PreHashed>,
    capacity: usize,
    evict_slice: AtomicU64,
}

impl std::fmt::Debug for PlanCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanCache")
            .field("len", &self.map.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl PlanCache {
    /// A cache holding at most `capacity` plans (at least 8).
    pub fn new(capacity: usize) -> PlanCache {
        PlanCache {
            map: DashMap::with_hasher(PreHashed),
            capacity: capacity.max(8),
            evict_slice: AtomicU64::new(0),
        }
    }

    /// The cached plan for `key` (`fingerprint` is `Lexed::fingerprint`).
    pub fn get(&self, key: &PlanKey<'_>, fingerprint: u64) -> Option<Arc<Plan>> {
        let h = key.hash(fingerprint);
        let e = self.map.get(&h)?;
        if e.matches(key) {
            Some(Arc::clone(&e.plan))
        } else {
            None
        }
    }

    /// Store a plan (unless it is not cacheable); returns it shared.
    pub fn insert(&self, key: &PlanKey<'_>, fingerprint: u64, plan: Plan) -> Arc<Plan> {
        let plan = Arc::new(plan);
        if !plan.cacheable {
            return plan;
        }
        if self.map.len() >= self.capacity {
            self.evict();
        }
        self.map.insert(
            key.hash(fingerprint),
            Entry {
                normalized: key.normalized.into(),
                literals: key.literals,
                role: key.role.into(),
                policy_version: key.policy_version,
                catalog_tag: key.catalog_tag,
                plan: Arc::clone(&plan),
            },
        );
        plan
    }

    /// The cached plan, or `make()`'s (stored when cacheable).
    pub fn get_or_insert_with(
        &self,
        key: &PlanKey<'_>,
        fingerprint: u64,
        make: impl FnOnce() -> Plan,
    ) -> Arc<Plan> {
        if let Some(p) = self.get(key, fingerprint) {
            return p;
        }
        self.insert(key, fingerprint, make())
    }

    fn evict(&self) {
        let slice = self.evict_slice.fetch_add(1, Ordering::Relaxed) % 8;
        self.map.retain(|h, _| (h >> 61) != slice);
        if self.map.len() >= self.capacity {
            // Pathological key distribution: start over rather than grow.
            self.map.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drop every plan (e.g. after a policy reload; keys carry the version anyway).
    pub fn clear(&self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{analyze, lex};

    const POLICY: &str = "[[column]]\nname = \"public.t.secret\"\nclass = \"confidential\"\nencrypt = \"deterministic\"\n[[role]]\nname = \"app\"\nread = { confidential = \"plaintext\" }\nwrite = [\"confidential\"]\n";

    fn setup() -> (Policy, Catalog) {
        let p = Policy::parse(POLICY, "p.toml").expect("policy");
        let c = Catalog::new().with_table("public", "t", ["id", "secret"]);
        (p, c)
    }

    #[test]
    fn same_shape_hits_and_param_vs_literal_does_not_collide() {
        let (p, c) = setup();
        let role = p.role_named("app").expect("role");
        let cache = PlanCache::new(100);
        let mut analysed = 0;
        let mut run = |sql: &str| {
            let l = lex(sql);
            let k = PlanKey::of(&l, &role.name, &p, &c);
            cache.get_or_insert_with(&k, l.fingerprint, || {
                analysed += 1;
                analyze(sql, &l, &c, &p, role)
            })
        };
        let a = run("INSERT INTO t (secret) VALUES ('x')");
        let b = run("INSERT INTO t (secret) VALUES ('yyy')");
        assert_eq!(a, b);
        // `$1` is a parameter here, a literal above: same normalised text, different plan.
        let c2 = run("INSERT INTO t (secret) VALUES ($1)");
        assert_ne!(a, c2);
        assert_eq!(analysed, 2);
    }

    #[test]
    fn role_and_version_are_part_of_the_key() {
        let (p, c) = setup();
        let cache = PlanCache::new(100);
        let l = lex("SELECT secret FROM t");
        let app = p.role_named("app").expect("role");
        let k1 = PlanKey::of(&l, "app", &p, &c);
        cache.insert(
            &k1,
            l.fingerprint,
            analyze("SELECT secret FROM t", &l, &c, &p, app),
        );
        let k2 = PlanKey::of(&l, "default", &p, &c);
        assert!(cache.get(&k2, l.fingerprint).is_none());
        let mut k3 = k1;
        k3.policy_version ^= 1;
        assert!(cache.get(&k3, l.fingerprint).is_none());
        assert!(cache.get(&k1, l.fingerprint).is_some());
    }

    #[test]
    fn bounded() {
        let (p, c) = setup();
        let role = p.role_named("app").expect("role");
        let cache = PlanCache::new(64);
        for i in 0..1000 {
            let sql = format!("SELECT id FROM t WHERE id = $1 AND c{i} = 1");
            let l = lex(&sql);
            let k = PlanKey::of(&l, "app", &p, &c);
            cache.get_or_insert_with(&k, l.fingerprint, || analyze(&sql, &l, &c, &p, role));
            assert!(cache.len() <= 64, "len {}", cache.len());
        }
    }

    #[test]
    fn uncacheable_plans_are_not_stored() {
        let (p, c) = setup();
        let role = p.role_named("app").expect("role");
        let cache = PlanCache::new(64);
        let sql = "DO $$ BEGIN END $$";
        let l = lex(sql);
        let k = PlanKey::of(&l, "app", &p, &c);
        cache.get_or_insert_with(&k, l.fingerprint, || analyze(sql, &l, &c, &p, role));
        assert!(cache.is_empty());
    }
}
