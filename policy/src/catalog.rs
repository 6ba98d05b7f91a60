//! The catalog snapshot the proxy passes in: which tables exist, their ordered columns, and the search path.

use std::collections::HashMap;

/// Tables known to the database (the proxy fills it from `pg_catalog`; tests build it by hand).
///
/// Names are stored as PostgreSQL stores them (unquoted identifiers folded to lower case). Only the column
/// *order* matters here (for `*`, `t.*` and `INSERT` without a column list); types live in the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// schema -> table -> columns (nested so lookups by `&str` allocate nothing).
    tables: HashMap<String, HashMap<String, Vec<String>>>,
    /// Schemas searched, in order, for unqualified table names (default `["public"]`).
    pub search_path: Vec<String>,
    /// Bumped by the proxy whenever it refreshes the snapshot; part of plan cache keys.
    pub version: u64,
    /// Views that read a protected table, directly or through other views: schema -> name -> the
    /// view's query (as `pg_get_viewdef` prints it with every user relation schema-qualified), when
    /// known. Reads through them are analysed as that query; writes are refused (the values would
    /// reach the table unencrypted).
    protected_views: HashMap<String, HashMap<String, Option<String>>>,
    /// The bare names of `protected_views`, for the lexer's "names a protected relation" check.
    protected_view_names: Vec<String>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            tables: HashMap::new(),
            search_path: vec!["public".to_string()],
            version: 0,
            protected_views: HashMap::new(),
            protected_view_names: Vec::new(),
        }
    }
}

impl Catalog {
    /// An empty catalog with search path `["public"]`.
    pub fn new() -> Catalog {
        Catalog::default()
    }

    /// Add (or replace) a table with its columns in attribute order.
    pub fn add_table<S: Into<String>>(
        &mut self,
        schema: &str,
        table: &str,
        columns: impl IntoIterator<Item = S>,
    ) {
        self.tables.entry(schema.to_string()).or_default().insert(
            table.to_string(),
            columns.into_iter().map(Into::into).collect(),
        );
    }

    /// Builder form of [`Catalog::add_table`].
    pub fn with_table<S: Into<String>>(
        mut self,
        schema: &str,
        table: &str,
        columns: impl IntoIterator<Item = S>,
    ) -> Catalog {
        self.add_table(schema, table, columns);
        self
    }

    /// The columns of a table, in order, if known.
    pub fn columns(&self, schema: &str, table: &str) -> Option<&[String]> {
        self.tables
            .get(schema)
            .and_then(|t| t.get(table))
            .map(Vec::as_slice)
    }

    /// Whether the table is known.
    pub fn has_table(&self, schema: &str, table: &str) -> bool {
        self.columns(schema, table).is_some()
    }

    /// Records that view `schema.name` reads a protected table (directly or through other views),
    /// with its query when known (a view without one is still refused as a write target, and its
    /// columns are read as they are stored).
    pub fn add_protected_view(&mut self, schema: &str, name: &str, definition: Option<&str>) {
        self.protected_views
            .entry(schema.to_string())
            .or_default()
            .insert(name.to_string(), definition.map(str::to_string));
        if !self.protected_view_names.iter().any(|n| n == name) {
            self.protected_view_names.push(name.to_string());
        }
    }

    /// Whether `schema.name` is a view that reads a protected table.
    pub fn is_protected_view(&self, schema: &str, name: &str) -> bool {
        self.protected_views
            .get(schema)
            .is_some_and(|v| v.contains_key(name))
    }

    /// The query of protected view `schema.name`, when known.
    pub fn view_definition(&self, schema: &str, name: &str) -> Option<&str> {
        self.protected_views.get(schema)?.get(name)?.as_deref()
    }

    /// Bare names of the views that read protected tables.
    pub fn protected_view_names(&self) -> &[String] {
        &self.protected_view_names
    }

    /// A tag of what plans depend on (version and search path), for cache keys.
    pub fn cache_tag(&self) -> u64 {
        let mut h = crate::lexer::fnv1a(&self.version.to_le_bytes());
        for s in &self.search_path {
            h ^= crate::lexer::fnv1a(s.as_bytes());
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
}
