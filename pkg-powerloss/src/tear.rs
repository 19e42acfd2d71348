//! What a file holds after a power loss: its durable image, plus, in torn
//! mode, a random prefix of the data operations that followed its last
//! sync (as page write-back may have written some of them), the last kept
//! write possibly cut at a page boundary.

use crate::data::{Data, Dirty, PAGE};

/// A change to a file's bytes since its last sync, kept so that a torn
/// crash can replay a prefix of them.
#[derive(Clone, Debug)]
pub(crate) enum DataOp {
    /// `bytes` written at `off`.
    Write { off: u64, bytes: Vec<u8> },
    /// The size set (truncate, extend, `fallocate` growing the file).
    SetSize(u64),
}

impl DataOp {
    fn apply(&self, data: &mut Data, dirty: &mut Dirty) {
        match self {
            DataOp::Write { off, bytes } => data.write(*off, bytes, dirty),
            DataOp::SetSize(size) => data.set_size(*size, dirty),
        }
    }
}

/// SplitMix64: a small generator whose sequence for a seed never changes
/// (so a seed reproduces a crash image across versions of anything).
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The image of a file after a torn crash: `durable` plus a random prefix
/// of `ops`; the first op not kept, if a write that crosses a page
/// boundary, is kept up to a random boundary half of the time. Returns
/// the image and whether it differs from `durable` by at least one op.
pub(crate) fn torn(durable: &Data, ops: &[DataOp], rng: &mut Rng) -> (Data, bool) {
    let mut data = durable.clone();
    let mut scratch = Dirty::new();
    let kept = rng.below(ops.len() as u64 + 1) as usize;
    for op in &ops[..kept] {
        op.apply(&mut data, &mut scratch);
    }
    let mut changed = kept > 0;
    if let Some(DataOp::Write { off, bytes }) = ops.get(kept) {
        let end = off + bytes.len() as u64;
        let first = (off / PAGE + 1) * PAGE;
        if first < end && rng.below(2) == 1 {
            let boundaries = (end - 1 - first) / PAGE + 1;
            let cut = first + rng.below(boundaries) * PAGE;
            data.write(*off, &bytes[..(cut - off) as usize], &mut scratch);
            changed = true;
        }
    }
    (data, changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_image_is_a_prefix_of_the_ops_cut_at_a_page() {
        let durable = Data::default();
        let ops: Vec<DataOp> = (0..4u8)
            .map(|i| DataOp::Write {
                off: u64::from(i) * 3 * PAGE,
                bytes: vec![i + 1; 3 * PAGE as usize],
            })
            .collect();
        let mut seen_cut = false;
        for seed in 0..200 {
            let (img, _) = torn(&durable, &ops, &mut Rng::new(seed));
            let bytes = img.read(0, u64::MAX);
            assert_eq!(bytes.len() as u64 % PAGE, 0, "cut at a page boundary");
            // Every kept page holds its op's byte, in order, no gap.
            for (p, chunk) in bytes.chunks(PAGE as usize).enumerate() {
                assert!(chunk.iter().all(|&b| b == (p as u64 / 3) as u8 + 1));
            }
            seen_cut |= !(bytes.len() as u64).is_multiple_of(3 * PAGE);
        }
        assert!(seen_cut, "some seed cuts a write");
    }
}
