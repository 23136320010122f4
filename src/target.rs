//! Target URIs, as gRPC's naming document defines them.
//!
//! A target is `scheme://authority/endpoint`: the scheme picks the resolver,
//! the authority is the resolver's own business (a DNS server, etcd
//! endpoints), and the endpoint is the path without its first `/`. The
//! opaque form `scheme:endpoint` (`dns:host:port`, `unix:/path`) has no
//! authority. A string with no scheme is a DNS name, `host:port`, as in
//! every gRPC implementation: `localhost:50051` and `10.0.0.1:443` are
//! `dns:///localhost:50051` and `dns:///10.0.0.1:443`.
//!
//! ```
//! use tonic_balance::Target;
//!
//! let t: Target = "etcd://127.0.0.1:2379/grpclb/simple_grpc".parse().unwrap();
//! assert_eq!(t.scheme(), "etcd");
//! assert_eq!(t.authority(), "127.0.0.1:2379");
//! assert_eq!(t.endpoint(), "grpclb/simple_grpc");
//!
//! let bare: Target = "localhost:50051".parse().unwrap();
//! assert_eq!((bare.scheme(), bare.endpoint()), ("dns", "localhost:50051"));
//! ```

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// The scheme a target without one is resolved with.
pub const DEFAULT_SCHEME: &str = "dns";

/// A parsed target URI. Parsing checks the shape only; whether the scheme is
/// known and the endpoint makes sense is for the resolver registry and the
/// resolver.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    raw: String,
    scheme: String,
    authority: String,
    endpoint: String,
}

impl Target {
    /// Parses a target; the error names the offending part.
    pub fn parse(raw: &str) -> Result<Target, Error> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(Error::invalid_target(raw, "the target is empty"));
        }
        if trimmed.chars().any(char::is_whitespace) {
            return Err(Error::invalid_target(
                raw,
                "the target contains white space",
            ));
        }
        if let Some((scheme, rest)) = trimmed.split_once("://") {
            check_scheme(raw, scheme)?;
            let (authority, endpoint) = rest.split_once('/').unwrap_or((rest, ""));
            return Ok(Target::from_parts(raw, scheme, authority, endpoint));
        }
        match trimmed.split_once(':') {
            // `unix:` alone would otherwise read as a DNS name with no port.
            Some((scheme, "")) if is_unix(scheme) => Err(Error::invalid_target(
                raw,
                format!(
                    "a {scheme}: target needs a socket path after {scheme:?}, \
                     as unix:/path/to/socket or unix-abstract:name"
                ),
            )),
            // `dns:host:port`, `unix:/path`: a scheme followed by an opaque
            // endpoint. `host:port` (the rest is a port number) and strings
            // whose head cannot be a scheme are DNS names.
            Some((scheme, rest))
                if is_scheme(scheme) && !rest.chars().all(|c| c.is_ascii_digit()) =>
            {
                Ok(Target::from_parts(raw, scheme, "", rest))
            }
            _ => Ok(Target::from_parts(raw, DEFAULT_SCHEME, "", trimmed)),
        }
    }

    fn from_parts(raw: &str, scheme: &str, authority: &str, endpoint: &str) -> Target {
        Target {
            raw: raw.trim().to_owned(),
            scheme: scheme.to_ascii_lowercase(),
            authority: authority.to_owned(),
            endpoint: endpoint.to_owned(),
        }
    }

    /// The scheme, lower-cased (`dns` when the target had none).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The authority: between `//` and the next `/`; empty when absent.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The endpoint: the path without its first `/` (or the opaque part).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The target as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

/// `unix` or `unix-abstract`, in any case.
fn is_unix(scheme: &str) -> bool {
    scheme.eq_ignore_ascii_case("unix") || scheme.eq_ignore_ascii_case("unix-abstract")
}

fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn check_scheme(raw: &str, scheme: &str) -> Result<(), Error> {
    if scheme.is_empty() {
        return Err(Error::invalid_target(
            raw,
            "the scheme before \"://\" is empty",
        ));
    }
    if !is_scheme(scheme) {
        return Err(Error::invalid_target(
            raw,
            format!("bad scheme {scheme:?} (letters, digits, '+', '-', '.'; a letter first)"),
        ));
    }
    Ok(())
}

impl FromStr for Target {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Target::parse(s)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> (String, String, String) {
        let t = Target::parse(s).unwrap();
        (t.scheme().into(), t.authority().into(), t.endpoint().into())
    }

    fn p(a: &str, b: &str, c: &str) -> (String, String, String) {
        (a.into(), b.into(), c.into())
    }

    #[test]
    fn full_form_splits_scheme_authority_and_endpoint() {
        assert_eq!(
            parts("static:///127.0.0.1:50051,127.0.0.1:50052"),
            p("static", "", "127.0.0.1:50051,127.0.0.1:50052")
        );
        assert_eq!(
            parts("dns://8.8.8.8:53/svc.local:50051"),
            p("dns", "8.8.8.8:53", "svc.local:50051")
        );
        assert_eq!(
            parts("etcd://h:1,h:2/foo/bar"),
            p("etcd", "h:1,h:2", "foo/bar")
        );
        // The classic `/grpclb/...` layout keeps its leading slash.
        assert_eq!(
            parts("etcd://127.0.0.1:2379//grpclb/simple_grpc"),
            p("etcd", "127.0.0.1:2379", "/grpclb/simple_grpc")
        );
        assert_eq!(
            parts("static:///[::1]:50051"),
            p("static", "", "[::1]:50051")
        );
    }

    #[test]
    fn opaque_form_has_no_authority() {
        assert_eq!(
            parts("dns:svc.local:50051"),
            p("dns", "", "svc.local:50051")
        );
        assert_eq!(parts("unix:/tmp/sock"), p("unix", "", "/tmp/sock"));
    }

    #[test]
    fn a_unix_target_without_a_path_says_it_needs_one() {
        for raw in ["unix:", "UNIX:", "unix-abstract:"] {
            let error = Target::parse(raw).unwrap_err();
            assert!(error.is_invalid_target(), "{error}");
            let message = error.to_string();
            assert!(message.contains("needs a socket path"), "{message}");
            assert!(!message.contains("port"), "{message}");
        }
    }

    #[test]
    fn no_scheme_means_dns() {
        assert_eq!(parts("localhost:50051"), p("dns", "", "localhost:50051"));
        assert_eq!(parts("10.0.0.1:443"), p("dns", "", "10.0.0.1:443"));
        assert_eq!(parts("[::1]:50051"), p("dns", "", "[::1]:50051"));
        assert_eq!(parts("svc.local"), p("dns", "", "svc.local"));
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert_eq!(parts("STATIC:///a:1").0, "static");
    }

    #[test]
    fn errors_name_the_bad_part() {
        let empty = Target::parse("  ").unwrap_err();
        assert!(empty.is_invalid_target() && empty.to_string().contains("empty"));
        let no_scheme = Target::parse("://x").unwrap_err();
        assert!(no_scheme.to_string().contains("scheme"), "{no_scheme}");
        let bad = Target::parse("1x://a/b").unwrap_err();
        assert!(bad.to_string().contains("bad scheme \"1x\""), "{bad}");
        let space = Target::parse("dns:///a b").unwrap_err();
        assert!(space.to_string().contains("white space"));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = Target::parse(&s);
        }

        #[test]
        fn full_form_round_trips(scheme in "[a-z][a-z0-9+.-]{0,8}", auth in "[a-z0-9.:,]{0,20}", ep in "[a-z0-9./:,_-]{0,30}") {
            let t = Target::parse(&format!("{scheme}://{auth}/{ep}")).unwrap();
            proptest::prop_assert_eq!(t.scheme(), scheme.as_str());
            proptest::prop_assert_eq!(t.authority(), auth.as_str());
            proptest::prop_assert_eq!(t.endpoint(), ep.as_str());
        }
    }
}
