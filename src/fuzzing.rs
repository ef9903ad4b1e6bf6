//! The ways in for the cargo-fuzz targets in `fuzz/` (docs/fuzzing.md) to the parsers that are
//! crate-private: each calls the code the servers run, unchanged, and checks what must hold
//! whatever the input (a broken rule panics, which the fuzzer reports). Not an API.

use crate::base::framing::{final_answer, Chunk, ChunkScan, Framing};
use crate::config::{Config, Sources};

/// What a chunked body scan saw: the bytes that belong to the body, whether it ended, and the
/// chunk data bytes in it; or the scanner's error.
pub type ChunkOutcome = Result<(usize, bool, u64), &'static str>;

/// Scans `body` as chunked framing three ways and checks that they agree: whole, fed in the
/// pieces `cuts` makes (offsets into `body`, TCP's splits), and as a decoder that takes the data
/// itself ([`ChunkScan::decoder`], the pipe into an h2 app's request).
pub fn chunked(body: &[u8], cuts: &[usize]) -> ChunkOutcome {
    let whole = scan(body, &[]);
    let split = scan(body, cuts);
    assert_eq!(whole, split, "a chunked scan depends on how the body was split ({cuts:?})");
    let decoded = decode(body);
    assert_eq!(whole, decoded, "the decoder and the scanner disagree");
    whole
}

fn scan(body: &[u8], cuts: &[usize]) -> ChunkOutcome {
    let mut s = ChunkScan::default();
    let mut at = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    ends.sort_unstable();
    ends.push(body.len());
    for end in ends {
        if end <= at {
            continue;
        }
        let piece = end - at;
        let (n, done) = s.feed(&body[at..end])?;
        assert!(n <= piece, "the scanner took more than it was given");
        at += n;
        if done {
            return Ok((at, true, s.data));
        }
        assert_eq!(n, piece, "the scanner stopped short of a piece without ending the body");
    }
    Ok((at, false, s.data))
}

fn decode(body: &[u8]) -> ChunkOutcome {
    let mut s = ChunkScan::decoder();
    let mut at = 0;
    // Every step takes at least one byte, or ends.
    while at < body.len() {
        if s.state == Chunk::Data {
            let n = (body.len() - at).min(usize::try_from(s.size).unwrap_or(usize::MAX));
            s.take_data(n as u64);
            at += n;
            continue;
        }
        let (n, done) = s.feed(&body[at..])?;
        at += n;
        if done {
            return Ok((at, true, s.data));
        }
        // The pipe into an h2 app's request feeds again at once: no progress would spin.
        assert!(n > 0, "the decoder made no progress");
    }
    Ok((at, false, s.data))
}

/// Parses `bytes` as the app's answer to a request (`head_only`: a HEAD request; `upgrade`: one
/// that asked for an upgrade), as both halves of the codec do ([`final_answer`]), then follows
/// its body's framing through the rest of `bytes` split at `cuts`. Returns the body's framing
/// and, for a chunked one, the scan.
pub fn response(bytes: &[u8], head_only: bool, upgrade: bool, cuts: &[usize]) -> Option<(String, ChunkOutcome)> {
    let mut buf = bytes::BytesMut::from(bytes);
    let parsed = final_answer(&mut buf, head_only, upgrade, |resp, answer, head| {
        assert!(head.len() <= bytes.len());
        for h in resp.headers.iter() {
            // Which fields pass on is decided for every field of every head.
            let _ = answer.drops(h.name.as_bytes());
        }
        if head_only || matches!(resp.code, Some(204 | 304)) {
            assert_eq!(answer.body, Framing::Length(0), "a body where none may be");
        }
        assert!(!(answer.reusable && answer.body == Framing::UntilClose), "reusable, yet the body runs to the close");
        Ok(answer.body)
    });
    let Ok(Some((framing, head_len))) = parsed else { return None };
    let rest = &buf[head_len..];
    let outcome = match framing {
        Framing::Chunked => chunked(rest, cuts),
        Framing::Length(n) => Ok((rest.len().min(usize::try_from(n).unwrap_or(usize::MAX)), false, n)),
        Framing::UntilClose => Ok((rest.len(), false, rest.len() as u64)),
    };
    Some((format!("{framing:?}"), outcome))
}

/// Loads `yaml` as a configuration file (no environment, no flags, TLS files not read) and
/// validates it, as `tandem check` does. A configuration that loads must load again from its own
/// dump ([`Config::to_yaml`], what `/config` shows), to the same dump.
pub fn config(yaml: &str) -> bool {
    let sources = Sources::default();
    let Ok(loaded) = Config::load_text(yaml, &sources, |_| Ok(())) else { return false };
    let dump = loaded.config.to_yaml();
    match Config::load_text(&dump, &sources, |_| Ok(())) {
        Ok(again) => assert_eq!(again.config.to_yaml(), dump, "the dump of a dump differs"),
        Err(e) => panic!("a valid configuration's dump does not load: {e}\n{dump}"),
    }
    true
}
