//! How a failed command reports itself: one line, each cause once,
//! outermost first and root cause last, then a hint where the fix is
//! obvious (a missing bucket, an `http://` endpoint refused).

/// The error and its causes on one line, outermost first, each cause
/// once: a cause whose text the line already holds (many errors put
/// their source in their own message) is skipped, so a chain no longer
/// repeats its root cause up to six times. An S3 error body (XML over
/// several lines) shrinks to its `Code: Message`, and every other line
/// break becomes a space. A hint for the fix, if one applies, ends the
/// line after `; hint: `.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    let mut line = s3_body_shrunk(&line)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(h) = hint(&line) {
        line.push_str("; hint: ");
        line.push_str(&h);
    }
    line
}

/// `text` with an S3 XML error body (`<?xml ...?><Error><Code>C</Code>
/// <Message>M</Message>...</Error>`, as AWS, SeaweedFS and MinIO send it)
/// replaced by `C: M`.
fn s3_body_shrunk(text: &str) -> String {
    let Some(start) = text.find("<?xml").or_else(|| text.find("<Error>")) else {
        return text.to_string();
    };
    let end = text[start..]
        .find("</Error>")
        .map_or(text.len(), |i| start + i + "</Error>".len());
    let body = &text[start..end];
    let tag = |name: &str| -> Option<&str> {
        let open = format!("<{name}>");
        let from = body.find(&open)? + open.len();
        let to = from + body[from..].find(&format!("</{name}>"))?;
        Some(&body[from..to])
    };
    let summary = match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => return text.to_string(),
    };
    format!("{}{summary}{}", &text[..start], &text[end..])
}

/// The obvious fix for a failure whose one-line text is `line`, if any.
fn hint(line: &str) -> Option<String> {
    // The store URL the line names, as `block store s3://bucket/prefix`.
    let bucket = || -> Option<&str> {
        let from = line.find("s3://")? + "s3://".len();
        let rest = &line[from..];
        let end = rest.find(['/', ' ', ':']).unwrap_or(rest.len());
        Some(&rest[..end]).filter(|b| !b.is_empty())
    };
    if line.contains("NoSuchBucket") {
        let b = bucket().unwrap_or("BUCKET");
        return Some(format!(
            "create the bucket {b} first (e.g. `aws s3 mb s3://{b}`); slicefs does not create buckets"
        ));
    }
    // reqwest refuses a plain-HTTP request of a client built for HTTPS
    // only with just "builder error"; the request line names the URL.
    if line.contains("builder error") && line.contains(" http://") {
        return Some(
            "the endpoint is plain http://: set AWS_ALLOW_HTTP=true (or --store-option aws_allow_http=true), or use https://"
                .into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::error_line;

    #[derive(Debug)]
    struct Wraps(std::io::Error);
    impl std::fmt::Display for Wraps {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "list failed: {}", self.0)
        }
    }
    impl std::error::Error for Wraps {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn each_cause_is_printed_once() {
        let root = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(Wraps(root)).context("open the file system in /d");
        assert_eq!(
            error_line(&e),
            "open the file system in /d: list failed: disk on fire"
        );
    }

    #[test]
    fn an_s3_error_body_is_one_line_with_a_hint() {
        let root = std::io::Error::other(
            "404 Not Found: <?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchBucket</Code>\
             <Message>The specified bucket does not exist</Message><BucketName>b1</BucketName></Error>\n",
        );
        let e = anyhow::Error::new(Wraps(root)).context("block store s3://b1/pre is not usable");
        assert_eq!(
            error_line(&e),
            "block store s3://b1/pre is not usable: list failed: 404 Not Found: NoSuchBucket: \
             The specified bucket does not exist; hint: create the bucket b1 first \
             (e.g. `aws s3 mb s3://b1`); slicefs does not create buckets"
        );
    }
}
