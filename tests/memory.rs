//! Long conversations over the wire (issue 6): a preference stated in turn 3 still shapes the
//! recommendation of turn 58, across a server restart, while the context stays inside its budget
//! and the metrics show the compression that kept it there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/redis_server.rs"]
mod redis_server;

use common::*;
use redis_server::RedisServer;

use fred::interfaces::ListInterface;
use mangaassist::config::{Config, TranscriptStoreConfig};
use mangaassist::runtime::{BUILTIN_CATALOG, Runtime};
use mangaassist_protocols::catalog::{Series, parse_jsonl};
use mangaassist_protocols::{ServerFrame, SessionId};

/// Turn 3 of the scripted conversation.
const PREFERENCE: &str = "I hate horror manga, and I want series of at most 4 volumes.";
/// Turn 58.
const ASK: &str = "can you recommend some comedy manga?";

/// The other 58 messages: searches, browsing, prices, greetings and navigation, none of which
/// states a preference.
const FILLER: [&str; 14] = [
    "do you have Frieren?",
    "show me more",
    "how much is One Piece volume 3?",
    "thanks",
    "is Chainsaw Man in stock?",
    "what fantasy series do you carry?",
    "yes",
    "tell me about Vinland Saga",
    "do you sell Spy x Family?",
    "ok",
    "what is Dungeon Meshi about?",
    "any sports manga?",
    "who wrote Monster?",
    "hi again",
];

/// The message of turn `i` (0-based) of the 60-turn script.
fn script(i: usize) -> String {
    match i {
        0 => "hi".to_string(),
        1 => "what kind of manga do you have?".to_string(),
        2 => PREFERENCE.to_string(),
        57 => ASK.to_string(),
        _ => FILLER[i % FILLER.len()].to_string(),
    }
}

fn catalog() -> Vec<Series> {
    parse_jsonl(BUILTIN_CATALOG).unwrap()
}

/// Whether the customer of turn 3 would accept this series.
fn acceptable(s: &Series) -> bool {
    s.volumes <= 4 && !s.genres.iter().any(|g| g == "horror")
}

/// The series a recommendation shows: its product cards (the answer names the first of them).
fn recommended(r: &TurnResult) -> Vec<Series> {
    let all = catalog();
    let cards = r.cards().unwrap_or_default();
    assert!(
        !cards.is_empty(),
        "a grounded recommendation: {}",
        r.answer()
    );
    assert!(
        r.answer().contains(&cards[0].title),
        "{} not in {}",
        cards[0].title,
        r.answer()
    );
    cards
        .iter()
        .map(|c| all.iter().find(|s| s.id == c.series_id).unwrap().clone())
        .collect()
}

/// Asserts `r` streamed and everything it recommends is a series the customer of turn 3 would
/// accept; `who` names the recommender in the message.
fn assert_all_acceptable(r: &TurnResult, who: &str) {
    assert_streamed(r);
    for s in recommended(r) {
        assert!(
            acceptable(&s),
            "{who} recommended {} ({} volumes, {:?})",
            s.title,
            s.volumes,
            s.genres
        );
    }
}

/// Waits until `user`'s stored preferences hold the [`PREFERENCE`] (at most 4 volumes): the
/// profile saver runs beside the session, so a preference is durable once this returns.
async fn wait_for_preference(
    store: &dyn mangaassist_protocols::ports::ProfileStore,
    user: &mangaassist_protocols::UserId,
) {
    let deadline = std::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let stored = store.load_user_preferences(user).await.unwrap();
        if stored.is_some_and(|p| p.max_volumes.is_some_and(|n| n.value == 4)) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "never stored");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Points the runtime's transcripts at a Redis server.
fn on_redis(url: String) -> impl Fn(&mut Config) + Clone {
    move |c: &mut Config| {
        c.transcript_store = TranscriptStoreConfig::Redis {
            url: url.clone(),
            key_prefix: "test:transcripts:".to_owned(),
            timeout: std::time::Duration::from_secs(2),
        };
    }
}

async fn restart(server: Server, configure: &impl Fn(&mut Config)) -> Server {
    let Server { runtime, _dir } = server;
    runtime.shutdown().await;
    let mut config = test_config(_dir.path());
    configure(&mut config);
    let runtime = Runtime::start(config).await.unwrap();
    Server { runtime, _dir }
}

#[tokio::test]
async fn a_preference_from_turn_3_shapes_turn_58_across_a_restart() {
    sixty_turns(|_| {}).await;
}

/// The same conversation with transcripts on a real Redis (its own `redis-server`).
#[tokio::test]
async fn the_same_sixty_turns_on_the_redis_transcript_store() {
    let redis = RedisServer::start().await;
    let session = sixty_turns(on_redis(redis.url())).await;
    // The turns are in Redis, under the user's tag: proof the run used it.
    let turns: u64 = redis
        .client()
        .await
        .llen(format!("test:transcripts:{{reader}}:turns:{session}"))
        .await
        .unwrap();
    assert_eq!(turns, 60);
}

async fn sixty_turns(configure: impl Fn(&mut Config) + Clone) -> SessionId {
    let mut server = start_with(configure.clone()).await;
    let mut c = Client::ws(&server).await;
    let session = c.hello().await;
    let mut asked = None;
    for i in 0..60 {
        if i == 30 {
            // Restart the server between turn 30 and 31: the session resumes from its
            // transcript, preferences included.
            if let Client::Ws(mut ws) = c {
                let _ = ws.close(None).await;
            }
            server = restart(server, &configure).await;
            c = Client::ws(&server).await;
            c.send(common::hello_frame(common::READER, Some(&session)))
                .await;
            match c.next().await {
                ServerFrame::Welcome { resumed_turns, .. } => assert_eq!(resumed_turns, 30),
                other => panic!("{other:?}"),
            }
        }
        let r = run_turn(&mut c, &script(i)).await;
        assert_streamed(&r);
        if i == 57 {
            asked = Some(r);
        }
    }
    let asked = asked.unwrap();
    let picks = recommended(&asked);
    for s in &picks {
        assert!(
            acceptable(s),
            "turn 58 recommended {} ({} volumes, {:?}) to a customer who hates horror and wants at most 4 volumes: {}",
            s.title,
            s.volumes,
            s.genres,
            asked.answer()
        );
    }
    // Nor does the text name a series the customer ruled out.
    for s in catalog()
        .iter()
        .filter(|s| !acceptable(s) && s.title.len() >= 8)
    {
        assert!(
            !asked.answer().contains(&s.title),
            "{} named: {}",
            s.title,
            asked.answer()
        );
    }

    let m = metrics_text(&server).await;
    // Counted since the restart: turns 31-60.
    assert_eq!(metric(&m, "context_assemblies_total"), 30.0, "{m}");
    assert!(
        metric(&m, "context_budget_utilization{quantile=\"1\"}") <= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "context_budget_utilization{quantile=\"1\"}") > 0.0,
        "{m}"
    );
    assert!(metric(&m, "turns_summarized_total") > 0.0, "{m}");
    assert!(metric(&m, "turns_dropped_total") > 0.0, "{m}");
    assert_eq!(metric(&m, "compression_event_ratio"), 1.0, "{m}");
    assert_eq!(metric(&m, "context_budget_alarm"), 0.0, "{m}");
    session
}

/// The negative control: the same question from a customer who stated nothing gets long series
/// (most comedies run past 4 volumes), so the check above can fail.
#[tokio::test]
async fn without_the_preference_the_same_question_gets_long_series() {
    let server = start().await;
    let mut c = Client::ws(&server).await;
    c.hello().await;
    let r = run_turn(&mut c, ASK).await;
    assert_streamed(&r);
    let picks = recommended(&r);
    assert!(
        picks.iter().any(|s| !acceptable(s)),
        "the control needs an unacceptable pick: {:?}",
        picks
            .iter()
            .map(|s| (&s.title, s.volumes))
            .collect::<Vec<_>>()
    );
}

/// What a customer said in one session shapes their next one: a new session of the same user
/// starts with their preferences (a different user's does not, the control), and erasing the
/// user forgets them.
async fn preferences_carry_into_the_next_session(configure: impl Fn(&mut Config) + Clone) {
    let server = start_with(configure).await;
    let alice = mangaassist_protocols::UserId::parse("alice").unwrap();
    let open = |user: &'static str| {
        let server = &server;
        async move {
            let mut c = Client::ws(server).await;
            c.send(hello_frame(user, None)).await;
            assert!(matches!(c.next().await, ServerFrame::Welcome { .. }));
            c
        }
    };
    let mut first = open("alice").await;
    assert_streamed(&run_turn(&mut first, PREFERENCE).await);
    wait_for_preference(&*server.runtime.pipeline.profiles, &alice).await;
    drop(first);

    let mut second = open("alice").await;
    assert_all_acceptable(&run_turn(&mut second, ASK).await, "alice's new session");
    // The control: bob said nothing, and gets long series.
    let mut bob = open("bob").await;
    let r = run_turn(&mut bob, ASK).await;
    assert!(recommended(&r).iter().any(|s| !acceptable(s)));

    // Erased, alice starts from nothing again.
    drop(second);
    let (status, body) = http(&server, "POST", "/admin/erase", r#"{"user_id":"alice"}"#).await;
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["transcripts"]["user_preferences"], 1, "{report}");
    let mut third = open("alice").await;
    let r = run_turn(&mut third, ASK).await;
    assert!(recommended(&r).iter().any(|s| !acceptable(s)));
}

#[tokio::test]
async fn preferences_carry_into_the_next_session_on_the_embedded_store() {
    preferences_carry_into_the_next_session(|_| {}).await;
}

#[tokio::test]
async fn preferences_carry_into_the_next_session_on_the_redis_store() {
    let redis = RedisServer::start().await;
    preferences_carry_into_the_next_session(on_redis(redis.url())).await;
}

/// `mangaassist serve` on `redis`, sharing transcripts, preferences and the enrichment cache
/// with every other process configured alike (or, without `redis`, on its own embedded store);
/// killed when dropped.
async fn serve_node(dir: &std::path::Path, name: &str, redis: Option<&str>) -> (Killed, u16) {
    let (http_port, tcp_port) = (free_port(), free_port());
    let config = dir.join(format!("{name}.toml"));
    let shared = redis.map_or_else(String::new, |redis| {
        format!(
            "transcript_store = \"redis\"\ntranscript_redis_url = {redis:?}\n\
             transcript_redis_prefix = \"multinode:\"\n\
             [cache]\nredis_url = {redis:?}\nredis_key_prefix = \"multinode:enrichment:\"\n"
        )
    });
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{http_port}\"\ntcp_listen = \"127.0.0.1:{tcp_port}\"\n\
             [model]\ntoken_pacing_ms = 20\n\
             [auth]\nsecret = {TEST_SECRET:?}\n\
             [data]\ndir = {:?}\n{shared}",
            dir.join(format!("var-{name}")),
        ),
    )
    .unwrap();
    (serve_binary(&config, http_port).await, http_port)
}

/// Two `serve` processes share one real Redis. One is killed with SIGKILL in the middle of an
/// answer; the client reconnects to the other, which resumes the session with every committed
/// turn and the user's preferences. Only the answer that was streaming when the process died is
/// gone: it was never committed.
#[tokio::test]
async fn a_conversation_survives_a_sigkilled_node_on_the_other_node() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut a, port_a) = serve_node(dir.path(), "a", Some(&redis.url())).await;
    let (_b, port_b) = serve_node(dir.path(), "b", Some(&redis.url())).await;

    let (mut c, session, resumed) = welcome_at(port_a, "alice", None).await;
    assert_eq!(resumed, 0);
    assert_streamed(&run_turn(&mut c, "do you have Frieren?").await);
    assert_streamed(&run_turn(&mut c, PREFERENCE).await);
    // Node A's profile saver writes to Redis; read it back from there.
    let store = mangaassist::backends::redis_store::RedisTranscriptStore::connect(
        mangaassist::backends::redis_store::RedisStoreSettings {
            url: redis.url(),
            key_prefix: "multinode:".to_owned(),
            timeout: std::time::Duration::from_secs(2),
            ttl: std::time::Duration::from_secs(3_600),
        },
    )
    .await
    .unwrap();
    let alice = mangaassist_protocols::UserId::parse("alice").unwrap();
    wait_for_preference(&store, &alice).await;

    // A third turn is streaming when node A dies.
    c.send(serde_json::json!({"type": "user_message", "turn_id": "dying", "text": ASK}))
        .await;
    loop {
        if let ServerFrame::Token { .. } = c.next().await {
            break;
        }
    }
    a.0.kill().unwrap(); // SIGKILL
    a.0.wait().unwrap();
    drop(c);

    // The client reconnects to node B with its session: both committed turns are there.
    let (mut c, resumed_session, resumed) = welcome_at(port_b, "alice", Some(&session)).await;
    assert_eq!(resumed_session, session);
    assert_eq!(
        resumed, 2,
        "every committed turn, and not the one cut by the kill"
    );
    // Alice's preference holds on node B: no series over 4 volumes, no horror.
    assert_all_acceptable(&run_turn(&mut c, ASK).await, "node B");
    drop(c);
    // B's turn is committed beside A's: a reconnect sees all three.
    let (_c, _, resumed) = welcome_at(port_b, "alice", Some(&session)).await;
    assert_eq!(resumed, 3);
}

/// The control: two nodes each on their own embedded store share nothing, so the check above
/// can fail. Node B has never seen the session node A served.
#[tokio::test]
async fn negative_control_nodes_on_their_own_stores_lose_the_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, port_a) = serve_node(dir.path(), "a", None).await;
    let (_b, port_b) = serve_node(dir.path(), "b", None).await;
    let (mut c, session, _) = welcome_at(port_a, "alice", None).await;
    assert_streamed(&run_turn(&mut c, "do you have Frieren?").await);
    drop(c);
    let (_c, _, resumed) = welcome_at(port_b, "alice", Some(&session)).await;
    assert_eq!(resumed, 0);
}
