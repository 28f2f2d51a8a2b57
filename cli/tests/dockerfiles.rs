//! Every image's Dockerfile agrees with the crate it builds, docs/CONVENTIONS.md and the
//! manifests: binary names, USER, EXPOSEd ports, image names, and the shape scripts/images.sh
//! relies on (build arguments BASE and BINARY). `scripts/images.sh build check` then builds the
//! images and checks that they carry what the Dockerfiles say (CI does).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Instructions of a Dockerfile, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                if let Some((op, args)) = current.trim().split_once(char::is_whitespace) {
                    out.push((op.to_ascii_uppercase(), args.trim().to_string()));
                }
                current.clear();
            }
        }
    }
    out
}

fn one<'a>(ins: &'a [(String, String)], op: &str, what: &str) -> Vec<&'a str> {
    let found: Vec<&str> = ins
        .iter()
        .filter(|(o, _)| o == op)
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(!found.is_empty(), "{what}: no {op}");
    found
}

/// `name = "..."` of the crate's package and of its `[[bin]]`.
fn crate_names(dir: &str) -> (String, String) {
    let toml = read(&format!("{dir}/Cargo.toml"));
    let names: Vec<String> = toml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("name = \""))
        .map(|l| l.trim_end_matches('"').to_string())
        .collect();
    let package = names[0].clone();
    let bin_at = toml
        .find("[[bin]]")
        .unwrap_or_else(|| panic!("{dir}: no [[bin]]"));
    let bin = toml[bin_at..]
        .lines()
        .find_map(|l| l.trim().strip_prefix("name = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    (package, bin)
}

/// A value from the CONVENTIONS table: the first number in the row named `what`.
fn convention(what: &str) -> String {
    let text = read("docs/CONVENTIONS.md");
    let row = text
        .lines()
        .find(|l| l.starts_with(&format!("| {what} |")))
        .unwrap_or_else(|| panic!("CONVENTIONS has no row {what:?}"));
    row.split('|').nth(2).unwrap().trim().to_string()
}

fn first_number(s: &str) -> u16 {
    let digits: String = s
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number in {s:?}"))
}

fn version() -> String {
    let toml = read("Cargo.toml");
    let at = toml.find("[workspace.package]").unwrap();
    toml[at..]
        .lines()
        .find_map(|l| l.trim().strip_prefix("version = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string()
}

/// `ghcr.io/portcullis-dev/<binary>:<version>` from CONVENTIONS.
fn image(binary: &str) -> String {
    let pattern = convention("images").trim_matches('`').to_string();
    assert!(
        pattern.contains("<binary>") && pattern.contains("<version>"),
        "{pattern}"
    );
    pattern
        .replace("<binary>", binary)
        .replace("<version>", &version())
}

fn deployment(rel: &str) -> serde_json::Value {
    serde_saphyr::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

const DISTROLESS: &str = "gcr.io/distroless/cc-debian12:nonroot";

struct Image {
    dir: &'static str,
    /// The runtime base a real build pulls (`ARG BASE`).
    base: &'static str,
    user: Option<(u16, u16)>,
    ports: Vec<u16>,
}

fn images() -> Vec<Image> {
    let proxy_uid = first_number(&convention("proxy UID (and GID)"));
    let port = |what: &str| first_number(&convention(what));
    let pod = |rel: &str| {
        let d = deployment(rel);
        let sc = &d["spec"]["template"]["spec"]["securityContext"];
        let user = (
            sc["runAsUser"].as_u64().unwrap() as u16,
            sc["runAsGroup"].as_u64().unwrap() as u16,
        );
        let ports: Vec<u16> = d["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["containerPort"].as_u64().unwrap() as u16)
            .collect();
        (user, ports)
    };
    let (controller_user, controller_ports) = pod("manifests/base/controller/deployment.yaml");
    let (injector_user, injector_ports) = pod("manifests/base/injector/deployment.yaml");
    assert_eq!(
        controller_ports,
        vec![port("controller table API"), port("controller admin")]
    );
    vec![
        Image {
            dir: "proxy",
            base: DISTROLESS,
            user: Some((proxy_uid, proxy_uid)),
            ports: vec![
                port("proxy inbound listener"),
                port("proxy outbound listener"),
                port("proxy admin listener"),
            ],
        },
        Image {
            dir: "controller",
            base: DISTROLESS,
            user: Some(controller_user),
            ports: controller_ports,
        },
        Image {
            dir: "injector-webhook",
            base: DISTROLESS,
            user: Some(injector_user),
            ports: injector_ports,
        },
        // Root with NET_ADMIN/NET_RAW (set by the injector): it installs iptables rules and exits.
        Image {
            dir: "init-iptables",
            base: "debian:bookworm-slim",
            user: None,
            ports: vec![],
        },
    ]
}

/// Directories of optional components with a Dockerfile that scripts/images.sh does not build.
const OPTIONAL: &[&str] = &["node-guard"];

#[test]
fn every_binary_that_runs_in_the_cluster_has_a_dockerfile() {
    let mut found = BTreeSet::new();
    for entry in fs::read_dir(repo()).unwrap() {
        let dir = entry.unwrap().path();
        if dir.join("Dockerfile").is_file() {
            found.insert(dir.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    let mut expected: BTreeSet<String> = images().iter().map(|i| i.dir.to_string()).collect();
    // Optional components, whose images users build from their Dockerfile as it is; not yet
    // built and run by scripts/images.sh (docs/images.md says so).
    expected.extend(OPTIONAL.iter().map(|d| d.to_string()));
    assert_eq!(found, expected);
}

#[test]
fn dockerfiles_build_the_same_way_and_match_conventions_and_manifests() {
    let mut builders = BTreeSet::new();
    for img in images() {
        let path = format!("{}/Dockerfile", img.dir);
        let text = read(&path);
        let ins = instructions(&text);
        let (package, bin) = crate_names(img.dir);
        assert!(bin.starts_with("portcullis-"), "{path}: binary {bin}");

        // Stages: `build` (cargo, the default), `prebuilt` (the binary from the build context,
        // what scripts/images.sh builds with), `binary` (the one BINARY names), then the runtime
        // image on BASE. Users and the tests build the same file; only build arguments differ.
        let froms = one(&ins, "FROM", &path);
        assert_eq!(
            froms[1..],
            ["scratch AS prebuilt", "${BINARY} AS binary", "${BASE}"],
            "{path}: build, prebuilt, binary and runtime stages"
        );
        builders.insert(froms[0].to_string());
        assert!(froms[0].ends_with(" AS build"), "{path}: {}", froms[0]);
        let args = one(&ins, "ARG", &path);
        assert_eq!(
            args,
            [format!("BASE={}", img.base), "BINARY=build".to_string()],
            "{path}: the runtime base and the build stage by default"
        );
        let runs = one(&ins, "RUN", &path);
        let run = runs[0];
        assert_eq!(
            run,
            format!("cargo build --release --locked -p {package} --bin {bin}"),
            "{path}"
        );
        let built = format!("/src/target/release/{bin}");
        assert_eq!(
            one(&ins, "COPY", &path)[1..],
            [
                format!("{bin} {built}"),
                format!("--from=binary {built} /usr/local/bin/{bin}")
            ],
            "{path}: the prebuilt binary where the build stage leaves its own"
        );
        // scripts/images.sh builds this Dockerfile, for this binary, on a stand-in for BASE.
        let script = read("scripts/images.sh");
        assert!(
            script.contains(&format!("    {}:{bin}:$base_", img.dir)),
            "scripts/images.sh does not build {path}"
        );
        // The proxy's file capability (CONVENTIONS: `setcap cap_net_admin+p`, never +ep).
        let setcap = runs
            .iter()
            .any(|r| r.contains(&format!("setcap cap_net_admin+p /src/target/release/{bin}")));
        assert_eq!(setcap, img.dir == "proxy", "{path}: setcap cap_net_admin+p");
        assert!(
            !runs.iter().any(|r| r.contains("+ep") || r.contains("=ep")),
            "{path}: an effective file capability breaks exec"
        );
        let users: Vec<&str> = ins
            .iter()
            .filter(|(o, _)| o == "USER")
            .map(|(_, a)| a.as_str())
            .collect();
        match img.user {
            Some((uid, gid)) => assert_eq!(users, vec![format!("{uid}:{gid}")], "{path}"),
            None => assert!(users.is_empty(), "{path}: {users:?}"),
        }
        let exposed: Vec<u16> = ins
            .iter()
            .filter(|(o, _)| o == "EXPOSE")
            .flat_map(|(_, a)| a.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
            .collect();
        assert_eq!(exposed, img.ports, "{path}");
        // The build command in the header builds the image the manifests and the injector use.
        let tag = format!("docker build -f {path} -t {} .", image(&bin));
        assert!(text.contains(&tag), "{path}: header should say `{tag}`");
    }
    assert_eq!(
        builders.len(),
        1,
        "one toolchain image for all: {builders:?}"
    );
}

#[test]
fn manifests_and_injector_defaults_name_the_images_that_are_built() {
    for (manifest, dir) in [
        ("manifests/base/controller/deployment.yaml", "controller"),
        (
            "manifests/base/injector/deployment.yaml",
            "injector-webhook",
        ),
    ] {
        let d = deployment(manifest);
        let (_, bin) = crate_names(dir);
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap(),
            image(&bin),
            "{manifest}"
        );
    }
    // The injector's defaults for the images it injects: `<prefix>` + its own crate version.
    let main = read("injector-webhook/src/main.rs");
    for dir in ["proxy", "init-iptables"] {
        let (_, bin) = crate_names(dir);
        let prefix = image(&bin).replace(&version(), "");
        let default = format!("concat!(\"{prefix}\", env!(\"CARGO_PKG_VERSION\"))");
        assert!(
            main.contains(&default),
            "injector default for {bin}: {default}"
        );
    }
}
