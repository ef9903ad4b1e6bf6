//! The app's answer as tandem's codec reads it (both halves): the response head parser, interim
//! answers, the framing fields (`final_answer`, `AnswerHead`), and the body's framing; a chunked
//! body is scanned whole, split, and decoded, which must agree.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte: bit 0 a HEAD request, bit 1 an upgrade asked for, the rest the TCP split.
    let (flags, input) = data.split_first().map_or((0, data), |(s, rest)| (*s, rest));
    let split = usize::from(flags >> 2);
    let cuts: Vec<usize> = if split == 0 { Vec::new() } else { (1..8).map(|i| i * split).collect() };
    let _ = tandem::fuzzing::response(input, flags & 1 != 0, flags & 2 != 0, &cuts);
});
