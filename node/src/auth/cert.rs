//! The subject common name of a verified client certificate: the user name etcd takes
//! from it with `--client-cert-auth` (`AuthInfoFromTLS`). A small DER walk over the
//! certificate's `tbsCertificate` (RFC 5280): version, serial, signature algorithm,
//! issuer, validity, then the subject, whose first `commonName` (2.5.4.3) is the name.

/// DER tag of a SEQUENCE.
const SEQUENCE: u8 = 0x30;
/// DER tag of a SET.
const SET: u8 = 0x31;
/// The explicit `[0]` tag of the version field.
const VERSION: u8 = 0xa0;
const OID: u8 = 0x06;
/// The DER content of the OID 2.5.4.3 (id-at-commonName).
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The subject's common name of a DER certificate, if it has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (tag, cert, _) = element(der)?;
    expect(tag, SEQUENCE)?;
    let (tag, mut tbs, _) = element(cert)?;
    expect(tag, SEQUENCE)?;
    if tbs.first() == Some(&VERSION) {
        tbs = element(tbs)?.2;
    }
    // serial, signature algorithm, issuer, validity
    for _ in 0..4 {
        tbs = element(tbs)?.2;
    }
    let (tag, mut rdns, _) = element(tbs)?;
    expect(tag, SEQUENCE)?;
    while !rdns.is_empty() {
        let (tag, mut set, rest) = element(rdns)?;
        expect(tag, SET)?;
        rdns = rest;
        while !set.is_empty() {
            let (tag, attribute, rest) = element(set)?;
            expect(tag, SEQUENCE)?;
            set = rest;
            let (tag, oid, value) = element(attribute)?;
            expect(tag, OID)?;
            if oid == COMMON_NAME {
                let (_string_type, text, _) = element(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

fn expect(tag: u8, wanted: u8) -> Option<()> {
    (tag == wanted).then_some(())
}

/// One DER element: its tag, its content and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_input_has_no_name() {
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(common_name(&[0x30, 0x03, 0x30, 0x01, 0x00]), None);
    }
}
