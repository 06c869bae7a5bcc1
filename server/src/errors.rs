//! How an error is told: one line with its causes; a deserialising error with the field it is
//! about. A leaf: uses no other module of the crate.

/// An error and its causes, outermost first, as one line: `a: b: c` (a
/// cause its outer error already ends its own message with is not repeated).
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// serde's explanation of a wrong entry or body, naming the field it is about (`field
/// `batch.max_requests`: invalid type: string "32", expected usize`). Errors about the entry as a
/// whole (a missing or unknown field) already name it.
pub fn field_error<E: std::fmt::Display>(e: &serde_path_to_error::Error<E>) -> String {
    use serde_path_to_error::Segment;
    let message = e.inner().to_string();
    let mut segments: Vec<&Segment> = e.path().iter().collect();
    // A key that could not be read (a syntax error in a body) has no name to give.
    if segments.iter().any(|s| matches!(s, Segment::Unknown)) {
        return message;
    }
    // The path of an unknown field ends with its name, which the message already gives.
    if message.starts_with("unknown field") {
        segments.pop();
    }
    if segments.is_empty() {
        return message;
    }
    let mut path = String::new();
    for (i, segment) in segments.iter().enumerate() {
        if i > 0 && !matches!(segment, Segment::Seq { .. }) {
            path.push('.');
        }
        path += &segment.to_string();
    }
    format!("field `{path}`: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn causes_follow_their_error_once_each() {
        let e = Outer(Middle(std::io::Error::other("disk")));
        assert_eq!(with_causes(&e), "outer: middle: disk");
    }
}
