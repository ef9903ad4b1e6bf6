//! The rules of an HTTP/1.x request head that are not field rules shared with the answer side
//! (those are [`crate::base::fields`]): its transfer codings, its target's form and authority,
//! and what a head too large for the buffer is answered with (RFC 9112 sections 3 and 6).

use crate::base::fields::eq;
use crate::proxy::error::ProxyError;

/// The transfer codings a request's `Transfer-Encoding` fields list, in order (RFC 9112
/// section 6.1). tandem applies only `chunked`, once and last.
#[derive(Default)]
pub(crate) struct Codings {
    fields: usize,
    chunked: usize,
    /// `chunked` was the last coding seen.
    last_chunked: bool,
    /// A coding other than `chunked`.
    other: bool,
}

impl Codings {
    pub(crate) fn add(&mut self, value: &[u8]) {
        self.fields += 1;
        let mut any = false;
        for t in value.split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty()) {
            any = true;
            if eq(t, b"chunked") {
                self.chunked += 1;
                self.last_chunked = true;
            } else {
                self.other = true;
                self.last_chunked = false;
            }
        }
        if !any {
            // An empty value names no coding: the body cannot be framed.
            self.last_chunked = false;
        }
    }

    pub(crate) fn any(&self) -> bool {
        self.fields > 0
    }

    /// The body is chunked (and nothing else refuses the request).
    pub(crate) fn chunked(&self) -> bool {
        self.fields > 0 && self.chunked == 1 && self.last_chunked && !self.other
    }

    /// Why the codings cannot be served: 400 when chunked is not applied exactly once and last
    /// (the body's end is unknown), 501 for a coding tandem does not apply (as nginx answers).
    pub(crate) fn refusal(&self) -> Option<ProxyError> {
        if self.fields == 0 {
            None
        } else if !self.last_chunked {
            Some(ProxyError::BadRequest { what: "Transfer-Encoding does not end with chunked".into() })
        } else if self.chunked > 1 {
            Some(ProxyError::BadRequest { what: "chunked applied more than once".into() })
        } else if self.other {
            Some(ProxyError::NotImplemented { what: "a transfer coding other than chunked".into() })
        } else {
            None
        }
    }
}

/// Splits an absolute-form target (`http://host[:port]/path?query`) into its authority and its
/// origin-form path (`/` when it has none); `None` for anything else (another scheme, userinfo,
/// an invalid authority).
pub(crate) fn absolute_form(target: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = if target.len() > 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        &target[7..]
    } else if target.len() > 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        &target[8..]
    } else {
        return None;
    };
    let end = rest.iter().position(|b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains(&b'@') || !valid_authority(authority) {
        return None;
    }
    match path.first() {
        Some(b'/') => Some((authority, path)),
        _ => Some((authority, b"/")),
    }
}

/// Whether a `Host` value is a valid `uri-host [ ":" port ]` (RFC 9110 section 7.2; RFC 3986
/// characters for a reg-name, an IPv4 address or a bracketed IPv6 literal). An empty value is
/// valid (RFC 9112 section 3.2).
pub(crate) fn valid_authority(v: &[u8]) -> bool {
    v.iter().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
                    | b'%'
            )
    })
}

/// The refusal for a head still incomplete at the buffer's limit: 414 while the request line
/// itself has not ended, 431 after it.
pub(crate) fn head_too_large(rbuf: &[u8], limit: usize) -> ProxyError {
    if rbuf.contains(&b'\n') {
        ProxyError::HeadersTooLarge { what: format!("request head over {limit} bytes") }
    } else {
        ProxyError::UriTooLong { what: format!("request line over {limit} bytes") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_codings_are_served_only_as_chunked_once_and_last() {
        let codings = |fields: &[&[u8]]| {
            let mut c = Codings::default();
            for f in fields {
                c.add(f);
            }
            (c.chunked(), c.refusal().map(|e| e.status().as_u16()))
        };
        assert_eq!(codings(&[b"chunked"]), (true, None));
        assert_eq!(codings(&[b" Chunked "]), (true, None));
        assert_eq!(codings(&[b"gzip, chunked"]), (false, Some(501)));
        assert_eq!(codings(&[b"gzip", b"chunked"]), (false, Some(501)));
        assert_eq!(codings(&[b"chunked, chunked"]), (false, Some(400)));
        assert_eq!(codings(&[b"chunked", b"chunked"]), (false, Some(400)));
        assert_eq!(codings(&[b"chunked, gzip"]), (false, Some(400)));
        assert_eq!(codings(&[b""]), (false, Some(400)));
    }

    #[test]
    fn absolute_targets_give_their_authority_and_an_origin_form_path() {
        assert_eq!(absolute_form(b"http://a.example:8080/p?q=1"), Some((&b"a.example:8080"[..], &b"/p?q=1"[..])));
        assert_eq!(absolute_form(b"HTTPS://a.example"), Some((&b"a.example"[..], &b"/"[..])));
        assert_eq!(absolute_form(b"http://[::1]:80/"), Some((&b"[::1]:80"[..], &b"/"[..])));
        for bad in [&b"ftp://a/"[..], b"http://u@a/", b"http:///p", b"http://a b/", b"a.example/"] {
            assert_eq!(absolute_form(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(valid_authority(b"") && valid_authority(b"x.example:80") && !valid_authority(b"a b"));
    }
}
