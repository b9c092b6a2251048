//! Unit tests of the static header rules.

use std::time::Duration;

use http::HeaderValue;

use super::*;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(*name, HeaderValue::from_str(value).unwrap());
    }
    h
}

const ALL: [Encoding; 3] = [Encoding::Br, Encoding::Gzip, Encoding::Identity];

fn choose(accept: Option<&str>, available: &[Encoding]) -> Option<Encoding> {
    let h = match accept {
        Some(a) => headers(&[("accept-encoding", a)]),
        None => HeaderMap::new(),
    };
    AcceptEncoding::parse(&h).choose(available.iter().copied())
}

#[test]
fn negotiation_prefers_br_then_gzip_then_identity() {
    use Encoding::*;
    assert_eq!(choose(None, &ALL), Some(Identity));
    assert_eq!(choose(Some("gzip, deflate, br"), &ALL), Some(Br));
    assert_eq!(
        choose(Some("gzip, deflate, br"), &[Gzip, Identity]),
        Some(Gzip)
    );
    assert_eq!(choose(Some("gzip"), &ALL), Some(Gzip));
    assert_eq!(choose(Some("x-gzip"), &ALL), Some(Gzip));
    assert_eq!(choose(Some("BR;Q=1"), &ALL), Some(Br));
    assert_eq!(choose(Some(""), &ALL), Some(Identity));
    assert_eq!(choose(Some("*"), &ALL), Some(Br));
    assert_eq!(choose(Some("deflate"), &ALL), Some(Identity));
}

#[test]
fn negotiation_honours_q_values() {
    use Encoding::*;
    assert_eq!(choose(Some("br;q=0.5, gzip;q=0.8"), &ALL), Some(Gzip));
    assert_eq!(choose(Some("br;q=0, gzip"), &ALL), Some(Gzip));
    assert_eq!(choose(Some("br;q=0, gzip;q=0"), &ALL), Some(Identity));
    assert_eq!(
        choose(Some("gzip;q=0.002, identity;q=0.001"), &ALL),
        Some(Gzip)
    );
    assert_eq!(choose(Some("gzip, identity;q=0"), &[Identity]), None);
    assert_eq!(choose(Some("*;q=0"), &[Identity]), None);
    assert_eq!(choose(Some("*;q=0, identity"), &ALL), Some(Identity));
    assert_eq!(choose(Some("*;q=0.3, br;q=0.2"), &ALL), Some(Gzip));
    assert_eq!(
        choose(Some("br;q=0.2, identity;q=0.5"), &ALL),
        Some(Identity)
    );
    assert_eq!(choose(Some("*;q=0.3, identity;q=0.1"), &ALL), Some(Br));
    // Malformed q: the item is ignored.
    assert_eq!(choose(Some("br;q=2, gzip;q=abc"), &ALL), Some(Identity));
    assert_eq!(choose(Some("br;q=0.1234"), &ALL), Some(Identity));
    assert_eq!(choose(Some("br;q=1.0"), &ALL), Some(Br));
}

#[test]
fn q_values_parse_like_rfc_9110() {
    assert_eq!(parse_q(b"0"), Some(0));
    assert_eq!(parse_q(b"0.5"), Some(500));
    assert_eq!(parse_q(b"0.05"), Some(50));
    assert_eq!(parse_q(b"0.125"), Some(125));
    assert_eq!(parse_q(b"0."), Some(0));
    assert_eq!(parse_q(b"1"), Some(1000));
    assert_eq!(parse_q(b"1.000"), Some(1000));
    for bad in [
        "1.5", "2", "-1", "0.5.1", "", ".5", "0.1234", "0.x", "1.001", "00.5",
    ] {
        assert_eq!(parse_q(bad.as_bytes()), None, "{bad}");
    }
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn etags_differ_per_variant_and_version() {
    let t = at(1_700_000_000);
    let plain = etag(10, t, Encoding::Identity);
    assert!(plain.starts_with('"') && plain.ends_with('"'));
    assert_ne!(plain, etag(10, t, Encoding::Gzip));
    assert_ne!(etag(10, t, Encoding::Br), etag(10, t, Encoding::Gzip));
    assert_ne!(plain, etag(11, t, Encoding::Identity));
    assert_ne!(
        plain,
        etag(10, t + Duration::from_nanos(1), Encoding::Identity)
    );
}

#[test]
fn if_none_match_lists_star_and_weak_comparison() {
    let t = at(1_700_000_000);
    let tag = etag(10, t, Encoding::Identity);
    let yes = |v: &str| not_modified(&headers(&[("if-none-match", v)]), &tag, t);
    assert!(yes(&tag));
    assert!(yes(&format!("W/{tag}")));
    assert!(yes(&format!("\"other\", {tag}")));
    assert!(yes("*"));
    assert!(!yes("\"other\""));
    // If-None-Match wins over If-Modified-Since.
    let date = httpdate::fmt_http_date(t);
    let h = headers(&[("if-none-match", "\"other\""), ("if-modified-since", &date)]);
    assert!(!not_modified(&h, &tag, t));
}

#[test]
fn if_modified_since_compares_whole_seconds() {
    let t = at(1_700_000_000) + Duration::from_millis(300);
    let tag = etag(1, t, Encoding::Identity);
    let ims = |secs: u64| {
        let h = headers(&[("if-modified-since", &httpdate::fmt_http_date(at(secs)))]);
        not_modified(&h, &tag, t)
    };
    assert!(ims(1_700_000_000));
    assert!(ims(1_700_000_100));
    assert!(!ims(1_699_999_999));
    let h = headers(&[("if-modified-since", "yesterday")]);
    assert!(!not_modified(&h, &tag, t));
    assert!(!not_modified(&HeaderMap::new(), &tag, t));
}

fn range_of(spec: &str, len: u64) -> RangeOutcome {
    range(&headers(&[("range", spec)]), len, "\"x\"", at(0))
}

#[test]
fn single_ranges() {
    use RangeOutcome::*;
    assert_eq!(range_of("bytes=0-9", 100), Partial { start: 0, end: 9 });
    assert_eq!(
        range_of("bytes=90-200", 100),
        Partial { start: 90, end: 99 }
    );
    assert_eq!(range_of("bytes=10-", 100), Partial { start: 10, end: 99 });
    assert_eq!(range_of("bytes=-10", 100), Partial { start: 90, end: 99 });
    assert_eq!(range_of("bytes=-1000", 100), Partial { start: 0, end: 99 });
    assert_eq!(range_of("Bytes = 5-5", 100), Partial { start: 5, end: 5 });
    assert_eq!(
        range_of("bytes=0-99999999999999999999999", 100),
        Partial { start: 0, end: 99 }
    );
}

#[test]
fn unsatisfiable_and_ignored_ranges() {
    use RangeOutcome::*;
    assert_eq!(range_of("bytes=100-", 100), Unsatisfiable);
    assert_eq!(range_of("bytes=100-200", 100), Unsatisfiable);
    assert_eq!(range_of("bytes=-0", 100), Unsatisfiable);
    assert_eq!(range_of("bytes=0-", 0), Unsatisfiable);
    assert_eq!(range_of("bytes=-5", 0), Unsatisfiable);
    for ignored in [
        "bytes=0-1,5-6",
        "bytes=5-1",
        "items=0-1",
        "bytes=a-b",
        "bytes=",
        "bytes=-",
        "0-1",
        "bytes=1-2-3",
        // Not a number before the dash: not a suffix range either.
        "bytes=a-2",
        "bytes=+1-2",
        "bytes=0x1-2",
        "bytes= x -2",
    ] {
        assert_eq!(range_of(ignored, 100), Full, "{ignored}");
    }
    assert_eq!(range(&HeaderMap::new(), 100, "\"x\"", at(0)), Full);
}

#[test]
fn if_range_needs_a_strong_match_or_the_exact_date() {
    use RangeOutcome::*;
    let t = at(1_700_000_000);
    let tag = etag(100, t, Encoding::Identity);
    let with = |if_range: &str| {
        let h = headers(&[("range", "bytes=0-0"), ("if-range", if_range)]);
        range(&h, 100, &tag, t)
    };
    assert_eq!(with(&tag), Partial { start: 0, end: 0 });
    assert_eq!(with(&format!("W/{tag}")), Full);
    assert_eq!(with("\"stale\""), Full);
    assert_eq!(
        with(&httpdate::fmt_http_date(t)),
        Partial { start: 0, end: 0 }
    );
    assert_eq!(with(&httpdate::fmt_http_date(at(1_600_000_000))), Full);
    assert_eq!(with("garbage"), Full);
}

#[test]
fn one_scan_finds_what_shapes_the_answer() {
    let h = headers(&[("host", "x"), ("user-agent", "curl")]);
    let p = Present::scan(&h);
    assert_eq!(p, Present::default());
    assert_eq!(p.accept(&h), AcceptEncoding::IDENTITY);
    assert_eq!(AcceptEncoding::parse(&h), AcceptEncoding::IDENTITY);

    let h = headers(&[
        ("accept-encoding", "gzip"),
        ("if-modified-since", "x"),
        ("range", "bytes=0-1"),
    ]);
    let p = Present::scan(&h);
    assert!(p.conditional && p.range && !p.more_accept_encoding);
    assert_eq!(p.accept(&h).choose(ALL), Some(Encoding::Gzip));
    let h = headers(&[("if-none-match", "*")]);
    let p = Present::scan(&h);
    assert!(p.conditional && !p.range && p.accept_encoding.is_none());

    // Several lines are one list.
    let h = headers(&[("accept-encoding", "br;q=0"), ("accept-encoding", "gzip")]);
    let p = Present::scan(&h);
    assert!(p.more_accept_encoding);
    assert_eq!(p.accept(&h).choose(ALL), Some(Encoding::Gzip));
    assert_eq!(p.accept(&h), AcceptEncoding::parse(&h));
}

#[test]
fn a_line_that_is_not_text_is_ignored() {
    let mut h = HeaderMap::new();
    h.append(
        "accept-encoding",
        HeaderValue::from_bytes(b"br, \xff").unwrap(),
    );
    h.append("accept-encoding", HeaderValue::from_static("gzip;q=0.5"));
    let accept = AcceptEncoding::parse(&h);
    assert_eq!(accept.q(Encoding::Br), 0);
    assert_eq!(accept.q(Encoding::Gzip), 500);
}

#[test]
fn common_values_mean_what_the_parser_says() {
    for (value, accept) in AcceptEncoding::COMMON {
        let line = HeaderValue::from_bytes(value).unwrap();
        assert_eq!(AcceptEncoding::from_values([&line]), accept, "{line:?}");
        assert_eq!(AcceptEncoding::common(value), Some(accept));
    }
    assert_eq!(AcceptEncoding::common(b"gzip;q=0"), None);
}
