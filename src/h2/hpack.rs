//! HPACK (RFC 7541), the header compression of tandem's own HTTP/2 codec: the decoder, with its
//! dynamic table and Huffman-coded strings, and an encoder that never indexes.
//!
//! The decoder hands out every field as two [`Bytes`]: a name or value sent as a plain literal
//! is a slice of the header block (no copy), a Huffman-coded one is decoded into a buffer of its
//! own, and a field from a table is a reference-counted clone. The Huffman tables are built from
//! the code lengths of RFC 7541 Appendix B at compile time (the code is canonical, so the lengths
//! alone define it).
//!
//! The encoder writes `:status` from the static table where it can, and every other field as a
//! literal without indexing (never indexed for a value marked sensitive), with the name from the
//! static table where it is there. It keeps no dynamic table, so a peer's table size setting
//! never needs to be tracked beyond one size update to 0 at the start of the first block.

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::VecDeque;

/// What is wrong with a header block. Every one but [`HpackError::ListTooLarge`] leaves the
/// decoder's table out of step with the peer's: a connection error (COMPRESSION_ERROR, RFC 9113
/// section 4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HpackError {
    /// The block ends inside a representation.
    Truncated,
    /// An integer does not fit in 28 bits.
    IntegerOverflow,
    /// An index that is 0 or past the end of both tables.
    BadIndex,
    /// A Huffman string with the EOS symbol, or padding that is over 7 bits or not all ones.
    BadHuffman,
    /// A table size update over the limit this side set, or after the first field of a block.
    TableSizeUpdate,
    /// The decoded list (name + value + 32 per field, RFC 9113 section 6.5.2) is over the limit
    /// given. The block was still decoded to its end, so the table is in step: the request can
    /// be refused (431) and the connection kept.
    ListTooLarge,
}

impl std::fmt::Display for HpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HpackError::Truncated => "header block ends inside a field",
            HpackError::IntegerOverflow => "HPACK integer over 28 bits",
            HpackError::BadIndex => "HPACK index out of range",
            HpackError::BadHuffman => "malformed Huffman string",
            HpackError::TableSizeUpdate => "dynamic table size update out of place or over the limit",
            HpackError::ListTooLarge => "header list over the limit",
        })
    }
}

impl std::error::Error for HpackError {}

/// The overhead RFC 7541 section 4.1 counts per table entry (and RFC 9113 per list field).
pub const ENTRY_OVERHEAD: usize = 32;

/// The table size both sides start with (SETTINGS_HEADER_TABLE_SIZE's default).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// RFC 7541 Appendix A.
static STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The decoding side of one connection: the peer's encoder fills this table.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first: dynamic index 62 is `table[0]`.
    table: VecDeque<(Bytes, Bytes)>,
    /// Bytes in the table, as RFC 7541 section 4.1 counts them.
    size: usize,
    /// The table's current maximum (the peer's last size update).
    max_size: usize,
    /// The most the peer may set (this side's SETTINGS_HEADER_TABLE_SIZE).
    limit: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(DEFAULT_TABLE_SIZE)
    }
}

impl Decoder {
    /// A decoder whose peer may use a table of up to `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Decoder { table: VecDeque::new(), size: 0, max_size: limit, limit }
    }

    /// Bytes in the dynamic table.
    pub fn table_size(&self) -> usize {
        self.size
    }

    /// Entries in the dynamic table.
    pub fn table_len(&self) -> usize {
        self.table.len()
    }

    /// Decodes one whole header block (HEADERS and its CONTINUATIONs joined), calling `emit` for
    /// each field in order. Once the fields given add up to more than `max_list`, the rest of the
    /// block is still decoded (the table must stay in step) but no longer emitted, and the result
    /// is [`HpackError::ListTooLarge`].
    pub fn decode<F: FnMut(Bytes, Bytes)>(
        &mut self,
        block: &Bytes,
        max_list: usize,
        mut emit: F,
    ) -> Result<(), HpackError> {
        let mut pos = 0usize;
        let mut list = 0usize;
        let mut fields = false;
        let src = block.as_ref();
        while pos < src.len() {
            let b = src[pos];
            let (name, value) = if b & 0x80 != 0 {
                let index = integer(src, &mut pos, 7)?;
                self.entry(index)?
            } else if b & 0xc0 == 0x40 {
                let (name, value) = self.literal(block, &mut pos, 6)?;
                // The table keeps copies: a slice would keep the whole header block alive for
                // as long as the entry lives.
                self.insert(Bytes::copy_from_slice(&name), Bytes::copy_from_slice(&value));
                (name, value)
            } else if b & 0xe0 == 0x20 {
                // RFC 7541 section 4.2: only before the first field of a block.
                let size = integer(src, &mut pos, 5)?;
                if fields || size > self.limit {
                    return Err(HpackError::TableSizeUpdate);
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // 0001xxxx never indexed, 0000xxxx without indexing: the same to a decoder.
                self.literal(block, &mut pos, 4)?
            };
            fields = true;
            if list <= max_list {
                list += name.len() + value.len() + ENTRY_OVERHEAD;
                if list <= max_list {
                    emit(name, value);
                }
            }
        }
        if list > max_list {
            return Err(HpackError::ListTooLarge);
        }
        Ok(())
    }

    /// The field at `index` (1-61 static, 62 on dynamic).
    fn entry(&self, index: usize) -> Result<(Bytes, Bytes), HpackError> {
        match index {
            0 => Err(HpackError::BadIndex),
            1..=61 => {
                let (n, v) = STATIC_TABLE[index - 1];
                Ok((Bytes::from_static(n.as_bytes()), Bytes::from_static(v.as_bytes())))
            }
            _ => self.table.get(index - 62).cloned().ok_or(HpackError::BadIndex),
        }
    }

    /// A literal field whose name index has a `prefix`-bit prefix (0: the name follows).
    fn literal(&self, block: &Bytes, pos: &mut usize, prefix: u8) -> Result<(Bytes, Bytes), HpackError> {
        let index = integer(block, pos, prefix)?;
        let name = if index == 0 { string(block, pos)? } else { self.entry(index)?.0 };
        let value = string(block, pos)?;
        Ok((name, value))
    }

    /// Adds an entry (RFC 7541 section 4.4): one larger than the table empties it.
    fn insert(&mut self, name: Bytes, value: Bytes) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front((name, value));
    }

    /// Drops the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + ENTRY_OVERHEAD,
                None => break,
            }
        }
    }
}

/// Reads an integer with an `n`-bit prefix (RFC 7541 section 5.1) at `*pos`.
fn integer(src: &[u8], pos: &mut usize, n: u8) -> Result<usize, HpackError> {
    let mask = (1usize << n) - 1;
    let first = *src.get(*pos).ok_or(HpackError::Truncated)?;
    *pos += 1;
    let mut value = usize::from(first) & mask;
    if value < mask {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let b = *src.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        value += usize::from(b & 0x7f) << shift;
        shift += 7;
        if value >= 1 << 28 {
            return Err(HpackError::IntegerOverflow);
        }
        if b & 0x80 == 0 {
            return Ok(value);
        }
        if shift > 28 {
            return Err(HpackError::IntegerOverflow);
        }
    }
}

/// Reads a string literal (RFC 7541 section 5.2) at `*pos`.
fn string(block: &Bytes, pos: &mut usize) -> Result<Bytes, HpackError> {
    let src = block.as_ref();
    let huffman = src.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(src, pos, 7)?;
    let end = pos.checked_add(len).filter(|&e| e <= src.len()).ok_or(HpackError::Truncated)?;
    let raw = &src[*pos..end];
    let out = if huffman {
        // Huffman codes are at least 5 bits: the text is at most 8/5 of the code.
        let mut buf = BytesMut::with_capacity(len * 8 / 5 + 1);
        huffman_decode(raw, &mut buf)?;
        buf.freeze()
    } else {
        block.slice(*pos..end)
    };
    *pos = end;
    Ok(out)
}

/// Bits of each symbol's code, 0-255 and EOS (256): RFC 7541 Appendix B.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12,
    10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6,
    5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22,
    22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20,
    22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28,
    27, 27, 27, 27, 27, 26, 30,
];

const MAX_CODE: usize = 30;

/// The canonical Huffman code, derived from [`CODE_LENGTHS`].
struct Huffman {
    /// Per length: one past the last code of that length (a code of length `L` is below
    /// `limit[L]`, and the first `L` bits of every longer code are not).
    limit: [u32; MAX_CODE + 1],
    /// Per length: its first code.
    first: [u32; MAX_CODE + 1],
    /// Per length: where its symbols start in `symbols`.
    offset: [u16; MAX_CODE + 1],
    /// Symbols ordered by code.
    symbols: [u16; 257],
}

const HUFFMAN: Huffman = {
    let mut count = [0u32; MAX_CODE + 1];
    let mut i = 0;
    while i < 257 {
        count[CODE_LENGTHS[i] as usize] += 1;
        i += 1;
    }
    let mut first = [0u32; MAX_CODE + 1];
    let mut limit = [0u32; MAX_CODE + 1];
    let mut offset = [0u16; MAX_CODE + 1];
    let mut code = 0u32;
    let mut seen = 0u16;
    let mut len = 1;
    while len <= MAX_CODE {
        code = (code + count[len - 1]) << 1;
        first[len] = code;
        limit[len] = code + count[len];
        offset[len] = seen;
        seen += count[len] as u16;
        len += 1;
    }
    let mut symbols = [0u16; 257];
    let mut next = offset;
    let mut s = 0;
    while s < 257 {
        let l = CODE_LENGTHS[s] as usize;
        symbols[next[l] as usize] = s as u16;
        next[l] += 1;
        s += 1;
    }
    Huffman { limit, first, offset, symbols }
};

/// Decodes a Huffman-coded string into `dst`.
fn huffman_decode(src: &[u8], dst: &mut BytesMut) -> Result<(), HpackError> {
    let h = &HUFFMAN;
    let mut acc = 0u64;
    let mut bits = 0u32;
    for &b in src {
        acc = (acc << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            // The next 32 bits, padded with ones past the end of what has arrived.
            let window = if bits >= 32 {
                (acc >> (bits - 32)) as u32
            } else {
                ((acc << (32 - bits)) as u32) | ((1u32 << (32 - bits)) - 1)
            };
            let mut len = 5;
            while len <= MAX_CODE && (window >> (32 - len)) >= h.limit[len] {
                len += 1;
            }
            if len as u32 > bits {
                break;
            }
            let code = window >> (32 - len);
            let sym = h.symbols[(u32::from(h.offset[len]) + code - h.first[len]) as usize];
            if sym == 256 {
                return Err(HpackError::BadHuffman);
            }
            dst.put_u8(sym as u8);
            bits -= len as u32;
        }
        acc &= (1u64 << bits) - 1;
    }
    // RFC 7541 section 5.2: padding is the start of EOS (all ones), at most 7 bits.
    if bits > 7 || acc != (1u64 << bits) - 1 {
        return Err(HpackError::BadHuffman);
    }
    Ok(())
}

/// Appends the Huffman code of `src` to `dst` (for tests and for an encoder that chooses it).
pub fn huffman_encode(src: &[u8], dst: &mut BytesMut) {
    let h = &HUFFMAN;
    let mut codes = [0u32; 257];
    let mut next = h.first;
    for (i, c) in codes.iter_mut().enumerate() {
        let l = CODE_LENGTHS[i] as usize;
        *c = next[l];
        next[l] += 1;
    }
    let mut acc = 0u64;
    let mut bits = 0u32;
    for &b in src {
        let len = u32::from(CODE_LENGTHS[usize::from(b)]);
        acc = (acc << len) | u64::from(codes[usize::from(b)]);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            dst.put_u8((acc >> bits) as u8);
        }
        acc &= (1u64 << bits) - 1;
    }
    if bits > 0 {
        let pad = 8 - bits;
        dst.put_u8(((acc << pad) | ((1 << pad) - 1)) as u8);
    }
}

/// Writes an integer with an `n`-bit prefix; `flags` are the bits above the prefix.
fn put_integer(dst: &mut BytesMut, flags: u8, n: u8, mut value: usize) {
    let mask = (1usize << n) - 1;
    if value < mask {
        dst.put_u8(flags | value as u8);
        return;
    }
    dst.put_u8(flags | mask as u8);
    value -= mask;
    while value >= 0x80 {
        dst.put_u8((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    dst.put_u8(value as u8);
}

fn put_string(dst: &mut BytesMut, s: &[u8]) {
    put_integer(dst, 0, 7, s.len());
    dst.put_slice(s);
}

/// The static table's index for a field name, where it has one.
fn static_name(name: &[u8]) -> Option<usize> {
    Some(match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"accept-charset" => 15,
        b"accept-encoding" => 16,
        b"accept-language" => 17,
        b"accept-ranges" => 18,
        b"accept" => 19,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"authorization" => 23,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"cookie" => 32,
        b"date" => 33,
        b"etag" => 34,
        b"expect" => 35,
        b"expires" => 36,
        b"from" => 37,
        b"host" => 38,
        b"if-match" => 39,
        b"if-modified-since" => 40,
        b"if-none-match" => 41,
        b"if-range" => 42,
        b"if-unmodified-since" => 43,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"max-forwards" => 47,
        b"proxy-authenticate" => 48,
        b"proxy-authorization" => 49,
        b"range" => 50,
        b"referer" => 51,
        b"refresh" => 52,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"transfer-encoding" => 57,
        b"user-agent" => 58,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => return None,
    })
}

/// The encoding side of one connection. It never adds to the peer's table.
#[derive(Debug)]
pub struct Encoder {
    /// Whether the next block starts with a table size update to 0: the first block, and the
    /// first after the peer changes SETTINGS_HEADER_TABLE_SIZE (RFC 7541 section 4.2).
    size_update: bool,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder { size_update: true }
    }
}

impl Encoder {
    /// The peer changed SETTINGS_HEADER_TABLE_SIZE.
    pub fn table_size_changed(&mut self) {
        self.size_update = true;
    }

    /// Starts a header block in `dst`.
    pub fn begin(&mut self, dst: &mut BytesMut) {
        if std::mem::take(&mut self.size_update) {
            put_integer(dst, 0x20, 5, 0);
        }
    }

    /// Appends `:status`.
    pub fn status(&mut self, status: u16, dst: &mut BytesMut) {
        let index = match status {
            200 => 8,
            204 => 9,
            206 => 10,
            304 => 11,
            400 => 12,
            404 => 13,
            500 => 14,
            _ => 0,
        };
        if index != 0 {
            dst.put_u8(0x80 | index);
            return;
        }
        let mut digits = [0u8; 3];
        let s = status.min(999);
        digits[0] = b'0' + (s / 100) as u8;
        digits[1] = b'0' + (s / 10 % 10) as u8;
        digits[2] = b'0' + (s % 10) as u8;
        put_integer(dst, 0x00, 4, 8);
        put_string(dst, &digits);
    }

    /// Appends one field (`name` in lower case), never indexed when `sensitive`.
    pub fn field(&mut self, name: &[u8], value: &[u8], sensitive: bool, dst: &mut BytesMut) {
        let flags = if sensitive { 0x10 } else { 0x00 };
        match static_name(name) {
            Some(index) => put_integer(dst, flags, 4, index),
            None => {
                dst.put_u8(flags);
                put_string(dst, name);
            }
        }
        put_string(dst, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Bytes {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect::<Vec<u8>>().into()
    }

    fn decode(d: &mut Decoder, block: &str) -> Result<Vec<(String, String)>, HpackError> {
        let mut out = Vec::new();
        d.decode(&hex(block), usize::MAX / 2, |n, v| {
            out.push((String::from_utf8(n.to_vec()).unwrap(), String::from_utf8(v.to_vec()).unwrap()))
        })?;
        Ok(out)
    }

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_canonical_code_matches_rfc_7541_appendix_b() {
        let mut codes = [0u32; 257];
        let mut next = HUFFMAN.first;
        for (i, c) in codes.iter_mut().enumerate() {
            let l = CODE_LENGTHS[i] as usize;
            *c = next[l];
            next[l] += 1;
        }
        // A few rows of the RFC's table.
        assert_eq!(codes[0], 0x1ff8);
        assert_eq!(codes[usize::from(b'\n')], 0x3ffffffc);
        assert_eq!(codes[usize::from(b'0')], 0x0);
        assert_eq!(codes[usize::from(b'a')], 0x3);
        assert_eq!(codes[usize::from(b'!')], 0x3f8);
        assert_eq!(codes[usize::from(b'{')], 0x7ffe);
        assert_eq!(codes[255], 0x3ffffee);
        assert_eq!(codes[256], 0x3fffffff);
    }

    #[test]
    fn c2_single_fields() {
        // C.2.1: literal with indexing.
        let mut d = Decoder::default();
        let got = decode(&mut d, "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572").unwrap();
        assert_eq!(got, fields(&[("custom-key", "custom-header")]));
        assert_eq!((d.table_len(), d.table_size()), (1, 55));
        // C.2.2: literal without indexing.
        let mut d = Decoder::default();
        let got = decode(&mut d, "040c 2f73 616d 706c 652f 7061 7468").unwrap();
        assert_eq!(got, fields(&[(":path", "/sample/path")]));
        assert_eq!(d.table_len(), 0);
        // C.2.3: never indexed.
        let got = decode(&mut d, "1008 7061 7373 776f 7264 0673 6563 7265 74").unwrap();
        assert_eq!(got, fields(&[("password", "secret")]));
        assert_eq!(d.table_len(), 0);
        // C.2.4: indexed.
        assert_eq!(decode(&mut d, "82").unwrap(), fields(&[(":method", "GET")]));
    }

    fn requests(blocks: [&str; 3]) {
        let mut d = Decoder::default();
        let first = decode(&mut d, blocks[0]).unwrap();
        assert_eq!(
            first,
            fields(&[(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")])
        );
        assert_eq!(d.table_size(), 57);
        let second = decode(&mut d, blocks[1]).unwrap();
        assert_eq!(
            second,
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ])
        );
        assert_eq!(d.table_size(), 110);
        let third = decode(&mut d, blocks[2]).unwrap();
        assert_eq!(
            third,
            fields(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!((d.table_len(), d.table_size()), (3, 164));
    }

    #[test]
    fn c3_requests_without_huffman() {
        requests([
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ]);
    }

    #[test]
    fn c4_requests_with_huffman() {
        requests([
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ]);
    }

    #[test]
    fn c5_responses_evict_the_oldest_entries() {
        let mut d = Decoder::new(256);
        let first = decode(
            &mut d,
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 \
             3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        )
        .unwrap();
        assert_eq!(
            first,
            fields(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ])
        );
        assert_eq!((d.table_len(), d.table_size()), (4, 222));
        // ":status: 307" is added and ":status: 302" evicted.
        let second = decode(&mut d, "4803 3330 37c1 c0bf").unwrap();
        assert_eq!(
            second,
            fields(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ])
        );
        assert_eq!((d.table_len(), d.table_size()), (4, 222));
    }

    #[test]
    fn huffman_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        let mut coded = BytesMut::new();
        huffman_encode(&all, &mut coded);
        let mut back = BytesMut::new();
        huffman_decode(&coded, &mut back).unwrap();
        assert_eq!(&back[..], &all[..]);
        let mut coded = BytesMut::new();
        huffman_encode(b"www.example.com", &mut coded);
        assert_eq!(&coded[..], &hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff")[..]);
    }

    #[test]
    fn huffman_refuses_eos_and_bad_padding() {
        // EOS (30 ones) inside a string.
        assert_eq!(huffman_decode(&[0xff, 0xff, 0xff, 0xff], &mut BytesMut::new()), Err(HpackError::BadHuffman));
        // 'a' (00011) then padding of zeros.
        assert_eq!(huffman_decode(&[0b0001_1000], &mut BytesMut::new()), Err(HpackError::BadHuffman));
        // 'a' then 3 ones: fine.
        let mut out = BytesMut::new();
        huffman_decode(&[0b0001_1111], &mut out).unwrap();
        assert_eq!(&out[..], b"a");
        // A whole byte of padding is too long.
        assert_eq!(huffman_decode(&[0b0001_1111, 0xff], &mut BytesMut::new()), Err(HpackError::BadHuffman));
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let mut d = Decoder::default();
        assert_eq!(decode(&mut d, "80"), Err(HpackError::BadIndex));
        assert_eq!(decode(&mut d, "be"), Err(HpackError::BadIndex));
        assert_eq!(decode(&mut d, "400a 6375"), Err(HpackError::Truncated));
        assert_eq!(decode(&mut d, "7f"), Err(HpackError::Truncated));
        assert_eq!(decode(&mut d, "ff ff ff ff ff 0f"), Err(HpackError::IntegerOverflow));
        // A size update over the limit, and one after a field.
        assert_eq!(decode(&mut d, "3fe2 1f"), Err(HpackError::TableSizeUpdate));
        assert_eq!(decode(&mut d, "82 20"), Err(HpackError::TableSizeUpdate));
        // A size update to 0 at the start is fine, and empties the table.
        let mut d = Decoder::default();
        decode(&mut d, "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572").unwrap();
        assert_eq!(d.table_len(), 1);
        assert_eq!(decode(&mut d, "20 82").unwrap(), fields(&[(":method", "GET")]));
        assert_eq!(d.table_len(), 0);
    }

    #[test]
    fn an_oversized_list_is_decoded_to_the_end_but_not_emitted() {
        let mut d = Decoder::default();
        let block = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572 82");
        let mut seen = 0;
        // custom-key: custom-header is 10 + 13 + 32 = 55; the limit lets nothing through.
        assert_eq!(d.decode(&block, 54, |_, _| seen += 1), Err(HpackError::ListTooLarge));
        assert_eq!(seen, 0);
        // The table still took the entry, in step with the peer.
        assert_eq!(d.table_len(), 1);
        let mut seen = 0;
        d.decode(&block, 55 + 42, |_, _| seen += 1).unwrap();
        assert_eq!(seen, 2);
    }

    #[test]
    fn the_encoder_output_decodes_back() {
        let mut e = Encoder::default();
        let mut buf = BytesMut::new();
        e.begin(&mut buf);
        e.status(200, &mut buf);
        e.field(b"content-type", b"text/plain", false, &mut buf);
        e.field(b"x-request-id", b"abc", false, &mut buf);
        e.field(b"set-cookie", b"secret=1", true, &mut buf);
        // The first block starts with a size update to 0.
        assert_eq!(buf[0], 0x20);
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.decode(&buf.clone().freeze(), 1 << 20, |n, v| out.push((n, v))).unwrap();
        assert_eq!(
            out,
            vec![
                (Bytes::from_static(b":status"), Bytes::from_static(b"200")),
                (Bytes::from_static(b"content-type"), Bytes::from_static(b"text/plain")),
                (Bytes::from_static(b"x-request-id"), Bytes::from_static(b"abc")),
                (Bytes::from_static(b"set-cookie"), Bytes::from_static(b"secret=1")),
            ]
        );
        assert_eq!(d.table_len(), 0);
        // Later blocks have no size update; an unusual status is a literal.
        let mut buf = BytesMut::new();
        e.begin(&mut buf);
        e.status(503, &mut buf);
        let mut out = Vec::new();
        d.decode(&buf.freeze(), 1 << 20, |n, v| out.push((n, v))).unwrap();
        assert_eq!(out, vec![(Bytes::from_static(b":status"), Bytes::from_static(b"503"))]);
        // A long value needs a multi-byte length.
        let long = vec![b'x'; 300];
        let mut buf = BytesMut::new();
        e.field(b"x-long", &long, false, &mut buf);
        let mut out = Vec::new();
        d.decode(&buf.freeze(), 1 << 20, |_, v| out.push(v)).unwrap();
        assert_eq!(out[0].len(), 300);
    }

    /// A field name: one from the static table (encoded by index), or a random lower-case token.
    fn random_name(rng: &mut fastrand::Rng) -> Vec<u8> {
        if rng.bool() {
            STATIC_TABLE[rng.usize(..STATIC_TABLE.len())].0.as_bytes().to_vec()
        } else {
            (0..rng.usize(1..40)).map(|_| b"abcdefghijklmnopqrstuvwxyz0123456789-_"[rng.usize(..38)]).collect()
        }
    }

    #[test]
    fn random_field_lists_round_trip() {
        // Property: what the encoder writes, the decoder reads back, block after block, for any
        // value bytes and lengths on both sides of the integer prefix boundaries.
        let mut rng = fastrand::Rng::with_seed(18);
        let mut e = Encoder::default();
        let mut d = Decoder::default();
        for round in 0..3000 {
            if round % 700 == 0 {
                e.table_size_changed();
            }
            let fields: Vec<(Vec<u8>, Vec<u8>, bool)> = (0..rng.usize(0..16))
                .map(|_| {
                    let len = [0, 1, 14, 15, 16, 126, 127, 128, 255, 256, 16_383, rng.usize(0..2000)][rng.usize(..12)];
                    let value = (0..len).map(|_| rng.u8(..)).collect();
                    (random_name(&mut rng), value, rng.u8(..) < 40)
                })
                .collect();
            let status = [200, 204, 404, 503, 100, 999][rng.usize(..6)];
            let mut buf = BytesMut::new();
            e.begin(&mut buf);
            e.status(status, &mut buf);
            for (n, v, sensitive) in &fields {
                e.field(n, v, *sensitive, &mut buf);
            }
            let mut out = Vec::new();
            d.decode(&buf.freeze(), usize::MAX / 2, |n, v| out.push((n.to_vec(), v.to_vec()))).unwrap();
            assert_eq!(out[0], (b":status".to_vec(), status.to_string().into_bytes()), "round {round}");
            let want: Vec<_> = fields.into_iter().map(|(n, v, _)| (n, v)).collect();
            assert_eq!(out[1..], want[..], "round {round}");
            assert_eq!(d.table_len(), 0, "the encoder never indexes");
        }
        // Huffman coding alone, for every length up to 600 bytes of any value.
        for len in 0..600 {
            let src: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let mut coded = BytesMut::new();
            huffman_encode(&src, &mut coded);
            let mut block = BytesMut::new();
            block.put_u8(0x00);
            put_string(&mut block, b"x");
            put_integer(&mut block, 0x80, 7, coded.len());
            block.extend_from_slice(&coded);
            let mut out = Vec::new();
            d.decode(&block.freeze(), usize::MAX / 2, |_, v| out.push(v)).unwrap();
            assert_eq!(out[0], src[..], "length {len}");
        }
    }

    #[test]
    fn mangled_blocks_are_refused_or_decoded_never_a_panic() {
        // Valid blocks (RFC 7541 C.2 to C.6 and the encoder's) with bytes flipped, inserted,
        // removed, repeated or cut, and random bytes: each is decoded or refused; the table
        // stays within the size the peer may use, and after a refusal the connection is over
        // (a fresh decoder), as it is in the server.
        let seeds: Vec<Bytes> = [
            "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
            "040c 2f73 616d 706c 652f 7061 7468",
            "1008 7061 7373 776f 7264 0673 6563 7265 74",
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 \
             3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "3fe1 1f82",
            "20",
        ]
        .iter()
        .map(|h| hex(h))
        .collect();
        let mut rng = fastrand::Rng::with_seed(7541);
        let mut d = Decoder::default();
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..100_000 {
            let mut b = if rng.u8(..) < 20 {
                (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect()
            } else {
                seeds[rng.usize(..seeds.len())].to_vec()
            };
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..=b.len());
                match rng.u8(..4) {
                    0 if at < b.len() => b[at] ^= 1 << rng.u8(..8),
                    1 => b.insert(at, rng.u8(..)),
                    2 if at < b.len() => {
                        b.remove(at);
                    }
                    3 => {
                        let part = b[at..].to_vec();
                        b.extend_from_slice(&part);
                    }
                    _ => b.truncate(at),
                }
            }
            let limit = [0, 100, 4096, usize::MAX / 2][rng.usize(..4)];
            match d.decode(&Bytes::from(b), limit, |_, _| {}) {
                Ok(()) => ok += 1,
                Err(HpackError::ListTooLarge) => ok += 1,
                Err(_) => {
                    refused += 1;
                    d = Decoder::default();
                }
            }
            assert!(d.table_size() <= DEFAULT_TABLE_SIZE);
        }
        assert!(ok > 1000 && refused > 1000, "both outcomes exercised: {ok} decoded, {refused} refused");
    }
}
