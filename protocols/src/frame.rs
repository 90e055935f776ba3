//! Wire protocol v1: one JSON object per text frame (WebSocket) or per line (TCP).
//!
//! The socket layer hands this module whole frames as `&str`; [`decode_client`] turns one into a
//! typed [`ClientFrame`] or a [`FrameError`] whose [`ErrorCode`] is what the client sees. Server
//! frames are a typed enum too and encode with [`ServerFrame::encode`]. docs/protocol.md is the
//! prose version of this file.

use serde::{Deserialize, Serialize};

use crate::ids::{SessionId, TraceId, TurnId, UserId};
use crate::turn::{Intent, ProductCard, RetrievalMode, Usage};

/// The protocol version this build speaks; `hello.protocol` must equal it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default largest client frame, in bytes. Larger frames get `too_large`.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

/// A frame sent by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// Opens (or resumes) a session; must be the first frame on a connection.
    Hello(Hello),
    /// Starts a turn.
    UserMessage(UserMessage),
    /// Stops the named turn's generation.
    Cancel {
        /// The turn to stop.
        turn_id: TurnId,
    },
    /// Asks for a `pong`.
    Ping,
    /// Erases every stored trace of the session's user (the subject of its `hello` token):
    /// answered with `erased`, after which the user's sessions, this one included, are ended.
    EraseUser,
}

/// The `hello` frame.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Hello {
    /// Protocol version the client speaks.
    pub protocol: u32,
    /// A session to resume; absent for a new one.
    #[serde(default)]
    pub session_id: Option<SessionId>,
    /// Who the user is, signed by the server's secret: the connection's only credential.
    /// Absent is refused with `unauthorized` (not a bad request), so the client learns why.
    #[serde(default)]
    pub token: Option<BearerToken>,
    /// An `X-Amzn-Trace-Id` value (`Root=1-...;Parent=...;Sampled=1`) whose trace every turn
    /// of the connection joins: the TCP front's stand-in for the WebSocket upgrade's header.
    #[serde(default)]
    pub trace_header: Option<String>,
    /// Where a reconnecting client left a turn: the frames of that turn after `seq` are sent
    /// again from the session's replay buffer, then the rest of the stream. Needs `session_id`.
    #[serde(default)]
    pub resume_from: Option<ResumeFrom>,
}

/// `hello.resume_from`: the last frame of a turn the client received.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ResumeFrom {
    /// The turn that was streaming when the connection dropped.
    pub turn_id: TurnId,
    /// The `seq` of the last frame of that turn the client received; absent when it received
    /// none (every frame of the turn is sent).
    #[serde(default)]
    pub seq: Option<u64>,
}

impl ResumeFrom {
    /// Whether the client still needs the frame numbered `seq`.
    pub fn wants(&self, seq: u64) -> bool {
        self.seq.is_none_or(|last| seq > last)
    }
}

/// A bearer token as the client sent it. Its `Debug` never shows it, so a logged frame cannot
/// leak a credential.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct BearerToken(String);

impl BearerToken {
    /// Wraps a token (a client building its `hello`).
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token, for the one place that checks it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BearerToken(<{} bytes>)", self.0.len())
    }
}

/// The `user_message` frame.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UserMessage {
    /// Client-chosen id that every frame of the answer carries.
    pub turn_id: TurnId,
    /// What the user typed; never empty after decoding.
    pub text: String,
}

#[derive(Deserialize)]
struct CancelBody {
    turn_id: TurnId,
}

/// Stable error codes. The string form (snake_case) is part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not an object, a missing or ill-typed field.
    BadRequest,
    /// A `type` this protocol version does not know.
    UnknownType,
    /// The frame is larger than the configured limit.
    TooLarge,
    /// `user_message.text` was empty or only white space.
    EmptyText,
    /// A `user_message` arrived while another turn is still streaming.
    Busy,
    /// A frame other than `hello` arrived before `hello`, or a second `hello`.
    HelloRequired,
    /// `hello.protocol` is not a version this server speaks.
    UnsupportedProtocol,
    /// The session named in `hello` is open on another connection.
    SessionInUse,
    /// `cancel` named a turn that is not streaming.
    UnknownTurn,
    /// A worker failed while serving the turn; the session goes on.
    Internal,
    /// A stage did not answer in time; the session goes on.
    Timeout,
    /// The runtime is starting or stopping.
    Unavailable,
    /// The client did not read fast enough; the connection closes.
    SlowConsumer,
    /// The server is shutting down; the connection closes.
    ServerShutdown,
    /// No frame went either way for the idle timeout; the connection closes.
    IdleTimeout,
    /// The session's user was erased (by themselves or an operator); the connection closes.
    SessionEnded,
    /// `hello` carried no token, or one that is forged, expired or malformed; the connection
    /// closes.
    Unauthorized,
    /// `hello` named a session that belongs to another user; the connection stays open.
    Forbidden,
    /// The connection sent more frames a second than `server.max_messages_per_sec`; the frame
    /// was dropped and the connection stays open.
    RateLimited,
    /// The server or the user holds as many sessions as it may (`server.max_sessions`,
    /// `server.max_sessions_per_user`); the `hello` is refused, not queued.
    Overloaded,
    /// `user_message.text` is longer than `server.max_turn_chars`.
    TextTooLong,
    /// `hello.resume_from` named a turn whose missed frames are no longer held (the replay
    /// buffer overflowed, the resume window passed, or the turn streamed on another server);
    /// the session itself is resumed, and its transcript holds every committed turn.
    ResumeExpired,
}

impl ErrorCode {
    /// Every code, for exhaustive metric labels.
    pub const ALL: [ErrorCode; 22] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownType,
        ErrorCode::TooLarge,
        ErrorCode::EmptyText,
        ErrorCode::Busy,
        ErrorCode::HelloRequired,
        ErrorCode::UnsupportedProtocol,
        ErrorCode::SessionInUse,
        ErrorCode::UnknownTurn,
        ErrorCode::Internal,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::SlowConsumer,
        ErrorCode::ServerShutdown,
        ErrorCode::IdleTimeout,
        ErrorCode::SessionEnded,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::Overloaded,
        ErrorCode::TextTooLong,
        ErrorCode::ResumeExpired,
    ];

    /// The wire (and metric label) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::EmptyText => "empty_text",
            ErrorCode::Busy => "busy",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::UnsupportedProtocol => "unsupported_protocol",
            ErrorCode::SessionInUse => "session_in_use",
            ErrorCode::UnknownTurn => "unknown_turn",
            ErrorCode::Internal => "internal",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::ServerShutdown => "server_shutdown",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::SessionEnded => "session_ended",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::TextTooLong => "text_too_long",
            ErrorCode::ResumeExpired => "resume_expired",
        }
    }
}

/// Why a client frame was refused. Each variant maps to one [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Frame longer than the limit.
    #[error("frame is {len} bytes; the limit is {max}")]
    TooLarge {
        /// Bytes received (or a lower bound when the transport stopped counting).
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// Not parseable as JSON.
    #[error("frame is not valid JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object with a string `type`.
    #[error("frame must be a JSON object with a string field `type`")]
    NoType,
    /// A `type` this version does not know.
    #[error("unknown frame type `{0}`; expected hello, user_message, cancel, ping or erase_user")]
    UnknownType(String),
    /// A known type with a missing or ill-typed field.
    #[error("invalid `{frame_type}` frame: {detail}")]
    Invalid {
        /// The frame's `type`.
        frame_type: &'static str,
        /// serde's account, which names the field.
        detail: String,
    },
    /// `user_message` whose text is empty or blank.
    #[error("`user_message.text` is empty")]
    EmptyText {
        /// The turn the message named.
        turn_id: TurnId,
    },
}

impl FrameError {
    /// The stable code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::TooLarge,
            FrameError::NotJson(_) | FrameError::NoType | FrameError::Invalid { .. } => {
                ErrorCode::BadRequest
            }
            FrameError::UnknownType(_) => ErrorCode::UnknownType,
            FrameError::EmptyText { .. } => ErrorCode::EmptyText,
        }
    }

    /// The turn the bad frame named, when it named one.
    pub fn turn_id(&self) -> Option<&TurnId> {
        match self {
            FrameError::EmptyText { turn_id } => Some(turn_id),
            _ => None,
        }
    }

    /// The `error` frame a client gets for this.
    pub fn to_server_frame(&self) -> ServerFrame {
        ServerFrame::Error(ErrorFrame {
            turn_id: self.turn_id().cloned(),
            seq: None,
            code: self.code(),
            message: self.to_string(),
        })
    }
}

/// Decodes one client frame, enforcing `max_bytes`.
pub fn decode_client(input: &str, max_bytes: usize) -> Result<ClientFrame, FrameError> {
    if input.len() > max_bytes {
        return Err(FrameError::TooLarge {
            len: input.len(),
            max: max_bytes,
        });
    }
    let value: serde_json::Value =
        serde_json::from_str(input).map_err(|e| FrameError::NotJson(e.to_string()))?;
    let ty = value
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or(FrameError::NoType)?;
    fn body<T: serde::de::DeserializeOwned>(
        frame_type: &'static str,
        value: serde_json::Value,
    ) -> Result<T, FrameError> {
        serde_json::from_value(value).map_err(|e| FrameError::Invalid {
            frame_type,
            detail: e.to_string(),
        })
    }
    match ty {
        "hello" => Ok(ClientFrame::Hello(body("hello", value)?)),
        "user_message" => {
            let msg: UserMessage = body("user_message", value)?;
            if msg.text.trim().is_empty() {
                return Err(FrameError::EmptyText {
                    turn_id: msg.turn_id,
                });
            }
            Ok(ClientFrame::UserMessage(msg))
        }
        "cancel" => {
            let c: CancelBody = body("cancel", value)?;
            Ok(ClientFrame::Cancel { turn_id: c.turn_id })
        }
        "ping" => Ok(ClientFrame::Ping),
        "erase_user" => Ok(ClientFrame::EraseUser),
        other => Err(FrameError::UnknownType(other.chars().take(64).collect())),
    }
}

/// Which model answers on this session, shown so a simulated model is never mistaken for a real one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Backend name: `simulated`, `bedrock`, `openai`.
    pub backend: String,
    /// The pinned model id.
    pub model_id: String,
    /// True when the answers come from the built-in simulated model.
    pub simulated: bool,
}

/// The `error` frame body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// The turn it ends, if it ends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_id: Option<TurnId>,
    /// Position within the turn when it ends one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable account naming what was wrong.
    pub message: String,
}

/// Why a turn's stream ended with `done`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model finished its answer.
    Stop,
    /// The client sent `cancel`; usage counts what was generated.
    Cancelled,
}

/// A frame sent by the server. Every frame of a turn carries `seq`, starting at 0 with
/// `turn_started` and rising by one per frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Answer to `hello`.
    Welcome {
        /// The session now bound to this connection.
        session_id: SessionId,
        /// Protocol version spoken.
        protocol: u32,
        /// The answering model.
        model: ModelInfo,
        /// Turns already in the session's transcript (non-zero on resume).
        resumed_turns: u32,
    },
    /// A turn was accepted, classified and its grounding retrieved: sent just before the
    /// answer starts.
    TurnStarted {
        /// The turn.
        turn_id: TurnId,
        /// Always 0.
        seq: u64,
        /// The classified intent.
        intent: Intent,
        /// X-Ray-format trace id of the turn.
        trace_id: TraceId,
        /// `grounded`, `fallback` (nothing usable found: the answer carries a caveat) or
        /// `skipped` (the intent needs no search).
        #[serde(default)]
        retrieval_mode: RetrievalMode,
    },
    /// A piece of the answer.
    Token {
        /// The turn.
        turn_id: TurnId,
        /// Frame position in the turn.
        seq: u64,
        /// Answer text to append.
        text: String,
    },
    /// Extra structured content after the tokens.
    Append {
        /// The turn.
        turn_id: TurnId,
        /// Frame position in the turn.
        seq: u64,
        /// What `items` hold; `product_cards` in v1.
        kind: AppendKind,
        /// The items.
        items: Vec<ProductCard>,
    },
    /// The turn ended normally (or was cancelled).
    Done {
        /// The turn.
        turn_id: TurnId,
        /// Frame position in the turn (the last).
        seq: u64,
        /// Tokens in and out.
        usage: Usage,
        /// Why it ended.
        finish_reason: FinishReason,
        /// The turn's trace, as in its `turn_started`.
        trace_id: TraceId,
    },
    /// Something was refused or failed.
    Error(ErrorFrame),
    /// Sent while a turn waits for its first token, so idle timeouts do not fire.
    Keepalive,
    /// Answer to `ping`.
    Pong,
    /// Answer to `erase_user`: what was deleted (counts only).
    Erased {
        /// Whose data.
        user_id: UserId,
        /// Sessions whose transcripts were deleted.
        sessions: u64,
        /// Turn records deleted.
        turns: u64,
        /// Open sessions of the user that were ended (this one included).
        sessions_ended: u64,
    },
}

/// What an `append` frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppendKind {
    /// Product cards for the series the answer mentions.
    ProductCards,
}

impl ServerFrame {
    /// An `error` frame.
    pub fn error(
        turn_id: Option<TurnId>,
        seq: Option<u64>,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Self {
        ServerFrame::Error(ErrorFrame {
            turn_id,
            seq,
            code,
            message: message.into(),
        })
    }

    /// Encodes to one JSON text frame (no trailing newline).
    pub fn encode(&self) -> String {
        // Serialization of these types cannot fail: no maps with non-string keys, no floats
        // that could be NaN in a way serde_json refuses (it writes null).
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                r#"{{"type":"error","code":"internal","message":"encode failed: {}"}}"#,
                e.to_string().replace('"', "'")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Result<ClientFrame, FrameError> {
        decode_client(s, DEFAULT_MAX_FRAME_BYTES)
    }

    #[test]
    fn decodes_every_client_frame() {
        assert_eq!(
            dec(r#"{"type":"hello","protocol":1}"#),
            Ok(ClientFrame::Hello(Hello {
                protocol: 1,
                session_id: None,
                token: None,
                trace_header: None,
                resume_from: None,
            }))
        );
        let Ok(ClientFrame::Hello(h)) = dec(
            r#"{"type":"hello","protocol":1,"session_id":"s1","resume_from":{"turn_id":"t7","seq":4}}"#,
        ) else {
            panic!("not a hello")
        };
        let from = h.resume_from.expect("resume_from decoded");
        assert_eq!((from.turn_id.as_str(), from.seq), ("t7", Some(4)));
        assert!(!from.wants(4) && from.wants(5));
        let Ok(ClientFrame::Hello(h)) =
            dec(r#"{"type":"hello","protocol":1,"resume_from":{"turn_id":"t7"}}"#)
        else {
            panic!("not a hello")
        };
        assert!(h.resume_from.unwrap().wants(0), "no seq: every frame");
        assert_eq!(
            dec(r#"{"type":"hello","protocol":1,"resume_from":{"seq":3}}"#).map_err(|e| e.code()),
            Err(ErrorCode::BadRequest)
        );
        let Ok(ClientFrame::Hello(h)) = dec(r#"{"type":"hello","protocol":1,"token":"abc.def"}"#)
        else {
            panic!("not a hello")
        };
        assert_eq!(h.token.as_ref().map(BearerToken::expose), Some("abc.def"));
        assert!(
            !format!("{h:?}").contains("abc.def"),
            "a logged hello shows no token: {h:?}"
        );
        let Ok(ClientFrame::UserMessage(m)) =
            dec(r#"{"type":"user_message","turn_id":"t1","text":"hi"}"#)
        else {
            panic!("not a user_message")
        };
        assert_eq!(m.turn_id.as_str(), "t1");
        assert_eq!(m.text, "hi");
        assert!(matches!(
            dec(r#"{"type":"cancel","turn_id":"t1"}"#),
            Ok(ClientFrame::Cancel { .. })
        ));
        assert_eq!(dec(r#"{"type":"ping"}"#), Ok(ClientFrame::Ping));
    }

    #[test]
    fn bad_input_maps_to_stable_codes() {
        assert_eq!(
            dec("not json").map_err(|e| e.code()),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(
            dec("[1,2]").map_err(|e| e.code()),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(
            dec(r#"{"type":"dance"}"#).map_err(|e| e.code()),
            Err(ErrorCode::UnknownType)
        );
        let missing = dec(r#"{"type":"user_message","turn_id":"t1"}"#).unwrap_err();
        assert_eq!(missing.code(), ErrorCode::BadRequest);
        assert!(missing.to_string().contains("text"), "{missing}");
        let empty = dec(r#"{"type":"user_message","turn_id":"t9","text":"  "}"#).unwrap_err();
        assert_eq!(empty.code(), ErrorCode::EmptyText);
        assert_eq!(empty.turn_id().map(|t| t.as_str()), Some("t9"));
        let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(70_000));
        assert_eq!(dec(&big).map_err(|e| e.code()), Err(ErrorCode::TooLarge));
        let bad_id = dec(r#"{"type":"cancel","turn_id":"has space"}"#).unwrap_err();
        assert_eq!(bad_id.code(), ErrorCode::BadRequest);
    }

    #[test]
    fn server_frames_round_trip() {
        let turn = TurnId::parse("t1").unwrap();
        let frames = [
            ServerFrame::Token {
                turn_id: turn.clone(),
                seq: 3,
                text: "He said \"hi\"\n".into(),
            },
            ServerFrame::Done {
                turn_id: turn.clone(),
                seq: 4,
                usage: Usage {
                    input_tokens: 10,
                    output_tokens: 2,
                },
                finish_reason: FinishReason::Stop,
                trace_id: TraceId::new_xray(1_764_576_000),
            },
            ServerFrame::error(Some(turn), None, ErrorCode::Busy, "busy"),
            ServerFrame::Pong,
        ];
        for f in frames {
            let text = f.encode();
            assert!(!text.contains('\n'), "one line per frame: {text}");
            let back: ServerFrame = serde_json::from_str(&text).unwrap();
            assert_eq!(back, f);
        }
        assert_eq!(
            ServerFrame::Pong.encode(),
            r#"{"type":"pong"}"#,
            "unit variants are bare objects"
        );
    }

    #[test]
    fn error_codes_spell_like_serde() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
