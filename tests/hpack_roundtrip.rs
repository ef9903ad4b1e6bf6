//! HPACK round trips (RFC 7541), seeded and deterministic (the seed is in each failure): tandem's
//! encoder then its decoder, and header blocks written here by an encoder of the test's own
//! (every representation: indexed, literal with and without indexing, never indexed, table size
//! updates; plain and Huffman strings) decoded against a model of the dynamic table kept here.

mod support;

use bytes::{BufMut, BytesMut};
use support::hpack_int;
use tandem::h2::hpack::{huffman_encode, Decoder, Encoder, ENTRY_OVERHEAD};

const STATIC_NAMES: [&str; 8] =
    [":authority", ":path", "content-type", "user-agent", "accept", "cookie", "x-request-id", "grpc-timeout"];

fn field(rng: &mut fastrand::Rng) -> (Vec<u8>, Vec<u8>) {
    let name = if rng.bool() {
        STATIC_NAMES[rng.usize(..STATIC_NAMES.len())].as_bytes().to_vec()
    } else {
        (0..rng.usize(1..20)).map(|_| rng.lowercase() as u8).collect()
    };
    let longest = if rng.u8(..8) == 0 { 600 } else { 40 };
    let value = (0..rng.usize(0..longest)).map(|_| rng.u8(..)).collect();
    (name, value)
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn decode_all(d: &mut Decoder, block: BytesMut) -> Result<Fields, String> {
    let mut out = Vec::new();
    d.decode(&block.freeze(), usize::MAX / 2, |n, v| out.push((n.to_vec(), v.to_vec()))).map_err(|e| e.to_string())?;
    Ok(out)
}

#[test]
fn tandems_encoder_then_its_decoder_gives_back_every_field() {
    for seed in 0..300u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (mut enc, mut dec) = (Encoder::default(), Decoder::default());
        for block in 0..rng.usize(1..6) {
            if rng.u8(..4) == 0 {
                enc.table_size_changed();
            }
            let mut dst = BytesMut::new();
            enc.begin(&mut dst);
            let status = [200u16, 204, 302, 404, 500, 503, 101, 999][rng.usize(..8)];
            enc.status(status, &mut dst);
            let mut want = vec![(b":status".to_vec(), status.to_string().into_bytes())];
            for _ in 0..rng.usize(0..30) {
                let (n, v) = field(&mut rng);
                enc.field(&n, &v, rng.bool(), &mut dst);
                want.push((n, v));
            }
            assert_eq!(decode_all(&mut dec, dst), Ok(want), "seed {seed}, block {block}");
            assert_eq!(dec.table_len(), 0, "the encoder never indexes");
        }
    }
}

/// RFC 7541 section 5.2, Huffman-coded or not.
fn string(dst: &mut BytesMut, s: &[u8], huffman: bool) {
    if huffman {
        let mut coded = BytesMut::new();
        huffman_encode(s, &mut coded);
        hpack_int(dst, 0x80, 7, coded.len());
        dst.put_slice(&coded);
    } else {
        hpack_int(dst, 0, 7, s.len());
        dst.put_slice(s);
    }
}

/// The dynamic table as RFC 7541 section 4 defines it, newest first.
struct Model {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    max: usize,
}

impl Model {
    fn size(&self) -> usize {
        self.entries.iter().map(|(n, v)| n.len() + v.len() + ENTRY_OVERHEAD).sum()
    }
    fn evict(&mut self) {
        while self.size() > self.max {
            self.entries.pop();
        }
    }
    fn add(&mut self, n: Vec<u8>, v: Vec<u8>) {
        self.entries.insert(0, (n, v));
        self.evict();
    }
}

#[test]
fn every_representation_written_here_decodes_as_the_table_model_says() {
    for seed in 0..300u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let limit = [4096usize, 256, 64, 0][rng.usize(..4)];
        let mut dec = Decoder::new(limit);
        let mut model = Model { entries: Vec::new(), max: limit };
        for block in 0..rng.usize(1..8) {
            let mut dst = BytesMut::new();
            let mut want = Vec::new();
            if rng.u8(..4) == 0 {
                model.max = rng.usize(0..=limit);
                model.evict();
                hpack_int(&mut dst, 0x20, 5, model.max);
            }
            for _ in 0..rng.usize(0..20) {
                let huffman = rng.bool();
                match rng.u8(..5) {
                    // Indexed: a static entry, or a dynamic one while there are any.
                    0 => {
                        let i = rng.usize(0..61 + model.entries.len());
                        if i < 61 {
                            hpack_int(&mut dst, 0x80, 7, 2); // :method GET
                            want.push((b":method".to_vec(), b"GET".to_vec()));
                        } else {
                            hpack_int(&mut dst, 0x80, 7, 62 + (i - 61));
                            want.push(model.entries[i - 61].clone());
                        }
                    }
                    // With incremental indexing, a new name or a static one.
                    1 | 2 => {
                        let (n, v) = field(&mut rng);
                        if rng.bool() {
                            hpack_int(&mut dst, 0x40, 6, 0);
                            string(&mut dst, &n, huffman);
                            string(&mut dst, &v, huffman);
                            want.push((n.clone(), v.clone()));
                            model.add(n, v);
                        } else {
                            hpack_int(&mut dst, 0x40, 6, 4); // :path
                            string(&mut dst, &v, huffman);
                            want.push((b":path".to_vec(), v.clone()));
                            model.add(b":path".to_vec(), v);
                        }
                    }
                    // Without indexing (0000) or never indexed (0001): the table is untouched.
                    k => {
                        let (n, v) = field(&mut rng);
                        hpack_int(&mut dst, if k == 3 { 0x00 } else { 0x10 }, 4, 0);
                        string(&mut dst, &n, huffman);
                        string(&mut dst, &v, huffman);
                        want.push((n, v));
                    }
                }
            }
            assert_eq!(decode_all(&mut dec, dst), Ok(want), "seed {seed}, block {block}");
            assert_eq!((dec.table_len(), dec.table_size()), (model.entries.len(), model.size()), "seed {seed}");
        }
    }
}
