use super::api::{ContainerView, FiltersView, MoveResult};
use super::*;
use crate::config::{Config, LiveTree};
use rescon::Registry;

struct World {
    registry: Registry,
    live: LiveTree,
    admin: Admin,
}

fn world() -> World {
    let config = Config::default_config();
    let registry = Registry::new();
    let live = LiveTree::build(&registry, &config.tree).unwrap();
    let filters = FilterTable::from_config(&config.listeners, |p| live.get(p).map(|c| c.id()));
    let admin = Admin::new(registry.root(), Arc::new(filters));
    admin.set_declared(&live);
    World {
        registry,
        live,
        admin,
    }
}

fn get(a: &Admin, path: &str) -> (u16, serde_json::Value) {
    call(a, Method::GET, path, b"")
}

fn call(a: &Admin, m: Method, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let r = a.handle(&m, path, body);
    assert_eq!(r.content_type, JSON);
    (
        r.status.as_u16(),
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {:?}", r.body)),
    )
}

fn container(w: &World, path: &str) -> Container {
    w.live
        .get(&crate::config::ContainerPath::parse(path).unwrap())
        .unwrap()
        .clone()
}

#[test]
fn the_tree_with_attributes_and_usage() {
    let w = world();
    let cgi = container(&w, "cgi");
    let run = cgi
        .create_child("cgi-run-1", Attributes::default())
        .unwrap();
    run.account().add_cpu_ns(2_000_000);
    run.account().add_requests(1);
    let (s, v) = get(&w.admin, "/containers");
    assert_eq!(s, 200);
    let tree: ContainerView = serde_json::from_value(v).unwrap();
    assert_eq!(tree.name, "root");
    assert_eq!(tree.usage_subtree.cpu_ns, 2_000_000);
    let names: Vec<&str> = tree.walk().iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "root",
            "clients",
            "premium",
            "local",
            "site",
            "cgi",
            "cgi-run-1"
        ]
    );
    let cgi_view = tree.walk().into_iter().find(|c| c.name == "cgi").unwrap();
    assert_eq!(cgi_view.attrs["cpu_limit"], "0.3");
    assert_eq!(cgi_view.usage.cpu_ns, 0, "own usage");
    assert_eq!(cgi_view.usage_subtree.requests, 1);
    assert_eq!(cgi_view.child_count, 1);
}

#[test]
fn one_container_by_id_or_path() {
    let w = world();
    let clients = container(&w, "clients");
    let (s, v) = get(&w.admin, &format!("/containers/{}", clients.id()));
    assert_eq!(s, 200);
    let view: ContainerView = serde_json::from_value(v).unwrap();
    assert_eq!(view.children.len(), 2, "one level by default");
    let (_, v) = get(&w.admin, "/containers/clients/premium");
    let view: ContainerView = serde_json::from_value(v).unwrap();
    assert_eq!(view.attrs["class"], "high");
    assert_eq!(view.parent, Some(clients.id().get()));
    let (_, v) = get(&w.admin, "/containers?depth=1");
    let view: ContainerView = serde_json::from_value(v).unwrap();
    assert!(view.children.iter().all(|c| c.children.is_empty()));
    assert_eq!(view.children[0].child_count, 2);

    let (s, v) = get(&w.admin, "/containers/nope");
    assert_eq!(s, 404);
    assert!(
        v["allowed"].as_str().unwrap().contains("clients/premium"),
        "{v}"
    );
    assert_eq!(get(&w.admin, "/containers/0").0, 400);
    assert_eq!(get(&w.admin, "/containers/999999999").0, 404);
    assert_eq!(get(&w.admin, "/containers?depth=-1").0, 400);
    assert_eq!(get(&w.admin, "/nothing").0, 404);
}

#[test]
fn patch_with_json_or_pairs() {
    let w = world();
    let site = container(&w, "site");
    let path = format!("/containers/{}", site.id());
    let (s, v) = call(
        &w.admin,
        Method::PATCH,
        &path,
        br#"{"share": "weight:300", "priority": 50, "max_connections": null}"#,
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["attrs"]["share"], "weight:300");
    assert_eq!(site.attrs().priority.get(), 50);
    let (s, _) = call(
        &w.admin,
        Method::PATCH,
        "/containers/site",
        b"cpu_period=50ms\ncpu_limit=0.5&max_connections=10",
    );
    assert_eq!(s, 200);
    let a = site.attrs();
    assert_eq!(
        a.cpu_limit.unwrap().period(),
        std::time::Duration::from_millis(50)
    );
    assert_eq!(a.limits.max_connections, Some(10));
}

#[test]
fn a_bad_patch_changes_nothing_and_names_the_field() {
    let w = world();
    let site = container(&w, "site");
    let before = site.attrs();
    let (s, v) = call(
        &w.admin,
        Method::PATCH,
        "/containers/site",
        b"priority=7 share=fixed:2",
    );
    assert_eq!(s, 422);
    assert_eq!(v["field"], "share");
    assert!(v["allowed"].as_str().unwrap().contains("0 < F <= 1"), "{v}");
    assert_eq!(site.attrs(), before);

    let (s, v) = call(
        &w.admin,
        Method::PATCH,
        "/containers/site",
        br#"{"prioritee": 7}"#,
    );
    assert_eq!((s, v["field"].as_str()), (422, Some("prioritee")));
    assert!(v["allowed"].as_str().unwrap().contains("priority"));

    let (s, _) = call(
        &w.admin,
        Method::PATCH,
        "/containers/site",
        br#"{"priority": [1]}"#,
    );
    assert_eq!(s, 422);
    assert_eq!(
        call(&w.admin, Method::PATCH, "/containers/site", b"{not json").0,
        400
    );
    assert_eq!(
        call(&w.admin, Method::PATCH, "/containers/site", b"priority").0,
        400
    );
    assert_eq!(
        call(&w.admin, Method::PATCH, "/containers/site", b"  ").0,
        400
    );
    assert_eq!(
        call(&w.admin, Method::PATCH, "/containers/site", b"\xff").0,
        400
    );
    assert_eq!(site.attrs(), before);

    // Siblings' fixed shares may not exceed 1.
    let (s, v) = call(&w.admin, Method::PATCH, "/containers/site", b"share=60%");
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(&w.admin, Method::PATCH, "/containers/cgi", b"share=50%");
    assert_eq!((s, v["field"].as_str()), (422, Some("share")));
}

#[test]
fn a_delegated_admin_is_confined_to_its_subtree() {
    let w = world();
    let clients = container(&w, "clients");
    let premium = container(&w, "clients/premium");
    let admin = Admin::new(
        clients.clone(),
        Arc::new(FilterTable::from_config(&[], |_| None)),
    );
    let (s, _) = call(
        &admin,
        Method::PATCH,
        &format!("/containers/{}", premium.id()),
        b"priority=10",
    );
    assert_eq!(s, 200);
    let cgi = container(&w, "cgi");
    let (s, v) = call(
        &admin,
        Method::PATCH,
        &format!("/containers/{}", cgi.id()),
        b"priority=10",
    );
    assert_eq!(s, 403, "{v}");
    let (s, _) = get(&admin, &format!("/containers/{}", cgi.id()));
    assert_eq!(s, 403);
    // Its own container: it may lower, not raise.
    let own = format!("/containers/{}", clients.id());
    assert_eq!(call(&admin, Method::PATCH, &own, b"priority=50").0, 200);
    assert_eq!(call(&admin, Method::PATCH, &own, b"priority=500").0, 403);
    drop(w.registry);
}

#[test]
fn methods_are_checked() {
    let w = world();
    let r = w.admin.handle(&Method::DELETE, "/containers/site", b"");
    assert_eq!(r.status, 405);
    assert_eq!(
        r.headers,
        vec![(header::ALLOW, HeaderValue::from_static("GET, PATCH"))]
    );
    assert_eq!(w.admin.handle(&Method::POST, "/metrics", b"").status, 405);
    assert_eq!(
        w.admin.handle(&Method::GET, "/filters/move", b"").status,
        405
    );
}

#[test]
fn filters_list_and_move() {
    let w = world();
    let (s, v) = get(&w.admin, "/filters");
    assert_eq!(s, 200);
    let f: FiltersView = serde_json::from_value(v).unwrap();
    let web = &f.listeners[0];
    assert_eq!(web.address, "127.0.0.1:8080");
    let names: Vec<&str> = web.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["black-hole", "premium", "local"]);
    assert_eq!(web.members[0].prefixes, ["127.0.0.66/32"]);
    assert_eq!(
        web.members[1].container,
        Some(container(&w, "clients/premium").id().get())
    );
    assert_eq!(web.members[2].except, Some(vec![]));

    let (s, v) = call(
        &w.admin,
        Method::POST,
        "/filters/move",
        br#"{"listener": "web", "prefix": "127.0.0.9", "to": "black-hole"}"#,
    );
    assert_eq!(s, 200, "{v}");
    let r: MoveResult = serde_json::from_value(v).unwrap();
    assert_eq!(
        (r.prefix.as_str(), r.to.as_str()),
        ("127.0.0.9/32", "black-hole")
    );
    let (_, v) = get(&w.admin, "/filters");
    let f: FiltersView = serde_json::from_value(v).unwrap();
    assert_eq!(f.actions.len(), 1);
    assert_eq!(f.actions[0].reason, "operator");

    let (s, v) = call(
        &w.admin,
        Method::POST,
        "/filters/move",
        br#"{"listener": "web", "prefix": "10.0.0.0/8", "to": "vip"}"#,
    );
    assert_eq!((s, v["field"].as_str()), (422, Some("to")));
    assert_eq!(v["allowed"], "black-hole, premium, local");
    let (s, v) = call(
        &w.admin,
        Method::POST,
        "/filters/move",
        br#"{"listener": "web", "prefix": "10.0.0.0/33", "to": "local"}"#,
    );
    assert_eq!((s, v["field"].as_str()), (422, Some("prefix")));
    let (s, _) = call(
        &w.admin,
        Method::POST,
        "/filters/move",
        br#"{"listener": "ssh", "prefix": "10.0.0.0/8", "to": "local"}"#,
    );
    assert_eq!(s, 404);
    assert_eq!(
        call(&w.admin, Method::POST, "/filters/move", b"prefix=x").0,
        400
    );
}

#[test]
fn metrics_in_prometheus_text() {
    let w = world();
    let cgi = container(&w, "cgi");
    let premium = container(&w, "clients/premium");
    {
        let run = cgi
            .create_child("run \"1\"\n", Attributes::default())
            .unwrap();
        run.account().add_cpu_ns(1_500_000_000);
        run.account().add_bytes_out(4096);
        run.account().add_throttled_ns(250_000_000);
    } // released: its usage stays in cgi's subtree
    // A live per-connection container: charged to its class, never a series of its own.
    let conn = premium
        .create_child("conn-7", Attributes::default())
        .unwrap();
    conn.account().add_cpu_ns(500_000_000);
    conn.account().add_requests(3);
    let r = w.admin.handle(&Method::GET, "/metrics", b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, METRICS_CONTENT_TYPE);
    let text = String::from_utf8(r.body).unwrap();
    for want in [
        "rescon_cpu_seconds_total{container=\"cgi\"} 1.5\n",
        "rescon_transmit_bytes_total{container=\"cgi\"} 4096\n",
        "rescon_throttled_seconds_total{container=\"cgi\"} 0.25\n",
        "rescon_cpu_seconds_total{container=\"clients/premium\"} 0.5\n",
        "rescon_requests_total{container=\"clients/premium\"} 3\n",
        "rescon_cpu_seconds_total{container=\"clients\"} 0\n",
        "rescon_subtree_cpu_seconds_total{container=\"clients\"} 0.5\n",
        "rescon_cpu_seconds_total{container=\"/\"} 0\n",
        "rescon_subtree_cpu_seconds_total{container=\"/\"} 2\n",
        "# TYPE rescon_open_connections gauge\n",
        "# TYPE rescon_connections_refused_total counter\n",
        "# TYPE rescon_http_request_duration_seconds histogram\n",
        "# TYPE rescon_listener_dropped_syns_total counter\n",
        "rescon_build_info{version=\"",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    // Every sample line is `name{labels} value`; containers are declared paths only.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
        assert!(
            !series.contains("conn-7") && !series.contains("run "),
            "{line}"
        );
    }
    // Nothing declared: the root alone, whatever lives below it.
    let plain = Admin::new(
        w.registry.root(),
        Arc::new(FilterTable::from_config(&[], |_| None)),
    );
    let text = String::from_utf8(plain.handle(&Method::GET, "/metrics", b"").body).unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("rescon_cpu_seconds_total"))
        .collect();
    assert_eq!(
        series,
        ["rescon_cpu_seconds_total{container=\"/\"} 2"],
        "{text}"
    );
    drop(conn);
}

#[test]
fn bearer_tokens() {
    let token = "0123456789abcdef";
    let with = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, v.parse().unwrap());
        h
    };
    assert!(check_bearer(&with("Bearer 0123456789abcdef"), token).is_ok());
    assert!(check_bearer(&with("bearer  0123456789abcdef "), token).is_ok());
    for bad in [
        "Bearer 0123456789abcdeF",
        "Bearer 0123456789abcde",
        "Basic 0123456789abcdef",
        "0123456789abcdef",
        "Bearer",
    ] {
        let r = check_bearer(&with(bad), token).unwrap_err();
        assert_eq!(r.status, 401, "{bad}");
        assert_eq!(r.headers[0].0, header::WWW_AUTHENTICATE);
    }
    assert!(check_bearer(&HeaderMap::new(), token).is_err());
}
