//! Object keys and the block layout of a slice: the one place that names objects.
//!
//! A slice larger than a pack entry is stored as block objects of at most the volume's block
//! size; small slices go into pack objects. Keys are spread over two levels of prefixes so a
//! listing of one prefix stays short.

/// Object key of block `index` (of `len` bytes) of slice `slice`.
pub fn block_key(slice: u64, index: u32, len: u32) -> String {
    format!(
        "chunks/{}/{}/{}_{}_{}",
        slice / 1_000_000,
        slice / 1_000,
        slice,
        index,
        len
    )
}

/// Object key of a pack object.
pub fn pack_object_key(pack: u64) -> String {
    format!("packs/{}/{}/{}.pack", pack / 1_000_000, pack / 1_000, pack)
}

/// What an object key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKey {
    /// Block `index`, of `len` bytes, of slice `slice`.
    Block { slice: u64, index: u32, len: u32 },
    /// A pack object.
    Pack(u64),
}

impl ObjectKey {
    /// Parses a key; `None` for anything spoolfs did not name (the volume record, foreign
    /// objects, keys that do not round-trip exactly).
    pub fn parse(key: &str) -> Option<ObjectKey> {
        let name = key.rsplit('/').next()?;
        if key.starts_with("packs/") {
            let id = name.strip_suffix(".pack")?.parse().ok()?;
            return (pack_object_key(id) == key).then_some(ObjectKey::Pack(id));
        }
        if key.starts_with("chunks/") {
            let mut parts = name.split('_');
            let slice: u64 = parts.next()?.parse().ok()?;
            let index: u32 = parts.next()?.parse().ok()?;
            let len: u32 = parts.next()?.parse().ok()?;
            if parts.next().is_some() {
                return None;
            }
            return (block_key(slice, index, len) == key).then_some(ObjectKey::Block {
                slice,
                index,
                len,
            });
        }
        None
    }

    /// The key this names.
    pub fn key(&self) -> String {
        match *self {
            ObjectKey::Block { slice, index, len } => block_key(slice, index, len),
            ObjectKey::Pack(pack) => pack_object_key(pack),
        }
    }
}

/// How many block objects a slice of `size` bytes has with blocks of `block_size` bytes (an
/// empty slice still has one, empty, block).
pub fn block_count(size: u32, block_size: u64) -> u32 {
    (size as u64).div_ceil(block_size).max(1) as u32
}

/// The length of block `index` of a slice of `size` bytes, if the slice has that block.
pub fn block_len(size: u32, index: u32, block_size: u64) -> Option<u32> {
    let start = index as u64 * block_size;
    (index < block_count(size, block_size))
        .then(|| (size as u64 - start.min(size as u64)).min(block_size) as u32)
}

/// The blocks of a slice of `size` bytes: (index, length, key), in order.
pub fn slice_blocks(
    slice: u64,
    size: u32,
    block_size: u64,
) -> impl Iterator<Item = (u32, u32, String)> {
    (0..block_count(size, block_size)).map(move |i| {
        let len = block_len(size, i, block_size).expect("index below the count");
        (i, len, block_key(slice, i, len))
    })
}

/// Splits a slice's bytes into its blocks: (index, key, bytes), in order. The keys are those of
/// [`slice_blocks`] for `data.len()` bytes (slices are never written empty).
pub fn split_blocks(
    slice: u64,
    data: &[u8],
    block_size: usize,
) -> impl Iterator<Item = (u32, String, &[u8])> {
    data.chunks(block_size).enumerate().map(move |(i, b)| {
        let index = i as u32;
        (index, block_key(slice, index, b.len() as u32), b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let k = block_key(1_234_567, 3, 65536);
        assert_eq!(
            ObjectKey::parse(&k),
            Some(ObjectKey::Block {
                slice: 1_234_567,
                index: 3,
                len: 65536
            })
        );
        assert_eq!(ObjectKey::parse(&k).unwrap().key(), k);
        assert_eq!(
            ObjectKey::parse(&pack_object_key(42)),
            Some(ObjectKey::Pack(42))
        );
        assert_eq!(ObjectKey::parse("spoolfs.volume.json"), None);
        assert_eq!(ObjectKey::parse("chunks/0/0/7_0"), None);
        assert_eq!(ObjectKey::parse("chunks/0/0/x_1_2"), None);
        assert_eq!(ObjectKey::parse("chunks/9/9/7_0_1"), None);
        assert_eq!(ObjectKey::parse("packs/0/0/x.pack"), None);
    }

    #[test]
    fn a_slice_splits_into_blocks() {
        let keys: Vec<_> = slice_blocks(7, 150, 64).collect();
        assert_eq!(
            keys.iter().map(|(i, l, _)| (*i, *l)).collect::<Vec<_>>(),
            vec![(0, 64), (1, 64), (2, 22)]
        );
        let data = vec![1u8; 150];
        let split: Vec<_> = split_blocks(7, &data, 64).collect();
        assert_eq!(split.len(), 3);
        for ((i, l, k), (j, k2, b)) in keys.iter().zip(&split) {
            assert_eq!((i, k, *l as usize), (j, k2, b.len()));
        }
        assert_eq!(slice_blocks(7, 0, 64).count(), 1);
        assert_eq!(block_len(150, 2, 64), Some(22));
        assert_eq!(block_len(150, 3, 64), None);
        assert_eq!(block_len(0, 0, 64), Some(0));
    }
}
