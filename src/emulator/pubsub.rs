//! Pub/Sub's gRPC `google.pubsub.v1.Publisher/Publish` on
//! `pubsub.googleapis.com`, the one call a publisher makes: gRPC framing
//! over HTTP/2 (a 5-byte prefix, then the protobuf in `proto.rs`), the
//! bearer token's principal as the publisher, and the outcome in the
//! `grpc-status` trailer, as Google's front end answers: a trailers-only
//! response for an error, else the message ids, then `grpc-status: 0`.

mod proto;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, request::Parts, HeaderMap, HeaderValue, Response};
use http_body::{Body, Frame};

use super::state::State;
use super::{DataCall, PublishedMessage};

/// The method path of `Publish`.
pub(crate) const PUBLISH: &str = "/google.pubsub.v1.Publisher/Publish";

/// gRPC status codes the emulator answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Code {
    Ok = 0,
    InvalidArgument = 3,
    Unimplemented = 12,
    Unauthenticated = 16,
}

/// A gRPC response body: the frames queued, then the trailers.
pub(crate) struct GrpcBody {
    frames: VecDeque<Frame<Bytes>>,
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.frames.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }
}

fn grpc_response(frames: VecDeque<Frame<Bytes>>) -> Response<GrpcBody> {
    let mut r = Response::new(GrpcBody { frames });
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}

/// A trailers-only response: the status travels in the headers, no body.
fn status(code: Code, message: &str) -> Response<GrpcBody> {
    let mut r = grpc_response(VecDeque::new());
    let h = r.headers_mut();
    h.insert("grpc-status", HeaderValue::from(code as u16));
    if let Ok(v) = HeaderValue::from_str(&grpc_message(message)) {
        h.insert("grpc-message", v);
    }
    r
}

/// `grpc-message` is percent-encoded outside printable ASCII.
fn grpc_message(m: &str) -> String {
    let mut out = String::with_capacity(m.len());
    for b in m.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a request is gRPC (by its content type).
pub(crate) fn is_grpc(parts: &Parts) -> bool {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct == "application/grpc" || ct.starts_with("application/grpc+"))
}

pub(crate) fn handle(
    state: &State,
    parts: &Parts,
    body: &Bytes,
    caller: Option<String>,
) -> Response<GrpcBody> {
    let path = parts.uri.path();
    if path != PUBLISH {
        return status(Code::Unimplemented, &format!("Method not found: {path}"));
    }
    let Some(principal) = caller else {
        state.count("pubsub", "");
        return status(Code::Unauthenticated, "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.");
    };
    state.count("pubsub", &principal);
    let message = match unframe(body) {
        Ok(m) => m,
        Err((code, why)) => return status(code, why),
    };
    let req = match proto::decode_publish_request(message) {
        Ok(r) => r,
        Err(e) => {
            return status(
                Code::InvalidArgument,
                &format!("Invalid PublishRequest: {}", e.0),
            )
        }
    };
    let mut segments = req.topic.split('/');
    let valid = matches!(
        (segments.next(), segments.next(), segments.next(), segments.next(), segments.next()),
        (Some("projects"), Some(p), Some("topics"), Some(t), None) if !p.is_empty() && !t.is_empty()
    );
    if !valid {
        return status(
            Code::InvalidArgument,
            &format!("Invalid [topics] name: ({})", req.topic),
        );
    }
    if req.messages.is_empty() {
        return status(Code::InvalidArgument, "The request contains no messages.");
    }
    let bytes: usize = req.messages.iter().map(|m| m.data.len()).sum();
    let ids: Vec<String> = {
        let mut inner = state.lock();
        let mut ids = Vec::with_capacity(req.messages.len());
        for m in &req.messages {
            inner.serial += 1;
            let id = inner.serial.to_string();
            inner.published.push((
                req.topic.clone(),
                PublishedMessage {
                    message_id: id.clone(),
                    data: Bytes::copy_from_slice(m.data),
                    attributes: m.attributes.clone(),
                    ordering_key: m.ordering_key.clone(),
                    principal: principal.clone(),
                },
            ));
            ids.push(id);
        }
        ids
    };
    state.record(DataCall {
        endpoint: "pubsub.publish",
        principal,
        resource: req.topic.clone(),
        bytes: bytes as u64,
        messages: ids.len() as u64,
        http_version: super::storage::http_version(parts.version),
        upload_type: "",
        boundary: None,
    });
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(Code::Ok as u16));
    grpc_response(VecDeque::from([
        Frame::data(frame(&proto::encode_publish_response(&ids))),
        Frame::trailers(trailers),
    ]))
}

/// The one message of a unary request body.
fn unframe(body: &[u8]) -> Result<&[u8], (Code, &'static str)> {
    let [flag, a, b, c, d, message @ ..] = body else {
        return Err((
            Code::InvalidArgument,
            "The request carries no gRPC message.",
        ));
    };
    if *flag != 0 {
        return Err((
            Code::Unimplemented,
            "The emulator does not accept compressed messages.",
        ));
    }
    let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    if message.len() != len {
        return Err((
            Code::InvalidArgument,
            "The gRPC message length does not match the body.",
        ));
    }
    Ok(message)
}

/// A length-prefixed, uncompressed gRPC message.
fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_frames_are_refused() {
        let f = frame(b"abc");
        assert_eq!(&f[..], &[0, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(unframe(&f), Ok(&b"abc"[..]));
        assert_eq!(unframe(&f[..4]).unwrap_err().0, Code::InvalidArgument);
        assert_eq!(unframe(&f[..7]).unwrap_err().0, Code::InvalidArgument);
        assert_eq!(
            unframe(&[1, 0, 0, 0, 0]).unwrap_err().0,
            Code::Unimplemented
        );
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(grpc_message("a b%c\né"), "a b%25c%0A%C3%A9");
    }
}
