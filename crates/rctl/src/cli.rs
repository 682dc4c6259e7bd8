//! The command line: arguments, and each command as a request and a rendering.

use crate::client::{Endpoint as Server, Response};
use crate::render;
use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rescon_admin::api::{
    ContainerView, FiltersView, MoveRequest, MoveResult, ReloadResult, UnblockRequest,
};
use rescon_admin::routes::Endpoint;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Looks at and changes a running rescon-httpd: its containers, their attributes and usage, and
/// the client filters.
#[derive(Debug, Parser)]
#[command(name = "rctl", version, about)]
pub struct Args {
    /// The admin socket (default: the one of rescon-httpd's default configuration).
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "url")]
    pub socket: Option<PathBuf>,
    /// The loopback TCP admin API instead, e.g. http://127.0.0.1:9090.
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// The bearer token for --url (default: $RCTL_TOKEN).
    #[arg(long, global = true, value_name = "TOKEN", requires = "url")]
    pub token: Option<String>,
    /// A file holding the bearer token for --url.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        requires = "url",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the container tree with CPU, requests and connections of each subtree.
    Tree {
        /// How many levels below the root (default: all).
        #[arg(long)]
        depth: Option<usize>,
    },
    /// Show one container: attributes, usage, children. ID is an id or a declared path
    /// (`cgi`, `clients/premium`).
    Show {
        /// The container.
        id: String,
    },
    /// Change attributes of a container, all or none: `rctl set cgi cpu_limit=20% priority=50`.
    Set {
        /// The container.
        id: String,
        /// `key=value` pairs (the keys of the configuration's `[containers]` tables).
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
    /// Show the listeners' client classes, black holes and recent moves.
    Filters,
    /// Move a prefix to the black hole: its SYNs are dropped.
    Block {
        /// A CIDR prefix or an address.
        prefix: String,
        /// The listener (needed when there are several).
        #[arg(long)]
        listener: Option<String>,
    },
    /// Take a prefix off the black hole: back to the class the configuration lists it in,
    /// or to wherever the other prefixes take its sources.
    Unblock {
        /// A CIDR prefix or an address.
        prefix: String,
        /// The listener (needed when there are several).
        #[arg(long)]
        listener: Option<String>,
    },
    /// Move a prefix to a client class (or `black-hole`).
    Move {
        /// A CIDR prefix or an address.
        prefix: String,
        /// The class's name.
        class: String,
        /// The listener (needed when there are several).
        #[arg(long)]
        listener: Option<String>,
    },
    /// Reload the server's configuration file, as SIGHUP does (a bad file changes nothing).
    Reload,
    /// Print the Prometheus metrics.
    Metrics,
    /// A live view of the containers sorted by CPU, like top; q quits. With --batch, plain
    /// text frames on standard output instead (for scripts and logs), as `top -b`.
    Top {
        /// Seconds between refreshes.
        #[arg(long, short = 'd', default_value_t = 1.0)]
        interval: f64,
        /// Print text frames instead of taking over the terminal.
        #[arg(long, short = 'b')]
        batch: bool,
        /// With --batch, stop after this many frames (default: until killed).
        #[arg(long, short = 'n', value_name = "N", requires = "batch", value_parser = clap::value_parser!(u64).range(1..))]
        iterations: Option<u64>,
    },
    /// Print a shell completion script: `rctl completions bash > /etc/bash_completion.d/rctl`
    /// (zsh: a file `_rctl` in a directory of $fpath; fish: ~/.config/fish/completions/rctl.fish).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

impl Args {
    /// Where to send requests.
    pub fn endpoint(&self) -> Result<Server> {
        if let Some(url) = &self.url {
            let token = match (&self.token, &self.token_file) {
                (Some(t), _) => Some(t.clone()),
                (None, Some(f)) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading the token file {}", f.display()))?
                        .trim_end()
                        .to_string(),
                ),
                (None, None) => std::env::var("RCTL_TOKEN").ok(),
            };
            return Ok(Server::from_url(url, token)?);
        }
        let socket = match &self.socket {
            Some(s) => s.clone(),
            None => rescon_admin::default_socket(),
        };
        Ok(Server::Unix(socket))
    }
}

/// A failed answer of the API, explained.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ApiError(pub String);

fn check(resp: Response) -> Result<Response> {
    if (200..300).contains(&resp.status) {
        Ok(resp)
    } else {
        Err(ApiError(render::error(resp.status, &resp.body)).into())
    }
}

fn decode<T: serde::de::DeserializeOwned>(resp: &Response) -> Result<T> {
    serde_json::from_slice(&resp.body).with_context(|| {
        format!(
            "the admin API answered something rctl does not understand: {}",
            String::from_utf8_lossy(&resp.body)
                .chars()
                .take(200)
                .collect::<String>()
        )
    })
}

/// `GET /containers`, decoded.
pub fn fetch_tree(endpoint: &Server) -> Result<ContainerView> {
    let resp =
        check(endpoint.request(Endpoint::Tree.method(), &Endpoint::Tree.path(None), None)?)?;
    decode(&resp)
}

/// Runs a command, writing its output to `out`. Errors are returned, for `main` to print.
pub fn run(args: &Args, out: &mut dyn Write) -> Result<()> {
    if let Command::Completions { shell } = &args.command {
        // Generated from the same definition the parser uses, so they never drift.
        let mut cmd = <Args as clap::CommandFactory>::command();
        clap_complete::generate(*shell, &mut cmd, "rctl", out);
        return Ok(());
    }
    let ep = args.endpoint()?;
    let raw = |resp: &Response, out: &mut dyn Write| -> Result<()> {
        out.write_all(&resp.body)?;
        Ok(())
    };
    match &args.command {
        Command::Tree { depth } => {
            let path = match depth {
                Some(d) => format!("{}?depth={d}", Endpoint::Tree.path(None)),
                None => Endpoint::Tree.path(None),
            };
            let resp = check(ep.request("GET", &path, None)?)?;
            if args.json {
                return raw(&resp, out);
            }
            let v: ContainerView = decode(&resp)?;
            out.write_all(render::tree(&v).as_bytes())?;
        }
        Command::Show { id } => {
            let resp = check(ep.request(
                Endpoint::GetContainer.method(),
                &Endpoint::GetContainer.path(Some(id)),
                None,
            )?)?;
            if args.json {
                return raw(&resp, out);
            }
            let v: ContainerView = decode(&resp)?;
            out.write_all(render::show(&v).as_bytes())?;
        }
        Command::Set { id, pairs } => {
            let mut keys = Vec::new();
            for p in pairs {
                match p.split_once('=') {
                    Some((k, _)) if !k.trim().is_empty() => keys.push(k.trim().to_string()),
                    _ => bail!("expected key=value, got {p:?} (e.g. cpu_limit=30%)"),
                }
            }
            let body = pairs.join("\n");
            let resp = check(ep.request(
                Endpoint::PatchContainer.method(),
                &Endpoint::PatchContainer.path(Some(id)),
                Some(("text/plain", body.as_bytes())),
            )?)?;
            if args.json {
                return raw(&resp, out);
            }
            let v: ContainerView = decode(&resp)?;
            out.write_all(render::set_result(&v, &keys).as_bytes())?;
        }
        Command::Filters => {
            let resp = check(ep.request(
                Endpoint::Filters.method(),
                &Endpoint::Filters.path(None),
                None,
            )?)?;
            if args.json {
                return raw(&resp, out);
            }
            let f: FiltersView = decode(&resp)?;
            out.write_all(render::filters(&f).as_bytes())?;
        }
        Command::Unblock { prefix, listener } => {
            let req = UnblockRequest {
                listener: listener.clone(),
                prefix: prefix.clone(),
            };
            let body = serde_json::to_vec(&req)?;
            let resp = check(ep.request(
                Endpoint::Unblock.method(),
                &Endpoint::Unblock.path(None),
                Some(("application/json", &body)),
            )?)?;
            if args.json {
                return raw(&resp, out);
            }
            let r: MoveResult = decode(&resp)?;
            out.write_all(render::moved(&r).as_bytes())?;
        }
        Command::Reload => {
            let resp = check(ep.request(
                Endpoint::Reload.method(),
                &Endpoint::Reload.path(None),
                None,
            )?)?;
            if args.json {
                return raw(&resp, out);
            }
            let r: ReloadResult = decode(&resp)?;
            writeln!(out, "reloaded: {}", r.summary)?;
        }
        Command::Metrics => {
            let resp = check(ep.request(
                Endpoint::Metrics.method(),
                &Endpoint::Metrics.path(None),
                None,
            )?)?;
            return raw(&resp, out);
        }
        Command::Block { .. } | Command::Move { .. } => {
            let (prefix, listener, to) = match &args.command {
                Command::Block { prefix, listener } => {
                    (prefix, listener, rescon_admin::BLACK_HOLE.to_string())
                }
                Command::Move {
                    prefix,
                    class,
                    listener,
                } => (prefix, listener, class.clone()),
                _ => unreachable!("matched above"),
            };
            let req = MoveRequest {
                listener: listener.clone(),
                prefix: prefix.clone(),
                to,
            };
            let body = serde_json::to_vec(&req)?;
            let resp = check(ep.request(
                Endpoint::MoveFilter.method(),
                &Endpoint::MoveFilter.path(None),
                Some(("application/json", &body)),
            )?)?;
            if args.json {
                return raw(&resp, out);
            }
            let r: MoveResult = decode(&resp)?;
            out.write_all(render::moved(&r).as_bytes())?;
        }
        Command::Completions { .. } => unreachable!("answered above"),
        Command::Top {
            interval,
            batch,
            iterations,
        } => {
            if !(interval.is_finite() && *interval >= 0.1 && *interval <= 3600.0) {
                bail!("--interval must be between 0.1 and 3600 seconds");
            }
            let title = match &ep {
                Server::Unix(p) => format!("rctl top | {}", p.display()),
                Server::Tcp { addr, .. } => format!("rctl top | http://{addr}"),
            };
            let every = Duration::from_secs_f64(*interval);
            if *batch {
                return crate::top::batch(&ep, every, *iterations, &title, out);
            }
            // Fail before taking over the terminal if the server is not there.
            fetch_tree(&ep)?;
            crate::top::run(&ep, every, &title)?;
        }
    }
    Ok(())
}

/// The exit status for an error: 1 when the API refused, 2 otherwise (usage, connection).
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<ApiError>().is_some() {
        1
    } else {
        2
    }
}
