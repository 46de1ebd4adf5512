//! Hex and percent-encoding, read strictly: exactly two ASCII hex digits per
//! byte. (`u8::from_str_radix` takes a sign, so with it `%+a` decoded to a
//! newline and `+a` passed as a hex pair.)

/// The value of one ASCII hex digit, either case.
pub fn digit(c: u8) -> Option<u8> {
    char::from(c).to_digit(16).map(|d| d as u8)
}

/// Lowercase hex, two digits per byte.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exactly `2 * N` lowercase hex digits as `N` bytes: the one text a value
/// prints as, so what is read prints back the same.
pub fn decode_lower<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    decode_lower_vec(text)?.try_into().ok()
}

/// Lowercase hex digits, an even number of them, as bytes.
pub fn decode_lower_vec(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(2) || text.iter().any(|c| c.is_ascii_uppercase()) {
        return None;
    }
    text.chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// The bytes `text` percent-encodes: each `%` must be followed by two hex
/// digits; everything else is taken as it is.
pub fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let (high, low) = (bytes.get(i + 1)?, bytes.get(i + 2)?);
            out.push(digit(*high)? << 4 | digit(*low)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sign_is_not_a_digit() {
        assert_eq!(percent_decode("%+a"), None);
        assert_eq!(percent_decode("%-1"), None);
        assert_eq!(decode_lower::<1>("+a"), None);
        assert_eq!(decode_lower::<2>("0+a0"), None);
    }

    #[test]
    fn percent_decoding_takes_two_digits_exactly() {
        assert_eq!(percent_decode("a%2Fb%2fc+d").unwrap(), b"a/b/c+d");
        assert_eq!(percent_decode("%e9t%C3%A9").unwrap(), b"\xe9t\xc3\xa9");
        for bad in ["%", "%4", "%g0", "a%0"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn hex_reads_back_what_it_writes_and_only_that() {
        let bytes = [0u8, 0x7f, 0xab, 0xff];
        assert_eq!(encode(&bytes), "007fabff");
        assert_eq!(decode_lower::<4>("007fabff"), Some(bytes));
        assert_eq!(decode_lower::<4>("007FABFF"), None);
        assert_eq!(decode_lower::<4>("007fab"), None);
        assert_eq!(decode_lower::<2>("é0"), None);
        assert_eq!(decode_lower_vec("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_lower_vec(""), Some(vec![]));
        for bad in ["0", "zz", "éé", "+f"] {
            assert_eq!(decode_lower_vec(bad), None, "{bad}");
        }
    }
}
