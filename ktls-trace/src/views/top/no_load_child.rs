//! `top` without the workload generator (the static build, no `load` feature): the
//! built-in load cannot exist, so its type has no values. `once` and `app` keep their one
//! code path (an `Option<LoadChild>` that is always `None` here), and the compiler proves
//! that none of this runs.

use std::time::Duration;

/// The built-in load of `top --load`, which this build cannot start.
pub enum LoadChild {}

impl LoadChild {
    pub async fn serving(&mut self, _limit: Duration) -> anyhow::Result<()> {
        match *self {}
    }

    pub fn check(&mut self) -> Option<String> {
        match *self {}
    }

    pub fn describe(&self) -> String {
        match *self {}
    }
}

// Like the real one, which stops the load when dropped: `once` and `app` drop it at a
// chosen point, before they print.
impl Drop for LoadChild {
    fn drop(&mut self) {
        match *self {}
    }
}
