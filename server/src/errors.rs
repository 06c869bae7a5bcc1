//! How an error is told: one line with its causes. A leaf: uses no other
//! module of the crate.

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
