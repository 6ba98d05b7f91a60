//! One fast pass over SQL text, following PostgreSQL's lexical rules, without a full parse.
//!
//! It yields the normalised text (literals replaced by `$n` placeholders numbered after the highest `$n`
//! parameter, comments removed, whitespace collapsed), its fingerprint, the statements with their kind,
//! every literal's span in the original text, and the identifiers named. The normalised text goes into
//! the audit trail: no character of a literal ever survives it. The lexer never fails: unterminated
//! strings or comments run to the end of the text (and are still replaced).

mod kind;

use kind::StmtState;

use std::ops::Range;

/// What the first keyword(s) of a statement say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Copy,
    Ddl,
    Other,
}

impl StatementKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Select => "select",
            StatementKind::Insert => "insert",
            StatementKind::Update => "update",
            StatementKind::Delete => "delete",
            StatementKind::Copy => "copy",
            StatementKind::Ddl => "ddl",
            StatementKind::Other => "other",
        }
    }
}

/// One statement of a (possibly multi-statement) string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementSpan {
    /// Byte range in the original SQL (without the `;`).
    pub range: Range<usize>,
    /// Byte range of this statement in [`Lexed::normalized`].
    pub normalized_range: Range<usize>,
    pub kind: StatementKind,
    /// Indices into [`Lexed::literals`] of this statement's literals.
    pub literals: Range<usize>,
    /// Indices into [`Lexed::identifiers`] of this statement's words.
    pub identifiers: Range<usize>,
    /// Indices into [`Lexed::params`] of this statement's `$n` tokens.
    pub params: Range<usize>,
    /// Deepest nesting of `(`, `[` and `CASE` in the statement (analysis refuses very deep statements:
    /// sqlparser's backtracking is exponential in nesting depth on some inputs).
    pub max_nesting: u32,
    /// `EXECUTE name` / `FETCH ... cursor` / `MOVE`: refers to an earlier statement, so it always needs
    /// analysis even though it names no table.
    pub refers_to_prior: bool,
}

/// Kind of a literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LiteralKind {
    /// `'...'` (also `N'...'`).
    String,
    /// `E'...'` with backslash escapes.
    EscapeString,
    /// `U&'...'`.
    UnicodeString,
    /// `$tag$...$tag$`.
    DollarString,
    /// Integer, decimal or exponent number.
    Number,
    /// `B'0101'`.
    Bit,
    /// `X'1F'`.
    Hex,
}

/// One literal of the original SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Literal {
    /// Byte range in the original SQL, including quotes and prefixes (`E'`, `U&'`, `$tag$`).
    pub span: Range<usize>,
    pub kind: LiteralKind,
    /// The `$n` that replaces it in the normalised text.
    pub placeholder: u64,
}

/// One `$n` token of the original SQL (outside literals, comments and quoted identifiers; not glued to
/// a word, since `a$1` is one identifier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamToken {
    /// Byte range in the original SQL (`$` and digits).
    pub span: Range<usize>,
    /// `n` (clamped; PostgreSQL allows at most 65535).
    pub number: u64,
}

/// The words a statement names, lower-cased unless quoted, in one buffer (no allocation per word).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Idents {
    buf: String,
    ends: Vec<usize>,
}

impl Idents {
    /// Every identifier, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.ends.len()).map(move |i| self.get(i))
    }

    /// Identifier `i` ("" when out of range).
    pub fn get(&self, i: usize) -> &str {
        let end = self.ends.get(i).copied().unwrap_or(0);
        let start = if i == 0 {
            0
        } else {
            self.ends.get(i - 1).copied().unwrap_or(end)
        };
        self.buf.get(start..end).unwrap_or("")
    }

    /// Identifiers `range` (indices), e.g. one statement's [`StatementSpan::identifiers`].
    pub fn slice(&self, range: Range<usize>) -> impl Iterator<Item = &str> + '_ {
        range
            .filter(|i| *i < self.ends.len())
            .map(move |i| self.get(i))
    }

    pub fn contains(&self, s: &str) -> bool {
        self.iter().any(|x| x == s)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn push(&mut self, s: &str) -> usize {
        self.buf.push_str(s);
        self.ends.push(self.buf.len());
        self.ends.len() - 1
    }

    fn push_lower(&mut self, s: &str) -> usize {
        if s.is_ascii() {
            let start = self.buf.len();
            self.buf.push_str(s);
            if let Some(t) = self.buf.get_mut(start..) {
                t.make_ascii_lowercase();
            }
        } else {
            self.buf.push_str(&s.to_lowercase());
        }
        self.ends.push(self.buf.len());
        self.ends.len() - 1
    }
}

/// Result of [`lex`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lexed {
    /// Literals replaced by `$n`, comments removed, runs of whitespace as one space.
    pub normalized: String,
    /// FNV-1a 64 of `normalized` (stable across runs and builds).
    pub fingerprint: u64,
    pub statements: Vec<StatementSpan>,
    pub literals: Vec<Literal>,
    /// Every `$n` token, in text order: where the analysis's per-occurrence decisions
    /// ([`crate::plan::Site`]) apply.
    pub params: Vec<ParamToken>,
    /// Every word outside literals (keywords included): lower-cased unless quoted; quoted ones with
    /// `""` and `U&` escapes decoded. Words inside dollar-quoted bodies, and inside strings of
    /// `DO`/`CREATE FUNCTION`/`CREATE PROCEDURE` statements, are added too (lower-cased), so
    /// [`names_any`] sees tables named in code bodies.
    pub identifiers: Idents,
    /// Highest `$n` parameter (0 when none); literal placeholders start after it.
    pub max_param: u64,
    /// A string, quoted identifier or comment ran to the end of the text.
    pub unterminated: bool,
    /// A `U&"..."` identifier occurs (sqlparser does not understand them; analysis fails closed).
    pub unicode_identifiers: bool,
}

/// Parameters beyond this are clamped (PostgreSQL allows 65535).
const PARAM_CAP: u64 = 1_000_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    /// Copied verbatim (identifiers, keywords, operators, punctuation, parameters).
    Text,
    /// A literal: index into `literals`.
    Lit(usize),
    /// `;` at top level.
    Semi,
}

struct Token {
    start: usize,
    end: usize,
    tok: Tok,
    /// Whitespace or a comment came before it.
    space_before: bool,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_ident_cont(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Lex a SQL string. Never fails, never panics.
pub fn lex(sql: &str) -> Lexed {
    let bytes = sql.as_bytes();
    let n = bytes.len();
    let mut out = Lexed::default();
    out.identifiers.buf.reserve(n);
    out.identifiers.ends.reserve(n / 4 + 4);
    let mut tokens: Vec<Token> = Vec::with_capacity(n / 3 + 4);
    let mut literals: Vec<(Range<usize>, LiteralKind)> = Vec::new();
    // (state, end, last_token, literal_end, ident_end)
    let mut stmts: Vec<(StmtState, usize, usize, usize, usize)> = Vec::new();
    let mut st = StmtState::new(0, 0, 0, 0);
    let mut space = false;
    let mut i = 0usize;
    let mut max_param: u64 = 0;

    macro_rules! push_text {
        ($s:expr, $e:expr) => {{
            tokens.push(Token {
                start: $s,
                end: $e,
                tok: Tok::Text,
                space_before: space,
            });
            space = false;
        }};
    }
    macro_rules! push_lit {
        ($s:expr, $e:expr, $k:expr) => {{
            literals.push(($s..$e, $k));
            tokens.push(Token {
                start: $s,
                end: $e,
                tok: Tok::Lit(literals.len() - 1),
                space_before: space,
            });
            space = false;
        }};
    }

    while i < n {
        let b = bytes.get(i).copied().unwrap_or(0);
        let next = bytes.get(i + 1).copied();
        match b {
            b' ' | b'\t' | b'\n' | b'\r' | 0x0c | 0x0b => {
                space = true;
                i += 1;
            }
            b'-' if next == Some(b'-') => {
                while i < n && bytes.get(i) != Some(&b'\n') {
                    i += 1;
                }
                space = true;
            }
            b'/' if next == Some(b'*') => {
                let mut depth = 0usize;
                let mut closed = false;
                while i < n {
                    if bytes.get(i) == Some(&b'/') && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if bytes.get(i) == Some(&b'*') && bytes.get(i + 1) == Some(&b'/') {
                        depth = depth.saturating_sub(1);
                        i += 2;
                        if depth == 0 {
                            closed = true;
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                if !closed {
                    out.unterminated = true;
                }
                space = true;
            }
            b'\'' => {
                let s = i;
                let (e, closed) = scan_quoted(bytes, i + 1, b'\'', false);
                out.unterminated |= !closed;
                if st.opaque {
                    add_body_words(&mut out.identifiers, sql.get(s..e).unwrap_or(""));
                }
                push_lit!(s, e, LiteralKind::String);
                i = e;
            }
            b'"' => {
                let s = i;
                let (e, closed) = scan_quoted(bytes, i + 1, b'"', false);
                out.unterminated |= !closed;
                let inner = sql
                    .get(s + 1..e.saturating_sub(usize::from(closed)).max(s + 1))
                    .unwrap_or("");
                let name = inner.replace("\"\"", "\"");
                let idx = out.identifiers.push(&name);
                st.note_word(out.identifiers.get(idx));
                push_text!(s, e);
                i = e;
            }
            b'$' => {
                if next.is_some_and(|c| c.is_ascii_digit()) {
                    let s = i;
                    let mut j = i + 1;
                    let mut num: u64 = 0;
                    while let Some(d) = bytes.get(j).filter(|c| c.is_ascii_digit()) {
                        num = num
                            .saturating_mul(10)
                            .saturating_add(u64::from(d - b'0'))
                            .min(PARAM_CAP);
                        j += 1;
                    }
                    max_param = max_param.max(num);
                    out.params.push(ParamToken {
                        span: s..j,
                        number: num,
                    });
                    push_text!(s, j);
                    i = j;
                } else if let Some(tag_end) = dollar_tag(bytes, i) {
                    // $tag$ ... $tag$
                    let s = i;
                    let tag = sql.get(i..=tag_end).unwrap_or("$$");
                    let body_start = tag_end + 1;
                    // Two-way substring search: linear even for adversarial tags and bodies.
                    let found = sql.get(body_start..).and_then(|rest| rest.find(tag));
                    let (j, end, closed) = match found {
                        Some(off) => (body_start + off, body_start + off + tag.len(), true),
                        None => (n, n, false),
                    };
                    out.unterminated |= !closed;
                    add_body_words(
                        &mut out.identifiers,
                        sql.get(body_start..j.min(n)).unwrap_or(""),
                    );
                    push_lit!(s, end, LiteralKind::DollarString);
                    i = end;
                } else {
                    push_text!(i, i + 1);
                    i += 1;
                }
            }
            b'0'..=b'9' => {
                let e = scan_number(bytes, i);
                push_lit!(i, e, LiteralKind::Number);
                i = e;
            }
            b'.' if next.is_some_and(|c| c.is_ascii_digit()) => {
                let e = scan_number(bytes, i);
                push_lit!(i, e, LiteralKind::Number);
                i = e;
            }
            b';' => {
                tokens.push(Token {
                    start: i,
                    end: i + 1,
                    tok: Tok::Semi,
                    space_before: space,
                });
                space = false;
                let last = tokens.len();
                let idents = out.identifiers.len();
                let finished =
                    std::mem::replace(&mut st, StmtState::new(i + 1, last, literals.len(), idents));
                stmts.push((finished, i, last - 1, literals.len(), idents));
                i += 1;
            }
            _ if is_ident_start(b) => {
                let s = i;
                let mut j = i + 1;
                while bytes.get(j).is_some_and(|c| is_ident_cont(*c)) {
                    j += 1;
                }
                // Prefixed strings: E'', B'', X'', N'', U&'' and U&"".
                let word = bytes.get(s..j).unwrap_or(&[]);
                let after = bytes.get(j).copied();
                if word.len() == 1 && after == Some(b'\'') {
                    let (kind, backslash) = match word.first().map(u8::to_ascii_lowercase) {
                        Some(b'e') => (Some(LiteralKind::EscapeString), true),
                        Some(b'b') => (Some(LiteralKind::Bit), false),
                        Some(b'x') => (Some(LiteralKind::Hex), false),
                        Some(b'n') => (Some(LiteralKind::String), false),
                        _ => (None, false),
                    };
                    if let Some(kind) = kind {
                        let (e, closed) = scan_quoted(bytes, j + 1, b'\'', backslash);
                        out.unterminated |= !closed;
                        push_lit!(s, e, kind);
                        i = e;
                        continue;
                    }
                }
                if word.len() == 1
                    && word.first().map(u8::to_ascii_lowercase) == Some(b'u')
                    && after == Some(b'&')
                {
                    match bytes.get(j + 1) {
                        Some(b'\'') => {
                            let (e, closed) = scan_quoted(bytes, j + 2, b'\'', false);
                            out.unterminated |= !closed;
                            push_lit!(s, e, LiteralKind::UnicodeString);
                            i = e;
                            continue;
                        }
                        Some(b'"') => {
                            out.unicode_identifiers = true;
                            let (e, closed) = scan_quoted(bytes, j + 2, b'"', false);
                            out.unterminated |= !closed;
                            let inner = sql
                                .get(j + 2..e.saturating_sub(usize::from(closed)).max(j + 2))
                                .unwrap_or("");
                            let raw = inner.replace("\"\"", "\"");
                            let decoded = decode_unicode_escapes(&raw);
                            let idx = out.identifiers.push(&decoded);
                            st.note_word(out.identifiers.get(idx));
                            out.identifiers.push(&raw);
                            push_text!(s, e);
                            i = e;
                            continue;
                        }
                        _ => {}
                    }
                }
                let text = sql.get(s..j).unwrap_or("");
                if text.eq_ignore_ascii_case("case") {
                    st.cases += 1;
                    st.nest();
                } else if text.eq_ignore_ascii_case("end") {
                    st.cases -= 1;
                }
                let idx = out.identifiers.push_lower(text);
                st.note_word(out.identifiers.get(idx));
                push_text!(s, j);
                i = j;
            }
            b'(' => {
                st.depth += 1;
                st.nest();
                push_text!(i, i + 1);
                i += 1;
            }
            b')' => {
                st.depth -= 1;
                push_text!(i, i + 1);
                i += 1;
            }
            b'[' | b']' => {
                if b == b'[' {
                    st.brackets += 1;
                    st.nest();
                } else {
                    st.brackets -= 1;
                }
                push_text!(i, i + 1);
                i += 1;
            }
            _ => {
                // Any other byte (operators, punctuation, stray UTF-8 continuation bytes are covered by
                // `is_ident_start`): one token, copied.
                let len = utf8_len(b);
                let e = (i + len).min(n);
                push_text!(i, e);
                i = e;
            }
        }
    }
    let last = tokens.len();
    let lit_count = literals.len();
    let ident_count = out.identifiers.len();
    stmts.push((st, n, last, lit_count, ident_count));

    out.max_param = max_param;
    // Emit the normalised text.
    let mut norm = String::with_capacity(n + 2 * literals.len() + 8);
    let mut lit_out: Vec<Literal> = Vec::with_capacity(literals.len());
    for (idx, (span, kind)) in literals.into_iter().enumerate() {
        lit_out.push(Literal {
            span,
            kind,
            placeholder: max_param + 1 + idx as u64,
        });
    }
    let mut tok_norm_start: Vec<usize> = Vec::with_capacity(tokens.len() + 1);
    for t in &tokens {
        if t.space_before && !norm.is_empty() && !norm.ends_with(' ') {
            norm.push(' ');
        }
        tok_norm_start.push(norm.len());
        match t.tok {
            Tok::Text | Tok::Semi => norm.push_str(sql.get(t.start..t.end).unwrap_or("")),
            Tok::Lit(li) => {
                norm.push('$');
                let p = lit_out.get(li).map(|l| l.placeholder).unwrap_or(0);
                push_u64(&mut norm, p);
            }
        }
    }
    tok_norm_start.push(norm.len());

    for (state, end, last_tok, lit_end, ident_end) in stmts {
        let first_tok = state.first_token;
        let has_tokens = tokens
            .get(first_tok..last_tok.min(tokens.len()))
            .is_some_and(|ts| ts.iter().any(|t| t.tok != Tok::Semi));
        if !has_tokens {
            continue;
        }
        let nstart = tok_norm_start.get(first_tok).copied().unwrap_or(0);
        let nend = tok_norm_start
            .get(last_tok.min(tokens.len()))
            .copied()
            .unwrap_or(norm.len())
            .max(nstart);
        let text_len = norm
            .get(nstart..nend)
            .map(|t| t.trim_end().len())
            .unwrap_or(0);
        let (kind, refers_to_prior) = state.kind();
        out.statements.push(StatementSpan {
            range: state.start..end,
            normalized_range: nstart..nstart + text_len,
            kind,
            literals: state.first_literal..lit_end.max(state.first_literal),
            identifiers: state.first_ident..ident_end.max(state.first_ident),
            params: {
                let before = |at: usize| out.params.partition_point(|p| p.span.start < at);
                before(state.start)..before(end)
            },
            max_nesting: u32::try_from(state.max_nesting).unwrap_or(u32::MAX),
            refers_to_prior,
        });
    }
    let trimmed_len = norm.trim_end().len();
    norm.truncate(trimmed_len);
    for s in &mut out.statements {
        s.normalized_range.end = s.normalized_range.end.min(norm.len());
        s.normalized_range.start = s.normalized_range.start.min(s.normalized_range.end);
    }
    out.fingerprint = fingerprint(norm.as_bytes());
    out.normalized = norm;
    out.literals = lit_out;
    out
}

fn push_u64(s: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 || i == 0 {
            break;
        }
    }
    for b in buf.get(i..).unwrap_or(&[]) {
        s.push(char::from(*b));
    }
}

fn utf8_len(b: u8) -> usize {
    match b {
        0xF0..=0xF7 => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// FNV-1a, 64 bit: stable fingerprint of normalised text.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Fingerprint of normalised text: FNV-1a style but eight bytes per step (stable across runs, builds
/// and platforms: bytes are read little-endian), finished with a final avalanche.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    const K: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (bytes.len() as u64);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    for b in chunks.remainder() {
        h = (h ^ u64::from(*b)).wrapping_mul(K);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Scan a quoted token whose body starts at `i` (after the opening quote). Doubled quotes are escapes;
/// with `backslash`, `\x` escapes any byte. Returns (end after the closing quote, closed?).
fn scan_quoted(bytes: &[u8], mut i: usize, quote: u8, backslash: bool) -> (usize, bool) {
    let n = bytes.len();
    while i < n {
        let b = bytes.get(i).copied().unwrap_or(0);
        if backslash && b == b'\\' {
            i += 2;
            continue;
        }
        if b == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return (i + 1, true);
        }
        i += 1;
    }
    (n, false)
}

/// If a dollar-quote opening tag starts at `i` (`$$` or `$tag$`), the index of its closing `$`.
fn dollar_tag(bytes: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    match bytes.get(j) {
        Some(b'$') => return Some(j),
        Some(c) if is_ident_start(*c) => {}
        _ => return None,
    }
    while let Some(c) = bytes.get(j) {
        if *c == b'$' {
            return Some(j);
        }
        if !(c.is_ascii_alphanumeric() || *c == b'_' || *c >= 0x80) {
            return None;
        }
        j += 1;
    }
    None
}

/// Scan a numeric literal starting at `i`: `123`, `1.5`, `.5`, `1e10`, `1.5E-3`, `0x1F`, `1_000`.
fn scan_number(bytes: &[u8], i: usize) -> usize {
    let digit = |j: usize| {
        bytes
            .get(j)
            .is_some_and(|c| c.is_ascii_digit() || *c == b'_')
    };
    let mut j = i;
    if bytes.get(i) == Some(&b'0')
        && matches!(
            bytes.get(i + 1),
            Some(b'x' | b'X' | b'o' | b'O' | b'b' | b'B')
        )
        && bytes.get(i + 2).is_some_and(|c| c.is_ascii_hexdigit())
    {
        j = i + 2;
        while bytes
            .get(j)
            .is_some_and(|c| c.is_ascii_hexdigit() || *c == b'_')
        {
            j += 1;
        }
        return j;
    }
    while digit(j) {
        j += 1;
    }
    if bytes.get(j) == Some(&b'.') && bytes.get(j + 1) != Some(&b'.') {
        j += 1;
        while digit(j) {
            j += 1;
        }
    }
    if matches!(bytes.get(j), Some(b'e' | b'E')) {
        let k = if matches!(bytes.get(j + 1), Some(b'+' | b'-')) {
            j + 2
        } else {
            j + 1
        };
        if bytes.get(k).is_some_and(|c| c.is_ascii_digit()) {
            j = k;
            while digit(j) {
                j += 1;
            }
        }
    }
    j.max(i + 1)
}

/// Words (identifier-like runs) of a code body, lower-cased, added so `names_any` sees them.
fn add_body_words(into: &mut Idents, body: &str) {
    for w in body.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$')) {
        if !w.is_empty() && w.len() <= 63 && !w.starts_with(|c: char| c.is_ascii_digit()) {
            into.push_lower(w);
        }
    }
}

/// Decode `\XXXX` and `\+XXXXXX` escapes of a `U&"..."` identifier (default escape character).
pub fn decode_unicode_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars.get(i).copied().unwrap_or('\0');
        if c == '\\' {
            if chars.get(i + 1) == Some(&'\\') {
                out.push('\\');
                i += 2;
                continue;
            }
            let (len, start) = if chars.get(i + 1) == Some(&'+') {
                (6, i + 2)
            } else {
                (4, i + 1)
            };
            let hex: String = chars.iter().skip(start).take(len).collect();
            if hex.len() == len && hex.chars().all(|h| h.is_ascii_hexdigit()) {
                if let Some(ch) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    out.push(ch);
                    i = start + len;
                    continue;
                }
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// Fast check: does the text name any of `protected_tables` (table names without schema, lower-case)?
///
/// Unqualified and qualified names match by table name; quoted and `U&` identifiers are compared
/// decoded. Words inside code bodies (dollar quotes, `DO`/`CREATE FUNCTION` strings) count too.
/// `EXECUTE`/`FETCH`/`MOVE` always answer true (they run an earlier statement). A statement that reaches
/// protected data only through a view or function whose name is not protected answers false: that
/// cannot be known without the database, and the proxy's per-value key check is the backstop.
pub fn names_any(lexed: &Lexed, protected_tables: &[String]) -> bool {
    if lexed.statements.iter().any(|s| s.refers_to_prior) {
        return true;
    }
    if protected_tables.is_empty() {
        return false;
    }
    lexed
        .identifiers
        .iter()
        .any(|id| protected_tables.iter().any(|t| t == id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> String {
        lex(s).normalized
    }

    #[test]
    fn literals_become_placeholders_after_params() {
        assert_eq!(
            norm("SELECT * FROM t WHERE a = $1 AND b = 'x'"),
            "SELECT * FROM t WHERE a = $1 AND b = $2"
        );
        assert_eq!(
            norm("select 1, 2.5, .5e3, 'it''s'"),
            "select $1, $2, $3, $4"
        );
        assert_eq!(
            norm("SELECT E'a\\'b', $$x'y$$, $f$ $$ $f$, B'01', X'ff', U&'\\0041'"),
            "SELECT $1, $2, $3, $4, $5, $6"
        );
    }

    #[test]
    fn comments_and_whitespace_go() {
        assert_eq!(
            norm("SELECT /* a /* nested */ still */ a  -- trailing 'x'\n FROM\tt"),
            "SELECT a FROM t"
        );
    }

    #[test]
    fn identifiers_are_not_literals() {
        let l = lex("SELECT c1_0.id, t1.\"x2\" FROM customers c1_0 WHERE c1_0.id=$1");
        assert!(l.literals.is_empty(), "{:?}", l.literals);
        assert!(l.identifiers.contains("c1_0"));
        assert!(l.identifiers.contains("x2"));
        assert_eq!(l.max_param, 1);
    }

    #[test]
    fn quoted_and_unicode_identifiers() {
        let l = lex("SELECT U&\"\\0073sn\" FROM \"Customers\", U&\"cust\\006Fmers\"");
        assert!(l.identifiers.contains("ssn"));
        assert!(l.identifiers.contains("Customers"));
        assert!(l.identifiers.contains("customers"));
        assert!(l.literals.is_empty());
    }

    #[test]
    fn statements_and_kinds() {
        let l = lex("BEGIN; WITH x AS (SELECT 1) UPDATE t SET a = 1; insert into t values (';'); COPY t FROM STDIN; DROP TABLE t;; EXECUTE p(1)");
        let kinds: Vec<_> = l.statements.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            vec![
                StatementKind::Other,
                StatementKind::Update,
                StatementKind::Insert,
                StatementKind::Copy,
                StatementKind::Ddl,
                StatementKind::Other
            ]
        );
        assert!(l.statements.last().is_some_and(|s| s.refers_to_prior));
        let ins = &l.statements[2];
        assert_eq!(ins.literals, 2..3);
        assert_eq!(
            &l.normalized[ins.normalized_range.clone()],
            "insert into t values ($3)"
        );
    }

    #[test]
    fn dollar_bodies_are_seen_by_names_any() {
        let l = lex("DO $$ BEGIN PERFORM ssn FROM Customers; END $$");
        assert!(names_any(&l, &["customers".to_string()]));
        assert!(!l.normalized.contains("Customers"));
        let l = lex("CREATE FUNCTION f() RETURNS int AS 'SELECT 1 FROM customers' LANGUAGE sql");
        assert!(names_any(&l, &["customers".to_string()]));
        let l = lex("SELECT 'customers'");
        assert!(!names_any(&l, &["customers".to_string()]));
    }

    #[test]
    fn unterminated_input_is_replaced() {
        let l = lex("SELECT 'secret");
        assert!(l.unterminated);
        assert_eq!(l.normalized, "SELECT $1");
        let l = lex("SELECT $a$ secret");
        assert_eq!(l.normalized, "SELECT $1");
    }

    #[test]
    fn same_shape_same_fingerprint() {
        let a = lex("SELECT * FROM t WHERE a = 'x' AND b = 12");
        let b = lex("SELECT  *  FROM t /*c*/ WHERE a = 'yyy' AND b = 3.5e2");
        assert_eq!(a.normalized, b.normalized);
        assert_eq!(a.fingerprint, b.fingerprint);
    }
}
