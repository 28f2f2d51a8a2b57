//! What every connection task shares: the policy store, the audit log, the connection slots,
//! the pod's own addresses and the metrics of each direction. Built once by [`crate::run`].

use std::sync::Arc;
use std::time::Duration;

use portcullis_policy::Direction;
use tokio::sync::Semaphore;

use crate::audit::AuditLog;
use crate::config::{Config, Mode, OnPolicyChange};
use crate::flows::{FlowKey, FlowRecords};
use crate::inbound::relay::PodAddresses;
use crate::outbound::balance::Balancer;
use crate::store::PolicyStore;
use crate::telemetry::DirectionMetrics;

/// What every connection task shares.
pub struct Context {
    /// `namespace/name` of this pod.
    pub pod: String,
    pub mode: Mode,
    pub on_policy_change: OnPolicyChange,
    pub relay: crate::relay::RelayMode,
    pub connect_timeout: Duration,
    pub log_allowed: bool,
    pub store: Arc<PolicyStore>,
    pub audit: Arc<AuditLog>,
    /// Flow records; `None` with `--flow-summary-interval 0`.
    pub flows: Option<Arc<FlowRecords>>,
    pub connection_slots: Arc<Semaphore>,
    /// `POD_IPS`: the only destinations inbound connections are forwarded to.
    pub pod_addresses: PodAddresses,
    /// Active connections per Service backend, to spread new ones.
    pub balancer: Balancer,
    /// What this pod learned from its own DNS lookups (`domainNames` rules).
    pub dns: Arc<crate::dns::DnsState>,
    ingress: DirectionMetrics,
    egress: DirectionMetrics,
}

impl Context {
    pub fn metrics(&self, direction: Direction) -> &DirectionMetrics {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

impl Context {
    /// Whether flows are recorded (callers skip building keys otherwise).
    pub fn records_flows(&self) -> bool {
        self.flows.is_some()
    }

    /// Counts one connection or flow in the flow records, if they are on.
    pub fn record_flow(&self, key: Option<FlowKey>) {
        if let (Some(flows), Some(key)) = (&self.flows, key) {
            flows.record(key, std::time::SystemTime::now());
        }
    }
}

impl Context {
    pub(crate) fn new(config: &Config, pod: String) -> anyhow::Result<Context> {
        Ok(Context {
            pod,
            mode: config.mode,
            on_policy_change: config.on_policy_change,
            relay: config.relay,
            connect_timeout: config.connect_timeout,
            log_allowed: config.log_allowed,
            store: Arc::new(PolicyStore::new()),
            audit: Arc::new(AuditLog::new(config.audit_window, config.audit_budget())),
            flows: (!config.flow_summary_interval.is_zero()).then(|| {
                Arc::new(FlowRecords::new(
                    &config.pod_namespace,
                    &config.pod_name,
                    config.flow_records_max,
                ))
            }),
            connection_slots: Arc::new(Semaphore::new(config.max_connections)),
            // Fail closed: without the pod's own addresses the inbound proxy cannot tell this
            // pod from a neighbour it is asked to relay to.
            pod_addresses: PodAddresses::new(&config.pod_ips)?,
            balancer: Balancer::new(),
            dns: Arc::new(crate::dns::DnsState::new(
                config.dns_resolvers.clone(),
                Default::default(),
            )),
            ingress: DirectionMetrics::new(Direction::Ingress),
            egress: DirectionMetrics::new(Direction::Egress),
        })
    }
}
