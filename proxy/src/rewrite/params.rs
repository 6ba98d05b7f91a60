//! Parameters of the extended protocol: encrypting Bind values, the declared types of Parse, and the
//! ParameterDescription that makes clients encode encrypted parameters as their logical type.
//!
//! The round trip for a parameter `$n` of encrypted column `c` (logical type T, storage S):
//! 1. Parse: a declared type for `$n` (anything but 0) becomes S's oid ([`rewrite_parse_param_types`]),
//!    so the server accepts the ciphertext; undeclared parameters are inferred as S by the server.
//! 2. ParameterDescription: the server says S; the client is told T ([`rewrite_parameter_description`]),
//!    so drivers that encode by the described type (asyncpg, JDBC, tokio-postgres) send T's text or
//!    binary format.
//! 3. Bind: the value in T's format is encrypted and sent in S's form in the same format
//!    ([`rewrite_bind`]; see [`super::param_value`]).

use bytes::{BufMut, Bytes, BytesMut};
use pgcloak_keymgr::LogicalType;

use super::array::{encrypt_binary_array, encrypt_text_array};
use super::error::{Result, RewriteError};
use super::values::param_value_into;
use super::{array_oid, ColumnTarget, Format, Storage};
use crate::protocol::messages::Bind;
use crate::protocol::reader::Reader;

/// A Bind parameter to encrypt.
#[derive(Debug, Clone, Copy)]
pub struct BindParam<'k> {
    /// `$n` (1-based).
    pub index: u32,
    /// The column it is encrypted for.
    pub target: ColumnTarget<'k>,
    /// The parameter is an array whose elements are encrypted (`col = ANY($n)`, `UNNEST($n)`); for
    /// a rotated deterministic column a compared array then carries every key version's ciphertext.
    pub array: bool,
    /// The value is stored (INSERT, UPDATE SET), not compared: an array keeps one ciphertext per
    /// element, under the active version.
    pub assignment: bool,
}

/// Parameter values of a Bind the proxy changed before encryption (an integer's width, a scalar
/// wrapped as a one-element array), by 0-based index; every other value is the client's.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replaced(Vec<(usize, Vec<u8>)>);

impl Replaced {
    /// The replacement for parameter `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(at, _)| *at == i)
            .map(|(_, v)| v.as_slice())
    }

    /// Replaces parameter `i`'s value.
    pub fn set(&mut self, i: usize, value: Vec<u8>) {
        match self.0.iter_mut().find(|(at, _)| *at == i) {
            Some(slot) => slot.1 = value,
            None => self.0.push((i, value)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parameter `i`'s value as the Bind will carry it (`None`: NULL or no such parameter).
    pub fn value<'v>(&'v self, bind: &Bind<'v>, i: usize) -> Option<&'v [u8]> {
        self.get(i).or_else(|| bind.value(i))
    }
}

/// A frame: tag, i32 length (including itself), body.
pub(crate) fn frame(tag: u8, body: &[u8]) -> Result<Bytes> {
    let len = i32::try_from(body.len() + 4).map_err(|_| RewriteError::Internal {
        column: "(message)".to_string(),
        detail: "a rewritten message exceeds the protocol's 2 GiB limit".to_string(),
    })?;
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.put_u8(tag);
    out.put_i32(len);
    out.put_slice(body);
    Ok(out.freeze())
}

/// Encrypts the listed parameters of a Bind (with the values in `replaced` instead of the client's);
/// returns the whole new Bind frame, or `None` when there is nothing to change (no listed parameter,
/// or all of them NULL, and nothing replaced). Each value keeps its format code: text-format values
/// become the storage type's text form, binary-format values its binary form. A listed `$n` the Bind
/// does not carry is an error.
pub fn rewrite_bind(
    bind: &Bind<'_>,
    params: &[BindParam<'_>],
    replaced: &Replaced,
) -> Result<Option<Bytes>> {
    if params.is_empty() && replaced.is_empty() {
        return Ok(None);
    }
    let malformed = |detail| RewriteError::MalformedClientMessage {
        what: "Bind",
        detail,
    };
    if !bind.formats_fit() {
        return Err(malformed(
            "its number of parameter format codes is neither 0, 1 nor the number of parameters",
        ));
    }
    let nparams = bind.param_count();
    if params
        .iter()
        .any(|p| p.index == 0 || p.index as usize > nparams)
    {
        return Err(malformed(
            "it carries fewer parameters than the statement uses",
        ));
    }
    // One pass: each value is copied, or encrypted straight onto the end of the new frame (no
    // buffer per value); the frame's length is filled in at the end.
    // Room for the Bind as sent and ~96 bytes of envelope growth per encrypted value: one
    // allocation, no regrowth for typical values.
    let mut out = Vec::with_capacity(bind.frame_len() + params.len() * 96);
    out.push(b'B');
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(bind.head());
    out.extend_from_slice(&(nparams as i16).to_be_bytes());
    let mut changed = !replaced.is_empty();
    for (idx, client) in bind.values().enumerate() {
        let Some(value) = replaced.get(idx).or(client) else {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            continue;
        };
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        // The first listed parameter naming `$idx + 1` decides (a parameter is encrypted once).
        match params.iter().find(|p| p.index as usize == idx + 1) {
            None => out.extend_from_slice(value),
            Some(p) => {
                let format = Format::from_code(bind.param_format(idx)).ok_or(malformed(
                    "a parameter format code is neither 0 (text) nor 1 (binary)",
                ))?;
                match (p.array, format) {
                    (false, _) => param_value_into(&p.target, value, format, &mut out)?,
                    (true, Format::Text) => {
                        out.extend_from_slice(&encrypt_text_array(&p.target, value, !p.assignment)?)
                    }
                    (true, Format::Binary) => out.extend_from_slice(&encrypt_binary_array(
                        &p.target,
                        value,
                        !p.assignment,
                    )?),
                }
                changed = true;
            }
        }
        let new_len = out.len() - at - 4;
        let new_len = i32::try_from(new_len).map_err(|_| RewriteError::ValueTooLarge {
            column: params
                .iter()
                .find(|p| p.index as usize == idx + 1)
                .map_or("(parameter)", |p| p.target.column())
                .to_string(),
            len: new_len,
            max: i32::MAX as usize,
        })?;
        put_i32_at(&mut out, at, new_len);
    }
    if !changed {
        return Ok(None);
    }
    out.extend_from_slice(bind.tail());
    let total = i32::try_from(out.len() - 1).map_err(|_| RewriteError::Internal {
        column: "(message)".to_string(),
        detail: "a rewritten message exceeds the protocol's 2 GiB limit".to_string(),
    })?;
    put_i32_at(&mut out, 1, total);
    Ok(Some(Bytes::from(out)))
}

/// Fills in a length field reserved at `at` (four bytes pushed earlier).
pub(crate) fn put_i32_at(out: &mut [u8], at: usize, v: i32) {
    if let Some(field) = out.get_mut(at..at + 4) {
        field.copy_from_slice(&v.to_be_bytes());
    }
}

/// The oid a Parse should declare for an encrypted parameter: the storage type, or its array type.
pub fn param_oid(storage: Storage, array: bool) -> u32 {
    if array {
        storage.array_oid()
    } else {
        storage.oid()
    }
}

/// Replaces the declared types of the listed parameters (`($n, oid)`, see [`param_oid`]) in a Parse
/// body; returns the new Parse frame, or `None` when nothing changes (parameters declared as 0 or not
/// declared are left to the server, which infers the storage type from the column).
pub fn rewrite_parse_param_types(body: &[u8], params: &[(u32, u32)]) -> Result<Option<Bytes>> {
    if params.is_empty() {
        return Ok(None);
    }
    let mut c = Reader::new(body, "Parse");
    c.cstr()?; // statement name
    c.cstr()?; // query
    let types_start = c.pos();
    let n = c.count()?;
    let mut oids = Vec::with_capacity(n.min(c.remaining().len() / 4));
    for _ in 0..n {
        oids.push(c.i32()? as u32);
    }
    c.done()?;
    let mut changed = false;
    for &(param, oid) in params {
        let Some(idx) = usize::try_from(param).ok().and_then(|p| p.checked_sub(1)) else {
            continue;
        };
        if let Some(slot) = oids.get_mut(idx) {
            if *slot != 0 && *slot != oid {
                *slot = oid;
                changed = true;
            }
        }
    }
    if !changed {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(body.len());
    out.extend_from_slice(body.get(..types_start).unwrap_or_default());
    out.extend_from_slice(&(n as i16).to_be_bytes());
    for o in oids {
        out.extend_from_slice(&o.to_be_bytes());
    }
    frame(b'P', &out).map(Some)
}

/// The parameter type oids of a ParameterDescription body (after tag and length).
pub fn parse_parameter_description(body: &[u8]) -> Result<Vec<u32>> {
    let mut c = Reader::server(body, "ParameterDescription");
    let n = c.count()?;
    let mut oids = Vec::with_capacity(n.min(c.remaining().len() / 4));
    for _ in 0..n {
        oids.push(c.i32()? as u32);
    }
    c.done()?;
    Ok(oids)
}

/// Presents encrypted parameters with their logical types: for each `($n, T)` the oid becomes T's
/// (or T's array type where the server described an array, as for `col = ANY($n)`). Returns the whole
/// new ParameterDescription frame. Listed parameters beyond the description are ignored.
pub fn rewrite_parameter_description(body: &[u8], params: &[(u32, LogicalType)]) -> Result<Bytes> {
    let mut oids = parse_parameter_description(body)?;
    present_parameter_types(&mut oids, params);
    encode_parameter_description(&oids)
}

/// [`rewrite_parameter_description`] on parsed oids.
pub fn present_parameter_types(oids: &mut [u32], params: &[(u32, LogicalType)]) {
    for &(param, ty) in params {
        let Some(idx) = usize::try_from(param).ok().and_then(|p| p.checked_sub(1)) else {
            continue;
        };
        if let Some(slot) = oids.get_mut(idx) {
            *slot = if matches!(*slot, 1001 | 1009 | 1015) {
                array_oid(ty)
            } else {
                ty.oid()
            };
        }
    }
}

/// A ParameterDescription frame of `oids`.
pub fn encode_parameter_description(oids: &[u32]) -> Result<Bytes> {
    let mut out = Vec::with_capacity(2 + oids.len() * 4);
    out.extend_from_slice(&(oids.len() as i16).to_be_bytes());
    for o in oids {
        out.extend_from_slice(&o.to_be_bytes());
    }
    frame(b't', &out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::testkit::{Kit, Rng, EMAIL, NOTES, SALARY};
    use pgcloak_keymgr::typed;

    fn bind(formats: &[i16], values: &[Option<&[u8]>], results: &[i16]) -> Vec<u8> {
        let mut b = b"portal\0stmt\0".to_vec();
        b.extend_from_slice(&(formats.len() as i16).to_be_bytes());
        for f in formats {
            b.extend_from_slice(&f.to_be_bytes());
        }
        b.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b.extend_from_slice(&(results.len() as i16).to_be_bytes());
        for r in results {
            b.extend_from_slice(&r.to_be_bytes());
        }
        b
    }

    /// A parameter encrypted for `target` as a scalar.
    fn scalar(index: u32, target: ColumnTarget<'_>) -> BindParam<'_> {
        BindParam {
            index,
            target,
            array: false,
            assignment: false,
        }
    }

    /// (formats, values, results) of a Bind frame.
    #[allow(clippy::type_complexity)]
    fn unbind(frame: &[u8]) -> (Vec<i16>, Vec<Option<Vec<u8>>>, Vec<i16>) {
        assert_eq!(frame[0], b'B');
        assert_eq!(
            i32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize,
            frame.len() - 1
        );
        let b = Bind::decode(&frame[5..]).unwrap();
        assert_eq!((b.portal, b.statement), (&b"portal"[..], &b"stmt"[..]));
        let mut r = Reader::new(b.head(), "Bind");
        r.cstr().unwrap();
        r.cstr().unwrap();
        let f = (0..r.count().unwrap()).map(|_| r.i16().unwrap()).collect();
        let v = b.values().map(|v| v.map(<[u8]>::to_vec)).collect();
        (f, v, b.result_formats().collect())
    }

    /// [`rewrite_bind`] of a Bind body, nothing replaced.
    fn rebind(body: &[u8], params: &[BindParam<'_>]) -> Result<Option<Bytes>> {
        let bind = Bind::decode(body).map_err(|_| RewriteError::MalformedClientMessage {
            what: "Bind",
            detail: "framing",
        })?;
        rewrite_bind(&bind, params, &Replaced::default())
    }

    #[test]
    fn bind_encrypts_listed_params_in_their_format() {
        let kit = Kit::new();
        let kr = kit.keyring();
        let email = kit.target(&kr, EMAIL, LogicalType::Text, Storage::Text);
        let salary = kit.target(&kr, SALARY, LogicalType::Int4, Storage::Bytea);
        let body = bind(
            &[0, 1, 1],
            &[Some(b"a@b.c"), Some(&[0, 0, 0x13, 0x88]), Some(b"plain")],
            &[1],
        );
        let params = [scalar(1, email), scalar(2, salary)];
        let out = rebind(&body, &params).unwrap().unwrap();
        let (f, v, r) = unbind(&out);
        assert_eq!(f, vec![0, 1, 1]);
        assert_eq!(r, vec![1]);
        let v0 = v[0].as_ref().unwrap();
        assert!(v0.starts_with(b"pgc1:"));
        assert_eq!(email.cipher.decrypt(v0).unwrap(), b"a@b.c");
        let v1 = v[1].as_ref().unwrap();
        assert_eq!(&v1[..2], &[0xC1, 0x0A], "binary bytea = raw envelope");
        assert_eq!(salary.cipher.decrypt(v1).unwrap(), 5000i32.to_be_bytes());
        assert_eq!(v[2].as_deref(), Some(&b"plain"[..]));
        // Text format for bytea storage: `\x` hex.
        let body = bind(&[], &[Some(b"5000")], &[]);
        let out = rebind(&body, &[scalar(1, salary)]).unwrap().unwrap();
        let (_, v, _) = unbind(&out);
        let raw = typed::canonical_from_text(LogicalType::Bytea, v[0].as_ref().unwrap()).unwrap();
        assert_eq!(salary.cipher.decrypt(&raw).unwrap(), 5000i32.to_be_bytes());
    }

    #[test]
    fn bind_nulls_missing_and_bad_params() {
        let kit = Kit::new();
        let kr = kit.keyring();
        let t = kit.target(&kr, NOTES, LogicalType::Text, Storage::Text);
        let p = |index| scalar(index, t);
        let body = bind(&[], &[None, Some(b"x")], &[]);
        assert_eq!(rebind(&body, &[p(1)]).unwrap(), None, "NULL stays NULL");
        assert_eq!(rebind(&body, &[]).unwrap(), None);
        assert!(rebind(&body, &[p(3)]).is_err());
        assert!(rebind(&body, &[p(0)]).is_err());
        let body = bind(&[0, 0, 0], &[Some(b"x"), Some(b"y")], &[]);
        assert!(
            rebind(&body, &[p(1)]).is_err(),
            "3 format codes for 2 params"
        );
        let body = bind(&[2], &[Some(b"x")], &[]);
        assert!(rebind(&body, &[p(1)]).is_err(), "format code 2");
        let i4 = kit.target(&kr, SALARY, LogicalType::Int4, Storage::Text);
        let body = bind(&[1], &[Some(b"xyz")], &[]);
        let e = rebind(&body, &[scalar(1, i4)]).unwrap_err();
        assert_eq!(e.sqlstate(), "22P02");
        assert!(e.to_string().contains(SALARY));
    }

    #[test]
    fn bind_rewrite_keeps_other_fields_and_refuses_every_truncation() {
        let kit = Kit::new();
        let kr = kit.keyring();
        let email = kit.target(&kr, EMAIL, LogicalType::Text, Storage::Text);
        let p = |index| scalar(index, email);
        let body = bind(&[0], &[Some(b"keep"), None, Some(b"a@b.c")], &[0, 1, 1]);
        // `$3` listed twice: encrypted once, by the first entry.
        let out = rebind(&body, &[p(3), p(3)]).unwrap().unwrap();
        let (f, v, r) = unbind(&out);
        assert_eq!((f, r), (vec![0], vec![0, 1, 1]));
        assert_eq!(v[0].as_deref(), Some(&b"keep"[..]));
        assert_eq!(v[1], None);
        assert_eq!(
            email.cipher.decrypt(v[2].as_ref().unwrap()).unwrap(),
            b"a@b.c"
        );
        for cut in 0..body.len() {
            assert!(rebind(&body[..cut], &[p(3)]).is_err(), "cut at {cut}");
        }
        let mut longer = body.clone();
        longer.push(0);
        assert!(rebind(&longer, &[p(3)]).is_err());
    }

    #[test]
    fn bind_array_params() {
        let kit = Kit::new();
        let kr = kit.rotated_keyring(EMAIL);
        let t = kit.target(&kr, EMAIL, LogicalType::Text, Storage::Text);
        let body = bind(&[0], &[Some(b"{a,b}")], &[]);
        let out = rebind(
            &body,
            &[BindParam {
                index: 1,
                target: t,
                array: true,
                assignment: false,
            }],
        )
        .unwrap()
        .unwrap();
        let (_, v, _) = unbind(&out);
        let s = String::from_utf8(v[0].clone().unwrap()).unwrap();
        assert_eq!(
            s.matches("pgc1:").count(),
            4,
            "two elements × two key versions"
        );
    }

    #[test]
    fn parse_types_and_parameter_description() {
        let mut body = b"s1\0SELECT 1 FROM t WHERE a = $1 AND b = ANY($2) AND c = $3\0".to_vec();
        body.extend_from_slice(&3i16.to_be_bytes());
        for o in [23u32, 1007, 0] {
            body.extend_from_slice(&o.to_be_bytes());
        }
        let out = rewrite_parse_param_types(
            &body,
            &[
                (1, param_oid(Storage::Bytea, false)),
                (2, param_oid(Storage::Text, true)),
                (3, 17),
                (9, 17),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(out[0], b'P');
        let tail = &out[out.len() - 14..];
        assert_eq!(tail[..2], 3i16.to_be_bytes());
        assert_eq!(tail[2..6], 17u32.to_be_bytes());
        assert_eq!(tail[6..10], 1009u32.to_be_bytes());
        assert_eq!(
            tail[10..14],
            0u32.to_be_bytes(),
            "undeclared stays undeclared"
        );
        assert_eq!(rewrite_parse_param_types(&body, &[(3, 17)]).unwrap(), None);
        assert!(rewrite_parse_param_types(&body[..body.len() - 1], &[(1, 17)]).is_err());

        let mut pd = 3i16.to_be_bytes().to_vec();
        for o in [17u32, 1009, 25] {
            pd.extend_from_slice(&o.to_be_bytes());
        }
        assert_eq!(
            parse_parameter_description(&pd).unwrap(),
            vec![17, 1009, 25]
        );
        let out = rewrite_parameter_description(
            &pd,
            &[
                (1, LogicalType::Int4),
                (2, LogicalType::Date),
                (7, LogicalType::Bool),
            ],
        )
        .unwrap();
        assert_eq!(out[0], b't');
        assert_eq!(
            parse_parameter_description(&out[5..]).unwrap(),
            vec![23, 1182, 25]
        );
        assert!(parse_parameter_description(&[0, 2, 0, 0, 0, 17]).is_err());
        assert!(parse_parameter_description(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn message_parsers_never_panic_on_random_bytes() {
        let kit = Kit::new();
        let kr = kit.keyring();
        let t = kit.target(&kr, NOTES, LogicalType::Int4, Storage::Bytea);
        let mut rng = Rng::new(3);
        let good = bind(&[0, 1], &[Some(b"12"), Some(&[0, 0, 0, 1])], &[0]);
        for _ in 0..5000 {
            let mut b = if rng.below(2) == 0 {
                good.clone()
            } else {
                rng.bytes(40)
            };
            for _ in 0..rng.below(3) {
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    b[i] = rng.next() as u8;
                }
            }
            b.truncate(rng.below(b.len() + 1));
            let ps = [BindParam {
                index: 1 + rng.below(3) as u32,
                target: t,
                array: rng.below(2) == 0,
                assignment: rng.below(2) == 0,
            }];
            let _ = rebind(&b, &ps);
            let _ = rewrite_parse_param_types(&b, &[(1, 17)]);
            let _ = parse_parameter_description(&b);
            let _ = rewrite_parameter_description(&b, &[(1, LogicalType::Int4)]);
        }
    }
}
