//! tandem's HPACK decoder (RFC 7541): integers, Huffman strings, the static and dynamic tables,
//! size updates and the header-list limit, over several blocks of one connection.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tandem::h2::hpack::{Decoder, HpackError, ENTRY_OVERHEAD};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the table limit (SETTINGS_HEADER_TABLE_SIZE) and the list limit; the
    // rest is header blocks of one connection, split at each 0xff 0x00 (a byte pair rare in real
    // blocks).
    let (knobs, rest) = data.split_first().map_or((0, data), |(k, r)| (*k, r));
    let limit = [0usize, 64, 256, 4096, 65_536][usize::from(knobs & 7) % 5];
    let max_list = [usize::MAX / 2, 0, 100, 4096][usize::from(knobs >> 3) % 4];
    let mut d = Decoder::new(limit);
    let mut at = 0;
    while at <= rest.len() {
        let end = rest[at..].windows(2).position(|w| w == [0xff, 0x00]).map_or(rest.len(), |p| at + p);
        let block = Bytes::copy_from_slice(&rest[at..end]);
        let mut list = 0usize;
        let r = d.decode(&block, max_list, |n, v| list += n.len() + v.len() + ENTRY_OVERHEAD);
        // The table never holds more than the peer may set.
        assert!(d.table_size() <= limit, "table {} over its limit {limit}", d.table_size());
        match r {
            Ok(()) | Err(HpackError::ListTooLarge) => {
                assert!(list <= max_list, "fields past the list limit were handed out")
            }
            // The table is out of step with the peer's: the connection ends.
            Err(_) => return,
        }
        at = end + 2;
    }
});
