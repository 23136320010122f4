//! A fake [`Controller`] that records what a balancer asked for, for
//! runtime-free balancer tests.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Balancer, Controller};
use crate::picker::{PickInfo, PickResult, Picker};
use crate::subchannel::SubchannelState;
use crate::{Address, ConnectivityState, Error, ErrorKind, Subchannel};

pub(crate) struct FakeController {
    subchannels: HashMap<String, Subchannel>,
    next_id: u64,
    pub(crate) pickers: Vec<(ConnectivityState, Arc<dyn Picker>)>,
    pub(crate) resolutions: usize,
}

impl FakeController {
    pub(crate) fn new() -> Self {
        FakeController {
            subchannels: HashMap::new(),
            next_id: 0,
            pickers: Vec::new(),
            resolutions: 0,
        }
    }

    fn subchannel(&self, addr: &str) -> Subchannel {
        self.subchannels
            .get(addr)
            .unwrap_or_else(|| panic!("no subchannel for {addr}"))
            .clone()
    }

    /// How many times the balancer asked `addr` to connect.
    pub(crate) fn connects(&self, addr: &str) -> u32 {
        self.subchannels
            .get(addr)
            .map_or(0, Subchannel::connect_requests)
    }

    /// The addresses asked to connect, in creation order.
    pub(crate) fn connected_addrs(&self) -> Vec<String> {
        let mut all: Vec<&Subchannel> = self.subchannels.values().collect();
        all.sort_by_key(|s| s.id());
        all.iter()
            .filter(|s| s.connect_requests() > 0)
            .map(|s| s.address().to_string())
            .collect()
    }

    pub(crate) fn deliver(&mut self, b: &mut dyn Balancer, addr: &str, state: ConnectivityState) {
        self.deliver_state(b, addr, state, None);
    }

    pub(crate) fn deliver_error(
        &mut self,
        b: &mut dyn Balancer,
        addr: &str,
        state: ConnectivityState,
        error: &str,
    ) {
        self.deliver_state(b, addr, state, Some(Error::new(ErrorKind::Connect, error)));
    }

    fn deliver_state(
        &mut self,
        b: &mut dyn Balancer,
        addr: &str,
        connectivity: ConnectivityState,
        error: Option<Error>,
    ) {
        let sc = self.subchannel(addr);
        sc.set_state(connectivity);
        b.subchannel_update(
            &sc,
            &SubchannelState {
                connectivity,
                error,
            },
            self,
        );
    }

    pub(crate) fn last_state(&self) -> ConnectivityState {
        self.pickers.last().expect("a picker was published").0
    }

    fn pick(&self) -> PickResult {
        let headers = http::HeaderMap::new();
        let (_, picker) = self.pickers.last().expect("a picker was published");
        picker.pick(&PickInfo::new("/proto.Simple/Route", &headers))
    }

    pub(crate) fn pick_addr(&self) -> Option<String> {
        match self.pick() {
            PickResult::Pick(p) => Some(p.subchannel().address().to_string()),
            _ => None,
        }
    }

    pub(crate) fn pick_status(&self) -> Option<tonic::Status> {
        match self.pick() {
            PickResult::Fail(s) | PickResult::Drop(s) => Some(s),
            _ => None,
        }
    }
}

impl Controller for FakeController {
    fn new_subchannel(&mut self, address: &Address) -> Result<Subchannel, Error> {
        if let Some(sc) = self.subchannels.get(address.addr()) {
            return Ok(sc.clone());
        }
        self.next_id += 1;
        let sc = Subchannel::detached(self.next_id, address.clone());
        self.subchannels
            .insert(address.addr().to_owned(), sc.clone());
        Ok(sc)
    }

    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        self.pickers.push((state, picker));
    }

    fn request_resolution(&mut self) {
        self.resolutions += 1;
    }
}
