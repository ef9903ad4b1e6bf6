//! tandem's HTTP/2 server fed arbitrary bytes after a valid preface, over an in-memory
//! connection with the echo app answering: the frame parser, the stream state machine, flow
//! control, HPACK and the request rules, all as the inbound listener runs them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte says where TCP splits the input (0: one piece).
    let (split, frames) = data.split_first().map_or((0, data), |(s, rest)| (*s as usize, rest));
    let mut input = tandem::h2::server::PREFACE.to_vec();
    input.extend_from_slice(frames);
    let cuts: Vec<usize> = if split == 0 { Vec::new() } else { (1..8).map(|i| i * split).collect() };
    tandem_fuzz::server().exchange(&input, &cuts);
});
