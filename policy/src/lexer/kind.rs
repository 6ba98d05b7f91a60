//! What kind of statement the lexer is in: the first words, the top-level verb after `WITH` or
//! `PREPARE ... AS`, and how deeply it nests.

use super::StatementKind;

pub(super) struct StmtState {
    pub(super) start: usize,
    pub(super) first_token: usize,
    pub(super) first_literal: usize,
    pub(super) first_ident: usize,
    /// The first words, as the keywords that matter for the kind ("?" for any other word).
    pub(super) words: [&'static str; 6],
    pub(super) nwords: usize,
    /// Parenthesis depth (for `WITH ... <verb>`).
    pub(super) depth: i64,
    pub(super) top_verb: Option<&'static str>,
    pub(super) opaque: bool,
    pub(super) brackets: i64,
    pub(super) cases: i64,
    pub(super) max_nesting: i64,
}

/// The keywords the statement kind depends on (no allocation).
fn kw(lower: &str) -> &'static str {
    match lower {
        "do" => "do",
        "create" => "create",
        "function" => "function",
        "procedure" => "procedure",
        "trigger" => "trigger",
        "rule" => "rule",
        "with" => "with",
        "prepare" => "prepare",
        "as" => "as",
        "execute" => "execute",
        "fetch" => "fetch",
        "move" => "move",
        "select" => "select",
        "insert" => "insert",
        "update" => "update",
        "delete" => "delete",
        "values" => "values",
        "table" => "table",
        "merge" => "merge",
        "show" => "show",
        "declare" => "declare",
        "copy" => "copy",
        "alter" => "alter",
        "drop" => "drop",
        "truncate" => "truncate",
        "comment" => "comment",
        "grant" => "grant",
        "revoke" => "revoke",
        "reindex" => "reindex",
        "cluster" => "cluster",
        "refresh" => "refresh",
        "security" => "security",
        "import" => "import",
        _ => "?",
    }
}

impl StmtState {
    pub(super) fn new(
        start: usize,
        first_token: usize,
        first_literal: usize,
        first_ident: usize,
    ) -> StmtState {
        StmtState {
            start,
            first_token,
            first_literal,
            first_ident,
            words: ["?"; 6],
            nwords: 0,
            depth: 0,
            top_verb: None,
            opaque: false,
            brackets: 0,
            cases: 0,
            max_nesting: 0,
        }
    }

    pub(super) fn nest(&mut self) {
        let n = self.depth.max(0) + self.brackets.max(0) + self.cases.max(0);
        self.max_nesting = self.max_nesting.max(n);
    }

    pub(super) fn note_word(&mut self, lower: &str) {
        // Only the first words and, for WITH/PREPARE, the top-level verb matter.
        let track_verb = self.nwords > 0
            && self.depth == 0
            && self.top_verb.is_none()
            && matches!(self.words.first().copied(), Some("with" | "prepare"));
        if self.nwords >= self.words.len() && !track_verb {
            return;
        }
        let k = kw(lower);
        if let Some(slot) = self.words.get_mut(self.nwords) {
            *slot = k;
            self.nwords += 1;
            self.opaque = match self.words.first().copied() {
                Some("do") => true,
                Some("create") => self
                    .words
                    .iter()
                    .take(self.nwords)
                    .any(|w| matches!(*w, "function" | "procedure" | "trigger" | "rule")),
                _ => false,
            };
        }
        if self.depth == 0
            && self.top_verb.is_none()
            && self.nwords > 1
            && matches!(
                k,
                "select" | "insert" | "update" | "delete" | "values" | "table" | "merge"
            )
        {
            self.top_verb = Some(k);
        }
    }

    pub(super) fn kind(&self) -> (StatementKind, bool) {
        let w0 = if self.nwords > 0 {
            self.words.first().copied().unwrap_or("")
        } else {
            ""
        };
        let verb_kind = |v: &str| match v {
            "select" | "values" | "table" | "show" | "declare" | "fetch" | "move" => {
                StatementKind::Select
            }
            "insert" => StatementKind::Insert,
            "update" | "merge" => StatementKind::Update,
            "delete" => StatementKind::Delete,
            "copy" => StatementKind::Copy,
            "create" | "alter" | "drop" | "truncate" | "comment" | "grant" | "revoke"
            | "reindex" | "cluster" | "refresh" | "security" | "import" => StatementKind::Ddl,
            _ => StatementKind::Other,
        };
        match w0 {
            "with" => (
                self.top_verb
                    .map(verb_kind)
                    .unwrap_or(StatementKind::Select),
                false,
            ),
            "prepare" => {
                // PREPARE name [(types)] AS <verb>
                let pos = self.words.iter().take(self.nwords).position(|w| *w == "as");
                let inner = pos
                    .filter(|p| p + 1 < self.nwords)
                    .and_then(|p| self.words.get(p + 1))
                    .copied()
                    .unwrap_or("");
                let k = if inner == "with" {
                    self.top_verb
                        .map(verb_kind)
                        .unwrap_or(StatementKind::Select)
                } else {
                    verb_kind(inner)
                };
                (k, false)
            }
            "execute" => (StatementKind::Other, true),
            "fetch" | "move" => (StatementKind::Select, true),
            _ => (verb_kind(w0), false),
        }
    }
}
