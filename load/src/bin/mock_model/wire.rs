//! The answer's bytes on both wires, encoded once at startup.
//!
//! Role: turn the configured answer shape ([`Shape`]) into an [`Answer`] per protocol: a `head`
//! sent as soon as a stream opens, one `chunk` sent `--chunks` times, and a `tail` sent after the
//! last chunk. Every stream then sends clones of these same [`Bytes`] (a reference-count bump),
//! so serving a chunk costs no encoding and no allocation.
//!
//! - [`openai`]: server-sent events exactly as vLLM streams `chat.completion.chunk`s: a role-only
//!   chunk (head), a content delta (chunk), then a `finish_reason: "stop"` chunk, a usage chunk
//!   (`choices: []`) and `data: [DONE]` (tail).
//! - [`bedrock`]: Amazon event-stream frames (prelude, headers `:event-type`, `:content-type`,
//!   `:message-type`, JSON payload, CRCs) written by `aws_smithy_eventstream`: `messageStart`
//!   (head), `contentBlockDelta` (chunk), then `contentBlockStop`, `messageStop` (`end_turn`) and
//!   `metadata` (tail).
//!
//! Inputs: the [`Shape`]. Outputs: [`Answer`]s. Failure policy: a frame that cannot be encoded
//! is an error at startup, never at request time.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;
use serde_json::{Value, json};

/// The `model` field of every OpenAI chunk (the bytes are shared, so it cannot echo the request).
pub const OPENAI_MODEL: &str = "mock-model";

/// The `id` field of every OpenAI chunk.
const OPENAI_ID: &str = "chatcmpl-mock";

/// What every answer says, from the command line.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Content chunks per answer (one token each in the usage).
    pub chunks: u32,
    /// The text of every content chunk.
    pub chunk_text: String,
    /// Input tokens reported in the usage.
    pub prompt_tokens: u32,
    /// Bedrock's `metrics.latencyMs`: the scheduled length of an undisturbed answer.
    pub nominal_latency_ms: u64,
}

/// One protocol's answer, pre-encoded.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Sent when the stream opens (before the first-token delay).
    pub head: Bytes,
    /// Sent once per content chunk.
    pub chunk: Bytes,
    /// Sent right after the last chunk; ends the answer.
    pub tail: Bytes,
}

/// One `data:` event.
fn sse(payload: &Value) -> Bytes {
    Bytes::from(format!("data: {payload}\n\n"))
}

/// The OpenAI-compatible answer (vLLM's chunk shapes).
pub fn openai(shape: &Shape) -> Answer {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": OPENAI_ID,
            "object": "chat.completion.chunk",
            "created": created,
            "model": OPENAI_MODEL,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        })
    };
    let completion = u64::from(shape.chunks);
    let prompt = u64::from(shape.prompt_tokens);
    let usage = json!({
        "id": OPENAI_ID,
        "object": "chat.completion.chunk",
        "created": created,
        "model": OPENAI_MODEL,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion
        }
    });
    let mut tail = Vec::new();
    tail.extend_from_slice(&sse(&chunk(json!({}), json!("stop"))));
    tail.extend_from_slice(&sse(&usage));
    tail.extend_from_slice(b"data: [DONE]\n\n");
    Answer {
        head: sse(&chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )),
        chunk: sse(&chunk(json!({"content": shape.chunk_text}), Value::Null)),
        tail: Bytes::from(tail),
    }
}

/// One `:message-type event` frame.
fn event(event_type: &'static str, payload: &Value) -> anyhow::Result<Vec<u8>> {
    let message = Message::new(Bytes::from(payload.to_string()))
        .add_header(Header::new(
            ":event-type",
            HeaderValue::String(event_type.into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ))
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String("event".into()),
        ));
    let mut buf = Vec::new();
    write_message_to(&message, &mut buf)
        .with_context(|| format!("encoding the {event_type} event-stream frame"))?;
    Ok(buf)
}

/// The Bedrock `ConverseStream` answer.
pub fn bedrock(shape: &Shape) -> anyhow::Result<Answer> {
    let input = u64::from(shape.prompt_tokens);
    let output = u64::from(shape.chunks);
    let mut tail = event("contentBlockStop", &json!({"contentBlockIndex": 0}))?;
    tail.extend(event("messageStop", &json!({"stopReason": "end_turn"}))?);
    tail.extend(event(
        "metadata",
        &json!({
            "usage": {"inputTokens": input, "outputTokens": output, "totalTokens": input + output},
            "metrics": {"latencyMs": shape.nominal_latency_ms}
        }),
    )?);
    Ok(Answer {
        head: Bytes::from(event("messageStart", &json!({"role": "assistant"}))?),
        chunk: Bytes::from(event(
            "contentBlockDelta",
            &json!({"contentBlockIndex": 0, "delta": {"text": shape.chunk_text}}),
        )?),
        tail: Bytes::from(tail),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn shape() -> Shape {
        Shape {
            chunks: 3,
            chunk_text: "manga ".to_owned(),
            prompt_tokens: 7,
            nominal_latency_ms: 60,
        }
    }

    #[test]
    fn openai_tail_has_stop_usage_and_done_in_order() {
        let answer = openai(&shape());
        let tail = std::str::from_utf8(&answer.tail).unwrap();
        let events: Vec<&str> = tail.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 3, "{tail}");
        let stop: Value = serde_json::from_str(&events[0]["data: ".len()..]).unwrap();
        assert_eq!(stop["choices"][0]["finish_reason"], "stop");
        let usage: Value = serde_json::from_str(&events[1]["data: ".len()..]).unwrap();
        assert_eq!(usage["usage"]["total_tokens"], 10);
        assert_eq!(events[2], "data: [DONE]");
    }

    #[test]
    fn bedrock_frames_have_valid_preludes() {
        let answer = bedrock(&shape()).unwrap();
        // Each frame starts with its total length (big-endian u32), so the tail splits exactly.
        let mut rest = &answer.tail[..];
        let mut frames = 0;
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            rest = &rest[len..];
            frames += 1;
        }
        assert_eq!(frames, 3);
        let len = u32::from_be_bytes(answer.chunk[..4].try_into().unwrap()) as usize;
        assert_eq!(len, answer.chunk.len());
    }
}
