//! What a parent policy keeps of a child policy, and the controller the
//! child sees: its pickers and states go to the parent, its timer requests
//! are kept per child (and passed on, so the parent's own controller wakes
//! at the earliest), and the subchannels it makes are reported so the
//! parent can route their updates to it.

use std::sync::Arc;

use tokio::time::Instant;

use super::{Balancer, Controller};
use crate::picker::{Picker, QueuePicker};
use crate::subchannel::SubchannelState;
use crate::{Address, ConnectivityState, Error, Subchannel};

/// One child policy and what it last published.
pub(crate) struct Child {
    pub(crate) balancer: Box<dyn Balancer>,
    /// The state it last published (CONNECTING before it published).
    pub(crate) state: ConnectivityState,
    /// The picker it last published.
    pub(crate) picker: Arc<dyn Picker>,
    /// When it asked for [`Balancer::work`], if it did.
    pub(crate) work_at: Option<Instant>,
}

/// What one call into a child asked for that its parent must act on.
#[derive(Default)]
pub(crate) struct Asked {
    /// It published a picker (now in [`Child::picker`]).
    pub(crate) published: bool,
    /// The subchannels it asked for.
    pub(crate) made: Vec<Subchannel>,
}

impl Child {
    pub(crate) fn new(balancer: Box<dyn Balancer>) -> Self {
        Child {
            balancer,
            state: ConnectivityState::Connecting,
            picker: Arc::new(QueuePicker),
            work_at: None,
        }
    }

    /// Runs one balancer call with the child's view of `parent`.
    pub(crate) fn call(
        &mut self,
        parent: &mut dyn Controller,
        f: impl FnOnce(&mut dyn Balancer, &mut dyn Controller),
    ) -> Asked {
        let mut ctl = ChildController {
            parent,
            state: &mut self.state,
            picker: &mut self.picker,
            work_at: &mut self.work_at,
            asked: Asked::default(),
        };
        f(&mut *self.balancer, &mut ctl);
        ctl.asked
    }

    /// Runs the child's work if it is due at `now` (it asked for it at or
    /// before `now`).
    pub(crate) fn work_if_due(&mut self, now: Instant, parent: &mut dyn Controller) -> Asked {
        match self.work_at {
            Some(at) if at <= now => {
                self.work_at = None;
                self.call(parent, |b, ctl| b.work(ctl))
            }
            _ => Asked::default(),
        }
    }
}

/// The controller a child sees.
struct ChildController<'a> {
    parent: &'a mut dyn Controller,
    state: &'a mut ConnectivityState,
    picker: &'a mut Arc<dyn Picker>,
    work_at: &'a mut Option<Instant>,
    asked: Asked,
}

impl Controller for ChildController<'_> {
    fn new_subchannel(
        &mut self,
        address: &Address,
    ) -> Result<(Subchannel, SubchannelState), Error> {
        let made = self.parent.new_subchannel(address)?;
        self.asked.made.push(made.0.clone());
        Ok(made)
    }

    fn update_picker(&mut self, state: ConnectivityState, picker: Arc<dyn Picker>) {
        *self.state = state;
        *self.picker = picker;
        self.asked.published = true;
    }

    fn request_resolution(&mut self) {
        self.parent.request_resolution();
    }

    fn schedule_work(&mut self, at: Instant) {
        *self.work_at = Some(self.work_at.map_or(at, |t| t.min(at)));
        self.parent.schedule_work(at);
    }
}
