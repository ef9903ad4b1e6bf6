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

/// Whether a field never crosses the proxy (RFC 9110 section 7.6.1), `TE` aside.
pub(crate) fn hop_by_hop(name: &[u8]) -> bool {
    eq(name, b"connection")
        || eq(name, b"keep-alive")
        || eq(name, b"proxy-connection")
        || eq(name, b"transfer-encoding")
        || eq(name, b"upgrade")
}

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
