//! Decoding of call arguments: a bounded XDR (RFC 4506) reader over a
//! record already read into memory.
//!
//! Arguments are not decoded with `nfs3_types`' `Unpack`: its `Opaque`
//! (and `Vec<u32>`) allocate the length read from the wire before reading
//! the bytes, so a 20-byte call claiming a 4 GiB opaque would make the
//! server allocate 4 GiB (and abort where that fails). This reader never
//! allocates: opaques and strings are slices of the record, checked
//! against what the record holds (and against the XDR bound where the
//! protocol gives one). Replies, which the server builds itself, are
//! packed with `nfs3_types`.

/// The arguments do not decode: `GARBAGE_ARGS` (or, in the call header,
/// a record the connection cannot go on from).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Garbage;

/// A cursor over XDR bytes. Every read either returns a value wholly
/// inside the buffer or [`Garbage`]; nothing panics on any input.
pub(super) struct Xdr<'a> {
    buf: &'a [u8],
}

/// Bytes of padding after `len` bytes of opaque data (to 4).
fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

impl<'a> Xdr<'a> {
    /// A reader over `buf`.
    pub(super) fn new(buf: &'a [u8]) -> Xdr<'a> {
        Xdr { buf }
    }

    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Result<&'a [u8], Garbage> {
        let (head, tail) = self.buf.split_at_checked(n).ok_or(Garbage)?;
        self.buf = tail;
        Ok(head)
    }

    /// An `unsigned int`.
    pub(super) fn u32(&mut self) -> Result<u32, Garbage> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes(b.try_into().map_err(|_| Garbage)?))
    }

    /// An `unsigned hyper`.
    pub(super) fn u64(&mut self) -> Result<u64, Garbage> {
        let b = self.take(8)?;
        Ok(u64::from_be_bytes(b.try_into().map_err(|_| Garbage)?))
    }

    /// A `bool` (0 or 1; anything else is garbage).
    pub(super) fn bool(&mut self) -> Result<bool, Garbage> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Garbage),
        }
    }

    /// A variable-length `opaque<max>` or `string<max>`: a slice of the
    /// record (no copy). Longer than `max` or than the record holds:
    /// garbage. Padding bytes are skipped unchecked.
    pub(super) fn opaque(&mut self, max: usize) -> Result<&'a [u8], Garbage> {
        let len = usize::try_from(self.u32()?).map_err(|_| Garbage)?;
        if len > max {
            return Err(Garbage);
        }
        let data = self.take(len)?;
        self.take(padding(len))?;
        Ok(data)
    }

    /// A fixed-length `opaque[N]`.
    pub(super) fn fixed<const N: usize>(&mut self) -> Result<[u8; N], Garbage> {
        let data = self.take(N)?;
        self.take(padding(N))?;
        data.try_into().map_err(|_| Garbage)
    }

    /// The bytes not read yet.
    pub(super) fn rest(&self) -> &'a [u8] {
        self.buf
    }
}
