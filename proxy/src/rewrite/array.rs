//! Array values for encrypted columns (`col = ANY($1)`, `col = ANY('{a,b}')`): every non-NULL element is
//! encrypted and the array re-serialised with the storage type as element type.
//!
//! Text format follows `array_in`/`array_out`: `{a,b,"c d",NULL}`, nested braces for more dimensions,
//! an optional `[lb:ub]=` bounds decoration (kept as written), `\` escaping any character (quoted or
//! not), unquoted `NULL` (any case) for NULL, whitespace around unquoted elements ignored. Armoured
//! elements are written bare; `bytea` elements as `"\\x<hex>"`.
//!
//! Binary format follows `array_recv`/`array_send`: i32 ndim (0..=6), i32 has-null flag, u32 element
//! oid, ndim × (i32 size, i32 lower bound), then each element as i32 length (-1 = NULL) + bytes.
//!
//! With `variants` (equality on a rotated deterministic column), each element becomes one element per
//! live key version; only for one-dimensional arrays without bounds decoration — otherwise the active
//! version alone is used (rows under older versions then need `pgcloak reencrypt` to match).

use super::error::{Result, RewriteError};
use super::values::stored_text;
use super::{ColumnTarget, Format, Storage};
use crate::protocol::reader::Reader;

/// PostgreSQL's MAXDIM.
const MAX_DIMS: usize = 6;

enum Node {
    List(Vec<Node>),
    Elem(Option<Vec<u8>>),
}

fn bad(t: &ColumnTarget<'_>, reason: &'static str) -> RewriteError {
    RewriteError::InvalidValue {
        column: t.column().to_string(),
        ty: t.ty.name(),
        format: "array text",
        reason,
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_ws) {
            self.i += 1;
        }
    }

    /// Parses `{ ... }` starting at `{` (iteratively bounded by MAX_DIMS through recursion depth).
    fn list(&mut self, depth: usize) -> std::result::Result<Node, &'static str> {
        if depth > MAX_DIMS {
            return Err("it has more than 6 dimensions");
        }
        if self.peek() != Some(b'{') {
            return Err("it does not start with \"{\"");
        }
        self.i += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Node::List(items));
        }
        loop {
            self.skip_ws();
            match self.peek() {
                None => return Err("it ends before its closing \"}\""),
                Some(b'{') => items.push(self.list(depth + 1)?),
                Some(_) => items.push(self.element()?),
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Node::List(items));
                }
                None => return Err("it ends before its closing \"}\""),
                Some(_) => {
                    return Err("an element is followed by something other than \",\" or \"}\"")
                }
            }
        }
    }

    fn element(&mut self) -> std::result::Result<Node, &'static str> {
        let mut out = Vec::new();
        if self.peek() == Some(b'"') {
            self.i += 1;
            loop {
                match self.peek() {
                    None => return Err("a quoted element is not closed"),
                    Some(b'\\') => {
                        let c = self
                            .s
                            .get(self.i + 1)
                            .copied()
                            .ok_or("a quoted element is not closed")?;
                        out.push(c);
                        self.i += 2;
                    }
                    Some(b'"') => {
                        self.i += 1;
                        return Ok(Node::Elem(Some(out)));
                    }
                    Some(c) => {
                        out.push(c);
                        self.i += 1;
                    }
                }
            }
        }
        // Unquoted: up to `,` or `}`; trailing unescaped whitespace dropped.
        let mut escaped_any = false;
        let mut keep = 0; // length of `out` up to the last escaped or non-space byte
        loop {
            match self.peek() {
                None => return Err("it ends before its closing \"}\""),
                Some(b',' | b'}') => break,
                Some(b'{' | b'"') => return Err("an unquoted element contains \"{\" or '\"'"),
                Some(b'\\') => {
                    let c = self
                        .s
                        .get(self.i + 1)
                        .copied()
                        .ok_or("it ends inside an escape")?;
                    out.push(c);
                    keep = out.len();
                    escaped_any = true;
                    self.i += 2;
                }
                Some(c) => {
                    out.push(c);
                    if !is_ws(c) {
                        keep = out.len();
                    }
                    self.i += 1;
                }
            }
        }
        out.truncate(keep);
        if out.is_empty() && !escaped_any {
            return Err("it has an empty unquoted element");
        }
        if !escaped_any && out.eq_ignore_ascii_case(b"null") {
            return Ok(Node::Elem(None));
        }
        Ok(Node::Elem(Some(out)))
    }
}

/// Encrypts every element of a text-format array of the logical type; returns the text-format array
/// of the storage type (`bytea[]` or `text[]`), ready for a text-format Bind parameter or, through
/// [`super::values::quote_sql`], a SQL literal.
pub fn encrypt_text_array(
    target: &ColumnTarget<'_>,
    text: &[u8],
    variants: bool,
) -> Result<Vec<u8>> {
    let mut p = Parser { s: text, i: 0 };
    p.skip_ws();
    // Optional `[lb:ub][lb:ub]=` decoration, kept verbatim.
    let mut decoration: &[u8] = &[];
    if p.peek() == Some(b'[') {
        let start = p.i;
        let from = text.get(start..).unwrap_or_default();
        let eq = from
            .iter()
            .position(|&c| c == b'=')
            .ok_or_else(|| bad(target, "its dimension decoration has no \"=\""))?;
        let (deco, _) = from.split_at(eq);
        if !deco.iter().all(|c| {
            c.is_ascii_digit() || matches!(c, b'[' | b']' | b':' | b'-' | b'+') || is_ws(*c)
        }) {
            return Err(bad(target, "its dimension decoration is malformed"));
        }
        decoration = from.get(..=eq).unwrap_or_default();
        p.i = start + eq + 1;
        p.skip_ws();
    }
    let root = p.list(1).map_err(|r| bad(target, r))?;
    p.skip_ws();
    if p.i != text.len() {
        return Err(bad(target, "it has text after its closing \"}\""));
    }
    let one_dim = match &root {
        Node::List(items) => items.iter().all(|n| matches!(n, Node::Elem(_))),
        Node::Elem(_) => true,
    };
    let variants = variants && one_dim && decoration.is_empty() && target.has_variants();
    let mut out = Vec::with_capacity(text.len() * 2 + 64);
    out.extend_from_slice(decoration);
    write_node(target, &root, variants, &mut out)?;
    Ok(out)
}

fn write_node(t: &ColumnTarget<'_>, node: &Node, variants: bool, out: &mut Vec<u8>) -> Result<()> {
    match node {
        Node::Elem(None) => out.extend_from_slice(b"NULL"),
        Node::Elem(Some(v)) => {
            let canonical = t.canonical_from_text(v)?;
            let stored = if variants {
                t.encrypt_variants(&canonical)?
            } else {
                vec![t.encrypt(&canonical)?]
            };
            for (i, s) in stored.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_array_elem(out, &stored_text(t.storage, s), t.storage);
            }
        }
        Node::List(items) => {
            out.push(b'{');
            for (i, n) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_node(t, n, variants, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// An element of a text-format array: armour bare (it has no `{},"\` or spaces), anything else quoted.
fn push_array_elem(out: &mut Vec<u8>, text: &[u8], storage: Storage) {
    let bare = storage == Storage::Text
        && !text.is_empty()
        && !text.eq_ignore_ascii_case(b"null")
        && text
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b':' | b'-' | b'_'));
    if bare {
        out.extend_from_slice(text);
        return;
    }
    push_quoted(out, text);
}

/// `text` as a double-quoted array element (`"` and `\\` escaped).
fn push_quoted(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'"');
    for &c in text {
        if c == b'"' || c == b'\\' {
            out.push(b'\\');
        }
        out.push(c);
    }
    out.push(b'"');
}

/// A one-element array of `value` (a value of the type `elem_oid` in `format`), in the same format:
/// how a client's scalar for `col = $n` becomes the array that `col = ANY($n)` takes.
pub fn one_element_array(value: &[u8], elem_oid: u32, format: Format) -> Vec<u8> {
    match format {
        Format::Binary => {
            let mut a = Vec::with_capacity(value.len() + 24);
            a.extend_from_slice(&1i32.to_be_bytes()); // ndim
            a.extend_from_slice(&0i32.to_be_bytes()); // no NULLs
            a.extend_from_slice(&elem_oid.to_be_bytes());
            a.extend_from_slice(&1i32.to_be_bytes()); // length of dimension 1
            a.extend_from_slice(&1i32.to_be_bytes()); // lower bound
            a.extend_from_slice(&(value.len() as i32).to_be_bytes());
            a.extend_from_slice(value);
            a
        }
        Format::Text => {
            let mut a = Vec::with_capacity(value.len() + 6);
            a.push(b'{');
            push_quoted(&mut a, value);
            a.push(b'}');
            a
        }
    }
}

/// Encrypts every element of a binary-format array of the logical type (element oid must be the
/// logical type's); returns a binary-format array of the storage type (element oid 17 or 25).
pub fn encrypt_binary_array(
    target: &ColumnTarget<'_>,
    bin: &[u8],
    variants: bool,
) -> Result<Vec<u8>> {
    let bad = |reason| RewriteError::InvalidValue {
        column: target.column().to_string(),
        ty: target.ty.name(),
        format: "binary array",
        reason,
    };
    let mut r = Reader::new(bin, "array");
    let short = "it is shorter than its header and elements declare";
    let ndim = r.i32().map_err(|_| bad(short))?;
    let flags = r.i32().map_err(|_| bad(short))?;
    let oid = r.i32().map_err(|_| bad(short))? as u32;
    let ndim = usize::try_from(ndim)
        .ok()
        .filter(|n| *n <= MAX_DIMS)
        .ok_or(bad("its number of dimensions is not 0 to 6"))?;
    if flags != 0 && flags != 1 {
        return Err(bad("its flags are not 0 or 1"));
    }
    if ndim > 0 && oid != target.ty.oid() {
        return Err(bad("its element type is not the column's type"));
    }
    let mut dims = Vec::with_capacity(ndim);
    let mut count: usize = 1;
    for _ in 0..ndim {
        let size = r.i32().map_err(|_| bad(short))?;
        let lbound = r.i32().map_err(|_| bad(short))?;
        let size = usize::try_from(size).map_err(|_| bad("a dimension size is negative"))?;
        count = count
            .checked_mul(size)
            .filter(|c| *c <= bin.len() / 4 + 1)
            .ok_or(bad(short))?;
        dims.push((size, lbound));
    }
    if ndim == 0 {
        count = 0;
    }
    let variants = variants && ndim == 1 && target.has_variants();
    let mut elems: Vec<Option<Vec<Vec<u8>>>> = Vec::with_capacity(count);
    for _ in 0..count {
        let len = r.i32().map_err(|_| bad(short))?;
        if len == -1 {
            elems.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| bad("an element length is negative"))?;
        let v = r.bytes(len).map_err(|_| bad(short))?;
        let canonical = target.canonical_from_wire(v, Format::Binary)?;
        elems.push(Some(if variants {
            target.encrypt_variants(&canonical)?
        } else {
            vec![target.encrypt(&canonical)?]
        }));
    }
    if !r.is_empty() {
        return Err(bad("it has bytes after its last element"));
    }
    let per = elems
        .iter()
        .flatten()
        .map(Vec::len)
        .max()
        .unwrap_or(1)
        .max(1);
    let has_null = elems.iter().any(Option::is_none);
    let mut out = Vec::with_capacity(bin.len() * 2 + 64);
    out.extend_from_slice(&(ndim as i32).to_be_bytes());
    out.extend_from_slice(&i32::from(has_null).to_be_bytes());
    out.extend_from_slice(&target.storage.oid().to_be_bytes());
    for (size, lbound) in &dims {
        // With variants (one dimension only) every element, NULLs included, takes `per` slots.
        let size = if variants { size * per } else { *size };
        let size = i32::try_from(size).map_err(|_| bad("it has too many elements"))?;
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&lbound.to_be_bytes());
    }
    for e in &elems {
        match e {
            None => {
                let copies = if variants { per } else { 1 };
                for _ in 0..copies {
                    out.extend_from_slice(&(-1i32).to_be_bytes());
                }
            }
            Some(stored) => {
                for s in stored {
                    let len = i32::try_from(s.len()).map_err(|_| bad("an element is too large"))?;
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(s);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::testkit::{Kit, Rng, EMAIL, NOTES};
    use pgcloak_keymgr::{typed, LogicalType};

    /// Parses an output text array of the storage type back into stored values (test oracle).
    fn parse_out(text: &[u8]) -> Vec<Option<Vec<u8>>> {
        let mut p = Parser { s: text, i: 0 };
        let mut out = Vec::new();
        fn flat(n: Node, out: &mut Vec<Option<Vec<u8>>>) {
            match n {
                Node::Elem(e) => out.push(e),
                Node::List(items) => items.into_iter().for_each(|i| flat(i, out)),
            }
        }
        flat(p.list(1).unwrap(), &mut out);
        out
    }

    #[test]
    fn text_arrays_quoting_nulls_and_escapes() {
        let kit = Kit::new();
        let kr = kit.keyring();
        for storage in [Storage::Text, Storage::Bytea] {
            let t = kit.target(&kr, EMAIL, LogicalType::Text, storage);
            let input = br#" { a , "c d" ,NULL, "NULL", nul\l, "q\"x\\", \ sp\  } "#;
            let out = encrypt_text_array(&t, input, false).unwrap();
            if storage == Storage::Text {
                assert!(!out.contains(&b'"'), "armour needs no quotes");
            } else {
                assert!(
                    out.starts_with(b"{\"\\\\x"),
                    "{}",
                    String::from_utf8_lossy(&out)
                );
            }
            let elems = parse_out(&out);
            let plain: Vec<Option<Vec<u8>>> = elems
                .iter()
                .map(|e| {
                    e.as_ref().map(|v| {
                        let raw = match storage {
                            Storage::Text => v.clone(),
                            Storage::Bytea => {
                                typed::canonical_from_text(LogicalType::Bytea, v).unwrap()
                            }
                        };
                        t.cipher.decrypt(&raw).unwrap()
                    })
                })
                .collect();
            let want: Vec<Option<&[u8]>> = vec![
                Some(b"a"),
                Some(b"c d"),
                None,
                Some(b"NULL"),
                Some(b"null"),
                Some(b"q\"x\\"),
                Some(b" sp "),
            ];
            assert_eq!(plain.iter().map(|o| o.as_deref()).collect::<Vec<_>>(), want);
        }
    }

    #[test]
    fn text_arrays_multi_dim_decoration_and_empty() {
        let kit = Kit::new();
        let kr = kit.keyring();
        let t = kit.target(&kr, EMAIL, LogicalType::Int4, Storage::Text);
        let out = encrypt_text_array(&t, b"{{1,2},{3,NULL}}", true).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("{{pgc1:") && s.ends_with(",NULL}}"), "{s}");
        assert_eq!(s.matches("pgc1:").count(), 3);
        let out = encrypt_text_array(&t, b"[0:1]={7,8}", false).unwrap();
        assert!(out.starts_with(b"[0:1]={pgc1:"));
        assert_eq!(encrypt_text_array(&t, b"{}", false).unwrap(), b"{}");
        for bad in [
            &b""[..],
            b"{",
            b"{1,}",
            b"{1,2",
            b"{1}x",
            b"{\"1}",
            b"{1 2}",
            b"[1:2]{1,2}",
            b"{{{{{{{1}}}}}}}",
            b"{abc}",
            b"1,2",
        ] {
            let e = encrypt_text_array(&t, bad, false).unwrap_err();
            assert_eq!(e.sqlstate(), "22P02", "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn text_array_variants_after_rotation() {
        let kit = Kit::new();
        let old = kit.keyring();
        let kr = kit.rotated_keyring(EMAIL);
        let t = kit.target(&kr, EMAIL, LogicalType::Text, Storage::Text);
        let out = encrypt_text_array(&t, b"{a,b}", true).unwrap();
        let elems = parse_out(&out);
        assert_eq!(elems.len(), 4);
        let t_old = kit.target(&old, EMAIL, LogicalType::Text, Storage::Text);
        assert_eq!(elems[1].as_deref(), Some(&t_old.encrypt(b"a").unwrap()[..]));
        assert_eq!(elems[3].as_deref(), Some(&t_old.encrypt(b"b").unwrap()[..]));
        // Multi-dimensional: active version only.
        let out = encrypt_text_array(&t, b"{{a},{b}}", true).unwrap();
        assert_eq!(String::from_utf8(out).unwrap().matches("pgc1:").count(), 2);
    }

    fn bin_array(oid: u32, dims: &[(i32, i32)], elems: &[Option<&[u8]>]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(dims.len() as i32).to_be_bytes());
        v.extend_from_slice(&i32::from(elems.iter().any(Option::is_none)).to_be_bytes());
        v.extend_from_slice(&oid.to_be_bytes());
        for (s, l) in dims {
            v.extend_from_slice(&s.to_be_bytes());
            v.extend_from_slice(&l.to_be_bytes());
        }
        for e in elems {
            match e {
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(b) => {
                    v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    v.extend_from_slice(b);
                }
            }
        }
        v
    }

    /// (element oid, dims, elements) of a binary array.
    type Parsed = (u32, Vec<(i32, i32)>, Vec<Option<Vec<u8>>>);

    fn parse_bin(v: &[u8]) -> Parsed {
        let mut r = Reader::new(v, "array");
        let nd = r.i32().unwrap();
        let _flags = r.i32().unwrap();
        let oid = r.i32().unwrap() as u32;
        let dims: Vec<(i32, i32)> = (0..nd)
            .map(|_| (r.i32().unwrap(), r.i32().unwrap()))
            .collect();
        let n: i32 = if nd == 0 {
            0
        } else {
            dims.iter().map(|d| d.0).product()
        };
        let elems = (0..n)
            .map(|_| {
                let l = r.i32().unwrap();
                (l >= 0).then(|| r.bytes(l as usize).unwrap().to_vec())
            })
            .collect();
        r.done().unwrap();
        (oid, dims, elems)
    }

    #[test]
    fn binary_arrays_round_trip_and_set_storage_oid() {
        let kit = Kit::new();
        let kr = kit.keyring();
        for storage in [Storage::Bytea, Storage::Text] {
            let t = kit.target(&kr, NOTES, LogicalType::Int8, storage);
            let a = 7i64.to_be_bytes();
            let b = (-9i64).to_be_bytes();
            let input = bin_array(20, &[(3, 1)], &[Some(&a), None, Some(&b)]);
            let out = encrypt_binary_array(&t, &input, false).unwrap();
            let (oid, dims, elems) = parse_bin(&out);
            assert_eq!(oid, storage.oid());
            assert_eq!(dims, vec![(3, 1)]);
            assert_eq!(out[4..8], 1i32.to_be_bytes(), "has-null flag kept");
            assert_eq!(t.cipher.decrypt(elems[0].as_ref().unwrap()).unwrap(), a);
            assert!(elems[1].is_none());
            assert_eq!(t.cipher.decrypt(elems[2].as_ref().unwrap()).unwrap(), b);
            // Empty array.
            let out = encrypt_binary_array(&t, &bin_array(20, &[], &[]), false).unwrap();
            assert_eq!(parse_bin(&out).2.len(), 0);
            // Two dimensions.
            let out = encrypt_binary_array(
                &t,
                &bin_array(20, &[(2, 1), (1, 1)], &[Some(&a), Some(&b)]),
                false,
            )
            .unwrap();
            assert_eq!(parse_bin(&out).1, vec![(2, 1), (1, 1)]);
        }
    }

    #[test]
    fn binary_array_variants_and_errors() {
        let kit = Kit::new();
        let kr = kit.rotated_keyring(EMAIL);
        let t = kit.target(&kr, EMAIL, LogicalType::Text, Storage::Bytea);
        let input = bin_array(25, &[(2, 1)], &[Some(b"x"), None]);
        let (_, dims, elems) = parse_bin(&encrypt_binary_array(&t, &input, true).unwrap());
        assert_eq!(dims, vec![(4, 1)]);
        assert_eq!(elems.iter().filter(|e| e.is_none()).count(), 2);
        assert_ne!(elems[0], elems[1]);
        for bad in [
            bin_array(23, &[(1, 1)], &[Some(b"x")]), // wrong element type
            bin_array(25, &[(2, 1)], &[Some(b"x")]), // fewer elements than declared
            bin_array(25, &[(-1, 1)], &[]),
            {
                let mut v = bin_array(25, &[(1, 1)], &[Some(b"x")]);
                v.push(0);
                v
            },
            vec![0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 25],
            vec![0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 25, 0, 0, 0, 1, 0, 0, 0, 1],
            vec![0, 0],
        ] {
            assert!(encrypt_binary_array(&t, &bad, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn array_parsers_never_panic_on_random_input() {
        let kit = Kit::new();
        let kr = kit.keyring();
        let t = kit.target(&kr, NOTES, LogicalType::Int4, Storage::Bytea);
        let mut rng = Rng::new(7);
        for _ in 0..3000 {
            let s = rng.bytes_from(b"{}\",\\ 12NULnul[]:=-", 24);
            let _ = encrypt_text_array(&t, &s, rng.below(2) == 0);
            let mut b = bin_array(23, &[(2, 1)], &[Some(&[0, 0, 0, 1]), None]);
            for _ in 0..rng.below(4) {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            b.truncate(rng.below(b.len() + 1));
            let _ = encrypt_binary_array(&t, &b, true);
            let _ = encrypt_binary_array(&t, &rng.bytes(40), false);
        }
    }
}
