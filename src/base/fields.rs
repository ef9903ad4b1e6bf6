//! HTTP field rules written once for every layer (RFC 9110 and 9112): comparing names, the
//! tokens of `Connection` and the fields it names, which fields are hop-by-hop, what a
//! `Content-Length` is, which methods are idempotent, and writing a field line.

/// Fields a request's or response's `Connection` header may name for removal.
pub const MAX_NAMED: usize = 16;

/// Compares a field name (or token) with a lower-case one, ignoring ASCII case.
pub(crate) fn eq(a: &[u8], lower: &[u8]) -> bool {
    a.eq_ignore_ascii_case(lower)
}

/// Splits a `Connection` value into its tokens.
pub(crate) fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',').map(|t| t.trim_ascii()).filter(|t| !t.is_empty())
}

/// The fields a `Connection` header names for removal (not `close`, `keep-alive`, `upgrade`).
#[derive(Default)]
pub(crate) struct Named<'h> {
    names: [&'h [u8]; MAX_NAMED],
    len: usize,
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
    pub(crate) upgrade: bool,
}

impl<'h> Named<'h> {
    /// Notes one `Connection` value; false if it names more fields than fit.
    pub(crate) fn add(&mut self, v: &'h [u8]) -> bool {
        for t in tokens(v) {
            if eq(t, b"close") {
                self.close = true;
            } else if eq(t, b"keep-alive") {
                self.keep_alive = true;
            } else if eq(t, b"upgrade") {
                self.upgrade = true;
            } else {
                if self.len == MAX_NAMED {
                    return false;
                }
                self.names[self.len] = t;
                self.len += 1;
            }
        }
        true
    }

    pub(crate) fn names(&self, name: &[u8]) -> bool {
        self.names[..self.len].iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// The methods a request may be sent again with (RFC 9110 section 9.2.2), after a pooled
/// connection failed before any answer.
pub(crate) fn is_idempotent(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE")
}

/// The fields that never cross the proxy (RFC 9110 section 7.6.1), `TE` aside, written once and
/// checked two ways: as bytes by the parsers, and as parsed names by the proxy, where a
/// standard name compares as a number (going through the name's text cost about 50
/// instructions a request on the HTTP/2 path).
macro_rules! hop_by_hop_fields {
    ($($name:literal),+ $(,)?) => {
        /// Whether a field never crosses the proxy (RFC 9110 section 7.6.1), `TE` aside.
        pub(crate) fn hop_by_hop(name: &[u8]) -> bool {
            $(eq(name, $name.as_bytes()))||+
        }

        /// [`hop_by_hop`] for a parsed name.
        pub(crate) fn hop_by_hop_name(name: &http::HeaderName) -> bool {
            static NAMES: [http::HeaderName; [$($name),+].len()] = [$(http::HeaderName::from_static($name)),+];
            NAMES.iter().any(|n| n == name)
        }
    };
}

hop_by_hop_fields!("connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade");

pub(crate) fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A `Content-Length` value: digits only.
pub(crate) fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hop_by_hop_list_reads_the_same_as_bytes_and_as_names() {
        for (name, hop) in [
            ("connection", true),
            ("keep-alive", true),
            ("proxy-connection", true),
            ("transfer-encoding", true),
            ("upgrade", true),
            ("te", false),
            ("host", false),
            ("x-keep-alive", false),
            ("content-length", false),
        ] {
            let parsed = http::HeaderName::from_static(name);
            assert_eq!(hop_by_hop(name.as_bytes()), hop, "{name} as bytes");
            assert_eq!(hop_by_hop(name.to_ascii_uppercase().as_bytes()), hop, "{name} in capitals");
            assert_eq!(hop_by_hop_name(&parsed), hop, "{name} as a name");
        }
    }
}
