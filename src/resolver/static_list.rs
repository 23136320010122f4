//! The `static` resolver: a fixed list in the target,
//! `static:///10.0.0.1:50051,10.0.0.2:50051` (`[::1]:50051` for IPv6).
//!
//! An entry may carry its endpoint's weight for weighted policies:
//! `static:///10.0.0.1:50051;weight=3,10.0.0.2:50051` (a positive integer
//! that fits in 32 bits; an entry without one has no weight). Each entry is
//! one endpoint of one address.

use super::fixed::fixed;
use super::{Resolver, ResolverBuilder, UpdateSink};
use crate::host_port::validate_host_port;
use crate::{Address, Error, Target};

/// Builds resolvers for `static:///host:port,host:port,...`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StaticResolverBuilder;

impl StaticResolverBuilder {
    /// Parses the endpoint list; the error names the bad entry.
    pub fn parse(target: &Target) -> Result<Vec<Address>, Error> {
        if target.endpoint().trim().is_empty() {
            return Err(Error::invalid_target(
                target.as_str(),
                "the address list is empty (want static:///host:port[,host:port...])",
            ));
        }
        target
            .endpoint()
            .split(',')
            .map(|entry| {
                parse_entry(entry).map_err(|why| Error::invalid_target(target.as_str(), why))
            })
            .collect()
    }
}

/// `host:port` with an optional `;weight=N`.
fn parse_entry(entry: &str) -> Result<Address, String> {
    let (addr, params) = match entry.split_once(';') {
        Some((addr, params)) => (addr, Some(params)),
        None => (entry, None),
    };
    validate_host_port(addr)?;
    let address = Address::new(addr);
    let Some(params) = params else {
        return Ok(address);
    };
    let weight = params
        .strip_prefix("weight=")
        .ok_or_else(|| format!("{entry:?}: unknown parameter {params:?} (want ;weight=N)"))?;
    match weight.parse::<u32>() {
        Ok(w) if w > 0 => Ok(address.with_weight(w)),
        _ => Err(format!(
            "{entry:?}: bad weight {weight:?} (want an integer in 1..=4294967295)"
        )),
    }
}

impl ResolverBuilder for StaticResolverBuilder {
    fn scheme(&self) -> &str {
        "static"
    }

    /// Sends the list once; `resolve_now` does nothing (the list cannot
    /// change).
    fn build(&self, target: &Target, sink: UpdateSink) -> Result<Box<dyn Resolver>, Error> {
        Ok(fixed(sink, Self::parse(target)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Vec<String>, Error> {
        let target: Target = s.parse()?;
        Ok(StaticResolverBuilder::parse(&target)?
            .iter()
            .map(|a| a.to_string())
            .collect())
    }

    #[test]
    fn lists_ipv4_ipv6_and_names() {
        assert_eq!(
            parse("static:///127.0.0.1:50051,[::1]:50052,svc:1").unwrap(),
            ["127.0.0.1:50051", "[::1]:50052", "svc:1"]
        );
    }

    #[test]
    fn an_entry_may_carry_its_endpoints_weight() {
        let target: Target = "static:///a:1;weight=3,b:2".parse().unwrap();
        let addrs = StaticResolverBuilder::parse(&target).unwrap();
        let update = crate::resolver::ResolverUpdate::new(addrs);
        let weights: Vec<Option<u32>> = update
            .endpoints()
            .iter()
            .map(|e| e.attributes().weight())
            .collect();
        assert_eq!(weights, [Some(3), None]);
        assert_eq!(update.addresses()[0].addr(), "a:1");
        for (bad, why) in [
            ("static:///a:1;weight=0", "bad weight \"0\""),
            ("static:///a:1;weight=x", "bad weight \"x\""),
            ("static:///a:1;zone=b", "unknown parameter \"zone=b\""),
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn errors_name_the_bad_entry() {
        let err = parse("static:///127.0.0.1:50051,127.0.0.1:x").unwrap_err();
        assert!(err.is_invalid_target());
        assert!(err.to_string().contains("bad port \"x\""), "{err}");
        let empty = parse("static:///").unwrap_err();
        assert!(
            empty.to_string().contains("address list is empty"),
            "{empty}"
        );
        let trailing = parse("static:///a:1,").unwrap_err();
        assert!(trailing.to_string().contains("empty host"), "{trailing}");
    }

    #[tokio::test]
    async fn sends_the_list_once_and_not_again_on_resolve_now() {
        let (sink, mut rx) = UpdateSink::channel();
        let target: Target = "static:///a:1,b:2".parse().unwrap();
        let mut resolver = StaticResolverBuilder.build(&target, sink).unwrap();
        let first = rx.recv().await.unwrap().update.unwrap();
        assert_eq!(first.addresses().len(), 2);
        for _ in 0..1000 {
            resolver.resolve_now();
        }
        assert!(rx.try_recv().is_none(), "nothing resent");
        assert_eq!(rx.updates_sent(), 1);
    }
}
