//! The native side: the demo API and a static server for the page.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use revalidate_demo::{DemoConfig, DemoUpstream};

const USAGE: &str = "usage: revalidate-web-example [--pkg DIR] [--failure-rate F] [--outages]";

struct Args {
    dir: PathBuf,
    failure_rate: f64,
    outages: bool,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut out = Args {
        dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("www"),
        failure_rate: 0.0,
        outages: false,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--pkg" => out.dir = args.next().ok_or(USAGE)?.into(),
            "--failure-rate" => {
                out.failure_rate = args
                    .next()
                    .and_then(|f| f.parse().ok())
                    .ok_or("--failure-rate takes a number from 0 to 1")?;
            }
            "--outages" => out.outages = true,
            _ => return Err(USAGE.to_owned()),
        }
    }
    Ok(out)
}

pub(crate) fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("revalidate-web-example: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> std::io::Result<()> {
    let mut config = DemoConfig {
        failure_rate: args.failure_rate,
        ..DemoConfig::default()
    };
    if !args.outages {
        config.outage_every = Duration::ZERO;
    }
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let api = DemoUpstream::start(loopback, config).await?;
    let listener = tokio::net::TcpListener::bind(loopback).await?;
    let page = listener.local_addr()?;
    println!(
        "{{\"page\": \"http://{page}/\", \"api\": \"{}\"}}",
        api.base_url()
    );
    let app = Router::new()
        .route("/", get(index))
        .route("/{*file}", get(file))
        .with_state(args.dir);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    api.shutdown().await;
    Ok(())
}

async fn index(State(dir): State<PathBuf>) -> Response {
    send(&dir, "index.html").await
}

async fn file(State(dir): State<PathBuf>, UrlPath(file): UrlPath<String>) -> Response {
    send(&dir, &file).await
}

/// A file of the page's directory (nothing outside it), with its type.
async fn send(dir: &Path, file: &str) -> Response {
    let safe = Path::new(file)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !safe {
        return StatusCode::NOT_FOUND.into_response();
    }
    let path = dir.join(file);
    let kind = match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript",
        Some("wasm") => "application/wasm",
        Some("css") => "text/css",
        _ => "application/octet-stream",
    };
    match tokio::fs::read(&path).await {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}
