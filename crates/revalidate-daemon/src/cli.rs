//! The command line: `serve`, `check-config`, `demo`.
//!
//! ```text
//! revalidate serve --config revalidate.toml [--profile NAME] [--debug] [--log-format json]
//! revalidate check-config revalidate.toml [--profile NAME]
//! revalidate demo
//! ```
//!
//! Exit codes: 0 on a clean stop, 1 on a runtime failure, 2 on a
//! configuration error (every error printed with file:line:column and key).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use revalidate::Staleness;

use crate::config::DaemonConfig;
use crate::{daemon, demo};

/// Keeps cached resources fresh in the background, in front of any HTTP API.
#[derive(Debug, Parser)]
#[command(name = "revalidate", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API described by a configuration file.
    Serve {
        /// The configuration file.
        #[arg(long, short, value_name = "FILE", default_value = "revalidate.toml")]
        config: PathBuf,
        /// The profile of staleness rules (overrides the file's `profile`).
        #[arg(long, env = "REVALIDATE_PROFILE", value_name = "NAME")]
        profile: Option<String>,
        /// Listen here instead of `[server] listen`.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Show every refresh decision (the seed's debug log).
        #[arg(long)]
        debug: bool,
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Check a configuration file and print the effective staleness of every
    /// action per profile. Exits 2 if it has errors.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
        /// Check that this profile exists, and mark it active.
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
    },
    /// Run the daemon in front of a built-in simulated business API, with a
    /// store in a temporary directory, and print the dashboard's address.
    Demo {
        /// Where the daemon listens.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
        listen: SocketAddr,
        /// Do not simulate application traffic.
        #[arg(long)]
        no_traffic: bool,
        /// Show every refresh decision (the seed's debug log).
        #[arg(long)]
        debug: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn init_logging(debug: bool, format: LogFormat) {
    let default = if debug {
        "info,revalidate=debug"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a terminal: logs that go to files or pipes stay plain.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Loads a configuration with every check `serve` makes before it binds,
/// printing every problem; exit code 2 on errors.
fn load(file: &std::path::Path, profile: Option<&str>) -> Result<DaemonConfig, ExitCode> {
    let mut config = match DaemonConfig::load_for_serve(file) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return Err(ExitCode::from(2));
        }
    };
    if let Some(name) = profile {
        match config.engine.policy.with_profile(name) {
            Ok(p) => config.engine.policy = p,
            Err(e) => {
                eprintln!(
                    "error: {e}\n  --> --profile {name} (for {})",
                    file.display()
                );
                return Err(ExitCode::from(2));
            }
        }
    }
    Ok(config)
}

fn check_config(file: &std::path::Path, profile: Option<&str>) -> ExitCode {
    let config = match load(file, profile) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // What `serve` builds before it binds: short of the network, except
    // that `[cluster]`'s Redis is asked what `serve` asks it (the password,
    // scripting); one that does not answer is a warning, as for `serve`.
    let scopes = std::sync::Arc::new(crate::identity::Scopes::new(&config));
    if let Err(e) = crate::upstream::Upstream::new(&config, scopes.clone(), None) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let mut redis_unreachable = None;
    if let Some(c) = &config.cluster {
        let max = config.upstream.max_response_bytes;
        let checked = runtime().block_on(async {
            daemon::cluster_tier(c, max)
                .await
                .map(|(_tier, unreachable)| unreachable)
        });
        match checked {
            Ok(unreachable) => redis_unreachable = unreachable,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(e.exit_code());
            }
        }
    }
    let policy = &config.engine.policy;
    println!("{}: ok", file.display());
    let mutations = config
        .actions
        .values()
        .filter(|a| a.kind == crate::config::ActionKind::Mutation)
        .count();
    println!(
        "upstream: {} ({} actions, {mutations} of them mutations)",
        config.upstream.base_url,
        config.actions.len()
    );
    let per_user: Vec<&str> = config
        .actions
        .keys()
        .filter(|a| scopes.is_user(a))
        .map(String::as_str)
        .collect();
    match &config.identity {
        Some(i) => println!(
            "identity: {} ; per-user actions: {}",
            match &i.source {
                crate::config::IdentitySource::Authorization =>
                    "the caller's Authorization header".to_owned(),
                crate::config::IdentitySource::Header {
                    name,
                    trusted_proxies,
                } => format!(
                    "the {name} header from {} trusted proxies",
                    trusted_proxies.len()
                ),
            },
            if per_user.is_empty() {
                "none".to_owned()
            } else {
                per_user.join(", ")
            }
        ),
        None => println!("identity: none (every action shared)"),
    }
    match &config.server.read_token_env {
        Some(var) if std::env::var(var).is_ok_and(|t| !t.is_empty()) => {
            println!("reads: need the token in ${var}")
        }
        Some(var) => println!(
            "reads: need the token in ${var}, which is not set: serve will refuse to start"
        ),
        None => println!("reads: open (no [server] read_token_env)"),
    }
    match &config.store {
        Some(s) => println!(
            "store: {} (flush every {:?}, max age {:?})",
            s.path.display(),
            s.flush_every,
            s.max_age
        ),
        None => println!("store: none (memory only)"),
    }
    match &config.cluster {
        Some(c) => println!(
            "cluster: node {} through Redis at {} (keys under `{}:`, lease {:?})",
            c.node_id.as_deref().unwrap_or("<host name and pid>"),
            redacted_redis_target(&c.redis_url),
            c.key_prefix,
            c.lease_ttl
        ),
        None => println!("cluster: none (this node alone)"),
    }
    if let Some(e) = redis_unreachable {
        eprintln!(
            "warning: [cluster]: {e}; `serve` would start alone and join the cluster when Redis answers"
        );
    }
    match &config.server.admin_token_env {
        Some(var) if std::env::var(var).is_ok_and(|t| !t.is_empty()) => {
            println!("admin: enabled (token in ${var})")
        }
        Some(var) => println!("admin: disabled until ${var} is set"),
        None => println!("admin: disabled (no [server] admin_token_env)"),
    }
    let mut actions: Vec<&str> = config.actions.keys().map(String::as_str).collect();
    actions.extend(policy.configured_actions());
    actions.sort_unstable();
    actions.dedup();
    let profiles: Vec<&str> = policy.profiles().collect();
    let active = policy.active_profile();
    let base = policy
        .with_profile(None)
        .expect("the base table always exists");
    let mut header = vec![
        "action".to_owned(),
        "resource".to_owned(),
        "base".to_owned(),
    ];
    header.extend(profiles.iter().map(|p| {
        if Some(*p) == active {
            format!("{p} (active)")
        } else {
            (*p).to_owned()
        }
    }));
    let mut rows = vec![header];
    for action in &actions {
        let mut row = vec![
            (*action).to_owned(),
            policy.resource(action).to_owned(),
            base.staleness(action).to_string(),
        ];
        for p in &profiles {
            let s: Staleness = policy
                .with_profile(*p)
                .expect("a defined profile")
                .staleness(action);
            row.push(s.to_string());
        }
        rows.push(row);
    }
    println!(
        "\neffective staleness{}:",
        active
            .map(|a| format!(" (active profile: {a})"))
            .unwrap_or_default()
    );
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("  {}", line.join("  ").trim_end());
    }
    ExitCode::SUCCESS
}

/// How long the runtime may take to end its tasks once the daemon stopped.
const RUNTIME_STOP: std::time::Duration = std::time::Duration::from_millis(500);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A Redis URL for printing: scheme, host, port and db, never credentials.
fn redacted_redis_target(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Runs the command line given to the process.
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS crypto provider for every HTTP client in the process (ring: no
    // C toolchain beyond cc, unlike aws-lc). An error means one is set already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::CheckConfig { file, profile } => check_config(&file, profile.as_deref()),
        Command::Serve {
            config,
            profile,
            listen,
            debug,
            log_format,
        } => {
            init_logging(debug, log_format);
            let mut config = match load(&config, profile.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Some(addr) = listen {
                config.server.listen = addr;
            }
            let rt = runtime();
            let result =
                rt.block_on(async { daemon::serve(config, None, daemon::signals(), None).await });
            // Connections still open (a stop forced by a second signal or
            // past the grace) end with the runtime; do not wait for them.
            rt.shutdown_timeout(RUNTIME_STOP);
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Demo {
            listen,
            no_traffic,
            debug,
        } => {
            init_logging(debug, LogFormat::Text);
            let rt = runtime();
            let result = rt.block_on(demo::run(listen, !no_traffic));
            rt.shutdown_timeout(RUNTIME_STOP);
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}
