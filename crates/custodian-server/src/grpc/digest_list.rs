//! `FindMissing`'s request and answer as the daemon reads and writes them: each digest parsed
//! where it lies in the request's frames and each missing one formatted straight into the
//! answer, with no string of its own. A `FindMissing` carries thousands of digests: prost's
//! string per digest (an allocation, a UTF-8 check, a free) and the handler's parse of each were
//! a fifth of the daemon's samples in the call (`perf`, docs/performance.md), all of it on one
//! core before the lookup is split over the cores. The bytes on the wire are the generated
//! `FindMissingRequest`'s and `FindMissingResponse`'s; the tests check both ways.

use bytes::{Buf, BufMut};
use custodian_core::Digest;
use prost::encoding::{DecodeContext, WireType};

/// The field number of `FindMissingRequest.digests` and of `FindMissingResponse.missing_digests`.
const DIGESTS_FIELD: u32 = 1;

/// The length of a digest's text, `sha256:` or `blake3:` and 64 hex digits.
const TEXT_LEN: usize = 71;

/// A list of digests as field 1 of a message: `FindMissingRequest`'s `digests` (parsed as they
/// are read) and `FindMissingResponse`'s `missing_digests` (formatted as they are written) have
/// this one shape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DigestList {
    /// The digests, in order; in a request, as far as the first that did not parse.
    pub digests: Vec<Digest>,
    /// The first entry that is not a digest's canonical text: its place and its text (lossily
    /// decoded if it is not UTF-8), for an error that names both.
    pub refused: Option<(usize, String)>,
}

impl prost::Message for DigestList {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for digest in &self.digests {
            put_digest(digest, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if tag != DIGESTS_FIELD {
            return prost::encoding::skip_field(wire_type, tag, buf, ctx);
        }
        prost::encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
        let len = prost::encoding::decode_varint(buf)?;
        if len > buf.remaining() as u64 {
            return Err(underflow());
        }
        let len = len as usize;
        let place = self.digests.len();
        if self.refused.is_some() {
            // Past the first refusal the handler answers with it; the rest is only read past.
            buf.advance(len);
            return Ok(());
        }
        if len > TEXT_LEN {
            // Longer than any digest's text: refused, whatever it says.
            let mut long = vec![0u8; len];
            buf.copy_to_slice(&mut long);
            self.refused = Some((place, String::from_utf8_lossy(&long).into_owned()));
            return Ok(());
        }
        // Copied to the stack, whether it lies in one frame or straddles two.
        let mut text = [0u8; TEXT_LEN];
        let text = &mut text[..len];
        buf.copy_to_slice(text);
        match std::str::from_utf8(text)
            .ok()
            .and_then(|text| text.parse::<Digest>().ok())
        {
            Some(digest) => self.digests.push(digest),
            None => self.refused = Some((place, String::from_utf8_lossy(text).into_owned())),
        }
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.digests.len() * entry_len()
    }

    fn clear(&mut self) {
        self.digests.clear();
        self.refused = None;
    }
}

/// The error prost gives for a field longer than what is left of its message.
#[allow(deprecated)] // The constructor is meant for `Message` implementations such as these.
fn underflow() -> prost::DecodeError {
    prost::DecodeError::new("buffer underflow")
}

/// The bytes one digest takes in either message: its key, its length and its text.
fn entry_len() -> usize {
    prost::encoding::key_len(DIGESTS_FIELD)
        + prost::encoding::encoded_len_varint(TEXT_LEN as u64)
        + TEXT_LEN
}

/// Writes one digest as field 1 of either message.
fn put_digest(digest: &Digest, buf: &mut impl BufMut) {
    prost::encoding::encode_key(DIGESTS_FIELD, WireType::LengthDelimited, buf);
    prost::encoding::encode_varint(TEXT_LEN as u64, buf);
    // The Display form, formatted on the stack. Every algorithm's name is six letters, so it is
    // always TEXT_LEN bytes and fits: the property test compares both algorithms' encodings
    // with prost's, which a text of any other length would fail.
    let mut text = [0u8; TEXT_LEN];
    let mut out = &mut text[..];
    let written = std::io::Write::write_fmt(&mut out, format_args!("{digest}"));
    debug_assert!(
        written.is_ok() && out.is_empty(),
        "{digest} is not {TEXT_LEN} bytes"
    );
    buf.put_slice(&text);
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::unary::testing::{cut, framed, read};
    use custodian_core::Algorithm;
    use custodian_proto::cas::v1 as pb;
    use proptest::prelude::*;
    use prost::Message as _;

    /// A digest of either algorithm from a seed.
    fn digest(blake3: bool, seed: u64) -> Digest {
        let algorithm = if blake3 {
            Algorithm::Blake3
        } else {
            Algorithm::Sha256
        };
        Digest::of(algorithm, &seed.to_le_bytes())
    }

    /// The query read from `request`'s bytes cut into frames at `cuts`.
    fn query_of(request: &impl prost::Message, cuts: &[usize]) -> DigestList {
        read::<DigestList>(cut(framed(request), cuts), 1 << 20, "FindMissing").expect("read")
    }

    proptest! {
        /// Whatever frames the request arrives in, every digest is read, in order; the answer
        /// is byte for byte what the generated message would be.
        #[test]
        fn digests_are_read_from_any_frames_and_answered_as_prost_would(
            seeds in prop::collection::vec((any::<bool>(), any::<u64>()), 0..200),
            cuts in prop::collection::vec(1usize..200, 0..40),
        ) {
            let digests: Vec<Digest> = seeds.iter().map(|(b, s)| digest(*b, *s)).collect();
            let texts: Vec<String> = digests.iter().map(Digest::to_string).collect();
            let query = query_of(&pb::FindMissingRequest { digests: texts.clone() }, &cuts);
            prop_assert_eq!(&query.digests, &digests);
            prop_assert_eq!(&query.refused, &None);

            let ours = DigestList { digests: digests.clone(), refused: None };
            let theirs = pb::FindMissingResponse { missing_digests: texts };
            prop_assert_eq!(ours.encode_to_vec(), theirs.encode_to_vec());
            prop_assert_eq!(ours.encoded_len(), theirs.encoded_len());
            prop_assert_eq!(ours.encode_to_vec(),
                pb::FindMissingRequest { digests: theirs.missing_digests }.encode_to_vec());
        }
    }

    #[test]
    fn the_first_entry_that_is_not_a_canonical_digest_is_refused_with_its_place() {
        let good = digest(false, 1).to_string();
        let upper = good.to_uppercase().replacen("SHA256", "sha256", 1);
        let long = format!("{good}{good}");
        for (bad, cuts) in [
            (String::new(), vec![]),
            ("md5:d41d8cd98f00b204e9800998ecf8427e".to_string(), vec![]),
            (upper, vec![80]),
            (good[..70].to_string(), vec![75, 3]),
            (long.clone(), vec![90, 1, 1]),
        ] {
            let request = pb::FindMissingRequest {
                digests: vec![
                    good.clone(),
                    good.clone(),
                    bad.clone(),
                    "junk".into(),
                    good.clone(),
                ],
            };
            let query = query_of(&request, &cuts);
            assert_eq!(query.refused, Some((2, bad.clone())), "{bad:?}");
            assert_eq!(query.digests, vec![digest(false, 1); 2], "{bad:?}");
        }

        // Text that is not UTF-8, which the generated message could not even hold.
        let mut message = Vec::new();
        put_digest(&digest(true, 2), &mut message);
        prost::encoding::encode_key(DIGESTS_FIELD, WireType::LengthDelimited, &mut message);
        prost::encoding::encode_varint(2, &mut message);
        message.extend([0xff, 0xfe]);
        let query = DigestList::decode(message.as_slice()).expect("decodes");
        assert_eq!(query.digests, vec![digest(true, 2)]);
        assert_eq!(query.refused, Some((1, "\u{fffd}\u{fffd}".to_string())));
    }

    #[test]
    fn other_fields_are_read_past_and_a_short_entry_fails_the_message() {
        let mut message = Vec::new();
        prost::encoding::encode_key(7, WireType::Varint, &mut message);
        prost::encoding::encode_varint(300, &mut message);
        put_digest(&digest(false, 3), &mut message);
        prost::encoding::encode_key(9, WireType::LengthDelimited, &mut message);
        prost::encoding::encode_varint(3, &mut message);
        message.extend(b"abc");
        let query = DigestList::decode(message.as_slice()).expect("decodes");
        assert_eq!(query.digests, vec![digest(false, 3)]);
        assert_eq!(query.refused, None);

        let whole = DigestList {
            digests: vec![digest(true, 4)],
            refused: None,
        }
        .encode_to_vec();
        let err = DigestList::decode(&whole[..whole.len() - 1]).expect_err("cut short");
        assert!(err.to_string().contains("buffer underflow"), "{err}");
        let mut wrong_type = Vec::new();
        prost::encoding::encode_key(DIGESTS_FIELD, WireType::Varint, &mut wrong_type);
        prost::encoding::encode_varint(1, &mut wrong_type);
        assert!(DigestList::decode(wrong_type.as_slice()).is_err());
    }
}
