use super::*;

fn err(text: &str) -> ConfigError {
    Config::parse("t.toml", text).expect_err("should be refused")
}

/// The single diagnostic of a refused configuration.
fn one(text: &str) -> Diagnostic {
    let e = err(text);
    assert_eq!(e.diagnostics().len(), 1, "{e}");
    e.diagnostics()[0].clone()
}

const TREE: &str = r#"
[containers.clients.premium]
class = "high"
[containers.clients.rest]
[containers.site]
"#;

#[test]
fn the_default_configuration_loads() {
    let c = Config::default_config();
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[0].addr, "127.0.0.1:8080".parse().unwrap());
    assert!(!c.listeners[0].tls);
    assert_eq!(c.listeners[1].addr, "127.0.0.1:8443".parse().unwrap());
    assert!(c.listeners[1].tls);
    assert!(c.uses_demo());
    let cgi = c.tree.attrs(&ContainerPath::parse("cgi").unwrap()).unwrap();
    assert_eq!(cgi.cpu_limit.unwrap().fraction(), 0.3);
    assert_eq!(c.vhosts[0].cgi[0].prefix, "/cgi-bin/");
    assert_eq!(c.limits.max_header_bytes, 16 * 1024);
    assert_eq!(c.admin.socket, Some(default_admin_socket()));
}

#[test]
fn effective_configuration_round_trips() {
    let mut c = Config::default_config();
    c.set_demo_dir(Path::new("/srv/demo"));
    let text = c.to_toml();
    let again = Config::parse(DEFAULT_CONFIG_NAME, &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(again, c, "{text}");
}

#[test]
fn syntax_errors_name_the_line() {
    let d = one("[server]\nenforcement = \n");
    assert_eq!(d.line, 2, "{d}");
    assert_eq!(d.file, "t.toml");
}

#[test]
fn unknown_keys_list_the_allowed_ones() {
    let d = one("[server]\nenforcment = \"user\"\n");
    assert_eq!(d.line, 2);
    assert_eq!(d.key, "enforcment");
    assert!(d.message.contains("expected one of"), "{d}");
    assert!(d.message.contains("`enforcement`"), "{d}");

    let d = one("[serverr]\n");
    assert!(
        d.message.contains("`server`") && d.message.contains("`vhost`"),
        "{d}"
    );
}

#[test]
fn bad_enumerations_list_the_allowed_values() {
    let d = one("[server]\nenforcement = \"kernal\"\n");
    assert_eq!((d.line, d.column), (2, 15));
    assert_eq!(d.key, "server.enforcement");
    assert_eq!(d.allowed.as_deref(), Some("user, kernel, auto"));
    let text = d.to_string();
    assert!(
        text.starts_with("t.toml:2:15: server.enforcement: invalid value \"kernal\""),
        "{text}"
    );
}

#[test]
fn bad_attribute_values_name_the_attribute_and_its_range() {
    let d = one("[containers.cgi]\ncpu_limit = \"30%\"\npriority = 5000\n");
    assert_eq!(d.line, 3);
    assert_eq!(d.key, "containers.cgi.priority");
    assert!(d.allowed.as_deref().unwrap().contains("0..=1000"), "{d}");

    let d = one("[containers.a]\nshare = \"150%\"\n");
    assert_eq!(d.key, "containers.a.share");
    assert!(d.allowed.as_deref().unwrap().contains("weight:N"), "{d}");
}

#[test]
fn unknown_attributes_list_every_key() {
    let d = one("[containers.a]\ncpu_limt = \"30%\"\n");
    assert_eq!(d.key, "containers.a.cpu_limt");
    assert_eq!(d.message, "unknown attribute `cpu_limt`");
    let allowed = d.allowed.unwrap();
    for k in [
        "class",
        "share",
        "priority",
        "cpu_limit",
        "max_connections",
        "enforcement",
    ] {
        assert!(allowed.contains(k), "{allowed}");
    }
}

#[test]
fn attribute_order_in_the_file_does_not_matter() {
    let c = Config::parse(
        "t.toml",
        "[containers.a]\ncpu_period = \"50ms\"\ncpu_limit = \"0.5\"\n",
    )
    .unwrap();
    let l = c.tree.nodes[0].attrs.cpu_limit.unwrap();
    assert_eq!((l.fraction(), l.period()), (0.5, Duration::from_millis(50)));
}

#[test]
fn over_committed_fixed_shares_point_at_the_share() {
    let e = err("[containers.a]\nshare = \"60%\"\n[containers.b]\nshare = \"50%\"\n");
    let d = &e.diagnostics()[0];
    assert_eq!(d.key, "containers.b.share");
    assert_eq!(d.line, 4);
    assert!(d.message.contains("above 1"), "{d}");
}

#[test]
fn arrays_and_bad_names_in_the_tree_are_refused() {
    let d = one("[containers.a]\npriority = [1, 2]\n");
    assert!(d.message.contains("an array"), "{d}");
    let d = one("[containers.\"a b\"]\n");
    assert!(d.message.contains("container name"), "{d}");
}

#[test]
fn container_references_must_be_declared() {
    let text = format!(
        "{TREE}[[listener]]\naddress = \"127.0.0.1\"\nport = 8080\n[[listener.class]]\nname = \"p\"\ncontainer = \"clients/premum\"\nprefixes = [\"10.0.0.0/8\"]\n[[vhost]]\nname = \"v\"\nroot = \"/srv\"\ncontainer = \"site\"\n"
    );
    let d = one(&text);
    assert_eq!(d.key, "listener[0].class[0].container");
    assert!(d.message.contains("not declared"), "{d}");
    let allowed = d.allowed.unwrap();
    assert!(
        allowed.contains("\"clients/premium\"") && allowed.contains("\"site\""),
        "{allowed}"
    );
}

fn listener(classes: &str, extra: &str) -> String {
    format!(
        "{TREE}[[listener]]\naddress = \"127.0.0.1\"\nport = 8080\n{extra}\n{classes}\n[[vhost]]\nname = \"v\"\nroot = \"/srv\"\ncontainer = \"site\"\n"
    )
}

#[test]
fn prefixes_are_checked() {
    let d = one(&listener(
        "[[listener.class]]\nname = \"p\"\ncontainer = \"clients/premium\"\nprefixes = [\"10.0.0.1/8\"]",
        "",
    ));
    assert!(d.message.contains("did you mean 10.0.0.0/8"), "{d}");

    let d = one(&listener(
        "[[listener.class]]\nname = \"p\"\ncontainer = \"clients/premium\"\nprefixes = [\"10.0.0.0/33\"]",
        "",
    ));
    assert_eq!(d.key, "listener[0].class[0].prefixes[0]");

    let d = one(&listener(
        "[[listener.class]]\nname = \"p\"\ncontainer = \"clients/premium\"\nprefixes = [\"10.0.0.0/8\"]",
        "black_hole = [\"10.0.0.0/8\"]",
    ));
    assert!(d.message.contains("already given to p"), "{d}");

    let d = one(&listener(
        "[[listener.class]]\nname = \"a\"\ncontainer = \"clients/premium\"\nexcept = []\n[[listener.class]]\nname = \"b\"\ncontainer = \"clients/rest\"\nexcept = [\"10.0.0.0/8\"]",
        "",
    ));
    assert!(d.allowed.as_deref().unwrap().contains("at most one"), "{d}");
}

#[test]
fn classes_parse() {
    let c = Config::parse(
        "t.toml",
        &listener(
            "[[listener.class]]\nname = \"p\"\ncontainer = \"clients/premium\"\nprefixes = [\"10.0.0.0/8\", \"198.51.100.7\"]\n[[listener.class]]\nname = \"rest\"\ncontainer = \"clients/rest\"\nexcept = []",
            "black_hole = [\"192.0.2.0/24\"]\nflood_defense = { action = \"demote\", demote_to = \"rest\", syn_rate = 500 }",
        ),
    )
    .unwrap();
    let l = &c.listeners[0];
    assert_eq!(
        l.classes[0].filter,
        ClassFilter::Prefixes(vec![
            "10.0.0.0/8".parse().unwrap(),
            "198.51.100.7/32".parse().unwrap()
        ])
    );
    assert_eq!(l.classes[1].filter, ClassFilter::Except(vec![]));
    assert_eq!(l.black_hole, vec!["192.0.2.0/24".parse::<IpNet>().unwrap()]);
    let f = l.flood_defense.as_ref().unwrap();
    assert_eq!(f.action, FloodAction::Demote("rest".into()));
    assert_eq!((f.syn_rate, f.hold), (500, Duration::from_secs(60)));
}

/// Found by the `config` fuzz target: a prefix the listener's sockets can never receive was
/// accepted, and the listener group then refused it at start-up, so the server fell back to
/// one socket. An IPv4-mapped prefix is the IPv4 prefix it names.
#[test]
fn prefixes_of_a_family_the_listener_never_receives_are_refused() {
    let class = |prefix: &str| {
        format!(
            "[[listener.class]]\nname = \"p\"\ncontainer = \"clients/premium\"\nprefixes = [\"{prefix}\"]\n[[listener.class]]\nname = \"rest\"\ncontainer = \"clients/rest\"\nexcept = []"
        )
    };
    let d = one(&listener(&class("2001:db8::/32"), ""));
    assert_eq!(d.key, "listener[0].class[0].prefixes[0]");
    assert!(d.message.contains("IPv4 clients only"), "{d}");
    assert!(d.allowed.as_deref().unwrap().contains("\"::\""), "{d}");
    let d = one(&listener(
        &class("10.0.0.0/8"),
        "black_hole = [\"2001:db8::1\"]",
    ));
    assert_eq!(d.key, "listener[0].black_hole[0]");
    let on_v6 = |text: String| text.replace("address = \"127.0.0.1\"", "address = \"::1\"");
    let d = one(&on_v6(listener(&class("10.0.0.0/8"), "")));
    assert!(d.message.contains("IPv6 clients only"), "{d}");
    let d = one(&on_v6(listener(&class("::ffff:10.0.0.0/104"), "")));
    assert!(d.message.contains("10.0.0.0/8 can never match"), "{d}");
    // An IPv4-mapped prefix is its IPv4 prefix: accepted on IPv4, and the same prefix as
    // its IPv4 spelling.
    let c = Config::parse("t.toml", &listener(&class("::ffff:10.0.0.0/104"), "")).unwrap();
    assert_eq!(
        c.listeners[0].classes[0].filter,
        ClassFilter::Prefixes(vec!["10.0.0.0/8".parse().unwrap()])
    );
    let d = one(&listener(
        &class("::ffff:10.0.0.0/104"),
        "black_hole = [\"10.0.0.0/8\"]",
    ));
    assert!(d.message.contains("already given to p"), "{d}");
    // `::` receives both families.
    let both = listener(&class("10.0.0.0/8"), "black_hole = [\"2001:db8::/32\"]")
        .replace("address = \"127.0.0.1\"", "address = \"::\"");
    assert!(Config::parse("t.toml", &both).is_ok());
}

#[test]
fn flood_defense_demotes_to_a_class_of_the_listener() {
    let d = one(&listener(
        "[[listener.class]]\nname = \"rest\"\ncontainer = \"clients/rest\"\nexcept = []",
        "flood_defense = { action = \"demote\", demote_to = \"bulk\" }",
    ));
    assert_eq!(d.key, "listener[0].flood_defense.demote_to");
    assert_eq!(d.allowed.as_deref(), Some("\"rest\""));
    let d = one(&listener("", "flood_defense = { action = \"drop\" }"));
    assert_eq!(d.allowed.as_deref(), Some("black-hole, demote"));
}

#[test]
fn a_listener_without_classes_puts_connections_under_the_root() {
    let c = Config::parse("t.toml", &listener("", "")).unwrap();
    assert_eq!(c.listeners[0].classes[0].container, ContainerPath::ROOT);
    assert_eq!(
        c.listeners[0].classes[0].filter,
        ClassFilter::Except(vec![])
    );
}

#[test]
fn admin_tcp_is_loopback_only_and_needs_a_token() {
    let d = one("[admin]\ntcp = \"0.0.0.0:9090\"\ntoken = \"0123456789abcdef\"\n");
    assert!(d.message.contains("not a loopback"), "{d}");
    let d = one("[admin]\ntcp = \"127.0.0.1:9090\"\n");
    assert_eq!(
        d.allowed.as_deref(),
        Some("set admin.token or admin.token_file")
    );
    let d = one("[admin]\ntcp = \"127.0.0.1:9090\"\ntoken = \"short\"\n");
    assert_eq!(d.key, "admin.token");
    let c = Config::parse(
        "t.toml",
        "[admin]\nsocket = \"off\"\ntcp = \"[::1]:9090\"\ntoken = \"0123456789abcdef\"\n",
    )
    .unwrap();
    assert_eq!(c.admin.socket, None);
    assert_eq!(c.admin.tcp, Some("[::1]:9090".parse().unwrap()));
    assert!(
        !format!("{:?}", c.admin).contains("0123456789abcdef"),
        "the token is redacted"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let e = err(
        "[server]\nenforcement = \"x\"\n[timeouts]\nheader = \"soon\"\n[containers.a]\npriority = -1\n",
    );
    let keys: Vec<&str> = e.diagnostics().iter().map(|d| d.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "server.enforcement",
            "timeouts.header",
            "containers.a.priority"
        ]
    );
    assert!(e.to_string().ends_with("3 problems in the configuration"));
}

#[test]
fn vhosts_are_checked() {
    let base = TREE.to_string();
    let d = one(&format!(
        "{base}[[vhost]]\nname = \"a\"\nhosts = [\"a.example\"]\nroot = \"/a\"\ncontainer = \"site\"\n[[vhost]]\nname = \"b\"\nhosts = [\"A.example\"]\nroot = \"/b\"\ncontainer = \"site\"\n"
    ));
    assert!(d.message.contains("already served by vhost[0]"), "{d}");
    let d = one(&format!(
        "{base}[[vhost]]\nname = \"a\"\nhosts = [\"a.example:80\"]\nroot = \"/a\"\ncontainer = \"site\"\n"
    ));
    assert_eq!(d.key, "vhost[0].hosts[0]");
    let d = one(&format!(
        "{base}[[vhost]]\nname = \"a\"\nroot = \"/a\"\ncontainer = \"site\"\n[[vhost.cgi]]\nprefix = \"/cgi-bin\"\ndir = \"/x\"\ncontainer = \"site\"\n"
    ));
    assert_eq!(d.key, "vhost[0].cgi[0].prefix");
}

#[test]
fn vhost_selection() {
    let c = Config::parse(
        "t.toml",
        &format!(
            "{TREE}[[vhost]]\nname = \"a\"\nhosts = [\"a.example\", \"*.a.example\"]\nroot = \"/a\"\ncontainer = \"site\"\n[[vhost]]\nname = \"b\"\nhosts = [\"b.example\", \"*.x.a.example\"]\nroot = \"/b\"\ncontainer = \"site\"\ndefault = true\n"
        ),
    )
    .unwrap();
    let name = |h: Option<&str>| c.vhost_for(h).map(|v| v.name.as_str());
    assert_eq!(name(Some("a.example")), Some("a"));
    assert_eq!(name(Some("A.Example.:8080")), Some("a"));
    assert_eq!(name(Some("www.a.example")), Some("a"));
    assert_eq!(
        name(Some("y.x.a.example")),
        Some("b"),
        "the longest wildcard wins"
    );
    assert_eq!(name(Some("unknown")), Some("b"));
    assert_eq!(name(None), Some("b"));
    assert_eq!(normalize_host("[::1]:8080"), "::1");
    assert_eq!(normalize_host("::1"), "::1");
    assert_eq!(normalize_host("WWW.A.Example.:80"), "www.a.example");
    assert!(matches!(
        normalize_host("a.example:80"),
        std::borrow::Cow::Borrowed("a.example")
    ));
    assert!(matches!(
        normalize_host("localhost"),
        std::borrow::Cow::Borrowed("localhost")
    ));
    for (raw, want) in [
        ("", ""),
        ("a.example.", "a.example"),
        ("host:", "host"),
        ("host:x1", "host"),
        (" a.example ", "a.example"),
        (":80", ""),
        ("a:b:c", "a:b:c"),
    ] {
        assert_eq!(normalize_host(raw), want, "{raw:?}");
    }
}

proptest::proptest! {
    /// The one-pass way for plain names gives what the general way gives, for any value.
    #[test]
    fn normalizing_a_host_takes_the_fast_way_without_changing_the_answer(
        host in "[a-zA-Z0-9.:\\[\\] -]{0,24}",
        plain in "[a-z0-9.:-]{0,12}",
    ) {
        proptest::prop_assert_eq!(normalize_host(&host), normalize_host_general(&host));
        proptest::prop_assert_eq!(normalize_host(&plain), normalize_host_general(&plain));
    }
}

#[test]
fn relative_paths_follow_the_file() {
    let c = Config::parse_with_base(
        "t.toml",
        &format!("{TREE}[[vhost]]\nname = \"a\"\nroot = \"htdocs\"\ncontainer = \"site\"\n"),
        Some(Path::new("/etc/rescon")),
    )
    .unwrap();
    assert_eq!(c.vhosts[0].root, Path::new("/etc/rescon/htdocs"));
    assert!(c.vhosts[0].default, "the first vhost is the default");
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[server]\naccess_log = \"\"\n").unwrap();
    let e = Config::load(&path).unwrap_err();
    assert!(
        e.to_string().starts_with(&format!("{}:2:", path.display())),
        "{e}"
    );
    let e = Config::load(&dir.path().join("missing.toml")).unwrap_err();
    assert!(
        e.to_string().contains("cannot read the configuration file"),
        "{e}"
    );
}

#[test]
fn enforcement_resolution() {
    let no = || Err("cgroupfs is read-only".to_string());
    assert_eq!(EnforcementMode::Auto.resolve(no()), Ok(false));
    assert_eq!(EnforcementMode::Auto.resolve(Ok(())), Ok(true));
    assert_eq!(EnforcementMode::User.resolve(Ok(())), Ok(false));
    let e = EnforcementMode::Kernel.resolve(no()).unwrap_err();
    assert!(
        e.contains("cgroupfs is read-only") && e.contains("enforcement = \"auto\""),
        "{e}"
    );
}

#[test]
fn reload_of_the_same_file_changes_nothing() {
    let c = Config::default_config();
    let registry = rescon::Registry::new();
    let live = LiveTree::build(&registry, &c.tree).unwrap();
    assert!(TreeDiff::between(&live.current(), &c.tree).is_empty());
    let edited = DEFAULT_CONFIG.replace("cpu_limit = \"30%\"", "cpu_limit = \"20%\"");
    let c2 = Config::parse("t.toml", &edited).unwrap();
    let diff = TreeDiff::between(&live.current(), &c2.tree);
    assert_eq!(diff.change.len(), 1);
    assert_eq!(diff.change[0].path.as_str(), "cgi");
}

#[test]
fn the_paper_example_of_the_readme_loads() {
    let c = Config::parse("paper.toml", include_str!("../../conf/paper.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let share = |p: &str| {
        c.tree
            .attrs(&ContainerPath::parse(p).unwrap())
            .unwrap()
            .share
    };
    assert_eq!(share("sites/a"), rescon::Share::parse("50%").unwrap());
    assert_eq!(share("sites/b"), rescon::Share::parse("30%").unwrap());
    assert_eq!(share("sites/c"), rescon::Share::parse("20%").unwrap());
    let cgi = c.tree.attrs(&ContainerPath::parse("cgi").unwrap()).unwrap();
    assert_eq!(cgi.cpu_limit.unwrap().fraction(), 0.3);
    assert_eq!(cgi.enforcement, rescon::Enforcement::Kernel);
    let l = &c.listeners[0];
    assert_eq!(
        l.black_hole,
        vec!["203.0.113.0/24".parse::<IpNet>().unwrap()]
    );
    assert_eq!(l.classes.len(), 3);
    assert_eq!(c.vhosts.len(), 3);
    assert_eq!(
        c.admin.token,
        Some(TokenSource::File("/etc/rescon-httpd/admin.token".into()))
    );
    assert!(!c.uses_demo());
    // The README embeds this file verbatim.
    let readme = include_str!("../../README.md");
    assert!(
        readme.contains(include_str!("../../conf/paper.toml")),
        "README and conf/paper.toml differ"
    );
}

#[test]
fn a_reload_applies_the_new_file_and_a_bad_file_changes_nothing() {
    let registry = rescon::Registry::new();
    let mut live = LiveTree::build(&registry, &Config::default_config().tree).unwrap();
    let cgi = live
        .get(&ContainerPath::parse("cgi").unwrap())
        .unwrap()
        .clone();
    // An operator lowered the cap live; the file is edited to add a vhost container.
    registry
        .root()
        .update(&cgi, |a| a.set("cpu_limit", "10%"))
        .unwrap();
    let edited = DEFAULT_CONFIG.replace(
        "[containers.site]\n",
        "[containers.site]\n[containers.site.extra]\npriority = 7\n",
    );
    let before = live.current();
    // A bad edit: parsing fails, so there is nothing to apply and the tree is as it was.
    assert!(Config::parse("t.toml", &edited.replace("priority = 7", "priority = 7000")).is_err());
    assert_eq!(live.current(), before);
    let new = Config::parse("t.toml", &edited).unwrap();
    let diff = live.reload(&new.tree).unwrap();
    assert_eq!(diff.add.len(), 1);
    assert_eq!(
        diff.change.len(),
        1,
        "the live change is set back to the file's value"
    );
    assert_eq!(cgi.attrs().cpu_limit.unwrap().fraction(), 0.3);
    let extra = live
        .get(&ContainerPath::parse("site/extra").unwrap())
        .unwrap();
    assert_eq!(extra.attrs().priority.get(), 7);
    assert!(live.reload(&new.tree).unwrap().is_empty());
}

#[test]
fn edge_interfaces_parse_and_are_checked() {
    let c = Config::parse(
        "t.toml",
        &listener(
            "",
            "black_hole = [\"192.0.2.0/24\"]\nedge = [\"eth0\", \"veth-a\"]",
        ),
    )
    .unwrap();
    assert_eq!(
        c.listeners[0].edge,
        vec!["eth0".to_string(), "veth-a".to_string()]
    );
    let again = Config::parse("t.toml", &c.to_toml()).unwrap();
    assert_eq!(
        again.listeners[0].edge, c.listeners[0].edge,
        "rendered and parsed back"
    );
    let d = one(&listener("", "edge = [\"eth0/1\"]"));
    assert_eq!(d.key, "listener[0].edge[0]");
    assert!(d.message.contains("eth0/1"), "{}", d.message);
    let d = one(&listener("", "edge = [\"a-name-longer-than-15\"]"));
    assert_eq!(d.key, "listener[0].edge[0]");
    let d = one(&listener("", "edge = [\"eth0\", \"eth0\"]"));
    assert_eq!(d.key, "listener[0].edge[1]");
}

#[test]
fn park_is_a_duration_that_may_be_zero() {
    let c = Config::parse("t.toml", "").unwrap();
    assert_eq!(c.timeouts.park, Duration::from_millis(100));
    let c = Config::parse("t.toml", "[timeouts]\npark = \"250ms\"\n").unwrap();
    assert_eq!(c.timeouts.park, Duration::from_millis(250));
    let c = Config::parse("t.toml", "[timeouts]\npark = \"0s\"\n").unwrap();
    assert_eq!(c.timeouts.park, Duration::ZERO);
    let d = one("[timeouts]\npark = \"soon\"\n");
    assert_eq!(d.key, "timeouts.park", "{d}");
}

#[test]
fn cgi_timeouts_idle_and_total() {
    let parse = |t: &str| {
        Config::parse("t.toml", &format!("[timeouts]\n{t}"))
            .unwrap()
            .timeouts
    };
    let d = parse("");
    assert_eq!((d.cgi_idle, d.cgi_total), (Duration::from_secs(60), None));
    let t = parse("cgi_idle = \"5s\"\ncgi_total = \"10m\"\n");
    assert_eq!(t.cgi_idle, Duration::from_secs(5));
    assert_eq!(t.cgi_total, Some(Duration::from_secs(600)));
    assert_eq!(parse("cgi_total = \"off\"\n").cgi_total, None);
    // `cgi`, the single timeout before there were two, is the total it was.
    let old = parse("cgi = \"30s\"\n");
    assert_eq!(
        (old.cgi_idle, old.cgi_total),
        (Duration::from_secs(60), Some(Duration::from_secs(30)))
    );
    for (text, key) in [
        ("cgi_idle = \"0s\"\n", "timeouts.cgi_idle"),
        ("cgi_idle = \"off\"\n", "timeouts.cgi_idle"),
        ("cgi_total = \"soon\"\n", "timeouts.cgi_total"),
        ("cgi_total = \"0\"\n", "timeouts.cgi_total"),
        ("cgi = \"-1s\"\n", "timeouts.cgi"),
        ("cgi = \"30s\"\ncgi_total = \"1m\"\n", "timeouts.cgi"),
    ] {
        let d = one(&format!("[timeouts]\n{text}"));
        assert_eq!(d.key, key, "{text}: {d}");
        assert!(d.allowed.is_some(), "{text}: says what is allowed");
    }
    // What the server renders reads back the same.
    let c = Config::parse(
        "t.toml",
        "[timeouts]\ncgi_idle = \"7s\"\n[limits]\ncgi_stderr_bytes = \"1KiB\"\n",
    )
    .unwrap();
    assert_eq!(c.limits.cgi_stderr_bytes, 1024);
    let again = Config::parse("r.toml", &render::render(&c)).unwrap();
    assert_eq!(again.timeouts, c.timeouts);
    assert_eq!(again.limits, c.limits);
    assert_eq!(
        one("[limits]\ncgi_stderr_bytes = \"lots\"\n").key,
        "limits.cgi_stderr_bytes"
    );
}

#[test]
fn metrics_listener_is_off_by_default_and_a_bare_port_is_on_loopback() {
    let c = Config::parse("t.toml", "").unwrap();
    assert_eq!(c.metrics.listen, None, "no listener unless configured");
    let c = Config::parse("t.toml", "[metrics]\nlisten = \"9464\"\n").unwrap();
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
    let c = Config::parse("t.toml", "[metrics]\nlisten = \"0.0.0.0:9464\"\n").unwrap();
    assert_eq!(c.metrics.listen, Some("0.0.0.0:9464".parse().unwrap()));
    let d = one("[metrics]\nlisten = \"everywhere\"\n");
    assert_eq!(d.key, "metrics.listen", "{d}");
}

#[test]
fn a_vhost_may_name_the_user_of_its_cgi_scripts() {
    let base =
        "[containers.site]\n[[vhost]]\nname = \"a\"\nroot = \"/srv/a\"\ncontainer = \"site\"\n";
    let c = Config::parse(
        "t.toml",
        &format!("{base}user = \"www-a\"\ngroup = \"web\"\n"),
    )
    .unwrap();
    assert_eq!(c.vhosts[0].user.as_deref(), Some("www-a"));
    assert_eq!(c.vhosts[0].group.as_deref(), Some("web"));
    // The effective configuration says it again, and reads back the same.
    let again = Config::parse("t.toml", &c.to_toml()).unwrap();
    assert_eq!(again.vhosts[0].user.as_deref(), Some("www-a"));
    let d = one(&format!("{base}group = \"web\"\n"));
    assert_eq!(d.key, "vhost[0].group", "{d}");
    let d = one(&format!("{base}user = \"-rf\"\n"));
    assert_eq!(d.key, "vhost[0].user", "{d}");
    assert!(
        Config::parse("t.toml", base).unwrap().vhosts[0]
            .user
            .is_none()
    );
}
