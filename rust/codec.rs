//! The frame of a tiered-cache value in Redis, read on the hot path (`helixrt.codec` writes it
//! and owns the rules): an 8-byte header (format version, serializer id, codec id, flags, body
//! length before compression, u32 big-endian), the expiry in ms since the epoch (u64 big-endian)
//! when flagged, then the body. Only the common frame is read here: unsigned, uncompressed or
//! lz4. Anything else is left to the Python codec, which reads gzip and signed values and says
//! precisely what is wrong with a bad one.

const FORMAT_VERSION: u8 = 1;
const HEADER: usize = 8;
const EXPIRY: usize = 8;
const HAS_EXPIRY: u8 = 0x02;
pub const NONE: u8 = 0;
pub const LZ4: u8 = 1;
/// The most an lz4 block can grow on decompression (~255x), checked before allocating, so a
/// forged length cannot make a read allocate gigabytes.
const LZ4_MAX_RATIO: usize = 255;

/// Where a well-formed value's body is and what it holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub body_at: usize,
    pub compression: u8,
    /// The body's length before compression.
    pub length: usize,
    pub expires_at_ms: Option<u64>,
}

/// The frame of `data` if it is an unsigned value of `serializer`, uncompressed (with a body of
/// exactly `length` bytes) or lz4 (with a plausible `length`); None otherwise.
pub fn frame(data: &[u8], serializer: u8) -> Option<Frame> {
    let header: &[u8; HEADER] = data.get(..HEADER)?.try_into().ok()?;
    let [version, written_by, compression, flags, ..] = *header;
    if version != FORMAT_VERSION || written_by != serializer || flags & !HAS_EXPIRY != 0 {
        return None;
    }
    let length = u32::from_be_bytes(header[4..].try_into().ok()?) as usize;
    let (body_at, expires_at_ms) = if flags & HAS_EXPIRY != 0 {
        let expiry: [u8; EXPIRY] = data.get(HEADER..HEADER + EXPIRY)?.try_into().ok()?;
        (HEADER + EXPIRY, Some(u64::from_be_bytes(expiry)))
    } else {
        (HEADER, None)
    };
    let body = data.len() - body_at;
    let plausible = match compression {
        NONE => body == length,
        LZ4 => length <= body.saturating_mul(LZ4_MAX_RATIO).saturating_add(64),
        _ => false,
    };
    plausible.then_some(Frame {
        body_at,
        compression,
        length,
        expires_at_ms,
    })
}

/// Decompresses the lz4 block `body` into `out`; false unless it fills `out` exactly.
pub fn lz4_into(body: &[u8], out: &mut [u8]) -> bool {
    matches!(lz4_flex::block::decompress_into(body, out), Ok(n) if n == out.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(serializer: u8, compression: u8, flags: u8, length: u32, rest: &[u8]) -> Vec<u8> {
        let mut data = vec![FORMAT_VERSION, serializer, compression, flags];
        data.extend_from_slice(&length.to_be_bytes());
        data.extend_from_slice(rest);
        data
    }

    #[test]
    fn an_uncompressed_value_with_its_expiry() {
        let mut rest = 1_700_000_000_123u64.to_be_bytes().to_vec();
        rest.extend_from_slice(b"body");
        let data = value(1, NONE, HAS_EXPIRY, 4, &rest);
        assert_eq!(
            frame(&data, 1),
            Some(Frame {
                body_at: 16,
                compression: NONE,
                length: 4,
                expires_at_ms: Some(1_700_000_000_123)
            })
        );
        assert_eq!(&data[16..], b"body");
    }

    #[test]
    fn an_lz4_value_decompresses_to_its_length() {
        let plain = b"chat completion ".repeat(64);
        let packed = lz4_flex::block::compress(&plain);
        let data = value(1, LZ4, 0, plain.len() as u32, &packed);
        let found = frame(&data, 1).expect("a well-formed lz4 value");
        assert_eq!((found.body_at, found.expires_at_ms), (HEADER, None));
        let mut out = vec![0; found.length];
        assert!(lz4_into(&data[found.body_at..], &mut out));
        assert_eq!(out, plain);
    }

    #[test]
    fn what_the_python_codec_must_judge_is_left_to_it() {
        assert_eq!(frame(b"short", 1), None, "truncated header");
        assert_eq!(
            frame(&value(1, NONE, 0, 4, b"body"), 2),
            None,
            "another serializer"
        );
        let mut other_version = value(1, NONE, 0, 4, b"body");
        other_version[0] = 2;
        assert_eq!(frame(&other_version, 1), None, "unknown version");
        assert_eq!(frame(&value(1, NONE, 0x01, 4, b"body"), 1), None, "signed");
        assert_eq!(
            frame(&value(1, NONE, 0x80, 4, b"body"), 1),
            None,
            "unknown flag"
        );
        assert_eq!(frame(&value(1, 2, 0, 4, b"body"), 1), None, "gzip");
        assert_eq!(
            frame(&value(1, NONE, 0, 5, b"body"), 1),
            None,
            "length mismatch"
        );
        assert_eq!(
            frame(&value(1, NONE, HAS_EXPIRY, 0, b"1234"), 1),
            None,
            "cut expiry"
        );
        assert_eq!(
            frame(&value(1, LZ4, 0, u32::MAX, b"tiny"), 1),
            None,
            "a length lz4 cannot reach"
        );
    }

    #[test]
    fn a_damaged_lz4_body_is_refused_without_panicking() {
        let plain = b"chat completion ".repeat(64);
        let packed = lz4_flex::block::compress(&plain);
        let mut out = vec![0; plain.len()];
        assert!(
            !lz4_into(&packed[..packed.len() / 2], &mut out),
            "truncated"
        );
        assert!(!lz4_into(&[0xff; 32], &mut out), "garbage");
        let mut short = vec![0; plain.len() - 1];
        assert!(
            !lz4_into(&packed, &mut short),
            "longer than its header says"
        );
        let mut long = vec![0; plain.len() + 1];
        assert!(
            !lz4_into(&packed, &mut long),
            "shorter than its header says"
        );
    }
}
