//! The codec of `tally.v1`: prost's encoding, with two changes to its
//! decoding, for messages that come from the network:
//!
//! - a message that does not decode (truncated, a wrong wire type, a
//!   string that is not UTF-8) is the caller's fault: `INVALID_ARGUMENT`,
//!   not prost's `INTERNAL`;
//! - a message may be checked on the wire before anything of it is
//!   allocated ([`WireCheck`]): a `HeartbeatRequest` with more interface
//!   entries than the contract allows is refused before they are decoded
//!   (an empty entry is 2 bytes on the wire and about 160 in memory).

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{Codec as TonicCodec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use crate::{limits, v1::HeartbeatReply, v1::HeartbeatRequest};

/// What may be checked of a message's encoding before it is decoded.
pub trait WireCheck {
    /// Refuses an encoding whose decoding would cost more than a valid
    /// message can; the reason, for people.
    fn check_wire(_encoded: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

impl WireCheck for HeartbeatReply {}

impl WireCheck for HeartbeatRequest {
    fn check_wire(encoded: &[u8]) -> Result<(), String> {
        let entries = count_field(encoded, INTERFACES_FIELD)?;
        if entries > limits::MAX_INTERFACES {
            return Err(format!(
                "{entries} interface entries (at most {}): not decoded",
                limits::MAX_INTERFACES
            ));
        }
        Ok(())
    }
}

/// `HeartbeatRequest.interfaces`.
const INTERFACES_FIELD: u64 = 7;

/// The codec named in the generated client and server.
#[derive(Debug, Clone)]
pub struct Codec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> TonicCodec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + WireCheck + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder {
            inner: ProstCodec::<T, U>::default().decoder(),
        }
    }
}

/// prost's decoder, behind [`WireCheck`], answering `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct CheckedDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: Message + Default + WireCheck> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use prost::bytes::Buf as _;
        // tonic hands over one contiguous buffer holding the whole message.
        let whole = buf.chunk().len() == buf.remaining();
        if whole {
            U::check_wire(buf.chunk()).map_err(|reason| {
                Status::invalid_argument(format!("invalid heartbeat: {reason}"))
            })?;
        }
        self.inner.decode(buf).map_err(|status| {
            Status::invalid_argument(format!(
                "the message does not decode as tally.v1: {}",
                status.message()
            ))
        })
    }

    fn buffer_settings(&self) -> tonic::codec::BufferSettings {
        self.inner.buffer_settings()
    }
}

/// How often the top-level field `field` occurs in `encoded` (a protobuf
/// message), walking the wire format without decoding anything; an error
/// for an encoding that is not well formed.
fn count_field(mut encoded: &[u8], field: u64) -> Result<usize, String> {
    let broken = || "malformed protobuf wire format".to_owned();
    let mut count = 0usize;
    while !encoded.is_empty() {
        let key = varint(&mut encoded).ok_or_else(broken)?;
        let (number, wire_type) = (key >> 3, key & 7);
        let skip = match wire_type {
            0 => {
                varint(&mut encoded).ok_or_else(broken)?;
                0
            }
            1 => 8,
            2 => usize::try_from(varint(&mut encoded).ok_or_else(broken)?).map_err(|_| broken())?,
            5 => 4,
            _ => return Err(broken()),
        };
        encoded = encoded.get(skip..).ok_or_else(broken)?;
        if number == field {
            count += 1;
        }
    }
    Ok(count)
}

/// Takes one varint off the front of `bytes`.
fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::InterfaceCounters;

    fn encoded(entries: usize) -> Vec<u8> {
        HeartbeatRequest {
            boot_id: "b".into(),
            epoch: "e".into(),
            sequence: 300,
            interfaces: vec![InterfaceCounters::default(); entries],
            hostname: "h".into(),
            ..HeartbeatRequest::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn entries_are_counted_on_the_wire() {
        assert_eq!(count_field(&encoded(0), INTERFACES_FIELD), Ok(0));
        assert_eq!(count_field(&encoded(3), INTERFACES_FIELD), Ok(3));
        assert!(HeartbeatRequest::check_wire(&encoded(limits::MAX_INTERFACES)).is_ok());
        let too_many = HeartbeatRequest::check_wire(&encoded(limits::MAX_INTERFACES + 1));
        assert_eq!(
            too_many,
            Err("16386 interface entries (at most 16385): not decoded".to_owned())
        );
        // Anything goes for a reply.
        assert!(HeartbeatReply::check_wire(&encoded(limits::MAX_INTERFACES + 1)).is_ok());
    }

    #[test]
    fn a_malformed_encoding_is_refused() {
        let mut truncated = encoded(2);
        truncated.pop();
        assert!(count_field(&truncated, INTERFACES_FIELD).is_err());
        assert!(
            count_field(&[0x0f], INTERFACES_FIELD).is_err(),
            "wire type 7"
        );
        assert!(
            count_field(&[0x80; 11], INTERFACES_FIELD).is_err(),
            "endless varint"
        );
    }

    #[test]
    fn varints_are_read_like_protobuf_does() {
        let mut bytes: &[u8] = &[0xac, 0x02, 0x01];
        assert_eq!(varint(&mut bytes), Some(300));
        assert_eq!(bytes, [0x01]);
    }
}
