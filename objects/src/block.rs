//! The block object format: the data, then a 16-byte trailer.
//!
//! ```text
//! | data (len bytes) | magic "SPB1" | crc32c(data) u32 LE | len u64 LE |
//! ```
//! The reader checks all three before handing out a single byte.

use crate::{Result, StorageError};
use bytes::{BufMut, Bytes, BytesMut};

pub const BLOCK_TRAILER_LEN: usize = 16;
const MAGIC: &[u8; 4] = b"SPB1";

pub fn encode_block(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + BLOCK_TRAILER_LEN);
    out.put_slice(data);
    out.put_slice(MAGIC);
    out.put_u32_le(crc32c::crc32c(data));
    out.put_u64_le(data.len() as u64);
    out.freeze()
}

/// Verifies a block object and returns its data.
pub fn decode_block(key: &str, object: Bytes) -> Result<Bytes> {
    let bad = |detail: String| StorageError::Checksum {
        key: key.to_string(),
        detail,
    };
    if object.len() < BLOCK_TRAILER_LEN {
        return Err(bad(format!("object is {} bytes, too short", object.len())));
    }
    let data_len = object.len() - BLOCK_TRAILER_LEN;
    let trailer = &object[data_len..];
    if &trailer[0..4] != MAGIC {
        return Err(bad("bad trailer magic".into()));
    }
    let crc = u32::from_le_bytes(trailer[4..8].try_into().expect("4 bytes"));
    let len = u64::from_le_bytes(trailer[8..16].try_into().expect("8 bytes"));
    if len != data_len as u64 {
        return Err(bad(format!(
            "trailer says {len} bytes, object has {data_len}"
        )));
    }
    let data = object.slice(0..data_len);
    let actual = crc32c::crc32c(&data);
    if actual != crc {
        return Err(bad(format!("crc32c {actual:08x}, expected {crc:08x}")));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_every_single_byte_flip_is_caught() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let obj = encode_block(&data);
        assert_eq!(&decode_block("k", obj.clone()).unwrap()[..], &data[..]);
        for i in 0..obj.len() {
            let mut bad = obj.to_vec();
            bad[i] ^= 0x01;
            assert!(
                decode_block("k", Bytes::from(bad)).is_err(),
                "flip at {i} not detected"
            );
        }
        assert!(decode_block("k", obj.slice(0..obj.len() - 1)).is_err());
        assert!(decode_block("k", Bytes::new()).is_err());
        assert_eq!(decode_block("k", encode_block(b"")).unwrap().len(), 0);
    }
}
