//! `deploy/`: the Kubernetes manifests, the Helm chart's output and the
//! compose file parse as YAML and use the ports, flags (`ETCD_*` variables)
//! and probe paths the binary serves.
//!
//! helm is not installable here, so the chart is rendered by `render` below:
//! a small evaluator of the Go-template subset the chart keeps to (listed
//! in `deploy/helm/oxcd/README.md`). The probe paths are also asked of a
//! real server, so a renamed endpoint fails here and not in a cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

use crate::support::{target, Target, TestServer};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every document of a multi-document YAML text (empty ones dropped).
fn docs(text: &str, what: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| {
            Value::deserialize(d).unwrap_or_else(|e| panic!("{what} is not YAML: {e}\n{text}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// `v["a"]["b"]...`, panicking with the path when absent.
fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for p in path {
        cur = match p.parse::<usize>() {
            Ok(i) if cur.is_sequence() => &cur[i],
            _ => &cur[*p],
        };
        assert!(!cur.is_null(), "{path:?} missing in {v:?}");
    }
    cur
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The environment of a container as a name → value map.
fn env(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((s(&e["name"]), e["value"].as_str()?.to_string())))
        .collect()
}

/// What every StatefulSet here must say, whichever file produced it.
fn check_statefulset(sts: &Value, name: &str, namespace: &str, replicas: u64) {
    assert_eq!(at(sts, &["spec", "replicas"]).as_u64(), Some(replicas));
    assert_eq!(s(at(sts, &["spec", "podManagementPolicy"])), "Parallel");
    let c = at(sts, &["spec", "template", "spec", "containers", "0"]);
    let ports: BTreeMap<String, u64> = at(c, &["ports"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| (s(&p["name"]), p["containerPort"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        ports,
        BTreeMap::from([
            ("client".into(), 2379),
            ("metrics".into(), 2381),
            ("peer".into(), 2380)
        ])
    );
    for (probe, path) in [
        ("livenessProbe", "/livez"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/livez"),
    ] {
        assert_eq!(s(at(c, &[probe, "httpGet", "path"])), path, "{probe}");
        assert_eq!(s(at(c, &[probe, "httpGet", "port"])), "metrics", "{probe}");
    }
    let e = env(c);
    for (k, v) in [
        ("ETCD_NAME", "$(POD_NAME)"),
        ("ETCD_LISTEN_CLIENT_URLS", "http://0.0.0.0:2379"),
        ("ETCD_LISTEN_PEER_URLS", "http://0.0.0.0:2380"),
        ("ETCD_LISTEN_METRICS_URLS", "http://0.0.0.0:2381"),
        ("ETCD_INITIAL_CLUSTER_STATE", "new"),
        ("ETCD_DATA_DIR", "/var/lib/oxcd"),
    ] {
        assert_eq!(e.get(k).map(String::as_str), Some(v), "{k}");
    }
    let ns = if namespace.is_empty() {
        "$(POD_NAMESPACE)"
    } else {
        namespace
    };
    assert_eq!(
        e["ETCD_INITIAL_ADVERTISE_PEER_URLS"],
        format!("http://$(POD_NAME).{name}.{ns}.svc:2380")
    );
    assert_eq!(
        e["ETCD_ADVERTISE_CLIENT_URLS"],
        format!("http://$(POD_NAME).{name}.{ns}.svc:2379")
    );
    let want: Vec<String> = (0..replicas)
        .map(|i| format!("{name}-{i}=http://{name}-{i}.{name}.{ns}.svc:2380"))
        .collect();
    assert_eq!(e["ETCD_INITIAL_CLUSTER"], want.join(","));
    // Every ETCD_* variable is one the binary reads.
    let known = known_env();
    for k in e.keys().filter(|k| k.starts_with("ETCD_")) {
        assert!(known.contains(k), "{k} is not an oxcd/etcd variable");
    }
    assert_eq!(
        s(at(c, &["volumeMounts", "0", "mountPath"])),
        "/var/lib/oxcd"
    );
    assert_eq!(
        at(
            sts,
            &["spec", "template", "spec", "securityContext", "runAsUser"]
        )
        .as_u64(),
        Some(10001)
    );
    assert_eq!(
        s(at(
            sts,
            &["spec", "volumeClaimTemplates", "0", "metadata", "name"]
        )),
        "data"
    );
}

/// The `ETCD_*` variables `oxcd --help` lists.
fn known_env() -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oxcd"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("ETCD_"))
        .map(str::to_string)
        .collect()
}

fn check_services(docs: &[Value], name: &str) {
    let svcs = kind(docs, "Service");
    let headless = svcs
        .iter()
        .find(|s| s["metadata"]["name"] == name)
        .expect("headless service");
    assert_eq!(s(at(headless, &["spec", "clusterIP"])), "None");
    assert_eq!(
        at(headless, &["spec", "publishNotReadyAddresses"]).as_bool(),
        Some(true)
    );
    let client = svcs
        .iter()
        .find(|s| s["metadata"]["name"] == format!("{name}-client").as_str())
        .expect("client service");
    assert_eq!(
        at(client, &["spec", "ports", "0", "port"]).as_u64(),
        Some(2379)
    );
    let pdb = kind(docs, "PodDisruptionBudget");
    assert_eq!(pdb.len(), 1);
    assert_eq!(at(pdb[0], &["spec", "maxUnavailable"]).as_u64(), Some(1));
}

#[test]
fn kubernetes_manifests() {
    let d = docs(&read("deploy/kubernetes/oxcd.yaml"), "oxcd.yaml");
    let sts = kind(&d, "StatefulSet");
    assert_eq!(sts.len(), 1);
    check_statefulset(sts[0], "oxcd", "", 3);
    check_services(&d, "oxcd");

    let pod = &docs(
        &read("deploy/kubernetes/static-pod/oxcd.yaml"),
        "static-pod/oxcd.yaml",
    )[0];
    assert_eq!(s(&pod["kind"]), "Pod");
    assert_eq!(at(pod, &["spec", "hostNetwork"]).as_bool(), Some(true));
    let c = at(pod, &["spec", "containers", "0"]);
    let cmd: Vec<String> = at(c, &["command"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .collect();
    assert_eq!(cmd[0], "/usr/local/bin/oxcd");
    assert!(cmd.contains(&"--listen-metrics-urls=http://127.0.0.1:2381".to_string()));
    // Every flag is one oxcd accepts.
    let help = String::from_utf8_lossy(
        &std::process::Command::new(env!("CARGO_BIN_EXE_oxcd"))
            .arg("--help")
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    for flag in &cmd[1..] {
        let name = flag.split('=').next().unwrap();
        assert!(
            help.contains(&format!("{name} "))
                || help.contains(&format!("{name}\n"))
                || help.contains(&format!("{name} <")),
            "oxcd has no {name}"
        );
    }
    for (probe, path) in [
        ("livenessProbe", "/livez"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/readyz"),
    ] {
        assert_eq!(s(at(c, &[probe, "httpGet", "path"])), path);
        assert_eq!(at(c, &[probe, "httpGet", "port"]).as_u64(), Some(2381));
        assert_eq!(s(at(c, &[probe, "httpGet", "host"])), "127.0.0.1");
    }
}

#[test]
fn compose_file() {
    let mut d = docs(&read("deploy/docker-compose.yml"), "docker-compose.yml").remove(0);
    // Resolve the `<<: *anchor` merge keys, as compose does.
    d.apply_merge().unwrap();
    let d = &d;
    let services = d["services"].as_mapping().unwrap();
    assert_eq!(services.len(), 3);
    let cluster = "oxcd-1=http://oxcd-1:2380,oxcd-2=http://oxcd-2:2380,oxcd-3=http://oxcd-3:2380";
    let known = known_env();
    for i in 1..=3 {
        let svc = &d["services"][format!("oxcd-{i}").as_str()];
        let e = svc["environment"].as_mapping().unwrap();
        let get = |k: &str| e.get(k).map(s).unwrap_or_default();
        assert_eq!(get("ETCD_NAME"), format!("oxcd-{i}"));
        assert_eq!(get("ETCD_INITIAL_CLUSTER"), cluster);
        assert_eq!(get("ETCD_LISTEN_CLIENT_URLS"), "http://0.0.0.0:2379");
        assert_eq!(
            get("ETCD_ADVERTISE_CLIENT_URLS"),
            format!("http://oxcd-{i}:2379")
        );
        assert_eq!(
            get("ETCD_INITIAL_ADVERTISE_PEER_URLS"),
            format!("http://oxcd-{i}:2380")
        );
        for k in e.keys().map(s) {
            assert!(known.contains(&k), "{k} is not an oxcd/etcd variable");
        }
        let port = s(&svc["ports"][0]);
        assert!(port.starts_with("127.0.0.1:"), "loopback only: {port}");
        let test: Vec<String> = svc["healthcheck"]["test"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(s)
            .collect();
        assert_eq!(test[..3], ["CMD", "/usr/local/bin/oxcd", "probe"]);
        assert_eq!(s(&svc["restart"]), "unless-stopped");
        assert_eq!(
            s(&svc["volumes"][0]),
            format!("oxcd-{i}-data:/var/lib/oxcd")
        );
    }
}

#[test]
fn helm_chart_defaults() {
    let out = render_chart("etcd", "kube-system", &Value::Null);
    // `OXCD_PRINT_CHART=1 cargo test --test it helm_chart_defaults -- --nocapture`
    if std::env::var_os("OXCD_PRINT_CHART").is_some() {
        println!("{out}");
    }
    let d = docs(&out, "rendered chart");
    let sts = kind(&d, "StatefulSet");
    assert_eq!(sts.len(), 1, "{out}");
    check_statefulset(sts[0], "etcd", "kube-system", 3);
    check_services(&d, "etcd");
    let c = at(sts[0], &["spec", "template", "spec", "containers", "0"]);
    assert_eq!(s(&c["image"]), "oxcd:local");
    assert!(c["args"].is_null());
    assert_eq!(env(c)["ETCD_INITIAL_CLUSTER_TOKEN"], "etcd");
    assert_eq!(s(at(c, &["resources", "limits", "memory"])), "1Gi");
    let claim = at(sts[0], &["spec", "volumeClaimTemplates", "0", "spec"]);
    assert!(claim["storageClassName"].is_null());
    assert_eq!(s(at(claim, &["resources", "requests", "storage"])), "2Gi");
}

#[test]
fn helm_chart_values_reach_the_manifests() {
    let values: Value = serde_yaml_ng::from_str(
        r#"
replicas: 5
image: {repository: registry.example/oxcd, tag: "9.9"}
clusterToken: prod-token
storage: {size: 10Gi, storageClassName: fast-ssd}
resources:
  requests: {cpu: "2", memory: 4Gi}
  limits: {memory: 8Gi}
extraArgs: ["--quota-backend-bytes=8589934592", "--snapshot-count=10000"]
"#,
    )
    .unwrap();
    let out = render_chart("kv", "storage", &values);
    let d = docs(&out, "rendered chart");
    let sts = kind(&d, "StatefulSet")[0];
    check_statefulset(sts, "kv", "storage", 5);
    check_services(&d, "kv");
    let c = at(sts, &["spec", "template", "spec", "containers", "0"]);
    assert_eq!(s(&c["image"]), "registry.example/oxcd:9.9");
    let args: Vec<String> = c["args"].as_sequence().unwrap().iter().map(s).collect();
    assert_eq!(
        args,
        ["--quota-backend-bytes=8589934592", "--snapshot-count=10000"]
    );
    assert_eq!(env(c)["ETCD_INITIAL_CLUSTER_TOKEN"], "prod-token");
    assert_eq!(s(at(c, &["resources", "requests", "cpu"])), "2");
    assert_eq!(s(at(c, &["resources", "limits", "memory"])), "8Gi");
    let claim = at(sts, &["spec", "volumeClaimTemplates", "0", "spec"]);
    assert_eq!(s(&claim["storageClassName"]), "fast-ssd");
    assert_eq!(s(at(claim, &["resources", "requests", "storage"])), "10Gi");
    // The extra flags are ones oxcd takes.
    let help = String::from_utf8_lossy(
        &std::process::Command::new(env!("CARGO_BIN_EXE_oxcd"))
            .arg("--help")
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    for a in &args {
        assert!(help.contains(a.split('=').next().unwrap()), "{a}");
    }
}

/// The paths the manifests probe answer 200 on a healthy member's metrics
/// listener (and /health says healthy through `oxcd probe`).
#[tokio::test]
async fn probed_paths_are_served() {
    if target() == Target::Etcd {
        eprintln!("skipped on etcd 3.5.1: /livez and /readyz arrived in 3.5.11");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _s = TestServer::start_with(crate::support::StartOptions {
        args: vec![
            "--listen-metrics-urls".into(),
            format!("http://127.0.0.1:{port}"),
        ],
        ..Default::default()
    })
    .await;
    for path in ["/livez", "/readyz", "/health"] {
        let a = crate::health::get(&format!("http://127.0.0.1:{port}"), path).await;
        assert_eq!(a.status, 200, "{path}: {a:?}");
    }
}

// ------------------------------------------------------------ the renderer

/// Renders every template of `deploy/helm/oxcd` with the chart's
/// values.yaml overlaid by `overrides`, as `helm template` would.
fn render_chart(release: &str, namespace: &str, overrides: &Value) -> String {
    let dir = repo().join("deploy/helm/oxcd");
    let chart: Value = serde_yaml_ng::from_str(&read("deploy/helm/oxcd/Chart.yaml")).unwrap();
    let mut values: Value = serde_yaml_ng::from_str(&read("deploy/helm/oxcd/values.yaml")).unwrap();
    merge(&mut values, overrides);
    let mut root = Mapping::new();
    root.insert("Values".into(), values);
    let mut rel = Mapping::new();
    rel.insert("Name".into(), release.into());
    rel.insert("Namespace".into(), namespace.into());
    root.insert("Release".into(), Value::Mapping(rel));
    let mut ch = Mapping::new();
    ch.insert("Name".into(), chart["name"].clone());
    ch.insert("AppVersion".into(), chart["appVersion"].clone());
    ch.insert("Version".into(), chart["version"].clone());
    root.insert("Chart".into(), Value::Mapping(ch));
    let root = Value::Mapping(root);

    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = String::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        out.push_str(&format!("---\n# Source: {}\n", name_of(&f)));
        out.push_str(&render(&text, &root).unwrap_or_else(|e| panic!("{}: {e}", f.display())));
        out.push('\n');
    }
    out
}

fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Helm's values merge: maps merge key by key, anything else replaces.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(bv) => merge(bv, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (_, Value::Null) => {}
        (b, o) => *b = o.clone(),
    }
}

#[derive(Debug)]
enum Node {
    Text(String),
    Expr(String),
    If(String, Vec<Node>, Vec<Node>),
    Range(Option<String>, String, Vec<Node>),
}

/// Renders a template in the chart's Go-template subset.
fn render(text: &str, root: &Value) -> Result<String, String> {
    let tokens = tokenize(text)?;
    let mut pos = 0;
    let (nodes, stop) = parse(&tokens, &mut pos)?;
    if stop.is_some() {
        return Err(format!("unexpected {stop:?}"));
    }
    let mut out = String::new();
    let mut vars = BTreeMap::new();
    exec(&nodes, root, root, &mut vars, &mut out)?;
    Ok(out)
}

enum Token {
    Text(String),
    Action(String),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut rest = text;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut before = &rest[..start];
        if trim_next {
            before = before.trim_start();
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("unclosed {{")?;
        let mut action = &after[..end];
        if let Some(a) = action.strip_prefix('-') {
            before = before.trim_end();
            action = a;
        }
        trim_next = false;
        if let Some(a) = action.strip_suffix('-') {
            trim_next = true;
            action = a;
        }
        tokens.push(Token::Text(before.to_string()));
        tokens.push(Token::Action(action.trim().to_string()));
        rest = &after[end + 2..];
    }
    tokens.push(Token::Text(if trim_next {
        rest.trim_start().to_string()
    } else {
        rest.to_string()
    }));
    Ok(tokens)
}

/// Parses until `end`/`else` (returned) or the end of the tokens.
fn parse(tokens: &[Token], pos: &mut usize) -> Result<(Vec<Node>, Option<String>), String> {
    let mut nodes = Vec::new();
    while *pos < tokens.len() {
        let t = &tokens[*pos];
        *pos += 1;
        match t {
            Token::Text(s) => nodes.push(Node::Text(s.clone())),
            Token::Action(a) if a == "end" || a == "else" => return Ok((nodes, Some(a.clone()))),
            Token::Action(a) if a.starts_with("if ") => {
                let (then, stop) = parse(tokens, pos)?;
                let otherwise = match stop.as_deref() {
                    Some("else") => {
                        let (e, stop) = parse(tokens, pos)?;
                        if stop.as_deref() != Some("end") {
                            return Err("if/else without end".into());
                        }
                        e
                    }
                    Some("end") => Vec::new(),
                    _ => return Err("if without end".into()),
                };
                nodes.push(Node::If(a[3..].to_string(), then, otherwise));
            }
            Token::Action(a) if a.starts_with("range ") => {
                let spec = a[6..].trim();
                let (var, pipe) = match spec.split_once(":=") {
                    Some((v, p)) => (Some(v.trim().to_string()), p.trim().to_string()),
                    None => (None, spec.to_string()),
                };
                let (body, stop) = parse(tokens, pos)?;
                if stop.as_deref() != Some("end") {
                    return Err("range without end".into());
                }
                nodes.push(Node::Range(var, pipe, body));
            }
            Token::Action(a) => nodes.push(Node::Expr(a.clone())),
        }
    }
    Ok((nodes, None))
}

fn exec(
    nodes: &[Node],
    root: &Value,
    dot: &Value,
    vars: &mut BTreeMap<String, Value>,
    out: &mut String,
) -> Result<(), String> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Expr(e) => out.push_str(&to_text(&eval_pipe(e, root, dot, vars)?)),
            Node::If(cond, then, otherwise) => {
                let branch = if truthy(&eval_pipe(cond, root, dot, vars)?) {
                    then
                } else {
                    otherwise
                };
                exec(branch, root, dot, vars, out)?;
            }
            Node::Range(var, pipe, body) => {
                let list = eval_pipe(pipe, root, dot, vars)?;
                for item in list.as_sequence().cloned().unwrap_or_default() {
                    if let Some(v) = var {
                        vars.insert(v.clone(), item.clone());
                    }
                    exec(body, root, &item, vars, out)?;
                }
            }
        }
    }
    Ok(())
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Tagged(_) => true,
    }
}

fn to_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => serde_yaml_ng::to_string(other).unwrap(),
    }
}

/// `a | f x | g`: each stage's value becomes the next function's last
/// argument.
fn eval_pipe(
    pipe: &str,
    root: &Value,
    dot: &Value,
    vars: &BTreeMap<String, Value>,
) -> Result<Value, String> {
    let mut acc: Option<Value> = None;
    for stage in split_top(pipe, '|') {
        let words = split_top(stage.trim(), ' ');
        let words: Vec<&str> = words
            .iter()
            .map(|w| w.trim())
            .filter(|w| !w.is_empty())
            .collect();
        let (head, args) = words.split_first().ok_or("empty pipeline stage")?;
        let mut argv: Vec<Value> = args
            .iter()
            .map(|a| term(a, root, dot, vars))
            .collect::<Result<_, _>>()?;
        if let Some(prev) = acc.take() {
            argv.push(prev);
        }
        acc = Some(if is_function(head) {
            call(head, &argv)?
        } else if argv.is_empty() {
            term(head, root, dot, vars)?
        } else {
            return Err(format!("{head} is not a function"));
        });
    }
    acc.ok_or_else(|| "empty pipeline".into())
}

fn is_function(w: &str) -> bool {
    matches!(
        w,
        "quote" | "default" | "toYaml" | "nindent" | "indent" | "int" | "until"
    )
}

fn call(f: &str, a: &[Value]) -> Result<Value, String> {
    let n = |v: &Value| -> Result<usize, String> {
        match v {
            Value::Number(n) => n.as_u64().map(|x| x as usize).ok_or("bad number".into()),
            Value::String(s) => s.parse().map_err(|_| format!("not a number: {s}")),
            _ => Err(format!("not a number: {v:?}")),
        }
    };
    let want = |k: usize| -> Result<(), String> {
        if a.len() == k {
            Ok(())
        } else {
            Err(format!("{f} takes {k} arguments, got {}", a.len()))
        }
    };
    Ok(match f {
        "quote" => {
            want(1)?;
            Value::String(format!("{:?}", to_text(&a[0])))
        }
        "default" => {
            want(2)?;
            if truthy(&a[1]) {
                a[1].clone()
            } else {
                a[0].clone()
            }
        }
        "toYaml" => {
            want(1)?;
            Value::String(
                serde_yaml_ng::to_string(&a[0])
                    .unwrap()
                    .trim_end_matches('\n')
                    .to_string(),
            )
        }
        "indent" | "nindent" => {
            want(2)?;
            let pad = " ".repeat(n(&a[0])?);
            let body = to_text(&a[1])
                .lines()
                .map(|l| format!("{pad}{l}"))
                .collect::<Vec<_>>()
                .join("\n");
            Value::String(if f == "nindent" {
                format!("\n{body}")
            } else {
                body
            })
        }
        "int" => {
            want(1)?;
            Value::Number((n(&a[0])? as u64).into())
        }
        "until" => {
            want(1)?;
            Value::Sequence(
                (0..n(&a[0])? as u64)
                    .map(|i| Value::Number(i.into()))
                    .collect(),
            )
        }
        _ => unreachable!(),
    })
}

/// A literal, `.path`, `$.path`, `$var`, or `( pipeline )`.
fn term(
    t: &str,
    root: &Value,
    dot: &Value,
    vars: &BTreeMap<String, Value>,
) -> Result<Value, String> {
    if let Some(inner) = t.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        return eval_pipe(inner, root, dot, vars);
    }
    if let Some(lit) = t.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        return Ok(Value::String(lit.to_string()));
    }
    if let Ok(n) = t.parse::<u64>() {
        return Ok(Value::Number(n.into()));
    }
    let (base, path) = if t == "." {
        (dot, "")
    } else if let Some(p) = t.strip_prefix("$.") {
        (root, p)
    } else if t == "$" {
        (root, "")
    } else if let Some(p) = t.strip_prefix('.') {
        (dot, p)
    } else if t.starts_with('$') {
        let (name, p) = t.split_once('.').unwrap_or((t, ""));
        (
            vars.get(name).ok_or_else(|| format!("undefined {name}"))?,
            p,
        )
    } else {
        return Err(format!("unsupported term {t:?}"));
    };
    let mut cur = base.clone();
    for key in path.split('.').filter(|k| !k.is_empty()) {
        cur = cur.get(key).cloned().unwrap_or(Value::Null);
    }
    Ok(cur)
}

/// Splits on `sep` outside quotes and parentheses.
fn split_top(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0, false, 0);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            c if c == sep && !quoted && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

#[test]
fn renderer_follows_go_templates() {
    let root: Value =
        serde_yaml_ng::from_str("Values: {n: 3, name: x, list: [a, b], empty: ''}").unwrap();
    let r = |t: &str| render(t, &root).unwrap();
    assert_eq!(r("a {{ .Values.name }} b"), "a x b");
    assert_eq!(r("a  {{- .Values.name -}}  b"), "axb");
    assert_eq!(
        r("{{- range $i := until (int .Values.n) }}{{ if $i }},{{ end }}m{{ $i }}{{- end }}"),
        "m0,m1,m2"
    );
    assert_eq!(
        r("{{ range .Values.list }}[{{ . | quote }}]{{ end }}"),
        r#"["a"]["b"]"#
    );
    assert_eq!(
        r("{{ .Values.empty | default .Values.name | quote }}"),
        r#""x""#
    );
    assert_eq!(r("{{ if .Values.empty }}y{{ else }}n{{ end }}"), "n");
    assert_eq!(
        r("k:{{- .Values.list | toYaml | nindent 2 }}"),
        "k:\n  - a\n  - b"
    );
}
