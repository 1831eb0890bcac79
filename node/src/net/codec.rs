//! The `/credence/sync/1` request-response codec: a 4-byte big-endian length,
//! then the prost message. Lengths are checked before anything is read or
//! allocated.

use std::io;

use credence_proto::v1 as pb;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use prost::Message;

/// The sync protocol's name.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/credence/sync/1");
/// Largest sync request: a cursor and a limit.
pub const SYNC_REQUEST_MAX_BYTES: usize = 1024;
/// Largest sync response; pages are cut to fit well inside it.
pub const SYNC_RESPONSE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// The vote protocol's name.
pub const VOTE_PROTOCOL: StreamProtocol = StreamProtocol::new("/credence/vote/1");
/// Largest vote request: a batch of claims with the attestations they present.
pub const VOTE_REQUEST_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Largest vote answer: one signed vote or a refusal.
pub const VOTE_RESPONSE_MAX_BYTES: usize = 8 * 1024;

/// Length-prefixed prost frames for one request and one response type, with
/// a cap on each checked before anything is allocated.
#[derive(Debug)]
pub struct ProstCodec<Req, Resp> {
    request_max: usize,
    response_max: usize,
    _types: std::marker::PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> Clone for ProstCodec<Req, Resp> {
    fn clone(&self) -> Self {
        ProstCodec {
            request_max: self.request_max,
            response_max: self.response_max,
            _types: std::marker::PhantomData,
        }
    }
}

impl<Req, Resp> ProstCodec<Req, Resp> {
    pub fn new(request_max: usize, response_max: usize) -> Self {
        ProstCodec {
            request_max,
            response_max,
            _types: std::marker::PhantomData,
        }
    }
}

/// The sync codec.
pub type SyncCodec = ProstCodec<pb::SyncRequest, pb::SyncResponse>;
/// The vote codec.
pub type VoteCodec = ProstCodec<pb::VoteRequest, pb::VoteResponse>;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {max}-byte cap"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

fn invalid(e: prost::DecodeError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<Req, Resp> libp2p::request_response::Codec for ProstCodec<Req, Resp>
where
    Req: Message + Default + Send + 'static,
    Resp: Message + Default + Send + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = read_frame(io, self.request_max).await?;
        Req::decode(frame.as_slice()).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = read_frame(io, self.response_max).await?;
        Resp::decode(frame.as_slice()).map_err(invalid)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req.encode_to_vec()).await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, res: Resp) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res.encode_to_vec()).await
    }
}
