//! The frame decoder on random and mangled bytes: it returns a frame, "need more", or an error,
//! never panics, and never accepts a length above its limit.

use bytes::Bytes;
use proptest::prelude::*;
use spoolfs_peer::protocol::{
    self, DataReply, ErrorCode, ErrorReply, FRAME_HEADER_LEN, Frame, FrameError, Hello, ReadRequest,
};

fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u16>(), any::<u32>(), any::<[u8; 32]>()).prop_map(|(version, max_read, nonce)| {
            Frame::Hello(Hello {
                version,
                max_read,
                nonce,
            })
        }),
        (
            any::<u16>(),
            any::<u64>(),
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<[u8; 32]>()
        )
            .prop_map(|(version, request_id, volume, slice, offset, len, mac)| {
                Frame::Read(ReadRequest {
                    version,
                    request_id,
                    volume,
                    slice,
                    offset,
                    len,
                    mac,
                })
            }),
        (
            any::<u64>(),
            any::<u32>(),
            any::<[u8; 32]>(),
            proptest::collection::vec(any::<u8>(), 0..2000)
        )
            .prop_map(|(request_id, crc, mac, data)| {
                Frame::Data(DataReply {
                    request_id,
                    crc,
                    mac,
                    data: Bytes::from(data),
                })
            }),
        (any::<u64>(), 1u16..12, any::<[u8; 32]>(), "[a-z é]{0,300}").prop_map(
            |(request_id, code, mac, message)| {
                Frame::Error(ErrorReply {
                    request_id,
                    code: ErrorCode::from_wire(code),
                    mac,
                    message,
                })
            }
        ),
    ]
}

/// Decodes `bytes` and checks what any answer must satisfy.
fn decode_checked(bytes: &[u8], max_len: u32) {
    match protocol::decode(bytes, max_len) {
        Ok(Some((frame, used))) => {
            assert!(used <= bytes.len());
            assert!(used - FRAME_HEADER_LEN <= max_len as usize);
            // What was accepted is exactly what encoding gives back.
            assert_eq!(protocol::encode(&frame), bytes[..used].to_vec());
        }
        Ok(None) => assert!(
            bytes.len() < FRAME_HEADER_LEN
                || (u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize) + 4 > bytes.len()
        ),
        Err(_) => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                max_len in 0u32..5000) {
        decode_checked(&bytes, max_len);
    }

    /// Random bodies behind a plausible header, so the body decoders see most of the inputs.
    #[test]
    fn random_bodies_never_panic(kind in 0u8..6, body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut bytes = ((body.len() + 1) as u32).to_le_bytes().to_vec();
        bytes.push(kind);
        bytes.extend_from_slice(&body);
        decode_checked(&bytes, 4096);
    }

    #[test]
    fn frames_round_trip(frame in any_frame()) {
        let bytes = protocol::encode(&frame);
        let (back, used) = protocol::decode(&bytes, 1 << 20).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back, frame);
    }

    #[test]
    fn truncated_frames_ask_for_more(frame in any_frame(), cut in any::<prop::sample::Index>()) {
        let bytes = protocol::encode(&frame);
        let cut = cut.index(bytes.len());
        prop_assert_eq!(protocol::decode(&bytes[..cut], 1 << 20), Ok(None));
    }

    #[test]
    fn mangled_frames_never_panic(frame in any_frame(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut bytes = protocol::encode(&frame);
        for (at, value) in flips {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        decode_checked(&bytes, 1 << 20);
    }

    #[test]
    fn a_length_above_the_limit_is_refused_before_the_body(len in 101u32.., kind in 1u8..5) {
        let mut header = len.to_le_bytes().to_vec();
        header.push(kind);
        prop_assert_eq!(
            protocol::decode(&header, 100),
            Err(FrameError::TooLong { len, max: 100 })
        );
    }
}
