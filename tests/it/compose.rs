//! The container image and `deploy/docker-compose.yml`, on this machine's
//! Docker Engine: three oxcd containers on a private bridge network, peers
//! found by service name through Docker's DNS, client ports published on
//! the host's loopback, driven from the host with etcdctl.
//!
//! 1. `deploy/build-image.sh oxcd:it` (the static release build is cached in
//!    `$CARGO_TARGET_DIR/image`; set `OXCD_IMAGE_SKIP_BUILD=1` to reuse it as
//!    is), then `docker-compose -p <unique> up -d`; waits until every
//!    container's healthcheck (`oxcd probe`) says healthy and prints
//!    `COMPOSE_HEALTHY <seconds>`.
//! 2. A write through every member, read back through every member.
//! 3. `docker kill` one member: writes through the others still succeed;
//!    `docker start` it: it converges (every key, value, revision equal).
//! 4. `docker network disconnect` the leader: the other two elect a new one
//!    and take writes; reconnect: the old leader rejoins and converges.
//! 5. `docker-compose down -v`, also when the test fails (a drop guard).
//!
//! Skipped, with a message, only when no Docker daemon answers (and when the
//! suite runs against etcd: this is oxcd's image). Every wait is bounded.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    b64, etcdctl_at, json, ok_stdout, reserve_ports, run_bounded, target, Target,
};

const IMAGE: &str = "oxcd:it";
/// How long the whole cluster may take to report healthy.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on a new leader, and on a member catching up.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn docker_available() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `docker-compose` (v1, Debian's) if present, else `docker compose` (v2).
fn compose_cmd() -> Vec<String> {
    let v1 = Command::new("docker-compose")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if v1 {
        vec!["docker-compose".into()]
    } else {
        vec!["docker".into(), "compose".into()]
    }
}

/// Runs a command with no stdin, bounded, and returns its output.
fn run(program: &str, args: &[&str], envs: &[(String, String)], limit: Duration) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    run_bounded(cmd, "", limit)
}

fn must(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn docker(args: &[&str]) -> String {
    must(
        run("docker", args, &[], Duration::from_secs(60)),
        &format!("docker {}", args.join(" ")),
    )
}

/// A compose project: its name, file, host ports; `down -v` on drop.
struct Project {
    name: String,
    file: PathBuf,
    compose: Vec<String>,
    env: Vec<(String, String)>,
    /// Host client port of oxcd-1..3.
    ports: Vec<u16>,
}

impl Project {
    fn compose(&self, args: &[&str], limit: Duration) -> Output {
        let file = self.file.to_string_lossy().into_owned();
        let mut all: Vec<&str> = self.compose[1..].iter().map(String::as_str).collect();
        all.extend(["-p", &self.name, "-f", &file]);
        all.extend_from_slice(args);
        run(&self.compose[0], &all, &self.env, limit)
    }

    /// The container id of a service (`oxcd-1`..).
    fn container(&self, service: &str) -> String {
        must(
            self.compose(&["ps", "-q", service], Duration::from_secs(30)),
            "compose ps",
        )
    }

    fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    fn endpoints(&self) -> String {
        (0..3)
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn health(&self, service: &str) -> String {
        let id = self.container(service);
        docker(&[
            "inspect",
            "--format",
            "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}",
            &id,
        ])
    }

    fn logs(&self) -> String {
        let o = self.compose(
            &["logs", "--no-color", "--tail", "60"],
            Duration::from_secs(30),
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    /// Waits until each of `services` is healthy; the time it took.
    fn wait_healthy(&self, services: &[&str], limit: Duration) -> Duration {
        let start = Instant::now();
        let mut last = Vec::new();
        while start.elapsed() < limit {
            last = services.iter().map(|s| (*s, self.health(s))).collect();
            if last.iter().all(|(_, h)| h == "healthy") {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("not healthy within {limit:?}: {last:?}\n{}", self.logs());
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- compose logs ---\n{}", self.logs());
        }
        let o = self.compose(&["down", "-v", "--timeout", "5"], Duration::from_secs(120));
        if !o.status.success() {
            eprintln!(
                "compose down -v failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

fn build_image() {
    let started = Instant::now();
    // A cold static release build takes minutes on two cores; later runs
    // reuse the cache in $CARGO_TARGET_DIR/image.
    let mut cmd = Command::new(repo().join("deploy/build-image.sh"));
    cmd.arg(IMAGE)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The variables cargo sets for a test process (CARGO_PKG_*,
    // CARGO_MANIFEST_*, OUT_DIR, ...) would reach the inner
    // cargo and rustc and make the cached release build look stale.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if (k == "CARGO" || k.starts_with("CARGO_") || k == "OUT_DIR" || k == "LD_LIBRARY_PATH")
            && k != "CARGO_HOME"
            && k != "CARGO_TARGET_DIR"
        {
            cmd.env_remove(&*k);
        }
    }
    must(
        run_bounded(cmd, "", Duration::from_secs(40 * 60)),
        "deploy/build-image.sh",
    );
    eprintln!("image built in {:.1?}", started.elapsed());
}

/// Puts through one member with etcdctl.
fn put(ep: &str, key: &str, value: &str) {
    let out = etcdctl_at(ep, &["put", key, value]);
    assert_eq!(ok_stdout(&out).trim(), "OK");
}

/// Everything one member holds, read locally: (revision, [(key, value,
/// create, mod, version)]).
type State = (i64, Vec<(Vec<u8>, Vec<u8>, i64, i64, i64)>);

fn state(ep: &str) -> Result<State, String> {
    let out = etcdctl_at(
        ep,
        &["get", "", "--from-key", "--consistency=s", "-w", "json"],
    );
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v = json(&String::from_utf8_lossy(&out.stdout));
    let rev = v["header"]["revision"].as_i64().unwrap();
    let kvs = v["kvs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|kv| {
                    (
                        b64(&kv["key"]),
                        b64(&kv["value"]),
                        kv["create_revision"].as_i64().unwrap(),
                        kv["mod_revision"].as_i64().unwrap(),
                        kv["version"].as_i64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((rev, kvs))
}

/// Waits until every listed member holds the same state; returns it.
fn wait_converged(p: &Project, members: &[usize], limit: Duration) -> State {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        let states: Vec<Result<State, String>> =
            members.iter().map(|&i| state(&p.endpoint(i))).collect();
        if let Some(Ok(first)) = states.first() {
            if states.iter().all(|s| s.as_ref() == Ok(first)) {
                return first.clone();
            }
        }
        last = states
            .iter()
            .map(|s| match s {
                Ok((rev, kvs)) => format!("rev {rev}, {} keys", kvs.len()),
                Err(e) => e.clone(),
            })
            .collect::<Vec<_>>()
            .join(" | ");
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!(
        "members {members:?} did not converge in {limit:?}: {last}\n{}",
        p.logs()
    );
}

/// (own member id, leader id) of a member, from `endpoint status`.
fn status(ep: &str) -> Option<(u64, u64)> {
    let out = etcdctl_at(ep, &["endpoint", "status", "-w", "json"]);
    if !out.status.success() {
        return None;
    }
    let v = json(&String::from_utf8_lossy(&out.stdout));
    let s = &v[0]["Status"];
    Some((s["header"]["member_id"].as_u64()?, s["leader"].as_u64()?))
}

/// Waits until the listed members agree on a leader among themselves;
/// returns its index.
fn wait_leader(p: &Project, members: &[usize], limit: Duration) -> usize {
    let start = Instant::now();
    let mut last = Vec::new();
    while start.elapsed() < limit {
        last = members
            .iter()
            .map(|&i| (i, status(&p.endpoint(i))))
            .collect();
        let leader = last
            .iter()
            .find(|(_, s)| matches!(s, Some((id, l)) if id == l))
            .map(|(i, s)| (*i, s.unwrap().0));
        if let Some((li, lid)) = leader {
            if last
                .iter()
                .all(|(_, s)| matches!(s, Some((_, l)) if *l == lid))
            {
                return li;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!(
        "no agreed leader among {members:?} in {limit:?}: {last:?}\n{}",
        p.logs()
    );
}

#[test]
fn three_members_in_docker_compose() {
    if target() == Target::Etcd {
        eprintln!("compose test skipped: it tests oxcd's image, not etcd");
        return;
    }
    if !docker_available() {
        eprintln!("compose test SKIPPED: no Docker daemon reachable (`docker info` failed)");
        return;
    }
    build_image();

    let ports = reserve_ports(3);
    let name = format!("oxcdit{}x{}", std::process::id(), ports[0]);
    let mut env: Vec<(String, String)> = vec![("OXCD_IMAGE".into(), IMAGE.into())];
    for (i, port) in ports.iter().enumerate() {
        env.push((format!("OXCD_PORT_{}", i + 1), port.to_string()));
    }
    let p = Project {
        name,
        file: repo().join("deploy/docker-compose.yml"),
        compose: compose_cmd(),
        env,
        ports,
    };
    let services = ["oxcd-1", "oxcd-2", "oxcd-3"];

    // 1. Up, and healthy.
    let up = Instant::now();
    must(
        p.compose(&["up", "-d"], Duration::from_secs(180)),
        "compose up",
    );
    p.wait_healthy(&services, HEALTHY_TIMEOUT);
    let healthy = up.elapsed();
    eprintln!(
        "COMPOSE_HEALTHY {:.1}s from `up -d` to all three healthy",
        healthy.as_secs_f64()
    );
    let size = docker(&["image", "inspect", "--format", "{{.Size}}", IMAGE]);
    eprintln!("IMAGE_SIZE {size} bytes");
    // Non-root, as built.
    let user = docker(&[
        "inspect",
        "--format",
        "{{.Config.User}}",
        &p.container("oxcd-1"),
    ]);
    assert_eq!(user, "10001:10001");

    // 2. A write through each member, read back through each member.
    for i in 0..3 {
        put(&p.endpoint(i), &format!("k{i}"), &format!("v{i}"));
    }
    for i in 0..3 {
        let out = ok_stdout(&etcdctl_at(&p.endpoint(i), &["get", "k", "--prefix"]));
        assert_eq!(out, "k0\nv0\nk1\nv1\nk2\nv2\n", "read through member {i}");
    }
    // The members found each other by name.
    let members = ok_stdout(&etcdctl_at(&p.endpoint(0), &["member", "list"]));
    for s in services {
        assert!(members.contains(&format!("http://{s}:2380")), "{members}");
    }

    // 3. Kill one member; the other two keep taking writes; it comes back
    // and holds exactly what they hold. If it led, writes fail ("leader
    // changed", as on etcd) until the other two elect a leader: wait for it.
    let victim = p.container("oxcd-3");
    docker(&["kill", &victim]);
    wait_leader(&p, &[0, 1], CONVERGE_TIMEOUT);
    for n in 0..20 {
        put(
            &p.endpoint(n % 2),
            &format!("during-kill/{n:02}"),
            &format!("x{n}"),
        );
    }
    docker(&["start", &victim]);
    p.wait_healthy(&["oxcd-3"], HEALTHY_TIMEOUT);
    let (rev, kvs) = wait_converged(&p, &[0, 1, 2], CONVERGE_TIMEOUT);
    assert_eq!(kvs.len(), 23, "3 + 20 keys");
    assert!(rev >= 24, "revision {rev}");

    // 4. Cut the leader off the network: the others elect a new one and
    // take writes; reconnected, the old leader rejoins and converges.
    let old = wait_leader(&p, &[0, 1, 2], CONVERGE_TIMEOUT);
    let old_service = services[old];
    let old_id = p.container(old_service);
    let network = docker(&[
        "inspect",
        "--format",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}",
        &old_id,
    ]);
    assert!(!network.is_empty() && !network.contains(' '), "{network}");
    docker(&["network", "disconnect", &network, &old_id]);
    let rest: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let new = wait_leader(&p, &rest, CONVERGE_TIMEOUT);
    assert_ne!(new, old);
    for n in 0..10 {
        put(
            &p.endpoint(rest[n % 2]),
            &format!("during-partition/{n:02}"),
            "y",
        );
    }
    // Reconnect under its service name, as compose attached it.
    docker(&[
        "network",
        "connect",
        "--alias",
        old_service,
        &network,
        &old_id,
    ]);
    p.wait_healthy(&services, HEALTHY_TIMEOUT);
    let leader = wait_leader(&p, &[0, 1, 2], CONVERGE_TIMEOUT);
    let (_, kvs) = wait_converged(&p, &[0, 1, 2], CONVERGE_TIMEOUT);
    assert_eq!(kvs.len(), 33, "23 + 10 keys");
    eprintln!(
        "leader {old_service} cut off; new leader {}; now {}",
        services[new], services[leader]
    );
    put(&p.endpoint(old), "after-rejoin", "z");
    assert_eq!(
        ok_stdout(&etcdctl_at(
            &p.endpoints(),
            &["get", "after-rejoin", "--print-value-only"]
        )),
        "z\n"
    );
    // 5. `down -v`: Project's drop.
}
