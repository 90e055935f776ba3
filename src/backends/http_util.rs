//! Small helpers the HTTP backends (catalog API, OpenAI-compatible models) share for turning
//! what a server or the network said into one-line error messages.

/// A body fit for a one-line message: lossy UTF-8, control characters as spaces, trimmed;
/// `(empty body)` when nothing is left.
pub(crate) fn printable(body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".to_owned()
    } else {
        text.to_owned()
    }
}

/// The innermost cause of an error chain ("Connection refused (os error 111)"), which says more
/// than reqwest's outer "error sending request".
pub(crate) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_become_one_line() {
        assert_eq!(printable(b"  bad\ngateway\t "), "bad gateway");
        assert_eq!(printable(b"\n\n"), "(empty body)");
        assert_eq!(printable(&[0xff, b'x']), "\u{fffd}x");
    }
}
