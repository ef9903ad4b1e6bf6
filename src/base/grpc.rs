//! gRPC as tandem sees it: which requests are gRPC (their `content-type`), the one table of the
//! gRPC status each reason code gives a gRPC client, and how `grpc-message` and `grpc-status`
//! are written and read (gRPC over HTTP/2, "Responses").
//!
//! | reason | HTTP status it would have | `grpc-status` |
//! | --- | --- | --- |
//! | `UF`, `UC`, `URX` | 502, 504, 503 | 14 `UNAVAILABLE` |
//! | `UPE` | 502 | 13 `INTERNAL` |
//! | `UT` | 504 | 4 `DEADLINE_EXCEEDED` |
//! | `UO` | 503 | 8 `RESOURCE_EXHAUSTED` |
//! | `NR` | 403 (denied by policy) | 7 `PERMISSION_DENIED` |
//! | `NR` | 404 (no route) | 12 `UNIMPLEMENTED` |
//! | `DPE` | 400, 417 (malformed or refused request) | 3 `INVALID_ARGUMENT` |
//! | `DPE` | 405, 501 (a method or coding tandem does not serve) | 12 `UNIMPLEMENTED` |
//! | `DPE` | 408 (the client too slow) | 4 `DEADLINE_EXCEEDED` |
//! | `DPE` | 413, 414, 431 (too large) | 8 `RESOURCE_EXHAUSTED` |
//! | `DC` | (no answer: the client left) | 1 `CANCELLED` |
//! | `LR` | (no answer: tandem cut the connection) | 14 `UNAVAILABLE` |

use crate::base::reason::Reason;

/// gRPC status codes (the gRPC spec's `statuscodes.md`) that tandem gives or reads.
pub mod code {
    pub const OK: u16 = 0;
    pub const CANCELLED: u16 = 1;
    pub const INVALID_ARGUMENT: u16 = 3;
    pub const DEADLINE_EXCEEDED: u16 = 4;
    pub const NOT_FOUND: u16 = 5;
    pub const PERMISSION_DENIED: u16 = 7;
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    pub const UNIMPLEMENTED: u16 = 12;
    pub const INTERNAL: u16 = 13;
    pub const UNAVAILABLE: u16 = 14;
}

/// The media type of gRPC; `+proto`, `+json` or parameters may follow it.
const GRPC: &[u8] = b"application/grpc";

/// Whether a request's `content-type` makes it gRPC: `application/grpc`, alone, with a codec
/// (`application/grpc+proto`) or with parameters, in any case (Envoy's and Linkerd's test).
/// `application/grpc-web` is not: gRPC-Web clients read the status from the body, and a gateway
/// that speaks it (Envoy's grpc_web filter) sits in front of the app, not behind tandem.
pub fn is_grpc(content_type: &[u8]) -> bool {
    content_type.get(..GRPC.len()).is_some_and(|p| p.eq_ignore_ascii_case(GRPC))
        && matches!(content_type.get(GRPC.len()), None | Some(b'+' | b';' | b' '))
}

/// The `grpc-status` for a request that ended with `reason`, whose plain HTTP answer would have
/// had `http_status` (it tells the `DPE` and `NR` cases apart). The table is the module's.
pub fn status_for(reason: Reason, http_status: u16) -> u16 {
    match reason {
        Reason::UF | Reason::UC | Reason::URX | Reason::LR => code::UNAVAILABLE,
        Reason::UPE => code::INTERNAL,
        Reason::UT => code::DEADLINE_EXCEEDED,
        Reason::UO => code::RESOURCE_EXHAUSTED,
        Reason::NR if http_status == 403 => code::PERMISSION_DENIED,
        Reason::NR => code::UNIMPLEMENTED,
        Reason::DPE => match http_status {
            405 | 501 => code::UNIMPLEMENTED,
            408 => code::DEADLINE_EXCEEDED,
            413 | 414 | 431 => code::RESOURCE_EXHAUSTED,
            _ => code::INVALID_ARGUMENT,
        },
        Reason::DC => code::CANCELLED,
    }
}

/// `text` as a `grpc-message` value: percent-encoded, every byte outside space to `~`, and `%`
/// itself, as `%XX` (upper-case hex) of its UTF-8 bytes.
pub fn encode_message(text: &str) -> bytes::Bytes {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(text.len());
    for &b in text.as_bytes() {
        if (b' '..=b'~').contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
    bytes::Bytes::from(out)
}

/// A `grpc-status` value as a number: decimal digits only, at most five.
pub fn parse_status(value: &[u8]) -> Option<u16> {
    if value.is_empty() || value.len() > 5 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types_are_told_from_others() {
        for yes in ["application/grpc", "application/grpc+proto", "Application/GRPC+json", "application/grpc;q=1"] {
            assert!(is_grpc(yes.as_bytes()), "{yes}");
        }
        for no in ["application/grpc-web", "application/grpc-web+proto", "application/json", "application/grp", ""] {
            assert!(!is_grpc(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn every_reason_has_a_grpc_status() {
        assert_eq!(status_for(Reason::UF, 502), code::UNAVAILABLE);
        assert_eq!(status_for(Reason::UF, 504), code::UNAVAILABLE);
        assert_eq!(status_for(Reason::UC, 502), code::UNAVAILABLE);
        assert_eq!(status_for(Reason::UT, 504), code::DEADLINE_EXCEEDED);
        assert_eq!(status_for(Reason::UO, 503), code::RESOURCE_EXHAUSTED);
        assert_eq!(status_for(Reason::UPE, 502), code::INTERNAL);
        assert_eq!(status_for(Reason::DPE, 400), code::INVALID_ARGUMENT);
        assert_eq!(status_for(Reason::DPE, 431), code::RESOURCE_EXHAUSTED);
        assert_eq!(status_for(Reason::DPE, 405), code::UNIMPLEMENTED);
        assert_eq!(status_for(Reason::DPE, 408), code::DEADLINE_EXCEEDED);
        assert_eq!(status_for(Reason::NR, 403), code::PERMISSION_DENIED);
        assert_eq!(status_for(Reason::NR, 404), code::UNIMPLEMENTED);
        assert_eq!(status_for(Reason::URX, 503), code::UNAVAILABLE);
        assert_eq!(status_for(Reason::DC, 0), code::CANCELLED);
        assert_eq!(status_for(Reason::LR, 0), code::UNAVAILABLE);
    }

    #[test]
    fn messages_are_percent_encoded_as_the_spec_says() {
        assert_eq!(
            &encode_message("upstream failed (UF): refused by 127.0.0.1:1")[..],
            b"upstream failed (UF): refused by 127.0.0.1:1"
        );
        assert_eq!(&encode_message("100% \u{e9}t\u{e9}\n")[..], b"100%25 %C3%A9t%C3%A9%0A");
    }

    #[test]
    fn statuses_parse_as_decimal_only() {
        assert_eq!(parse_status(b"0"), Some(0));
        assert_eq!(parse_status(b"14"), Some(14));
        for bad in [&b""[..], b"-1", b" 5", b"5 ", b"123456", b"x"] {
            assert_eq!(parse_status(bad), None, "{bad:?}");
        }
    }
}
