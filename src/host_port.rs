//! The crate's one `host:port` parser.
//!
//! Every place that reads a host and a port uses [`HostPort::parse`]: the
//! `static`, `passthrough`, `ipv4`/`ipv6` and `dns` resolvers (the target's
//! endpoint, and a `dns://SERVER[:PORT]/` authority), etcd endpoints and
//! values, registration, and the TLS origin (the `:authority` header and the
//! server name). So every one of them accepts the same forms and says the
//! same thing about the same mistake.
//!
//! The forms are those of gRPC's naming document (`doc/naming.md`) and of
//! Go's `net.SplitHostPort`:
//!
//! | text | host | port |
//! | --- | --- | --- |
//! | `svc.example.com:443`, `10.0.0.1:443` | `svc.example.com`, `10.0.0.1` | 443 |
//! | `[::1]:443`, `[fe80::1%eth0]:443` | `::1`, `fe80::1%eth0` (zone id kept) | 443 |
//! | `svc.example.com`, `[::1]`, `::1` | the host | none: the caller's default, or an error where one is required |
//!
//! A port is a number in 1..=65535. An unbracketed host is a name or an IPv4
//! address: letters, digits, `-`, `_` and `.`; brackets hold an IPv6 address,
//! optionally with a zone id after `%`. Errors quote the whole text and name
//! the bad part, e.g. `"10.0.0.1:99999" has a bad port "99999" (want
//! 1-65535)`; callers add what the text was (a target, an etcd value).

use std::net::Ipv6Addr;

/// A `host[:port]` text, split and checked (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HostPort<'a> {
    text: &'a str,
    host: &'a str,
    port: Option<u16>,
}

impl<'a> HostPort<'a> {
    /// Splits `text` into host and port; the error names the bad part.
    pub(crate) fn parse(text: &'a str) -> Result<Self, String> {
        let (host, port) = match text.strip_prefix('[') {
            Some(rest) => split_bracketed(text, rest)?,
            None => split_plain(text)?,
        };
        let port = port.map(|port| parse_port(text, port)).transpose()?;
        Ok(HostPort { text, host, port })
    }

    /// The host, without brackets (an IPv6 zone id stays: `fe80::1%eth0`).
    pub(crate) fn host(&self) -> &'a str {
        self.host
    }

    /// The port, if the text has one.
    pub(crate) fn port(&self) -> Option<u16> {
        self.port
    }

    /// The port, or `default` where the text has none.
    pub(crate) fn port_or(&self, default: u16) -> u16 {
        self.port.unwrap_or(default)
    }

    /// The port, or an error where the text has none (`host:port` wanted).
    pub(crate) fn required_port(&self) -> Result<u16, String> {
        let text = self.text;
        match self.port {
            Some(port) => Ok(port),
            None if self.host.contains(':') && !text.starts_with('[') => Err(format!(
                "{text:?} has no port (an IPv6 address with a port goes in brackets, as [::1]:50051)"
            )),
            None => Err(format!("{text:?} has no port (want host:port)")),
        }
    }

    /// The IPv6 zone id (`eth0` of `[fe80::1%eth0]`), if the host has one.
    pub(crate) fn zone(&self) -> Option<&'a str> {
        self.host.split_once('%').map(|(_, zone)| zone)
    }

    /// An error for a text whose zone id the caller cannot use, if it has one.
    pub(crate) fn refuse_zone(&self, whose: &str) -> Result<(), String> {
        match self.zone() {
            Some(zone) => Err(format!(
                "{:?}: {whose} cannot use the IPv6 zone id {zone:?}",
                self.text
            )),
            None => Ok(()),
        }
    }
}

/// `[v6]`, `[v6]:port`; `rest` is `text` after its `[`.
fn split_bracketed<'a>(text: &str, rest: &'a str) -> Result<(&'a str, Option<&'a str>), String> {
    let (host, after) = rest
        .split_once(']')
        .ok_or_else(|| format!("{text:?} has no closing ']'"))?;
    if host.is_empty() {
        return Err(format!("{text:?} has an empty host"));
    }
    if !is_ipv6_literal(host) {
        return Err(format!(
            "{text:?}: {host:?} in brackets is not an IPv6 address"
        ));
    }
    match after {
        "" => Ok((host, None)),
        _ => match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None => Err(format!("{text:?}: unexpected {after:?} after ']'")),
        },
    }
}

/// `host`, `host:port`, or a bare IPv6 address (which has no port).
fn split_plain(text: &str) -> Result<(&str, Option<&str>), String> {
    if is_ipv6_literal(text) {
        return Ok((text, None));
    }
    let (host, port) = match text.rsplit_once(':') {
        None => (text, None),
        Some((host, port)) => (host, Some(port)),
    };
    if host.is_empty() {
        return Err(format!("{text:?} has an empty host"));
    }
    if is_ipv6_literal(host) {
        return Err(format!(
            "{text:?}: an IPv6 address with a port goes in brackets, as [::1]:50051"
        ));
    }
    let name_char = |c: char| c.is_alphanumeric() || matches!(c, '-' | '_' | '.');
    match host.chars().find(|&c| !name_char(c)) {
        Some(c) => Err(format!(
            "{text:?}: the host {host:?} has {c:?}, which no host name or IPv4 address has"
        )),
        None => Ok((host, port)),
    }
}

/// An IPv6 address, optionally with a non-empty zone id (`fe80::1%eth0`).
fn is_ipv6_literal(host: &str) -> bool {
    let zone_ok = |zone: &str| {
        !zone.is_empty()
            && zone
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let (ip, zone) = match host.split_once('%') {
        Some((ip, zone)) => (ip, Some(zone)),
        None => (host, None),
    };
    ip.parse::<Ipv6Addr>().is_ok() && zone.is_none_or(zone_ok)
}

/// The port text after `':'` as a number in 1..=65535.
fn parse_port(text: &str, port: &str) -> Result<u16, String> {
    if port.is_empty() {
        return Err(format!("{text:?} has no port after ':'"));
    }
    // Digits only: `u16::from_str` would also take "+80".
    match port.parse::<u16>() {
        Ok(number) if number > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(number),
        _ => Err(format!("{text:?} has a bad port {port:?} (want 1-65535)")),
    }
}

/// Checks that `text` is `host:port` or `[v6]:port`: [`HostPort::parse`]
/// with a port required.
pub(crate) fn validate_host_port(text: &str) -> Result<(), String> {
    HostPort::parse(text)?.required_port().map(drop)
}

/// `host` and `port` as `host:port`, the host in brackets if it is an IPv6
/// address.
pub(crate) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A DNS host name: labels of letters, digits, '-' and '_' of 1 to 63
/// bytes, at most 253 bytes in all, with an optional final '.'.
#[cfg_attr(not(feature = "dns"), allow(dead_code))]
pub(crate) fn check_host_name(host: &str) -> Result<(), String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!("{host:?} is not a valid host name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn split(text: &str) -> Result<(&str, Option<u16>), String> {
        HostPort::parse(text).map(|hp| (hp.host(), hp.port()))
    }

    fn error(text: &str) -> String {
        match HostPort::parse(text) {
            Ok(hp) => panic!("{text:?} parsed as {hp:?}"),
            Err(why) => why,
        }
    }

    #[test]
    fn every_form_splits_into_host_and_port() {
        assert_eq!(split("a.test:1"), Ok(("a.test", Some(1))));
        assert_eq!(split("10.0.0.1:65535"), Ok(("10.0.0.1", Some(65535))));
        assert_eq!(split("a.test"), Ok(("a.test", None)));
        assert_eq!(split("svc_1.local."), Ok(("svc_1.local.", None)));
        assert_eq!(split("[::1]:80"), Ok(("::1", Some(80))));
        assert_eq!(split("[::1]"), Ok(("::1", None)));
        assert_eq!(split("::1"), Ok(("::1", None)));
        assert_eq!(split("::ffff:10.0.0.1"), Ok(("::ffff:10.0.0.1", None)));
    }

    #[test]
    fn a_zone_id_stays_with_the_host_inside_brackets() {
        let zoned = HostPort::parse("[fe80::1%eth0]:80").unwrap();
        assert_eq!((zoned.host(), zoned.port()), ("fe80::1%eth0", Some(80)));
        assert_eq!(zoned.zone(), Some("eth0"));
        assert!(zoned
            .refuse_zone("an ipv6: target")
            .unwrap_err()
            .contains("an ipv6: target cannot use the IPv6 zone id \"eth0\""));
        assert_eq!(split("fe80::1%2"), Ok(("fe80::1%2", None)));
        assert_eq!(HostPort::parse("[::1]:1").unwrap().zone(), None);
        assert!(error("[fe80::1%]:80").contains("not an IPv6 address"));
        assert!(error("[fe80::1%e]0]:80").contains("unexpected \"0]:80\""));
    }

    #[test]
    fn errors_quote_the_text_and_name_the_bad_part() {
        for (text, why) in [
            ("", "\"\" has an empty host"),
            (":80", "\":80\" has an empty host"),
            ("[]:80", "\"[]:80\" has an empty host"),
            ("a.test:", "\"a.test:\" has no port after ':'"),
            ("a.test:0", "has a bad port \"0\" (want 1-65535)"),
            ("a.test:65536", "has a bad port \"65536\""),
            ("a.test:+1", "has a bad port \"+1\""),
            ("a.test:x", "has a bad port \"x\""),
            ("[::1]:", "\"[::1]:\" has no port after ':'"),
            ("[::1]:99999", "has a bad port \"99999\""),
            ("[::1", "\"[::1\" has no closing ']'"),
            ("[::1]x", "unexpected \"x\" after ']'"),
            ("[::1]]:1", "unexpected \"]:1\" after ']'"),
            (
                "[a.test]:1",
                "\"a.test\" in brackets is not an IPv6 address",
            ),
            ("fe80::1:x", "an IPv6 address with a port goes in brackets"),
            ("1:2:3:4:5:6:7:8:80", "goes in brackets"),
            ("a:b:c", "the host \"a:b\" has ':'"),
            ("a.test:80:", "the host \"a.test:80\" has ':'"),
            ("a b:1", "the host \"a b\" has ' '"),
            ("a/b:1", "the host \"a/b\" has '/'"),
            ("a,b:1", "the host \"a,b\" has ','"),
            ("::1]:80", "the host \"::1]\" has ':'"),
            ("a]:80", "the host \"a]\" has ']'"),
            ("user@a:80", "has '@'"),
            ("http://a:80", "the host \"http://a\" has ':'"),
            ("a:1;weight=2", "bad port \"1;weight=2\""),
        ] {
            let err = error(text);
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_required_port_is_asked_for_by_name() {
        let required = |text| HostPort::parse(text).and_then(|hp| hp.required_port());
        assert_eq!(required("a.test:443"), Ok(443));
        assert_eq!(required("[::1]:443"), Ok(443));
        assert!(required("a.test")
            .unwrap_err()
            .contains("has no port (want host:port)"));
        assert!(required("[::1]").unwrap_err().contains("has no port"));
        assert!(required("::1:80").unwrap_err().contains("goes in brackets"));
        assert_eq!(HostPort::parse("a.test").unwrap().port_or(443), 443);
        assert_eq!(HostPort::parse("a.test:1").unwrap().port_or(443), 1);
        assert!(validate_host_port("127.0.0.1:50051").is_ok());
        assert!(validate_host_port("127.0.0.1")
            .unwrap_err()
            .contains("no port"));
    }

    #[test]
    fn join_brackets_ipv6_and_host_names_are_checked() {
        assert_eq!(join_host_port("::1", 3), "[::1]:3");
        assert_eq!(join_host_port("fe80::1%eth0", 3), "[fe80::1%eth0]:3");
        assert_eq!(join_host_port("10.0.0.1", 3), "10.0.0.1:3");
        assert!(check_host_name("a..b").is_err());
        assert!(check_host_name(&"a".repeat(64)).is_err());
        assert!(check_host_name("svc-1.local.").is_ok());
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9_-]{1,10}(\\.[a-z0-9_-]{1,10}){0,3}",
            any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
            any::<std::net::Ipv6Addr>().prop_map(|ip| ip.to_string()),
        ]
    }

    proptest! {
        #[test]
        fn join_then_parse_gives_back_host_and_port(host in host(), port in 1u16..) {
            let joined = join_host_port(&host, port);
            let parsed = HostPort::parse(&joined).map(|hp| (hp.host(), hp.port()));
            prop_assert_eq!(parsed, Ok((host.as_str(), Some(port))));
        }

        #[test]
        fn any_text_parses_or_is_refused_without_panicking(text in "\\PC{0,24}") {
            if let Ok(hp) = HostPort::parse(&text) {
                prop_assert!(!hp.host().is_empty());
                prop_assert!(hp.port() != Some(0));
            }
        }
    }
}
