//! [`Tried`]: the endpoints a request's earlier attempts went to.

use std::sync::{Arc, Mutex, PoisonError};

/// The ids of the endpoints a request's attempts went to. The retry layer puts one in the
/// request's extensions before the first attempt; every attempt's request is a clone of
/// those parts, so all attempts share the list. A balanced proxy records each attempt's
/// endpoint in it and sends a retry to an endpoint not tried yet when one is available.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tried(Arc<Mutex<Vec<u64>>>);

impl Tried {
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&id)
    }

    pub(crate) fn add(&self, id: u64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(id);
    }
}
