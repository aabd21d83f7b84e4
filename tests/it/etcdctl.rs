//! The `etcdctl` 3.5 binary against our server: its output is what operators
//! and scripts parse, so the shapes and values must match etcd's.

use crate::support::{b64, json, json_keys, ok_stdout, stdout, TestServer};

#[tokio::test]
async fn put_get_del() {
    let srv = TestServer::start().await;
    assert_eq!(ok_stdout(&srv.etcdctl(&["put", "foo", "bar"])), "OK\n");
    assert_eq!(ok_stdout(&srv.etcdctl(&["get", "foo"])), "foo\nbar\n");
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["get", "foo", "--print-value-only"])),
        "bar\n"
    );
    // A missing key prints nothing and succeeds.
    assert_eq!(ok_stdout(&srv.etcdctl(&["get", "nope"])), "");
    // --prev-kv on put prints OK then the previous pair.
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["put", "foo", "baz", "--prev-kv"])),
        "OK\nfoo\nbar\n"
    );
    assert_eq!(ok_stdout(&srv.etcdctl(&["del", "foo"])), "1\n");
    assert_eq!(ok_stdout(&srv.etcdctl(&["del", "foo"])), "0\n");
    ok_stdout(&srv.etcdctl(&["put", "p/1", "a"]));
    ok_stdout(&srv.etcdctl(&["put", "p/2", "b"]));
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["del", "p/", "--prefix", "--prev-kv"])),
        "2\np/1\na\np/2\nb\n"
    );
}

#[tokio::test]
async fn get_prefix_limit_sort_and_keys_only() {
    let srv = TestServer::start().await;
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3"), ("a", "11")] {
        ok_stdout(&srv.etcdctl(&["put", k, v]));
    }
    // a: mod 5, b: mod 3, c: mod 4
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["get", "", "--prefix"])),
        "a\n11\nb\n2\nc\n3\n"
    );
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["get", "", "--prefix", "--limit=2"])),
        "a\n11\nb\n2\n"
    );
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["get", "", "--prefix", "--sort-by=MODIFY", "--order=DESCEND"])),
        "a\n11\nc\n3\nb\n2\n"
    );
    assert_eq!(
        ok_stdout(&srv.etcdctl(&[
            "get",
            "",
            "--prefix",
            "--limit=1",
            "--sort-by=KEY",
            "--order=DESCEND"
        ])),
        "c\n3\n"
    );
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["get", "", "--prefix", "--sort-by=VALUE"])),
        "a\n11\nb\n2\nc\n3\n"
    );
    // --keys-only prints each key followed by an empty line.
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["get", "", "--prefix", "--keys-only"])),
        "a\n\nb\n\nc\n\n"
    );
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["get", "b", "--from-key"])),
        "b\n2\nc\n3\n"
    );
    assert_eq!(ok_stdout(&srv.etcdctl(&["get", "a", "c"])), "a\n11\nb\n2\n");
}

#[tokio::test]
async fn get_json_has_header_and_base64_kvs() {
    let srv = TestServer::start().await;
    ok_stdout(&srv.etcdctl(&["put", "foo", "bar"]));
    ok_stdout(&srv.etcdctl(&["put", "foo", "baz"]));
    let put = json(&ok_stdout(&srv.etcdctl(&["put", "k2", "v", "-w", "json"])));
    let h = &put["header"];
    assert_eq!(
        json_keys(h),
        ["cluster_id", "member_id", "revision", "raft_term"]
    );
    assert_ne!(h["cluster_id"].as_u64().unwrap(), 0);
    assert_ne!(h["member_id"].as_u64().unwrap(), 0);
    assert_eq!(h["revision"].as_i64().unwrap(), 4);
    assert_eq!(
        json_keys(&put),
        ["header"],
        "no prev_kv field when not asked"
    );

    let j = json(&ok_stdout(&srv.etcdctl(&["get", "foo", "-w", "json"])));
    assert_eq!(json_keys(&j), ["header", "kvs", "count"]);
    assert_eq!(j["header"]["revision"].as_i64().unwrap(), 4);
    assert_eq!(
        j["header"]["member_id"].as_u64().unwrap(),
        h["member_id"].as_u64().unwrap()
    );
    assert_eq!(j["count"].as_i64().unwrap(), 1);
    let kv = &j["kvs"][0];
    // Zero fields (lease) are omitted; key and value are base64.
    assert_eq!(
        json_keys(kv),
        ["key", "create_revision", "mod_revision", "version", "value"]
    );
    assert_eq!(kv["key"].as_str().unwrap(), "Zm9v");
    assert_eq!(b64(&kv["value"]), b"baz");
    assert_eq!(
        (
            kv["create_revision"].as_i64().unwrap(),
            kv["mod_revision"].as_i64().unwrap(),
            kv["version"].as_i64().unwrap()
        ),
        (2, 3, 2)
    );
    // A miss: no kvs, no count (omitted when zero), more absent.
    let j = json(&ok_stdout(&srv.etcdctl(&["get", "nope", "-w", "json"])));
    assert_eq!(json_keys(&j), ["header"]);
    // --limit sets more.
    let j = json(&ok_stdout(&srv.etcdctl(&[
        "get",
        "",
        "--prefix",
        "--limit=1",
        "-w",
        "json",
    ])));
    assert_eq!(json_keys(&j), ["header", "kvs", "more", "count"]);
    assert_eq!(j["more"], true);
    assert_eq!(j["count"].as_i64().unwrap(), 2);
    assert_eq!(b64(&j["kvs"][0]["key"]), b"foo");
}

#[tokio::test]
async fn get_rev_and_compact() {
    let srv = TestServer::start().await;
    for v in ["v1", "v2", "v3"] {
        ok_stdout(&srv.etcdctl(&["put", "k", v])); // 2, 3, 4
    }
    assert_eq!(ok_stdout(&srv.etcdctl(&["get", "k", "--rev=2"])), "k\nv1\n");
    assert_eq!(ok_stdout(&srv.etcdctl(&["get", "k", "--rev=3"])), "k\nv2\n");
    assert_eq!(ok_stdout(&srv.etcdctl(&["get", "k", "--rev=1"])), "");
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["compact", "3"])),
        "compacted revision 3\n"
    );
    let o = srv.etcdctl(&["get", "k", "--rev=2"]);
    assert!(!o.status.success());
    assert_eq!(stdout(&o), "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("Error: etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );
    let o = srv.etcdctl(&["get", "k", "--rev=99"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("Error: etcdserver: mvcc: required revision is a future revision"));
    let o = srv.etcdctl(&["compact", "3"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("Error: etcdserver: mvcc: required revision has been compacted"));
    assert_eq!(
        ok_stdout(&srv.etcdctl(&["compact", "4", "--physical"])),
        "compacted revision 4\n"
    );
    assert_eq!(ok_stdout(&srv.etcdctl(&["get", "k", "--rev=4"])), "k\nv3\n");
}

#[tokio::test]
async fn txn_interactive_via_stdin() {
    let srv = TestServer::start().await;
    ok_stdout(&srv.etcdctl(&["put", "a", "11"])); // 2
    ok_stdout(&srv.etcdctl(&["put", "b", "2"])); // 3
                                                 // Non-interactive mode (no -i): compares, blank line, success ops,
                                                 // blank line, failure ops, blank line. Output: SUCCESS|FAILURE, a blank
                                                 // line, then each op's output followed by a blank line.
    let input = "value(\"a\") = \"11\"\n\nput x yes\nget a\n\nput x no\n\n";
    assert_eq!(
        ok_stdout(&srv.etcdctl_stdin(&["txn"], input)),
        "SUCCESS\n\nOK\n\na\n11\n"
    );
    assert_eq!(ok_stdout(&srv.etcdctl(&["get", "x"])), "x\nyes\n");
    let input = "mod(\"a\") > \"100\"\nversion(\"b\") = \"1\"\n\nput x yes\n\nput x no\ndel b\n\n";
    assert_eq!(
        ok_stdout(&srv.etcdctl_stdin(&["txn"], input)),
        "FAILURE\n\nOK\n\n1\n"
    );
    assert_eq!(ok_stdout(&srv.etcdctl(&["get", "x"])), "x\nno\n");
    assert_eq!(ok_stdout(&srv.etcdctl(&["get", "b"])), "");
    // JSON: succeeded is omitted when false; one shared revision.
    let input = "create(\"nokey\") > \"0\"\n\nput y 1\n\nput y 2\nput z 3\n\n";
    let j = json(&ok_stdout(
        &srv.etcdctl_stdin(&["txn", "-w", "json"], input),
    ));
    assert_eq!(json_keys(&j), ["header", "responses"]);
    assert_eq!(j["header"]["revision"].as_i64().unwrap(), 6);
    let rs = j["responses"].as_array().unwrap();
    assert_eq!(rs.len(), 2);
    let put = &rs[1]["Response"]["response_put"];
    assert_eq!(put["header"]["revision"].as_i64().unwrap(), 6);
    // Interactive mode prints prompts on stdout before the result.
    let input = "value(\"y\") = \"2\"\n\nput w 1\n\n\n";
    assert_eq!(
        ok_stdout(&srv.etcdctl_stdin(&["txn", "-i"], input)),
        "compares:\nsuccess requests (get, put, del):\nfailure requests (get, put, del):\nSUCCESS\n\nOK\n"
    );
}

#[tokio::test]
async fn endpoint_status_and_health() {
    let srv = TestServer::start().await;
    ok_stdout(&srv.etcdctl(&["put", "k", "v"]));
    // Table: endpoint, id (hex), version, db size, is leader, is learner,
    // raft term, raft index, raft applied index, errors.
    let out = ok_stdout(&srv.etcdctl(&["endpoint", "status"]));
    let host = srv.endpoint();
    // Note the trailing ", " (empty errors column) before the newline.
    let fields: Vec<&str> = out.strip_suffix('\n').unwrap().split(", ").collect();
    assert_eq!(fields.len(), 10, "{out:?}");
    assert_eq!(fields[0], host);
    assert!(u64::from_str_radix(fields[1], 16).unwrap() != 0, "{out}");
    assert!(fields[2].starts_with("3.5."), "version {}", fields[2]);
    assert!(
        [" B", " kB", " MB"].iter().any(|u| fields[3].ends_with(u)),
        "{out}"
    );
    assert_eq!(
        (fields[4], fields[5]),
        ("true", "false"),
        "single member leads"
    );
    assert!(fields[6].parse::<u64>().unwrap() >= 1);
    assert!(fields[7].parse::<u64>().unwrap() >= 1);
    assert!(fields[8].parse::<u64>().unwrap() >= 1);
    assert_eq!(fields[9], "");

    let j = json(&ok_stdout(
        &srv.etcdctl(&["endpoint", "status", "-w", "json"]),
    ));
    let e = &j[0];
    assert_eq!(e["Endpoint"].as_str().unwrap(), host);
    let st = &e["Status"];
    assert!(st["version"].as_str().unwrap().starts_with("3.5."));
    let member = st["header"]["member_id"].as_u64().unwrap();
    assert_eq!(
        format!("{member:x}"),
        fields[1],
        "table id is member_id in hex"
    );
    assert_eq!(st["leader"].as_u64().unwrap(), member);
    assert_eq!(st["header"]["revision"].as_i64().unwrap(), 2);
    assert!(st["dbSize"].as_i64().unwrap() > 0);
    assert!(st["raftIndex"].as_u64().unwrap() >= 1);
    assert!(st["raftAppliedIndex"].as_u64().unwrap() >= 1);

    let out = ok_stdout(&srv.etcdctl(&["endpoint", "health"]));
    let prefix = format!("{host} is healthy: successfully committed proposal: took = ");
    assert!(out.starts_with(&prefix), "{out:?}");
    assert!(out.ends_with('\n') && out.lines().count() == 1, "{out:?}");
}
