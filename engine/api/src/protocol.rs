//! Framing of the engine programming API on the local Unix socket.
//!
//! Each frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON.
//! The client speaks first with a [`Hello`]; the engine answers with its own. Then each
//! client frame is a [`ClientFrame::Call`] carrying an id chosen by the client, answered
//! by a [`ServerFrame::Reply`] with the same id; the engine also sends
//! [`ServerFrame::Event`] frames at any time. See `docs/engine-protocol.md`.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::{EngineError, EngineEvent, Request, Response};

/// The protocol version this build speaks. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame either side accepts (a snapshot of a full engine fits).
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// What a client asks to be, in its [`Hello`].
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, Default)]
pub enum ClientRole {
    /// Programs the engine and receives its events. Exactly one at a time: the engine
    /// refuses a second one at the handshake, and the first keeps the event stream.
    #[default]
    Program,
    /// Reads `Snapshot` and `Stats` only, receives no events; any number at a time
    /// (monitoring tools, benchmarks, `earshot-engine` tests).
    Observe,
    /// A cluster node's agent (`earshot-node`): an observer that may also send `Fence`
    /// and `Mute`. Receives no events and never takes a programming client's place,
    /// so its frequent short connections (a vouch every 50 ms) cannot take the event
    /// stream or drain the backlog meant for a control replica.
    Agent,
}

/// The first frame in each direction.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Hello {
    /// Always "earshot-engine".
    pub protocol: String,
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// Sender's software version (informational).
    pub software: String,
    /// The client's role (client hello only; absent means [`ClientRole::Program`]).
    #[serde(default)]
    pub role: ClientRole,
    /// In the engine's hello: why the connection is refused (the engine closes it
    /// after this frame). Absent when accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl Hello {
    /// This build's hello (a programming client's, or the engine's acceptance).
    pub fn current() -> Hello {
        Hello {
            protocol: "earshot-engine".into(),
            version: PROTOCOL_VERSION,
            software: env!("CARGO_PKG_VERSION").into(),
            role: ClientRole::Program,
            refused: None,
        }
    }

    /// An observing client's hello.
    pub fn observer() -> Hello {
        Hello {
            role: ClientRole::Observe,
            ..Hello::current()
        }
    }

    /// A node agent's hello ([`ClientRole::Agent`]).
    pub fn agent() -> Hello {
        Hello {
            role: ClientRole::Agent,
            ..Hello::current()
        }
    }
}

/// A frame from the control side.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum ClientFrame {
    /// A request with the caller's correlation id.
    Call {
        /// Correlation id, echoed in the reply.
        id: u64,
        /// The request.
        request: Request,
    },
}

/// A frame from the engine.
// A frame is built once per control request or event and serialised at once; a reply
// carrying a leg's whole media configuration is the common case, so boxing it would
// add an allocation to every reply to save stack space in none.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum ServerFrame {
    /// The answer to the call with this id.
    Reply {
        /// Correlation id of the call.
        id: u64,
        /// Its result.
        result: Result<Response, EngineError>,
    },
    /// An event observed on the media.
    Event(EngineEvent),
}

/// Writes one frame.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, value: &T) -> io::Result<()> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let len = u32::try_from(body.len()).map_err(io::Error::other)?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&body)?;
    w.flush()
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame<R: Read, T: for<'de> Deserialize<'de>>(r: &mut R) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LegId, Request};

    #[test]
    fn a_hello_without_role_is_a_programming_client_and_acceptance_omits_refused() {
        let old: Hello =
            serde_json::from_str(r#"{"protocol":"earshot-engine","version":1,"software":"0"}"#)
                .unwrap();
        assert_eq!(old.role, ClientRole::Program);
        assert_eq!(old.refused, None);
        let json = serde_json::to_string(&Hello::current()).unwrap();
        assert!(!json.contains("refused"), "{json}");
    }

    #[test]
    fn frames_round_trip_and_oversize_lengths_are_refused() {
        let mut buf = Vec::new();
        let call = ClientFrame::Call {
            id: 7,
            request: Request::RemoveLeg { leg: LegId(5) },
        };
        write_frame(&mut buf, &call).unwrap();
        let back: ClientFrame = read_frame(&mut buf.as_slice()).unwrap().unwrap();
        assert_eq!(back, call);
        let eof: Option<ClientFrame> = read_frame(&mut [].as_slice()).unwrap();
        assert!(eof.is_none());
        let huge = [0xffu8, 0xff, 0xff, 0xff];
        let err = read_frame::<_, ClientFrame>(&mut huge.as_slice()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
