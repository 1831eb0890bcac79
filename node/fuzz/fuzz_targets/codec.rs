//! The request-response codec of `/credence/sync/1` and `/credence/vote/1`
//! (sync pages, vote requests and answers, claim hand-offs), reading a
//! peer's stream with the caps the node uses.
//!
//! Input: a selector byte (which protocol, request or response), then the
//! bytes the peer sends.
//!
//! Holds: no panic; nothing over the cap is read; a message read, written
//! back and read again is the same message.
#![no_main]

use credence::net::codec::{
    ProstCodec, SYNC_PROTOCOL, SYNC_REQUEST_MAX_BYTES, SYNC_RESPONSE_MAX_BYTES, SyncCodec, VOTE_PROTOCOL,
    VOTE_REQUEST_MAX_BYTES, VOTE_RESPONSE_MAX_BYTES, VoteCodec,
};
use futures::executor::block_on;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;
use libp2p::StreamProtocol;
use libp2p::request_response::Codec;
use prost::Message;

/// Reads one frame as a request (or response), then writes what was read
/// and reads that back.
fn check<Req, Resp>(
    mut codec: ProstCodec<Req, Resp>,
    protocol: &StreamProtocol,
    caps: (usize, usize),
    response: bool,
    stream: &[u8],
) where
    Req: Message + Default + Send + 'static,
    Resp: Message + Default + Send + 'static,
{
    let cap = if response { caps.1 } else { caps.0 };
    let encoded = block_on(async {
        let mut io = Cursor::new(stream);
        if response {
            codec.read_response(protocol, &mut io).await.map(|m| m.encode_to_vec())
        } else {
            codec.read_request(protocol, &mut io).await.map(|m| m.encode_to_vec())
        }
    });
    let Ok(encoded) = encoded else { return };
    let declared = stream
        .first_chunk::<4>()
        .map(|len| u32::from_be_bytes(*len) as usize)
        .unwrap_or(usize::MAX);
    assert!(
        declared <= cap,
        "read a frame of {declared} bytes over the {cap}-byte cap"
    );
    let again = block_on(async {
        let mut out = Cursor::new(Vec::new());
        if response {
            let message = Resp::decode(encoded.as_slice()).map_err(std::io::Error::other)?;
            codec.write_response(protocol, &mut out, message).await?;
            let mut io = Cursor::new(out.into_inner());
            codec.read_response(protocol, &mut io).await.map(|m| m.encode_to_vec())
        } else {
            let message = Req::decode(encoded.as_slice()).map_err(std::io::Error::other)?;
            codec.write_request(protocol, &mut out, message).await?;
            let mut io = Cursor::new(out.into_inner());
            codec.read_request(protocol, &mut io).await.map(|m| m.encode_to_vec())
        }
    });
    match again {
        Ok(again) => assert_eq!(again, encoded, "a message written back reads differently"),
        // Written back, a message may only be refused for the cap.
        Err(e) => assert!(encoded.len() > cap, "a message written back does not read: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((selector, stream)) = data.split_first() else {
        return;
    };
    let response = selector & 1 == 1;
    if selector & 2 == 0 {
        let caps = (SYNC_REQUEST_MAX_BYTES, SYNC_RESPONSE_MAX_BYTES);
        check(SyncCodec::new(caps.0, caps.1), &SYNC_PROTOCOL, caps, response, stream);
    } else {
        let caps = (VOTE_REQUEST_MAX_BYTES, VOTE_RESPONSE_MAX_BYTES);
        check(VoteCodec::new(caps.0, caps.1), &VOTE_PROTOCOL, caps, response, stream);
    }
});
