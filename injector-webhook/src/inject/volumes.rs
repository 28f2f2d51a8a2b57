//! The pod volumes the injector adds: the proxy's projected token and the init container's `/run`.

use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, ProjectedVolumeSource, ServiceAccountTokenProjection, Volume,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use portcullis_contract::stream::TOKEN_AUDIENCE;

use crate::config::{InjectorConfig, INIT_RUN_VOLUME_NAME, TOKEN_VOLUME_NAME};

pub(super) fn token_volume(cfg: &InjectorConfig) -> Volume {
    Volume {
        name: TOKEN_VOLUME_NAME.to_string(),
        projected: Some(ProjectedVolumeSource {
            default_mode: None,
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(TOKEN_AUDIENCE.to_string()),
                    expiration_seconds: Some(cfg.token_expiration_seconds),
                    path: "token".to_string(),
                }),
                ..VolumeProjection::default()
            }]),
        }),
        ..Volume::default()
    }
}

pub(super) fn init_run_volume() -> Volume {
    Volume {
        name: INIT_RUN_VOLUME_NAME.to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".to_string()),
            size_limit: Some(K8sQuantity("1Mi".to_string())),
        }),
        ..Volume::default()
    }
}
