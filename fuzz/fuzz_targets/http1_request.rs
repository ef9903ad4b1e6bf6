//! tandem's HTTP/1.1 server fed arbitrary bytes over an in-memory connection with the echo app
//! answering: the request head parser and its rules (request.rs, fields.rs), and the request
//! body's framing (Content-Length, chunked) as the codec relays it. What follows the first head
//! is also scanned as a chunked body three ways that must agree (framing.rs's `ChunkScan`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte says where TCP splits the input (0: one piece).
    let (split, input) = data.split_first().map_or((0, data), |(s, rest)| (*s as usize, rest));
    let cuts: Vec<usize> = if split == 0 { Vec::new() } else { (1..8).map(|i| i * split).collect() };
    if let Some(at) = input.windows(4).position(|w| w == b"\r\n\r\n") {
        let _ = tandem::fuzzing::chunked(&input[at + 4..], &cuts);
    }
    tandem_fuzz::server().exchange(input, &cuts);
});
