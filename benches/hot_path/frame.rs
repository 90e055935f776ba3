//! Frame encoding: `ServerFrame::encode`, which the chunk-forwarder calls once per token frame
//! (the socket writers only feed the encoded text to the socket).

use std::hint::black_box;

use criterion::{Criterion, Throughput};
use mangaassist_protocols::frame::FinishReason;
use mangaassist_protocols::turn::Usage;
use mangaassist_protocols::{ServerFrame, TraceId, TurnId};

/// Answer prose, to cut tokens from; one quote and one line break, as answers have.
const PROSE: &str = "Frieren: Beyond Journey's End follows an elf mage who outlives the hero's \
party she travelled with, and sets out again to understand the people she lost. It runs 13 \
volumes so far, is gentle rather than action-heavy, and the art is quiet and lovely. If you \
liked \"Mushishi\" you will probably enjoy it too.\nAnother option is Witch Hat Atelier, a \
fantasy about a girl who learns that magic is drawn, not born: 12 volumes, beautiful ink work, \
and a kind, curious heroine. ";

/// A token frame of turn `t1` at seq 7 carrying `text`.
fn token(text: String) -> ServerFrame {
    ServerFrame::Token {
        turn_id: TurnId::parse("t1").expect("turn id"),
        seq: 7,
        text,
    }
}

/// `coalesced_1KiB` is the frame a slow client gets when the forwarder merges tokens; the
/// default `stream.coalesce_max_bytes` allows up to 16 KiB.
pub fn bench(c: &mut Criterion) {
    let mut coalesced = String::new();
    while coalesced.len() < 1024 {
        coalesced.push_str(PROSE);
    }
    let cut = (0..=1024)
        .rev()
        .find(|&i| coalesced.is_char_boundary(i))
        .unwrap_or(0);
    coalesced.truncate(cut);
    let done = ServerFrame::Done {
        turn_id: TurnId::parse("t1").expect("turn id"),
        seq: 212,
        usage: Usage {
            input_tokens: 1_834,
            output_tokens: 211,
        },
        finish_reason: FinishReason::Stop,
        trace_id: TraceId::new_xray(1_764_576_000),
    };
    let cases = [
        ("token_8B", token(" Frieren".to_owned())),
        ("token_1KiB", token(coalesced)),
        ("done", done),
    ];
    let mut group = c.benchmark_group("frame_encode");
    for (name, frame) in &cases {
        group.throughput(Throughput::Bytes(frame.encode().len() as u64));
        group.bench_function(*name, |b| b.iter(|| black_box(frame).encode()));
    }
    group.finish();
}
