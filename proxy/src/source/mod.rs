//! Where policy tables come from. Each source runs as a task and publishes into the
//! [`PolicyStore`](crate::store::PolicyStore); the data path never knows which one is in use.

pub mod controller;
pub mod dir;

use std::sync::Arc;

use crate::config::Config;
use crate::store::PolicyStore;

/// The pod this proxy serves, as the sources need to know it.
#[derive(Debug, Clone)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<std::net::IpAddr>,
}

impl PodIdentity {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

pub enum PolicySource {
    /// A directory of manifests, compiled here.
    Dir(dir::DirSource),
    /// Tables streamed by portcullis-controller.
    Controller(controller::ControllerSource),
}

impl PolicySource {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        match (&config.policy_dir, &config.controller) {
            (Some(dir), _) => Ok(PolicySource::Dir(dir::DirSource::new(
                dir.clone(),
                config.policy_poll_interval,
            ))),
            (None, Some(url)) => Ok(PolicySource::Controller(controller::ControllerSource::new(
                url,
                config.token_file.clone(),
                match &config.controller_ca_pem {
                    Some(pem) => controller::TrustAnchor::Pem(pem.clone()),
                    None => controller::TrustAnchor::File(config.controller_ca.clone()),
                },
            )?)),
            (None, None) => anyhow::bail!("give --policy-dir or --controller"),
        }
    }

    pub async fn run(self, pod: PodIdentity, store: Arc<PolicyStore>) {
        match self {
            PolicySource::Dir(source) => source.run(pod, store).await,
            PolicySource::Controller(source) => source.run(pod, store).await,
        }
    }
}
