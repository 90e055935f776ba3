//! The raw TCP front: the same frames as `/ws`, one JSON object per line (`\n`-terminated).
//!
//! Lines longer than the frame limit get a `too_large` error frame; the rest of that line is
//! skipped and the connection goes on with the next one. A line that is not UTF-8 gets
//! `bad_request` and is skipped the same way.

use bytes::BytesMut;
use mangaassist_actors::outbound::CloseReason;
use mangaassist_protocols::metrics::{DisconnectReason, Transport};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpListener;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, LinesCodec, LinesCodecError};

use super::FrontState;
use super::conn::{Connection, FrameSink, close_frame, write_loop};

/// Accepts TCP connections until shutdown.
pub async fn serve(listener: TcpListener, state: FrontState) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = state.draining.cancelled() => return,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                let st = state.clone();
                state.tasks.spawn(handle(stream, st));
            }
            Err(e) => {
                tracing::warn!(error = %e, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

struct TcpSink(BufWriter<OwnedWriteHalf>);

impl FrameSink<std::io::Error> for TcpSink {
    async fn feed(&mut self, text: String) -> Result<(), std::io::Error> {
        self.0.write_all(text.as_bytes()).await?;
        self.0.write_all(b"\n").await
    }

    async fn flush(&mut self) -> Result<(), std::io::Error> {
        self.0.flush().await
    }
}

async fn handle(stream: tokio::net::TcpStream, state: FrontState) {
    let (mut read_half, write_half) = stream.into_split();
    let (mut conn, mut rx) = Connection::open(state.clone(), Transport::Tcp);
    let outbound = conn.outbound().clone();
    let max = state.limits.max_frame_bytes;

    let writer = async {
        let sink = TcpSink(BufWriter::with_capacity(4 * 1024, write_half));
        let Ok(mut sink) = write_loop(&mut rx, &outbound, &state, sink).await else {
            outbound.closing().cancel();
            return None;
        };
        if let Some(reason) = outbound.close_reason() {
            let bye = async {
                if let Some(frame) = close_frame(reason) {
                    let _ = sink.feed(frame.encode()).await;
                }
                let _ = sink.flush().await;
                let _ = sink.0.shutdown().await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
        }
        Some(sink)
    };

    let reader = async {
        let mut codec = LinesCodec::new_with_max_length(max);
        let mut buf = BytesMut::with_capacity(1024);
        let ended = 'conn: loop {
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(line)) => conn.on_text(&line, Instant::now()).await,
                    Ok(None) => break,
                    Err(LinesCodecError::MaxLineLengthExceeded) => conn.on_too_large(max + 1).await,
                    // The codec has already consumed the offending line: refuse it, go on.
                    Err(LinesCodecError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                        conn.on_not_utf8().await
                    }
                    Err(LinesCodecError::Io(_)) => break 'conn DisconnectReason::Error,
                }
            }
            let read = tokio::select! {
                r = read_half.read_buf(&mut buf) => r,
                () = outbound.closing().cancelled() => break DisconnectReason::Error,
                () = state.draining.cancelled() => {
                    super::conn::drain(&outbound, &state).await;
                    break DisconnectReason::ServerShutdown;
                }
                () = outbound.idle_for(state.limits.idle_timeout) => {
                    outbound.close(CloseReason::IdleTimeout);
                    break DisconnectReason::IdleTimeout;
                }
            };
            match read {
                Ok(0) => {
                    // A last line without its newline still counts.
                    if let Ok(Some(line)) = codec.decode_eof(&mut buf) {
                        conn.on_text(&line, Instant::now()).await;
                    }
                    break DisconnectReason::ClientClosed;
                }
                Err(_) => break DisconnectReason::Error,
                Ok(_) => outbound.touch(Instant::now()),
            }
        };
        conn.close(ended).await;
    };

    // Dropping the write half ends the client's stream: only do it once the reader has closed
    // the session (its last turn recorded, the session free), so a client that sees the socket
    // close can resume the session at once.
    let ((), sink) = tokio::join!(reader, writer);
    drop(sink);
}
