//! The protobuf wire format at its lowest level: keys, varints, length-delimited values,
//! skipping a field. For bytes millrace reads and writes without decoding them into
//! messages (a snapshot's dedup window, `processor::dedup_window`); everything else goes
//! through prost.

use super::CodecError;

/// Splits off one whole field (key and value) from the front of `buf`.
pub fn record<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], CodecError> {
    let start = *buf;
    let (_, wire_type) = key(buf)?;
    skip(buf, wire_type)?;
    Ok(&start[..start.len() - buf.len()])
}

/// A field's key: (field number, wire type).
pub fn key(buf: &mut &[u8]) -> Result<(u64, u8), CodecError> {
    let k = varint(buf)?;
    Ok((k >> 3, (k & 7) as u8))
}

pub fn varint(buf: &mut &[u8]) -> Result<u64, CodecError> {
    let mut value = 0u64;
    for (i, b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            *buf = &buf[i + 1..];
            return Ok(value);
        }
    }
    Err(CodecError::Wire("invalid varint".into()))
}

pub fn length_delimited<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], CodecError> {
    let len = varint(buf)?;
    let len = usize::try_from(len).ok().filter(|l| *l <= buf.len()).ok_or_else(|| CodecError::Wire("buffer underflow".into()))?;
    let (value, rest) = buf.split_at(len);
    *buf = rest;
    Ok(value)
}

/// Skips a field's value of this wire type (groups, long deprecated, are refused).
pub fn skip(buf: &mut &[u8], wire_type: u8) -> Result<(), CodecError> {
    let fixed = |buf: &mut &[u8], n: usize| match buf.get(n..) {
        Some(rest) => {
            *buf = rest;
            Ok(())
        }
        None => Err(CodecError::Wire("buffer underflow".into())),
    };
    match wire_type {
        0 => varint(buf).map(drop),
        1 => fixed(buf, 8),
        2 => length_delimited(buf).map(drop),
        5 => fixed(buf, 4),
        other => Err(CodecError::Wire(format!("unsupported wire type {other}"))),
    }
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_it_writes_and_refuses_what_runs_short() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut buf = &out[..];
            assert_eq!(varint(&mut buf).unwrap(), v);
            assert!(buf.is_empty());
        }
        assert!(varint(&mut &[0xff; 11][..]).unwrap_err().to_string().contains("varint"));
        assert!(varint(&mut &[0x80][..]).is_err());
        assert!(length_delimited(&mut &[5u8, 1, 2][..]).is_err());
        assert!(skip(&mut &[1u8, 2, 3][..], 1).is_err(), "a fixed64 needs 8 bytes");
        assert!(skip(&mut &[][..], 3).is_err(), "groups are refused");
        let mut buf = &[0x0a, 2, b'h', b'i', 0x10, 7][..];
        assert_eq!(record(&mut buf).unwrap(), &[0x0a, 2, b'h', b'i']);
        assert_eq!(key(&mut buf).unwrap(), (2, 0));
    }
}
