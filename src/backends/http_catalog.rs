//! An enrichment source backed by a third-party catalog API: JSON over HTTP, with a per-call
//! timeout. The contract a store's catalog service implements is docs/enrichment-api.md.
//!
//! Input: a [`lookup`](EnrichmentSource::lookup) (series ids plus the fields wanted). Output: one
//! [`Enrichment`] per id, in request order, holding at most the fields asked for; ids the service
//! does not know come back as [`Enrichment::unknown`]. One lookup is one
//! `GET {url}/v1/enrichment?ids=..&fields=..`, or several run concurrently when the ids do not fit
//! one request ([`MAX_IDS_PER_REQUEST`], [`MAX_IDS_QUERY_BYTES`]).
//!
//! Failure policy: the whole call, every batch and body read included, runs under
//! [`HttpCatalogSettings::timeout`]; past it the lookup is [`EnrichmentError::Timeout`]. A refused
//! connection, a non-2xx answer, a body over [`MAX_BODY_BYTES`] or one that does not decode is
//! [`EnrichmentError::Source`] with a message naming what went wrong. Any batch failing fails the
//! lookup: the caller (the preflight budget, the cache) decides what an answer without these facts
//! looks like. Nothing is retried here.
//!
//! [`mentioned`](EnrichmentSource::mentioned) keeps the trait default (finds nothing): the runtime
//! resolves names in the text against its own catalog, not through this API.

use std::collections::HashMap;
use std::time::Duration;

use super::http_util::{printable, root_cause};
use async_trait::async_trait;
use futures_util::stream::{self, StreamExt};
use mangaassist_protocols::ports::{EnrichmentError, EnrichmentSource};
use mangaassist_protocols::turn::{Enrichment, FieldSet};
use reqwest::Url;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Settings of the HTTP catalog source, from `[enrichment.http]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCatalogSettings {
    /// Base URL, e.g. `http://catalog.internal:9300`.
    pub url: String,
    /// Deadline of one call, connect included.
    pub timeout: Duration,
}

/// Path of the enrichment endpoint, below the base URL.
pub const ENDPOINT_PATH: &str = "/v1/enrichment";

/// Most series ids in one request; a lookup with more is split into several requests.
pub const MAX_IDS_PER_REQUEST: usize = 100;

/// Most bytes the encoded `ids` value of one request may take (URLs past ~8 KiB are refused by
/// common servers and proxies); a batch is cut early when long or non-ASCII ids would pass it.
pub const MAX_IDS_QUERY_BYTES: usize = 4096;

/// Most bytes read from one response body: a broken or hostile service cannot make the runtime
/// buffer more than this per request.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Most batch requests of one lookup in flight at once.
const MAX_CONCURRENT_BATCHES: usize = 8;

/// How much of a non-2xx body goes into the error message.
const ERROR_BODY_PREFIX_BYTES: usize = 200;

/// Idle pooled connections are closed after this; services should keep idle keep-alive
/// connections open at least this long, so the client rarely reuses one being closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle connections kept per host: enough for the concurrent lookups of a busy instance.
const POOL_MAX_IDLE_PER_HOST: usize = 64;

/// TCP keepalive probes on pooled connections, so a silently dead peer is noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// The catalog API as an [`EnrichmentSource`]. Cheap to clone: clones share the connection pool.
#[derive(Debug, Clone)]
pub struct HttpCatalog {
    /// One client for every lookup, so keep-alive connections are pooled and reused instead of
    /// paying a TCP handshake inside the enrichment budget.
    client: reqwest::Client,
    /// `{url}/v1/enrichment`, parsed once; each request clones it and appends its query.
    endpoint: Url,
    /// `host:port` of the service, for connection errors.
    authority: String,
    /// Deadline of one whole lookup.
    timeout: Duration,
}

impl HttpCatalog {
    /// A source for the service at `settings.url` (`http://` or `https://`; TLS is rustls,
    /// certificates checked against the system's trust store).
    ///
    /// Fails when the URL does not parse, is neither `http://` nor `https://`, or carries a
    /// query or fragment.
    pub fn new(settings: HttpCatalogSettings) -> Result<Self, EnrichmentError> {
        let base = settings.url.trim_end_matches('/');
        let mut endpoint = Url::parse(base).map_err(|e| invalid_url(base, &e.to_string()))?;
        if !matches!(endpoint.scheme(), "http" | "https") {
            return Err(invalid_url(base, "must start with http:// or https://"));
        }
        if endpoint.query().is_some() || endpoint.fragment().is_some() {
            return Err(invalid_url(base, "must not carry a query or fragment"));
        }
        let path = format!("{}{ENDPOINT_PATH}", endpoint.path().trim_end_matches('/'));
        endpoint.set_path(&path);
        let Some(host) = endpoint.host_str() else {
            return Err(invalid_url(base, "has no host"));
        };
        let authority = match endpoint.port_or_known_default() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let client = reqwest::Client::builder()
            .user_agent(concat!("mangaassist/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(settings.timeout)
            .tcp_nodelay(true)
            .tcp_keepalive(TCP_KEEPALIVE)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            // A redirect would spend the budget on a second round trip; report it as a non-2xx.
            .redirect(reqwest::redirect::Policy::none())
            // The configured URL is where requests go; HTTP_PROXY in the environment does not
            // reroute them.
            .no_proxy()
            .build()
            .map_err(|e| EnrichmentError::Source(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            client,
            endpoint,
            authority,
            timeout: settings.timeout,
        })
    }

    /// The per-call timeout in milliseconds, as [`EnrichmentError::Timeout`] reports it.
    fn timeout_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs every batch (comma-joined ids), at most [`MAX_CONCURRENT_BATCHES`] at once, and
    /// indexes the items by id; the first item for an id wins.
    async fn fetch_all(
        &self,
        batches: Vec<String>,
        fields: FieldSet,
    ) -> Result<HashMap<String, Enrichment>, EnrichmentError> {
        let mut found = HashMap::new();
        let mut answers = stream::iter(batches)
            .map(|batch| async move { self.fetch(&batch, fields).await })
            .buffer_unordered(MAX_CONCURRENT_BATCHES);
        while let Some(items) = answers.next().await {
            for item in items? {
                found.entry(item.series_id.clone()).or_insert(item);
            }
        }
        Ok(found)
    }

    /// One request for one batch of ids, comma-joined.
    async fn fetch(&self, ids: &str, fields: FieldSet) -> Result<Vec<Enrichment>, EnrichmentError> {
        let mut url = self.endpoint.clone();
        url.query_pairs_mut()
            .append_pair("ids", ids)
            .append_pair("fields", &fields.to_string());
        let mut response = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        if !status.is_success() {
            let prefix = self
                .read_body(&mut response, ERROR_BODY_PREFIX_BYTES, true)
                .await
                .unwrap_or_default();
            return Err(EnrichmentError::Source(format!(
                "catalog API answered {} for {ENDPOINT_PATH}: {}",
                status.as_u16(),
                printable(&prefix)
            )));
        }
        let body = self.read_body(&mut response, MAX_BODY_BYTES, false).await?;
        decode_response(&body).map_err(|what| {
            EnrichmentError::Source(format!(
                "catalog API sent a malformed body for {ENDPOINT_PATH}: {what}"
            ))
        })
    }

    /// Reads the body up to `cap` bytes. Past the cap it is an error, or, with `truncate`, the
    /// first `cap` bytes.
    async fn read_body(
        &self,
        response: &mut reqwest::Response,
        cap: usize,
        truncate: bool,
    ) -> Result<Vec<u8>, EnrichmentError> {
        let too_large = || {
            EnrichmentError::Source(format!(
                "catalog API response for {ENDPOINT_PATH} is larger than {cap} bytes"
            ))
        };
        let announced = response.content_length().unwrap_or(0);
        if !truncate && announced > cap as u64 {
            return Err(too_large());
        }
        let mut body = Vec::with_capacity(usize::try_from(announced).unwrap_or(cap).min(cap));
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(&e))?
        {
            if body.len() + chunk.len() > cap {
                if !truncate {
                    return Err(too_large());
                }
                let room = cap - body.len();
                body.extend_from_slice(&chunk[..room]);
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Maps a reqwest failure (connect, send or body read) to the port's error.
    fn transport_error(&self, err: &reqwest::Error) -> EnrichmentError {
        if err.is_timeout() {
            EnrichmentError::Timeout(self.timeout_ms())
        } else if err.is_connect() {
            EnrichmentError::Source(format!(
                "cannot connect to catalog API at {}: {}",
                self.authority,
                root_cause(err)
            ))
        } else {
            EnrichmentError::Source(format!(
                "catalog API request to {} for {ENDPOINT_PATH} failed: {}",
                self.authority,
                root_cause(err)
            ))
        }
    }
}

#[async_trait]
impl EnrichmentSource for HttpCatalog {
    async fn lookup(
        &self,
        series_ids: &[String],
        fields: FieldSet,
    ) -> Result<Vec<Enrichment>, EnrichmentError> {
        let mut out: Vec<Enrichment> = series_ids.iter().map(Enrichment::unknown).collect();
        if fields.is_empty() {
            return Ok(out);
        }
        let batches: Vec<String> = batches(&askable_ids(series_ids))
            .into_iter()
            .map(|batch| batch.join(","))
            .collect();
        if batches.is_empty() {
            return Ok(out);
        }
        let found = tokio::time::timeout(self.timeout, self.fetch_all(batches, fields))
            .await
            .map_err(|_| EnrichmentError::Timeout(self.timeout_ms()))??;
        for entry in &mut out {
            if let Some(item) = found.get(&entry.series_id) {
                *entry = item.clone().only(fields);
            }
        }
        Ok(out)
    }

    fn name(&self) -> &'static str {
        "http_catalog"
    }
}

fn invalid_url(url: &str, why: &str) -> EnrichmentError {
    EnrichmentError::Source(format!("invalid catalog API url `{url}`: {why}"))
}

/// The distinct ids worth sending, first occurrence first. An empty id, or one holding the `,`
/// that separates ids on the wire, cannot name a series in the contract, so it is not sent and
/// stays unknown.
fn askable_ids(series_ids: &[String]) -> Vec<&str> {
    let mut seen = std::collections::HashSet::new();
    series_ids
        .iter()
        .map(String::as_str)
        .filter(|id| !id.is_empty() && !id.contains(','))
        .filter(|id| seen.insert(*id))
        .collect()
}

/// Splits ids into request batches of at most [`MAX_IDS_PER_REQUEST`] ids and (unless one id alone
/// is longer) [`MAX_IDS_QUERY_BYTES`] encoded bytes, keeping their order.
fn batches<'a>(ids: &[&'a str]) -> Vec<Vec<&'a str>> {
    let mut out: Vec<Vec<&'a str>> = Vec::new();
    let mut current: Vec<&'a str> = Vec::new();
    let mut current_bytes = 0;
    for &id in ids {
        let len = encoded_len(id);
        // Ids after the first cost their `,` separator too, which encodes as `%2C`.
        if !current.is_empty()
            && (current.len() == MAX_IDS_PER_REQUEST
                || current_bytes + 3 + len > MAX_IDS_QUERY_BYTES)
        {
            out.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += if current.is_empty() { len } else { 3 + len };
        current.push(id);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Length of `s` encoded as an `application/x-www-form-urlencoded` value, as
/// [`Url::query_pairs_mut`] writes it: alphanumerics and `*-._` stay, a space becomes `+`, every
/// other byte becomes `%XX`.
fn encoded_len(s: &str) -> usize {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_' | b' ') {
                1
            } else {
                3
            }
        })
        .sum()
}

/// Decodes `{"items":[...]}` into entries; the error names what was wrong and where.
fn decode_response(body: &[u8]) -> Result<Vec<Enrichment>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut doc) = doc else {
        return Err(format!("expected an object, got {}", kind(&doc)));
    };
    let items = match doc.remove("items") {
        Some(Value::Array(items)) => items,
        Some(other) => return Err(format!("`items` is {}, not an array", kind(&other))),
        None => return Err("missing `items`".to_owned()),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| decode_item(i, item))
        .collect()
}

/// Decodes `items[i]`. Fields the contract does not define are ignored, so a service may send
/// more than asked.
fn decode_item(i: usize, item: Value) -> Result<Enrichment, String> {
    let Value::Object(mut item) = item else {
        return Err(format!("items[{i}] is {}, not an object", kind(&item)));
    };
    let series_id = match item.remove("series_id") {
        Some(Value::String(id)) => id,
        Some(other) => {
            return Err(format!(
                "items[{i}].series_id is {}, not a string",
                kind(&other)
            ));
        }
        None => return Err(format!("items[{i}] has no series_id")),
    };
    Ok(Enrichment {
        price_jpy: field(&mut item, i, "price_jpy", "an integer 0..=4294967295")?,
        stock: field(&mut item, i, "stock", "an integer 0..=4294967295")?,
        cover_url: field(&mut item, i, "cover_url", "a string")?,
        review_blurb: field(&mut item, i, "review_blurb", "a string")?,
        related: field(&mut item, i, "related", "an array of strings")?,
        series_id,
    })
}

/// One optional field of an item: absent and `null` are `None`.
fn field<T: DeserializeOwned>(
    item: &mut Map<String, Value>,
    i: usize,
    name: &str,
    expected: &str,
) -> Result<Option<T>, String> {
    match item.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => {
            let shown = kind(&value);
            serde_json::from_value(value)
                .map(Some)
                .map_err(|_| format!("items[{i}].{name} is {shown}, expected {expected}"))
        }
    }
}

/// A short description of a JSON value for error messages.
fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.len() <= 40 => format!("the string {s:?}"),
        Value::String(_) => "a string".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mangaassist_protocols::turn::EnrichmentField;

    fn settings(url: &str) -> HttpCatalogSettings {
        HttpCatalogSettings {
            url: url.to_owned(),
            timeout: Duration::from_millis(300),
        }
    }

    #[test]
    fn new_accepts_http_urls_with_a_path_prefix() {
        let c = HttpCatalog::new(settings("http://catalog.internal:9300/store/")).unwrap();
        assert_eq!(
            c.endpoint.as_str(),
            "http://catalog.internal:9300/store/v1/enrichment"
        );
        assert_eq!(c.authority, "catalog.internal:9300");
        assert!(HttpCatalog::new(settings("https://catalog.example.com")).is_ok());
        let c = HttpCatalog::new(settings("http://catalog.internal")).unwrap();
        assert_eq!(c.authority, "catalog.internal:80");
    }

    #[test]
    fn new_refuses_what_it_cannot_call() {
        for (url, why) in [
            ("ftp://catalog.internal", "https://"),
            ("catalog.internal:9300", "http://"),
            ("http://", "invalid catalog API url"),
            ("http://catalog.internal/?key=1", "query"),
        ] {
            let err = HttpCatalog::new(settings(url)).unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn only_distinct_sendable_ids_are_asked() {
        let ids: Vec<String> = ["a", "", "b", "a", "x,y", "c"].map(String::from).to_vec();
        assert_eq!(askable_ids(&ids), ["a", "b", "c"]);
    }

    #[test]
    fn batches_cut_at_the_id_count() {
        let ids: Vec<String> = (0..250).map(|i| format!("s{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let b = batches(&ids);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [100, 100, 50]);
        assert_eq!(b.concat(), ids);
    }

    #[test]
    fn batches_cut_at_the_encoded_length() {
        // 30 kana: 90 UTF-8 bytes, 270 encoded bytes each; 15 ids are 4050 + 42 separators.
        let long = "の".repeat(30);
        let ids = vec![long.as_str(); 40];
        for batch in batches(&ids) {
            let mut url = Url::parse("http://x/").unwrap();
            url.query_pairs_mut().append_pair("ids", &batch.join(","));
            let encoded = url.query().unwrap().len() - "ids=".len();
            assert!(encoded <= MAX_IDS_QUERY_BYTES, "{encoded}");
            assert!(batch.len() < MAX_IDS_PER_REQUEST);
        }
        assert_eq!(batches(&ids).concat().len(), 40);
        // One id longer than the cap still goes, alone.
        let huge = "x".repeat(MAX_IDS_QUERY_BYTES + 1);
        assert_eq!(batches(&[huge.as_str(), "a"]).len(), 2);
    }

    #[test]
    fn encoded_len_matches_the_url_encoder() {
        for s in ["one-piece", "a b&c=d", "100%+#?/", "進撃の巨人", "x*y._z~"] {
            let mut url = Url::parse("http://x/").unwrap();
            url.query_pairs_mut().append_pair("v", s);
            assert_eq!(encoded_len(s), url.query().unwrap().len() - 2, "{s}");
        }
    }

    #[test]
    fn a_well_formed_body_decodes_and_ignores_extra_fields() {
        let body = br#"{"items":[
            {"series_id":"one-piece","price_jpy":528,"stock":12,"publisher":"Shueisha"},
            {"series_id":"monster","cover_url":null,"related":["pluto"]}
        ],"next":null}"#;
        let items = decode_response(body).unwrap();
        assert_eq!(items[0].price_jpy, Some(528));
        assert_eq!(items[0].stock, Some(12));
        assert!(items[1].cover_url.is_none());
        assert_eq!(items[1].related.as_deref(), Some(&["pluto".to_owned()][..]));
        assert!(
            items[1]
                .clone()
                .only(FieldSet::of(&[EnrichmentField::Related]))
                .has(EnrichmentField::Related)
        );
    }

    #[test]
    fn a_malformed_body_says_what_is_wrong() {
        for (body, says) in [
            (&b"<html>oops</html>"[..], "not JSON"),
            (b"[1,2]", "expected an object, got an array"),
            (b"{}", "missing `items`"),
            (br#"{"items":{}}"#, "`items` is an object, not an array"),
            (br#"{"items":[7]}"#, "items[0] is the number 7"),
            (
                br#"{"items":[{"price_jpy":1}]}"#,
                "items[0] has no series_id",
            ),
            (
                br#"{"items":[{"series_id":"a"},{"series_id":"b","price_jpy":"528"}]}"#,
                r#"items[1].price_jpy is the string "528", expected an integer"#,
            ),
            (
                br#"{"items":[{"series_id":"a","stock":-1}]}"#,
                "items[0].stock is the number -1",
            ),
            (
                br#"{"items":[{"series_id":"a","related":[1]}]}"#,
                "items[0].related is an array, expected an array of strings",
            ),
        ] {
            let err = decode_response(body).unwrap_err();
            assert!(err.contains(says), "{err} (wanted {says})");
        }
    }

    #[test]
    fn printable_flattens_a_body_prefix() {
        assert_eq!(printable(b"  upstream\r\ndown\n"), "upstream  down");
        assert_eq!(printable(b""), "(empty body)");
        assert_eq!(printable(&[0xff, b'x']), "\u{fffd}x");
    }
}
