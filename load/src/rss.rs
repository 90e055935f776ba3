//! The server's resident memory, read from outside the server.
//!
//! Two sources, one [`RssSource`]:
//! - `/proc/<pid>/status`, line `VmRSS:` ([`parse_vm_rss`]) when `--server-pid` is given: exact
//!   and free, so preferred;
//! - otherwise the server's Prometheus text at the metrics URL, line
//!   `process_resident_memory_bytes <value>` ([`parse_metrics_rss`]), fetched with a minimal
//!   HTTP/1.1 GET over a plain [`TcpStream`] (`Connection: close`, read to end, content-length or
//!   chunked body) so the load crate needs no HTTP client.
//!
//! A missing metric or an unreachable endpoint is an [`RssError`] the report shows as
//! "unavailable"; it never fails a run.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Name of the Prometheus gauge the server exposes.
pub const RSS_METRIC: &str = "process_resident_memory_bytes";

/// Longest a metrics GET may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest metrics response read, in bytes.
const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Why the RSS could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RssError {
    /// The URL is not `http://host[:port][/path]`.
    #[error("bad URL `{0}`: expected ws://host[:port]/path or http://host[:port]/path")]
    BadUrl(String),
    /// Reading the file or the socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The metrics endpoint did not answer in time.
    #[error("no answer from {0} within {HTTP_TIMEOUT:?}")]
    Timeout(String),
    /// The HTTP response could not be parsed.
    #[error("bad HTTP response from {0}")]
    BadResponse(String),
    /// The endpoint answered with a non-200 status.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The metrics URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The text holds no RSS line.
    #[error("{0} has no `{1}` line")]
    Missing(String, &'static str),
    /// No source was configured (for example a `wss://` URL, which this tool cannot derive from).
    #[error("{0}")]
    Unconfigured(String),
}

/// `http://host:port/path`, split for a raw GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// `host:port` to connect to and to send as `Host`.
    pub authority: String,
    /// Request path, starting with `/`.
    pub path: String,
}

impl HttpTarget {
    /// Parses `http://host[:port][/path]`; the port defaults to 80 and the path to `/`.
    pub fn parse(url: &str) -> Result<Self, RssError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| RssError::BadUrl(url.to_owned()))?;
        let (authority, path) = split_authority(rest);
        let authority =
            with_default_port(authority, 80).ok_or_else(|| RssError::BadUrl(url.to_owned()))?;
        Ok(Self {
            authority,
            path: if path.is_empty() {
                "/".to_owned()
            } else {
                path.to_owned()
            },
        })
    }

    /// The URL again, for reports.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }
}

/// The metrics URL for a server at WebSocket `ws_url`: same host and port, path `/metrics`.
pub fn metrics_url_for(ws_url: &str) -> Result<String, RssError> {
    http_url_for(ws_url, "/metrics")
}

/// `http://host:port{path}` on the host and port of a `ws://` URL.
pub fn http_url_for(ws_url: &str, path: &str) -> Result<String, RssError> {
    let rest = ws_url
        .strip_prefix("ws://")
        .ok_or_else(|| RssError::BadUrl(ws_url.to_owned()))?;
    let (authority, _) = split_authority(rest);
    let authority =
        with_default_port(authority, 80).ok_or_else(|| RssError::BadUrl(ws_url.to_owned()))?;
    Ok(format!("http://{authority}{path}"))
}

/// Splits `host:port/path?q` into (`host:port`, `/path?q`).
fn split_authority(rest: &str) -> (&str, &str) {
    match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    }
}

/// `host` -> `host:port`; keeps an explicit port; `None` for an empty host.
fn with_default_port(authority: &str, port: u16) -> Option<String> {
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let has_port = match authority.rfind(']') {
        // [v6]:port
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    };
    Some(if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{port}")
    })
}

/// Where the server's RSS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RssSource {
    /// `/proc/<pid>/status`.
    Proc(u32),
    /// The Prometheus text at this URL.
    Metrics(HttpTarget),
    /// Nothing to read; the reason is shown in the report.
    Unavailable(String),
}

impl RssSource {
    /// Chooses the source: `--server-pid` wins; then `--metrics-url`; else derived from `ws_url`.
    pub fn choose(
        server_pid: Option<u32>,
        metrics_url: Option<&str>,
        ws_url: &str,
    ) -> Result<Self, RssError> {
        if let Some(pid) = server_pid {
            return Ok(RssSource::Proc(pid));
        }
        let url = match metrics_url {
            Some(u) => u.to_owned(),
            None => match metrics_url_for(ws_url) {
                Ok(u) => u,
                Err(e) => {
                    return Ok(RssSource::Unavailable(format!(
                        "cannot derive metrics URL: {e}"
                    )));
                }
            },
        };
        Ok(RssSource::Metrics(HttpTarget::parse(&url)?))
    }

    /// What is read, for reports (`/proc/1234/status` or the metrics URL).
    pub fn describe(&self) -> String {
        match self {
            RssSource::Proc(pid) => format!("/proc/{pid}/status"),
            RssSource::Metrics(t) => t.url(),
            RssSource::Unavailable(why) => format!("unavailable ({why})"),
        }
    }

    /// Reads the server's resident set size, in bytes.
    pub async fn read(&self) -> Result<u64, RssError> {
        match self {
            RssSource::Proc(pid) => {
                let path = format!("/proc/{pid}/status");
                let text =
                    tokio::fs::read_to_string(&path)
                        .await
                        .map_err(|source| RssError::Io {
                            what: path.clone(),
                            source,
                        })?;
                parse_vm_rss(&text).ok_or(RssError::Missing(path, "VmRSS:"))
            }
            RssSource::Metrics(target) => {
                let body = http_get(target).await?;
                parse_metrics_rss(&body).ok_or_else(|| RssError::Missing(target.url(), RSS_METRIC))
            }
            RssSource::Unavailable(why) => Err(RssError::Unconfigured(why.clone())),
        }
    }
}

impl RssSource {
    /// The server's CPU time so far (user + system), in seconds, its live child processes
    /// included (a server with worker processes, such as a gateway run with several workers):
    /// from `/proc/<pid>/stat` and its children's, with `--server-pid`; `None` from any other
    /// source.
    pub async fn cpu_seconds(&self) -> Option<f64> {
        let RssSource::Proc(pid) = self else {
            return None;
        };
        let text = tokio::fs::read_to_string(format!("/proc/{pid}/stat"))
            .await
            .ok()?;
        let mut ticks = parse_cpu_ticks(&text)?;
        if let Ok(mut dir) = tokio::fs::read_dir("/proc").await {
            while let Ok(Some(entry)) = dir.next_entry().await {
                let name = entry.file_name();
                let Some(child) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                if child == *pid {
                    continue;
                }
                let Ok(stat) = tokio::fs::read_to_string(format!("/proc/{child}/stat")).await
                else {
                    continue;
                };
                if parse_ppid(&stat) == Some(*pid) {
                    ticks += parse_cpu_ticks(&stat).unwrap_or(0);
                }
            }
        }
        Some(ticks as f64 / CLOCK_TICKS_PER_SEC)
    }
}

/// `USER_HZ`: the unit of `/proc/<pid>/stat`'s times, 100 on every Linux this runs on.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// The parent pid (field 4) of a `/proc/<pid>/stat` line.
pub fn parse_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: field 3 (state) is the first; utime is field 14, the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_utime_plus_stime_after_the_command_name() {
        // Fields 14 and 15 are 250 and 50; the name holds a space and a parenthesis.
        let stat =
            "4242 (mangaassist (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_ppid(stat), Some(1));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[tokio::test]
    async fn this_process_has_cpu_time() {
        let me = RssSource::Proc(std::process::id());
        assert!(me.cpu_seconds().await.is_some());
        assert!(
            RssSource::Unavailable("x".into())
                .cpu_seconds()
                .await
                .is_none()
        );
    }
}

/// The `VmRSS:` line of a `/proc/<pid>/status` text, in bytes (the kernel writes kB = KiB).
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut parts = line.split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let multiplier = match parts.next() {
        Some(unit) if unit.eq_ignore_ascii_case("kb") => 1024,
        Some(unit) if unit.eq_ignore_ascii_case("mb") => 1024 * 1024,
        None => 1,
        Some(_) => return None,
    };
    value.checked_mul(multiplier)
}

/// The value of the `process_resident_memory_bytes` sample in Prometheus text, in bytes.
///
/// Accepts labels (`name{pid="1"} v`), float and exponent forms (`1.2e+08`) and a trailing
/// timestamp; skips `# HELP`/`# TYPE` lines and longer names that merely start the same.
pub fn parse_metrics_rss(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix(RSS_METRIC)?;
        let rest = if let Some(labels) = rest.strip_prefix('{') {
            &labels[labels.find('}')? + 1..]
        } else {
            rest
        };
        if !rest.starts_with([' ', '\t']) {
            return None;
        }
        let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
        (value.is_finite() && value >= 0.0).then_some(value.round() as u64)
    })
}

/// GETs `target` over HTTP/1.1 and returns the body of a 200 answer.
pub async fn http_get(target: &HttpTarget) -> Result<String, RssError> {
    let url = target.url();
    let (status, body) = http_request(target, "GET", None, None).await?;
    if status != 200 {
        return Err(RssError::Status { url, status });
    }
    Ok(body)
}

/// One HTTP/1.1 request (`Connection: close`) with an optional JSON body and bearer token; the
/// status and the body, whatever the status.
pub async fn http_request(
    target: &HttpTarget,
    method: &str,
    json: Option<&str>,
    bearer: Option<&str>,
) -> Result<(u16, String), RssError> {
    let url = target.url();
    let raw = timeout(HTTP_TIMEOUT, async {
        let io = |source| RssError::Io {
            what: url.clone(),
            source,
        };
        let mut stream = TcpStream::connect(&target.authority).await.map_err(io)?;
        let body = json.unwrap_or_default();
        let auth = bearer
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nAccept: */*\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            target.path,
            target.authority,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.map_err(io)?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE_BYTES as u64)
            .read_to_end(&mut raw)
            .await
            .map_err(io)?;
        Ok::<_, RssError>(raw)
    })
    .await
    .map_err(|_| RssError::Timeout(url.clone()))??;
    let (status, body) = parse_response(&raw).ok_or_else(|| RssError::BadResponse(url.clone()))?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Splits a whole HTTP/1.1 response into status and body, honouring `Content-Length` and
/// `Transfer-Encoding: chunked`.
pub fn parse_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().ok()?);
        }
    }
    let body = if chunked {
        decode_chunked(body)?
    } else if let Some(n) = length {
        body.get(..n)?.to_vec()
    } else {
        body.to_vec()
    };
    Some((status, body))
}

/// Decodes a chunked body (trailers ignored).
fn decode_chunked(mut input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = input.windows(2).position(|w| w == b"\r\n")?;
        let size_line = std::str::from_utf8(&input[..line_end]).ok()?;
        let size_hex = size_line.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        input = &input[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(input.get(..size)?);
        input = input.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn vm_rss_line_parses_to_bytes() {
        let status =
            "Name:\tmangaassist\nVmPeak:\t  900000 kB\nVmRSS:\t   52344 kB\nRssAnon:\t 1000 kB\n";
        assert_eq!(parse_vm_rss(status), Some(52_344 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
    }

    #[test]
    fn metrics_text_yields_rss() {
        let text = "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
                    # TYPE process_resident_memory_bytes gauge\n\
                    process_resident_memory_bytes_max 1\n\
                    mangaassist_turns_total 7\n\
                    process_resident_memory_bytes 54620160\n";
        assert_eq!(parse_metrics_rss(text), Some(54_620_160));
        assert_eq!(
            parse_metrics_rss("process_resident_memory_bytes{pid=\"9\"} 1.2e+08 1700000000\n"),
            Some(120_000_000)
        );
        assert_eq!(
            parse_metrics_rss("process_resident_memory_bytes_max 5\n"),
            None
        );
        assert_eq!(
            parse_metrics_rss("process_resident_memory_bytes NaN\n"),
            None
        );
        assert_eq!(parse_metrics_rss(""), None);
    }

    #[test]
    fn urls_split_and_derive() {
        assert_eq!(
            metrics_url_for("ws://127.0.0.1:8080/ws").unwrap(),
            "http://127.0.0.1:8080/metrics"
        );
        assert_eq!(
            metrics_url_for("ws://localhost/ws?x=1").unwrap(),
            "http://localhost:80/metrics"
        );
        assert_eq!(
            metrics_url_for("ws://[::1]:9000").unwrap(),
            "http://[::1]:9000/metrics"
        );
        assert!(metrics_url_for("wss://example.invalid/ws").is_err());
        let t = HttpTarget::parse("http://127.0.0.1:8080/metrics").unwrap();
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/metrics");
        assert_eq!(
            HttpTarget::parse("http://[::1]").unwrap().authority,
            "[::1]:80"
        );
        assert!(HttpTarget::parse("https://x/metrics").is_err());
        assert!(HttpTarget::parse("http:///metrics").is_err());
        assert_eq!(
            RssSource::choose(Some(42), Some("http://x:1/m"), "ws://h:2/ws").unwrap(),
            RssSource::Proc(42)
        );
        assert!(matches!(
            RssSource::choose(None, None, "wss://h/ws").unwrap(),
            RssSource::Unavailable(_)
        ));
    }

    #[test]
    fn http_responses_parse_with_length_or_chunks() {
        let plain =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello extra";
        assert_eq!(parse_response(plain), Some((200, b"hello".to_vec())));
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nproc\r\n6;ext=1\r\ness_rs\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((200, b"process_rs".to_vec())));
        let missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_response(missing), Some((404, Vec::new())));
        assert_eq!(parse_response(b"garbage"), None);
    }

    #[tokio::test]
    async fn reads_rss_from_a_metrics_endpoint() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for body in ["process_resident_memory_bytes 4096\n", "no such metric\n"] {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 1024];
                let n = sock.read(&mut buf).await.unwrap();
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(
                    request.starts_with("GET /metrics HTTP/1.1\r\n"),
                    "{request}"
                );
                assert!(request.contains("Connection: close"), "{request}");
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                sock.write_all(response.as_bytes()).await.unwrap();
            }
        });
        let source = RssSource::choose(None, None, &format!("ws://{addr}/ws")).unwrap();
        assert_eq!(source.read().await.unwrap(), 4096);
        assert!(matches!(source.read().await, Err(RssError::Missing(..))));
        server.await.unwrap();
    }

    #[tokio::test]
    async fn reads_rss_of_this_process_from_proc() {
        let rss = RssSource::Proc(std::process::id()).read().await.unwrap();
        assert!(rss > 1024 * 1024, "{rss}");
        assert!(RssSource::Proc(u32::MAX).read().await.is_err());
    }
}
