//! `portcullis check`: is Portcullis installed and working, and is every pod that should be
//! protected actually protected? Against the cluster of the kubeconfig, as kubectl uses it, in the
//! style of `linkerd check`: one line per check, each with a stable id (`docs/checks.md#<id>`),
//! and every failed line says what to do.
//!
//! `--pre`: before installing (API server reachable, version for native sidecars, RBAC to
//! install, Pod Security of labelled namespaces, other meshes' injectors). Default: after
//! installing (the same, then the control plane, the webhook and its CA, every pod of every
//! labelled namespace, and the node guard on every node; `--proxy`: every proxy ready and on
//! the controller's current table).
//!
//! Never hangs: every request has `--request-timeout`, the whole run `--timeout`.
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | flags, the run (with `--wait` retries), the text and JSON reports |
//! | `ids.rs` | the stable check ids |
//! | `api.rs` | the client, timeouts, readable API errors |
//! | `cluster.rs` | API version, RBAC, control plane, webhook, other meshes |
//! | `pod_security.rs` | Pod Security admission labels against what the injector adds |
//! | `pods.rs` | the data plane: every pod of the labelled namespaces |
//! | `proxies.rs` | `--proxy`: every proxy's `/ready` and table generation |
//! | `node_guard.rs` | nodes without the node guard, and pods with `NET_RAW` on them |
//! | `cnp.rs` | the ClusterNetworkPolicy CRD and its versions; whether the controllers watch CNPs |

mod api;
mod cluster;
mod cnp;
mod ids;
mod node_guard;
mod pod_security;
mod pods;
mod proxies;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::ListParams;
use kube::Api;
use portcullis_contract::parse_duration;
use serde::Serialize;

use crate::render::{paint, ColorChoice};
use api::{humanize, ApiError, Kube};
use ids::Id;

pub const SYSTEM_NAMESPACE: &str = portcullis_contract::keys::SYSTEM_NAMESPACE;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Grouped lines: `√` passed, `‼` warning, `×` failed, with what to do under each.
    Text,
    /// `{"ok":bool,"checks":[{"id","category","status":"ok|warn|fail","message","hint"}]}`
    Json,
}

fn duration(s: &str) -> Result<Duration, portcullis_contract::DurationError> {
    parse_duration(s)
}

#[derive(Args)]
pub struct CheckArgs {
    /// Only the checks to run before installing.
    #[arg(long)]
    pub pre: bool,
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current context).
    #[arg(long)]
    pub context: Option<String>,
    /// Check only this namespace's pods and Pod Security labels (and read only it).
    #[arg(short, long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Also ask every proxy (through the API server's pod proxy): ready, and on the table
    /// generation its controller serves now.
    #[arg(long)]
    pub proxy: bool,
    /// Retry failing checks until they pass or this much time has passed (e.g. 5m).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub wait: Option<Duration>,
    /// Longest wait for one API request, connecting included (as kubectl's --request-timeout).
    #[arg(long, value_name = "DURATION", value_parser = duration, default_value = "10s")]
    pub request_timeout: Duration,
    /// Longest time for the whole check, waiting included (default: 60s, or --wait plus 60s).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub timeout: Option<Duration>,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

/// Without --timeout: this much beyond --wait.
const OVERALL_MARGIN: Duration = Duration::from_secs(60);
/// Between two tries under --wait.
const RETRY_PAUSE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// Stable; `docs/checks.md#<id>` explains it.
    pub id: &'static str,
    pub category: &'static str,
    pub status: Status,
    pub message: String,
    /// What to do, for warnings and failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[derive(Default, Serialize)]
pub struct Report {
    ok: bool,
    checks: Vec<Line>,
}

impl Report {
    pub fn push(&mut self, id: Id, status: Status, message: String, hint: Option<String>) {
        self.checks.push(Line {
            id: id.id,
            category: id.category,
            status,
            message,
            hint,
        });
    }
    pub fn ok(&mut self, id: Id, message: String) {
        self.push(id, Status::Ok, message, None);
    }
    pub fn warn(&mut self, id: Id, message: String, hint: String) {
        self.push(id, Status::Warn, message, Some(hint));
    }
    pub fn fail(&mut self, id: Id, message: String, hint: String) {
        self.push(id, Status::Fail, message, Some(hint));
    }
    /// A failed request: the error's own words and what to do about it.
    pub fn api_fail(&mut self, id: Id, doing: &str, e: &ApiError) {
        self.fail(id, format!("{doing}: {e}"), e.hint());
    }
    fn failed(&self) -> bool {
        self.checks.iter().any(|l| l.status == Status::Fail)
    }
}

pub fn run(args: CheckArgs) -> Result<ExitCode> {
    // One crypto provider (ring, as kube's features pick); see /work/shared/CRATES.md.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(run_within_timeout(&args));
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => print!("{}", text(&report, args.color.enabled())),
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The checks, retried under `--wait`, all within `--timeout`.
async fn run_within_timeout(args: &CheckArgs) -> Report {
    let overall = args
        .timeout
        .unwrap_or_else(|| args.wait.unwrap_or_default().saturating_add(OVERALL_MARGIN));
    let start = Instant::now();
    let mut report = Report::default();
    let mut server = None;
    let finished = tokio::time::timeout(overall, async {
        loop {
            report = Report::default();
            check(args, &mut report, &mut server).await;
            let waited = start.elapsed();
            match args.wait {
                Some(wait) if report.failed() && waited + RETRY_PAUSE < wait => {
                    if args.output == Output::Text {
                        eprintln!(
                            "waiting for the failed checks to pass ({} left of --wait {})",
                            humanize(wait - waited),
                            humanize(wait)
                        );
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                _ => break,
            }
        }
    })
    .await;
    if finished.is_err() {
        let server = server.unwrap_or_else(|| "(not known yet)".into());
        report.fail(
            ids::CHECK_TIMEOUT,
            format!("the check did not finish within {} (--timeout); API server {server}", humanize(overall)),
            "the API server answers too slowly: allow more time with --timeout, or check it with kubectl version".into(),
        );
    }
    report.ok = !report.failed();
    report
}

async fn check(args: &CheckArgs, report: &mut Report, server: &mut Option<String>) {
    let settings = api::Settings {
        kubeconfig: args.kubeconfig.clone(),
        context: args.context.clone(),
        request_timeout: args.request_timeout,
    };
    let kube = match Kube::connect(&settings).await {
        Ok(k) => k,
        Err(e) => return report.api_fail(ids::KUBECONFIG, "cannot configure a client", &e),
    };
    *server = Some(kube.server.clone());
    if !cluster::api_version(&kube, report).await {
        return;
    }
    let Some(namespaces) = namespaces(&kube, args.namespace.as_deref(), report).await else {
        return;
    };
    // The namespaces whose pods are checked: labelled, and the one of -n if given.
    let checked: Vec<&Namespace> = namespaces
        .iter()
        .filter(|n| portcullis_policy::protection::opted_in(n))
        .filter(|n| n.metadata.name.as_deref() != Some(SYSTEM_NAMESPACE))
        .filter(|n| args.namespace.is_none() || n.metadata.name == args.namespace)
        .collect();
    if args.pre {
        cluster::rbac(&kube, report).await;
        cluster::pre_existing(&namespaces, &checked, report);
        pod_security::check(&checked, report);
        cluster::meshes(&kube, &checked, report).await;
        cnp::crd(&kube, report).await;
    } else {
        let version = cluster::control_plane(&kube, &namespaces, report).await;
        cluster::webhook(&kube, report).await;
        cnp::crd(&kube, report).await;
        pod_security::check(&checked, report);
        cluster::meshes(&kube, &checked, report).await;
        if let (Some(ns), true) = (&args.namespace, checked.is_empty()) {
            return report.warn(
                ids::PODS_PROTECTED,
                format!("namespace {ns} is not labelled portcullis.dev/inject=enabled: nothing in it is protected"),
                format!("kubectl label namespace {ns} portcullis.dev/inject=enabled, then restart its workloads"),
            );
        }
        let pods = pods::data_plane(&kube, &checked, version.as_deref(), report).await;
        if args.proxy {
            proxies::check(&kube, &pods, report).await;
            cnp::controllers(&kube, report).await;
        }
        // Cluster-wide reads: not for a check of one namespace.
        if args.namespace.is_none() {
            node_guard::check(&kube, report).await;
        }
    }
}

/// Every namespace; with `-n`, only that one and the system namespace (read one by one, so
/// that a user who may only read their namespace can check it).
async fn namespaces(
    kube: &Kube,
    only: Option<&str>,
    report: &mut Report,
) -> Option<Vec<Namespace>> {
    let api = Api::<Namespace>::all(kube.client.clone());
    let Some(only) = only else {
        return match kube
            .call("list namespaces", api.list(&ListParams::default()))
            .await
        {
            Ok(list) => Some(list.items),
            Err(e) => {
                report.api_fail(ids::NAMESPACES_READABLE, "cannot list namespaces", &e);
                None
            }
        };
    };
    let mut found = Vec::new();
    for name in [only, SYSTEM_NAMESPACE] {
        match kube
            .call(&format!("get namespace {name}"), api.get_opt(name))
            .await
        {
            Ok(Some(ns)) => found.push(ns),
            Ok(None) if name == only => {
                report.fail(
                    ids::NAMESPACES_READABLE,
                    format!("namespace {name} does not exist"),
                    "check the name given to -n/--namespace (kubectl get namespaces)".into(),
                );
                return None;
            }
            Ok(None) => {}
            Err(e) => {
                report.api_fail(
                    ids::NAMESPACES_READABLE,
                    &format!("cannot read namespace {name}"),
                    &e,
                );
                return None;
            }
        }
    }
    Some(found)
}

fn text(report: &Report, color: bool) -> String {
    let mut out = String::new();
    let mut category = "";
    for line in &report.checks {
        if line.category != category {
            if !category.is_empty() {
                out.push('\n');
            }
            category = line.category;
            out.push_str(&format!("{category}\n{}\n", "-".repeat(category.len())));
        }
        let mark = match line.status {
            Status::Ok => paint("√", "\x1b[32m", color),
            Status::Warn => paint("‼", "\x1b[33;1m", color),
            Status::Fail => paint("×", "\x1b[31;1m", color),
        };
        out.push_str(&format!("{mark} {}\n", line.message));
        if let Some(hint) = &line.hint {
            out.push_str(&format!("    {hint}\n"));
            out.push_str(&format!("    see docs/checks.md#{}\n", line.id));
        }
    }
    let verdict = if report.ok { "√" } else { "×" };
    out.push_str(&format!("\nStatus check results are {verdict}\n"));
    out
}
