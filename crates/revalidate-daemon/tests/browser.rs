//! The dashboard in a real browser: `revalidate demo` on a free loopback port,
//! then headless Chromium (driven by `tests/browser/dashboard.mjs` through
//! `playwright-core`) checks that the page goes live and updates itself from
//! the SSE stream without ever reloading, and saves a screenshot to
//! `target/dashboard.png`.
//!
//! Needs Chromium at `/usr/bin/chromium` (or `$CHROMIUM`), Node.js 20+ and the
//! test's npm packages; the test fails, with the command to run, when one of
//! them is missing.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How to install what this test needs.
const INSTALL: &str = "run scripts/test, which installs them (Debian's chromium, \
                       `npm ci` in crates/revalidate-daemon/tests/browser)";
/// How long `revalidate demo` may take to print its dashboard address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the browser script may run: longer than its own watchdog
/// (`LAUNCH_BUDGET_MS` + 50 s in dashboard.mjs), which reports what hung.
const NODE_TIMEOUT: Duration = Duration::from_secs(200);
/// How long a process gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a child process is checked for having exited.
const POLL: Duration = Duration::from_millis(20);

/// Lines a child process wrote, shared with the threads that read them.
type Output = Arc<Mutex<String>>;

/// Reads `from` line by line into `into` (each line prefixed with `tag`),
/// forwarding every line to `lines` when given.
fn drain(
    from: impl Read + Send + 'static,
    tag: &'static str,
    into: Output,
    lines: Option<mpsc::Sender<String>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            {
                let mut out = into.lock().unwrap_or_else(|e| e.into_inner());
                out.push_str(tag);
                out.push_str(&line);
                out.push('\n');
            }
            if let Some(tx) = &lines {
                // The receiver is gone once the address was found: keep
                // draining so that the child never blocks on a full pipe.
                let _ = tx.send(line);
            }
        }
    })
}

fn text(output: &Output) -> String {
    output.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The last `n` lines of `s`.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Stops `child` gracefully: SIGTERM (with the `kill` command, no `libc`),
/// up to [`STOP_TIMEOUT`] to exit, then SIGKILL. Returns how it exited.
fn stop(child: &mut Child) -> Option<ExitStatus> {
    // Already exited (and reaped): its pid may belong to someone else now.
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Some(status) = wait_for(child, Instant::now() + STOP_TIMEOUT) {
        return Some(status);
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Waits for `child` to exit until `deadline`.
fn wait_for(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
            _ => return None,
        }
    }
}

/// A running `revalidate demo`, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
struct Demo {
    child: Child,
    /// The dashboard's address, as the demo printed it.
    url: String,
    /// Everything the demo wrote on stdout and stderr.
    output: Output,
}

impl Drop for Demo {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Why `revalidate demo` did not come up.
#[derive(Debug)]
enum StartError {
    /// It exited before printing its address: the port may have been taken
    /// between choosing it and binding it.
    Exited(String),
    /// It neither printed its address nor exited in time.
    TimedOut(String),
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

impl Demo {
    /// Starts `revalidate demo` (with its simulated traffic) on `port` and
    /// waits for the line with the dashboard's address.
    fn start(port: u16) -> Result<Self, StartError> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_revalidate"))
            .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start `revalidate demo`");
        let output = Output::default();
        let (tx, rx) = mpsc::channel();
        drain(
            child.stdout.take().expect("stdout"),
            "",
            output.clone(),
            Some(tx),
        );
        drain(
            child.stderr.take().expect("stderr"),
            "[stderr] ",
            output.clone(),
            None,
        );
        // From here on, dropping the guard stops the demo.
        let mut demo = Self {
            child,
            url: String::new(),
            output,
        };

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("dashboard") => {
                    let url = line
                        .split_whitespace()
                        .find(|word| word.starts_with("http://"))
                        .unwrap_or_else(|| panic!("no address in the dashboard line {line:?}"));
                    assert_eq!(
                        url,
                        format!("http://127.0.0.1:{port}/"),
                        "the demo listens elsewhere than asked"
                    );
                    demo.url = url.to_owned();
                    return Ok(demo);
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // stdout closed: the demo is exiting.
                    let status = wait_for(&mut demo.child, Instant::now() + STOP_TIMEOUT);
                    return Err(StartError::Exited(format!(
                        "`revalidate demo` exited ({status:?}) before printing its dashboard \
                         address:\n{}",
                        tail(&text(&demo.output), 40)
                    )));
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(StartError::TimedOut(format!(
                        "`revalidate demo` did not print its dashboard address within \
                         {START_TIMEOUT:?}:\n{}",
                        tail(&text(&demo.output), 40)
                    )));
                }
            }
        }
    }

    /// Starts the demo on a free port; tries another port if the chosen one
    /// was taken before the demo could bind it.
    fn start_on_a_free_port() -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::start(free_port()) {
                Ok(demo) => return demo,
                Err(StartError::Exited(why)) => last = why,
                Err(StartError::TimedOut(why)) => panic!("{why}"),
            }
        }
        panic!("{last}")
    }
}

/// Chromium, Node.js and `playwright-core` are there, or the test fails with
/// what to install. Returns Chromium's path.
fn prerequisites(browser_dir: &Path) -> PathBuf {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.is_file(),
        "no Chromium at {} (set CHROMIUM to use another one): {INSTALL}",
        chromium.display()
    );
    let node = Command::new("node").arg("--version").output();
    let version = match &node {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => panic!(
            "`node --version` failed ({}): install Node.js 20 or newer, then {INSTALL}",
            out.status
        ),
        Err(e) => panic!("cannot run `node` ({e}): install Node.js 20 or newer, then {INSTALL}"),
    };
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "Node.js {version} is too old for playwright-core: install Node.js 20 or newer"
    );
    let playwright = browser_dir.join("node_modules/playwright-core");
    assert!(
        playwright.join("package.json").is_file(),
        "{} is missing: {INSTALL}",
        playwright.display()
    );
    chromium
}

/// Runs `command` to completion or for at most `timeout` (then stops it),
/// returning its exit status (`None` when it timed out) and its output.
fn run(command: &mut Command, timeout: Duration) -> (Option<ExitStatus>, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let output = Output::default();
    let readers = [
        drain(
            child.stdout.take().expect("stdout"),
            "",
            output.clone(),
            None,
        ),
        drain(
            child.stderr.take().expect("stderr"),
            "[stderr] ",
            output.clone(),
            None,
        ),
    ];
    let status = match wait_for(&mut child, Instant::now() + timeout) {
        Some(status) => Some(status),
        None => {
            stop(&mut child);
            None
        }
    };
    // Let the readers catch up, without hanging on a pipe that a leftover
    // grandchild might still hold open.
    let deadline = Instant::now() + Duration::from_secs(2);
    while readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
        thread::sleep(POLL);
    }
    (status, text(&output))
}

#[test]
fn the_dashboard_of_revalidate_demo_updates_live_without_a_reload() {
    let started = Instant::now();
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let browser_dir = manifest_dir.join("tests/browser");
    let chromium = prerequisites(&browser_dir);

    let target = manifest_dir.join("../../target");
    std::fs::create_dir_all(&target).expect("create the target directory");
    let screenshot = target.join("dashboard.png");
    // Never pass on a screenshot left over from an earlier run.
    match std::fs::remove_file(&screenshot) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot remove {}: {e}", screenshot.display()),
    }

    let demo = Demo::start_on_a_free_port();
    println!(
        "revalidate demo: {} (up after {:?})",
        demo.url,
        started.elapsed()
    );

    let (status, output) = run(
        Command::new("node")
            .current_dir(manifest_dir)
            .env("CHROMIUM", &chromium)
            .arg("tests/browser/dashboard.mjs")
            .arg(&demo.url)
            .arg(&screenshot),
        NODE_TIMEOUT,
    );
    println!("{output}");
    let failed = |why: String| -> ! {
        panic!(
            "{why}\n--- node tests/browser/dashboard.mjs ---\n{output}\n\
             --- revalidate demo (last lines) ---\n{}",
            tail(&text(&demo.output), 40)
        )
    };
    match status {
        Some(status) if status.success() => {}
        Some(status) => failed(format!("the browser check failed ({status})")),
        None => failed(format!(
            "the browser check did not finish within {NODE_TIMEOUT:?}"
        )),
    }

    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|e| failed(format!("no screenshot at {}: {e}", screenshot.display())));
    if !png.starts_with(b"\x89PNG\r\n\x1a\n") || png.len() <= 10 * 1024 {
        failed(format!(
            "{} is not a real screenshot ({} bytes)",
            screenshot.display(),
            png.len()
        ));
    }

    drop(demo);
    println!(
        "screenshot: {} ({} KB); the test took {:?}",
        screenshot.canonicalize().unwrap_or(screenshot).display(),
        png.len() / 1024,
        started.elapsed()
    );
}
