//! The backslash escapes PostgreSQL shares between `E'...'` string constants and COPY's text format:
//! one decoder for both, so a value reads the same whichever way a client sends it.

/// Where an escape is read: COPY text also knows `\v` (vertical tab); in an `E'...'` string `\v` is a
/// plain `v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    EString,
    CopyText,
}

/// The value of one hexadecimal digit.
pub fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes the escape whose letter is at `b[i]` (the byte right after a backslash): `\b \f \n \r \t`,
/// `\v` in COPY, `\o` `\oo` `\ooo` (octal, high bits dropped as PostgreSQL does), `\xh` `\xhh` (hex),
/// and any other `\c` as `c`. Returns the byte and the index after the escape; `None` when `i` is past
/// the end (a trailing backslash). `\u` / `\U` are the caller's: only `E'...'` strings have them, and
/// they stand for characters, not bytes.
pub fn decode_escape(b: &[u8], i: usize, dialect: Dialect) -> Option<(u8, usize)> {
    let &e = b.get(i)?;
    let mut i = i + 1;
    let byte = match e {
        b'b' => 0x08,
        b'f' => 0x0c,
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        b'v' if dialect == Dialect::CopyText => 0x0b,
        b'0'..=b'7' => {
            let mut v = u32::from(e - b'0');
            for _ in 0..2 {
                match b.get(i) {
                    Some(d @ b'0'..=b'7') => {
                        v = v * 8 + u32::from(d - b'0');
                        i += 1;
                    }
                    _ => break,
                }
            }
            (v & 0xff) as u8
        }
        b'x' if b.get(i).copied().and_then(hex_digit).is_some() => {
            let mut v = b.get(i).copied().and_then(hex_digit).unwrap_or(0);
            i += 1;
            if let Some(d) = b.get(i).copied().and_then(hex_digit) {
                v = v * 16 + d;
                i += 1;
            }
            v
        }
        other => other,
    };
    Some((byte, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(s: &[u8], dialect: Dialect) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while let Some(&c) = s.get(i) {
            if c == b'\\' {
                match decode_escape(s, i + 1, dialect) {
                    Some((byte, next)) => {
                        out.push(byte);
                        i = next;
                    }
                    None => {
                        out.push(b'\\');
                        i += 1;
                    }
                }
            } else {
                out.push(c);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn escapes_read_as_postgres_reads_them() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"a\\nb", b"a\nb"),
            (b"\\b\\f\\r\\t", b"\x08\x0c\r\t"),
            (b"\\101\\0411", b"A!1"),
            (b"\\777", b"\xff"),
            (b"\\x41\\x4g\\xz", b"A\x04gxz"),
            (b"\\q\\\\", b"q\\"),
            (b"end\\", b"end\\"),
        ];
        for (input, want) in cases {
            assert_eq!(&decode_all(input, Dialect::EString), want, "{input:?}");
        }
        assert_eq!(decode_all(b"\\v", Dialect::EString), b"v");
        assert_eq!(decode_all(b"\\v", Dialect::CopyText), b"\x0b");
    }
}
