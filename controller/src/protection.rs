//! Which pods of opted-in namespaces run unprotected (no proxy, an exemption, an old proxy):
//! kept from the Pod and Namespace watches (kube mode), exported as
//! `portcullis_unprotected_pods{namespace,reason}` and served as JSON on the admin port's
//! `/v1/unprotected`. The assessment itself is `portcullis_policy::protection`.

use std::collections::BTreeSet;
use std::sync::Mutex;

use portcullis_policy::protection::{Tracker, Unprotected};

use crate::telemetry;

/// The controller's version: a proxy injected with another one is reported as version skew.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Default)]
pub struct Protection {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    tracker: Tracker,
    /// Label sets exported last time, so that a gap that closes goes back to 0.
    exported: BTreeSet<(String, &'static str)>,
}

impl Protection {
    /// Applies `f` to the tracker and re-exports the gauge.
    pub fn update(&self, f: impl FnOnce(&mut Tracker)) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        f(&mut inner.tracker);
        let counts = inner.tracker.counts();
        for key in &inner.exported {
            if !counts.contains_key(key) {
                metrics::gauge!(telemetry::UNPROTECTED_PODS, "namespace" => key.0.clone(), "reason" => key.1)
                    .set(0.0);
            }
        }
        for ((namespace, reason), n) in &counts {
            metrics::gauge!(telemetry::UNPROTECTED_PODS, "namespace" => namespace.clone(), "reason" => *reason)
                .set(*n as f64);
        }
        inner.exported = counts.into_keys().collect();
    }

    pub fn unprotected(&self) -> Vec<Unprotected> {
        self.inner
            .lock()
            .map(|i| i.tracker.unprotected())
            .unwrap_or_default()
    }
}
