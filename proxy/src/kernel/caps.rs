//! `CAP_NET_ADMIN` from a file capability: Kubernetes gives a non-root container the
//! capabilities it adds in the bounding set only (the CRI sets no ambient capabilities), so a
//! proxy image carries `setcap cap_net_admin+p` on its binary and the proxy raises the capability
//! into its effective set itself, before any thread exists (capabilities are per thread, and
//! threads inherit them). With `+p` and no `+e`, a pod without `NET_ADMIN` in its bounding set
//! (`PORTCULLIS_ENFORCE_UDP=false`) still starts: the capability is simply not there.
//!
//! Crate: `caps` (capget/capset, version 3, for the calling thread).

use caps::{CapSet, Capability};

pub use caps::errors::CapsError;

/// Makes `CAP_NET_ADMIN` effective when it is permitted. Returns whether it is effective now.
/// Call it before starting any thread.
pub fn raise_net_admin() -> Result<bool, CapsError> {
    let cap = Capability::CAP_NET_ADMIN;
    if caps::has_cap(None, CapSet::Effective, cap)? {
        return Ok(true);
    }
    if !caps::has_cap(None, CapSet::Permitted, cap)? {
        return Ok(false);
    }
    caps::raise(None, CapSet::Effective, cap)?;
    Ok(true)
}
