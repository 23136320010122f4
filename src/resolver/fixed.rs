//! The resolver of targets whose answer is in the target itself (the
//! `static` list, the literal schemes, a DNS target naming an IP): it sends
//! its one update when built, and nothing after that, since the answer
//! cannot change. Resending it on `resolve_now` is what kept channels with
//! thousands of dead endpoints busy.

use super::{Resolver, ResolverUpdate, UpdateSink};
use crate::Address;

/// Holds the sink only so that the channel's side stays open.
struct FixedResolver {
    _sink: UpdateSink,
}

/// `resolve_now` does nothing: the answer cannot change.
impl Resolver for FixedResolver {}

/// Sends `addresses` once and returns the resolver that keeps `sink`.
pub(crate) fn fixed(sink: UpdateSink, addresses: Vec<Address>) -> Box<dyn Resolver> {
    sink.update(ResolverUpdate::new(addresses));
    Box::new(FixedResolver { _sink: sink })
}
