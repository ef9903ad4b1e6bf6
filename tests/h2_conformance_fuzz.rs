//! Random frame sequences against tandem's own HTTP/2 server (issue 18's fuzzing, in its short
//! in-suite form): after a valid preface, frames of every type with random flags, stream IDs,
//! lengths and payloads, header blocks valid, mangled or random. Whatever comes, the server must
//! answer or close the connection, never panic (a panic aborts the process in a release build),
//! and go on serving others. `TANDEM_H2_FUZZ_SEED` and `TANDEM_H2_FUZZ_CONNS` run it longer or
//! elsewhere (`TANDEM_H2_FUZZ_CONNS=20000 cargo test --release --test h2_conformance_fuzz`).

mod support;

use http_body_util::{BodyExt, Full};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts every panic in this process (the server's tasks included) from now on.
fn count_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

fn frame(out: &mut Vec<u8>, typ: u8, flags: u8, id: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(typ);
    out.push(flags);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A plain-literal header block (RFC 7541 section 6.2.2, lengths under 127).
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        b.push(0x00);
        b.push(n.len() as u8);
        b.extend_from_slice(n.as_bytes());
        b.push(v.len() as u8);
        b.extend_from_slice(v.as_bytes());
    }
    b
}

fn random_bytes(rng: &mut fastrand::Rng, max: usize) -> Vec<u8> {
    (0..rng.usize(0..=max)).map(|_| rng.u8(..)).collect()
}

/// A header block: a request (sometimes with odd fields), one mangled, or random bytes.
fn random_block(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut fields = vec![(":method", "GET"), (":scheme", "http"), (":authority", "pod"), (":path", "/f")];
    let extras: [(&str, &str); 9] = [
        ("content-length", "3"),
        ("content-length", "x"),
        ("te", "trailers"),
        ("connection", "close"),
        (":status", "200"),
        ("Upper", "1"),
        ("cookie", "a=1"),
        ("host", "other"),
        (":method", "CONNECT"),
    ];
    for _ in 0..rng.usize(0..3) / 2 {
        fields.insert(rng.usize(..=fields.len()), extras[rng.usize(..extras.len())]);
    }
    if rng.u8(..) < 10 {
        fields.remove(rng.usize(..fields.len()));
    }
    let mut b = block(&fields);
    match rng.u8(..16) {
        0 => random_bytes(rng, 40),
        1 if !b.is_empty() => {
            let at = rng.usize(..b.len());
            b[at] = rng.u8(..);
            b
        }
        2 => {
            // Indexed fields, table references, size updates.
            let mut p: Vec<u8> =
                (0..rng.usize(1..6)).map(|_| [0x82, 0x84, 0x86, 0xbe, 0x3f, 0x20, 0x40][rng.usize(..7)]).collect();
            p.extend_from_slice(&b);
            p
        }
        3 => {
            b.truncate(rng.usize(..=b.len()));
            b
        }
        _ => b,
    }
}

/// The bytes one client sends: the preface, SETTINGS, then up to 40 random frames, mostly ones a
/// client could mean (streams it opened, CONTINUATION after an open header block, settings in
/// range), so that the frames after the first get a hearing before a connection error.
fn random_connection(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    frame(&mut out, 0x4, 0, 0, &[]);
    let mut last = 0u32;
    let mut opened: Vec<u32> = Vec::new();
    let mut pending: Option<u32> = None;
    let odd = |rng: &mut fastrand::Rng| rng.u8(..10) == 0;
    for _ in 0..rng.usize(1..40) {
        let some_open = |rng: &mut fastrand::Rng, opened: &[u32]| {
            if opened.is_empty() {
                1
            } else {
                opened[rng.usize(..opened.len())]
            }
        };
        let mut flags = [0x0, 0x1, 0x4, 0x5, 0x8, 0x20, 0x25, 0x24][rng.usize(..8)];
        if odd(rng) {
            flags = rng.u8(..);
        }
        let typ = match pending {
            Some(_) if rng.u8(..8) != 0 => 0x9,
            // PUSH_PROMISE, CONTINUATION with no block open and GOAWAY end a connection at once:
            // rarely.
            _ if odd(rng) => [0x5, 0x7, 0x9, 0xa, 0xff][rng.usize(..5)],
            _ => [0x0, 0x0, 0x0, 0x1, 0x1, 0x1, 0x2, 0x3, 0x4, 0x6, 0x8, 0x8][rng.usize(..12)],
        };
        let id = match typ {
            _ if odd(rng) => [0, 2, rng.u32(..64), 0x7fff_ffff][rng.usize(..4)],
            0x1 if rng.u8(..5) != 0 || opened.is_empty() => {
                last = if last == 0 { 1 } else { last + 2 };
                opened.push(last);
                last
            }
            0x9 => pending.unwrap_or(last),
            0x4 | 0x6 | 0x7 => 0,
            0x8 if rng.bool() => 0,
            _ => some_open(rng, &opened),
        };
        let payload = match typ {
            0x0 => {
                let mut p = random_bytes(rng, 64);
                if flags & 0x8 != 0 {
                    p.insert(0, rng.u8(..(p.len() as u8).saturating_add(2)));
                }
                p
            }
            0x1 | 0x9 => {
                let mut p = random_block(rng);
                if typ == 0x1 && flags & 0x20 != 0 {
                    let dep = if odd(rng) { id } else { rng.u32(..8) };
                    let mut prio = dep.to_be_bytes().to_vec();
                    prio.push(rng.u8(..));
                    prio.extend_from_slice(&p);
                    p = prio;
                }
                if typ == 0x1 && flags & 0x8 != 0 {
                    p.insert(0, rng.u8(..4));
                }
                if !odd(rng) {
                    // Split over CONTINUATION frames now and then.
                    pending = if flags & 0x4 == 0 { Some(id) } else { None };
                }
                p
            }
            0x2 => {
                let mut p = (if odd(rng) { id } else { rng.u32(..8) }).to_be_bytes().to_vec();
                p.push(rng.u8(..));
                p.truncate(if odd(rng) { rng.usize(..6) } else { 5 });
                p
            }
            0x3 => {
                let p = [0u32, 1, 2, 5, 7, 8, 11, rng.u32(..)][rng.usize(..8)].to_be_bytes();
                p[..if odd(rng) { rng.usize(..5) } else { 4 }].to_vec()
            }
            0x4 => {
                let mut p = Vec::new();
                for _ in 0..rng.usize(0..4) {
                    let (k, v) = if odd(rng) {
                        (rng.u16(..10), rng.u32(..))
                    } else {
                        [
                            (0x1, 4096),
                            (0x1, 0),
                            (0x3, 100),
                            (0x4, 0),
                            (0x4, 1),
                            (0x4, 65_535),
                            (0x4, 1 << 20),
                            (0x5, 16_384),
                            (0x5, 1 << 20),
                            (0x6, 100),
                        ][rng.usize(..10)]
                    };
                    p.extend_from_slice(&k.to_be_bytes());
                    p.extend_from_slice(&v.to_be_bytes());
                }
                p
            }
            0x6 => {
                let mut p = random_bytes(rng, 8);
                p.resize(if odd(rng) { rng.usize(..12) } else { 8 }, 0);
                p
            }
            0x7 => random_bytes(rng, 16),
            0x8 => {
                let kinds = if odd(rng) { 6 } else { 4 };
                let inc: u32 = [1, 100, 65_535, 1 << 20, 0x7fff_ffff, 0][rng.usize(..kinds)];
                inc.to_be_bytes()[..if odd(rng) { rng.usize(..5) } else { 4 }].to_vec()
            }
            _ => random_bytes(rng, 20),
        };
        if typ != 0x1 && typ != 0x9 && pending.is_some() && rng.u8(..8) != 0 {
            // Do not break an open header block, mostly.
            continue;
        }
        if typ == 0x9 && flags & 0x4 != 0 {
            pending = None;
        }
        frame(&mut out, typ, flags, id, &payload);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_frames_after_the_preface_never_crash_the_server() {
    count_panics();
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let seed = env("TANDEM_H2_FUZZ_SEED", 18);
    let conns = env("TANDEM_H2_FUZZ_CONNS", 300);
    let echo = support::echo().await;
    let mut cfg = support::config(echo.addr);
    cfg.inbound.timeouts.idle = tandem::config::Human::new(Duration::from_millis(300));
    let proxy = support::proxy(cfg).await;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut closed = 0;
    for _ in 0..conns {
        let mut bytes = random_connection(&mut rng);
        // A PING last: its ACK says the server took everything and is still there.
        frame(&mut bytes, 0x6, 0, 0, b"fuzzdone");
        let mut s = TcpStream::connect(proxy.inbound_addr).await.expect("connect");
        let _ = s.write_all(&bytes).await;
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        let done = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                if got.windows(8).any(|w| w == b"fuzzdone") {
                    return false;
                }
            }
        })
        .await;
        match done {
            Ok(true) => closed += 1,
            Ok(false) => {}
            Err(_) => panic!("neither an answer nor a close within 5 s (seed {seed})"),
        }
    }
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the server panicked (seed {seed})");
    // Others are still served.
    let resp = support::h2()
        .request(http::Request::get(format!("http://{}/after", proxy.inbound_addr)).body(Full::default()).expect("req"))
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    eprintln!("{conns} random connections (seed {seed}): {closed} closed by the server, the rest answered");
}
