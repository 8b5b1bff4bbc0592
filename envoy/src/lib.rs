//! Runs a real Envoy with the Consentry plugin, for the end-to-end tests, the demo and
//! the benchmarks.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use consentry_envoy::{Envoy, send};
//! let envoy = Envoy::builder()
//!     .upstream_port(8080)
//!     .plugin_config_file(consentry_envoy::project_root().join("policies/example.json"))
//!     .start()?;
//! let response = send("GET", &format!("{}/patients/p-1", envoy.base_url()), &[], None)?;
//! println!("{} {}", response.status, response.text());
//! # Ok(()) }
//! ```
//!
//! The configuration is one of the YAML templates in `envoy/configs/`, rendered with
//! fresh ports into a temporary directory. Envoy runs with `--use-dynamic-base-id` (so
//! several can run at once), logs into that directory, and is stopped (SIGTERM, then
//! SIGKILL) and reaped when the [`RunningEnvoy`] is dropped, panics included; it is also
//! killed if the test process dies without dropping it.

pub mod bench;
pub mod h2;
pub mod http;
pub mod process;
pub mod scripted;
pub mod template;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;

pub use http::{HttpResponse, send, send_raw, send_raw_concurrently, send_with_timeout};
pub use template::{placeholders, render, yaml_quote};

/// The template used when none is named.
pub const DEFAULT_TEMPLATE: &str = "consentry.yaml";
/// How long Envoy may take to become ready.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `envoy --mode validate` may take.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long Envoy gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Lines of Envoy's log quoted in errors.
const LOG_TAIL_LINES: usize = 60;
/// A template's `ROUTE_TIMEOUT` unless set: Envoy's own default route timeout.
pub const DEFAULT_ROUTE_TIMEOUT: &str = "15s";

/// A development pseudonymisation key (`KEY_ID:BASE64URL`), for demos and tests only;
/// production keys come from the platform's secret store.
pub const DEV_PSEUDONYM_KEYS: &str = "dev-1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// The workspace root (the parent of this crate's directory).
pub fn project_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    match manifest.parent() {
        Some(parent) => parent.to_path_buf(),
        None => manifest.join(".."),
    }
}

/// `envoy/configs/`, where the templates live.
pub fn configs_dir() -> PathBuf {
    project_root().join("envoy").join("configs")
}

/// The names of the templates in `envoy/configs/` (`*.yaml`), sorted.
pub fn template_names() -> Result<Vec<String>> {
    let dir = configs_dir();
    let mut names = Vec::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The command that builds the plugin's release `.wasm`.
pub const WASM_BUILD_COMMAND: &str =
    "cargo build -p consentry-filter --target wasm32-wasip1 --release";

/// The release build of the plugin (`target/wasm32-wasip1/release/consentry_filter.wasm`,
/// under `CARGO_TARGET_DIR` when that is set). Errors with the build command when missing.
pub fn wasm_path() -> Result<PathBuf> {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => project_root().join(dir),
        None => project_root().join("target"),
    };
    let path = target
        .join("wasm32-wasip1")
        .join("release")
        .join("consentry_filter.wasm");
    if path.is_file() {
        Ok(path)
    } else {
        bail!(
            "the plugin's .wasm is missing at {}; build it from the project root with \
             `rustup target add wasm32-wasip1 && {WASM_BUILD_COMMAND}`",
            path.display()
        )
    }
}

/// The Envoy binary: `ENVOY_BIN` when set, otherwise the one `envoy/install.sh` put in
/// `envoy/.venv/lib/python3.*/site-packages/envoy/_bin/envoy`.
pub fn envoy_binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return Ok(bin);
        }
        bail!(
            "ENVOY_BIN={} is not a file; unset it to use the one installed by ./envoy/install.sh",
            bin.display()
        );
    }
    let lib = project_root().join("envoy").join(".venv").join("lib");
    let mut found = Vec::new();
    if let Ok(entries) = fs::read_dir(&lib) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with("python3.") {
                let bin = entry
                    .path()
                    .join("site-packages")
                    .join("envoy")
                    .join("_bin")
                    .join("envoy");
                if bin.is_file() {
                    found.push(bin);
                }
            }
        }
    }
    found.sort();
    found.pop().ok_or_else(|| {
        anyhow!(
            "no Envoy binary: run `./envoy/install.sh` from the project root (it installs the \
             pinned Envoy into envoy/.venv), or set ENVOY_BIN to an Envoy 1.40 binary"
        )
    })
}

/// `envoy/configs/dev-tls/`: DEVELOPMENT-ONLY certificates (a CA with its key, and a
/// server certificate for `localhost` and `127.0.0.1`) that a template's `TLS_DIR` names
/// unless set with [`EnvoyBuilder::var`]. Their private keys are public: they prove
/// nothing outside demos and configuration checks.
pub fn dev_tls_dir() -> PathBuf {
    configs_dir().join("dev-tls")
}

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        // Binding port 0 on loopback does not fail in practice; 0 would make Envoy
        // pick a port, which the readiness check then reports as unreachable.
        .unwrap_or(0)
}

/// Runs `envoy --mode validate` on a rendered configuration; the error holds Envoy's
/// output. Validation loads the wasm module and runs the plugin's configuration
/// callback, so a refused plugin configuration fails validation too.
pub fn validate(config_text: &str) -> Result<()> {
    let envoy = envoy_binary()?;
    let dir = tempfile::Builder::new()
        .prefix("consentry-envoy-validate-")
        .tempdir()?;
    let config = dir.path().join("envoy.yaml");
    fs::write(&config, config_text)?;
    let log_path = dir.path().join("validate.log");
    let log = File::create(&log_path)?;
    let mut command = Command::new(&envoy);
    command
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(&config)
        .args(["-l", "info"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let status = process::run_bounded(command, VALIDATE_TIMEOUT)
        .with_context(|| format!("{} --mode validate", envoy.display()))?;
    if status.success() {
        Ok(())
    } else {
        let output = fs::read_to_string(&log_path).unwrap_or_default();
        bail!("envoy --mode validate failed ({status}):\n{output}")
    }
}

/// Where the template comes from.
#[derive(Debug, Clone)]
enum TemplateSource {
    /// A file name in `envoy/configs/`, or a path.
    Named(String),
    Text(String),
}

/// Builds and starts an Envoy. See [`Envoy::builder`].
#[derive(Debug, Clone)]
pub struct EnvoyBuilder {
    template: TemplateSource,
    vars: BTreeMap<String, String>,
    upstream_port: Option<u16>,
    plugin_config: Option<PluginConfig>,
    wasm: Option<PathBuf>,
    concurrency: u32,
    log_level: String,
    startup_timeout: Duration,
    extra_args: Vec<String>,
    log_file: Option<PathBuf>,
}

/// The plugin configuration: given as text, or read from a file at start.
#[derive(Debug, Clone)]
enum PluginConfig {
    Json(String),
    File(PathBuf),
}

/// Entry point: `Envoy::builder()`.
pub struct Envoy;

impl Envoy {
    pub fn builder() -> EnvoyBuilder {
        EnvoyBuilder {
            template: TemplateSource::Named(DEFAULT_TEMPLATE.to_owned()),
            vars: BTreeMap::new(),
            upstream_port: None,
            plugin_config: None,
            wasm: None,
            concurrency: 1,
            log_level: "info".to_owned(),
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            extra_args: Vec::new(),
            log_file: None,
        }
    }
}

/// Why Envoy did not start, from [`EnvoyBuilder::start_expecting_failure`].
#[derive(Debug, Clone)]
pub struct StartFailure {
    /// Envoy's exit code (`None` if it was ended by a signal).
    pub exit_code: Option<i32>,
    /// Everything Envoy wrote (its log, standard output and standard error).
    pub log: String,
}

impl EnvoyBuilder {
    /// The template: a file name in `envoy/configs/` (default `consentry.yaml`) or a path.
    pub fn template(mut self, name: impl Into<String>) -> Self {
        self.template = TemplateSource::Named(name.into());
        self
    }

    /// A template given as text rather than a file.
    pub fn template_text(mut self, text: impl Into<String>) -> Self {
        self.template = TemplateSource::Text(text.into());
        self
    }

    /// Sets a template variable, inserted verbatim (quote strings with [`yaml_quote`]).
    /// `LISTEN_PORT` and `ADMIN_PORT` default to free ports; setting them here wins.
    pub fn var(mut self, name: impl Into<String>, value: impl ToString) -> Self {
        self.vars.insert(name.into(), value.to_string());
        self
    }

    /// `UPSTREAM_PORT`: the upstream service's port on 127.0.0.1.
    pub fn upstream_port(mut self, port: u16) -> Self {
        self.upstream_port = Some(port);
        self
    }

    /// `PLUGIN_CONFIG`: the plugin's JSON configuration, passed to Envoy as exactly
    /// this text (it need not be valid: that is how a refused configuration is tested).
    pub fn plugin_config_json(mut self, json: &str) -> Self {
        self.plugin_config = Some(PluginConfig::Json(json.to_owned()));
        self
    }

    /// `PLUGIN_CONFIG` read from a file (relative paths are taken from the project root).
    pub fn plugin_config_file(mut self, path: impl AsRef<Path>) -> Self {
        // Read at start(), so that a missing file is an error there.
        self.plugin_config = Some(PluginConfig::File(project_root().join(path.as_ref())));
        self
    }

    /// `WASM_PATH`: another `.wasm` than the release build of [`wasm_path`].
    pub fn wasm(mut self, path: impl AsRef<Path>) -> Self {
        self.wasm = Some(project_root().join(path.as_ref()));
        self
    }

    /// Envoy's worker threads (`--concurrency`), 1 by default.
    pub fn concurrency(mut self, workers: u32) -> Self {
        self.concurrency = workers;
        self
    }

    /// Envoy's log level (`-l`): trace, debug, info (default), warning, error, critical, off.
    pub fn log_level(mut self, level: impl Into<String>) -> Self {
        self.log_level = level.into();
        self
    }

    /// How long to wait for Envoy to become ready (30 s by default).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Envoy's log (with the plugin's audit trail) goes to this file, created or
    /// emptied at start and kept after Envoy stops, rather than to the temporary
    /// directory (the demo's log, for `consentry audit verify` and `report`).
    pub fn log_file(mut self, path: impl AsRef<Path>) -> Self {
        self.log_file = Some(path.as_ref().to_path_buf());
        self
    }

    /// An extra command-line argument for Envoy.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    fn template_text_and_name(&self) -> Result<(String, String)> {
        match &self.template {
            TemplateSource::Text(text) => Ok((text.clone(), "<inline template>".to_owned())),
            TemplateSource::Named(name) => {
                let path = if Path::new(name).components().count() > 1 {
                    project_root().join(name)
                } else {
                    configs_dir().join(name)
                };
                let text = fs::read_to_string(&path)
                    .with_context(|| format!("reading template {}", path.display()))?;
                Ok((text, path.display().to_string()))
            }
        }
    }

    fn plugin_config_text(&self) -> Result<Option<String>> {
        match &self.plugin_config {
            None => Ok(None),
            Some(PluginConfig::Json(json)) => Ok(Some(json.clone())),
            Some(PluginConfig::File(path)) => fs::read_to_string(path)
                .map(Some)
                .with_context(|| format!("reading the plugin configuration {}", path.display())),
        }
    }

    /// The variables for the template. Values set explicitly are always passed (so a
    /// template that does not use them is an error); the defaults for `WASM_PATH` and
    /// the ports are passed only where the template has the placeholder.
    fn variables(&self, template: &str) -> Result<BTreeMap<String, String>> {
        let wanted = placeholders(template);
        let mut vars = BTreeMap::new();
        for name in ["LISTEN_PORT", "ADMIN_PORT"] {
            if wanted.contains(name) {
                vars.insert(name.to_owned(), free_port().to_string());
            }
        }
        if let Some(port) = self.upstream_port {
            vars.insert("UPSTREAM_PORT".to_owned(), port.to_string());
        }
        match &self.wasm {
            Some(path) => {
                vars.insert(
                    "WASM_PATH".to_owned(),
                    yaml_quote(&path.display().to_string()),
                );
            }
            None if wanted.contains("WASM_PATH") => {
                vars.insert(
                    "WASM_PATH".to_owned(),
                    yaml_quote(&wasm_path()?.display().to_string()),
                );
            }
            None => {}
        }
        if let Some(json) = self.plugin_config_text()? {
            vars.insert("PLUGIN_CONFIG".to_owned(), yaml_quote(&json));
        } else if wanted.contains("PLUGIN_CONFIG") {
            bail!(
                "the template needs a plugin configuration: call plugin_config_json() or \
                 plugin_config_file()"
            );
        }
        // The example service is also the consent service unless told otherwise.
        if wanted.contains("CONSENT_PORT")
            && !self.vars.contains_key("CONSENT_PORT")
            && let Some(port) = self.upstream_port
        {
            vars.insert("CONSENT_PORT".to_owned(), port.to_string());
        }
        if wanted.contains("PSEUDONYM_KEYS") && !self.vars.contains_key("PSEUDONYM_KEYS") {
            vars.insert("PSEUDONYM_KEYS".to_owned(), yaml_quote(DEV_PSEUDONYM_KEYS));
        }
        if wanted.contains("ROUTE_TIMEOUT") && !self.vars.contains_key("ROUTE_TIMEOUT") {
            vars.insert("ROUTE_TIMEOUT".to_owned(), DEFAULT_ROUTE_TIMEOUT.to_owned());
        }
        if wanted.contains("PRESERVE_REQUEST_ID") && !self.vars.contains_key("PRESERVE_REQUEST_ID")
        {
            vars.insert("PRESERVE_REQUEST_ID".to_owned(), "false".to_owned());
        }
        // A TLS listener's certificates: the development set unless the caller made its own.
        if wanted.contains("TLS_DIR") && !self.vars.contains_key("TLS_DIR") {
            vars.insert("TLS_DIR".to_owned(), dev_tls_dir().display().to_string());
        }
        if wanted.contains("UPSTREAM_PORT")
            && !vars.contains_key("UPSTREAM_PORT")
            && !self.vars.contains_key("UPSTREAM_PORT")
        {
            bail!("the template needs the upstream's port: call upstream_port()");
        }
        vars.extend(self.vars.clone());
        Ok(vars)
    }

    /// Renders the configuration without starting anything (ports are picked as for
    /// [`EnvoyBuilder::start`]).
    pub fn render(&self) -> Result<String> {
        Ok(self.prepare()?.config_text)
    }

    fn prepare(&self) -> Result<Prepared> {
        let (text, name) = self.template_text_and_name()?;
        let vars = self.variables(&text)?;
        let config_text = render(&text, &vars).with_context(|| format!("rendering {name}"))?;
        let port = |var: &str| -> Result<u16> {
            vars.get(var)
                .and_then(|v| v.trim().parse::<u16>().ok())
                .ok_or_else(|| {
                    anyhow!(
                        "{name} needs a numeric {var} placeholder: the runner reaches Envoy \
                         through it (LISTEN_PORT for traffic, ADMIN_PORT for readiness)"
                    )
                })
        };
        Ok(Prepared {
            listen_port: port("LISTEN_PORT")?,
            admin_port: port("ADMIN_PORT")?,
            config_text,
        })
    }

    /// Renders the configuration, starts Envoy and waits until its admin `/ready` says
    /// `LIVE`. If Envoy exits first or is not ready in time, the error holds the tail of
    /// its log.
    pub fn start(&self) -> Result<RunningEnvoy> {
        // A port picked by free_port() can be taken by someone else before Envoy binds
        // it; then Envoy exits at once, and another set of ports is tried.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.launch()? {
                Launch::Ready(envoy) => return Ok(envoy),
                Launch::Exited { log, status } => {
                    let port_clash = log.contains("Address already in use")
                        && !self.vars.contains_key("LISTEN_PORT")
                        && !self.vars.contains_key("ADMIN_PORT");
                    if port_clash && attempt < 3 {
                        continue;
                    }
                    bail!(
                        "Envoy exited before it was ready ({status}); its log ends with:\n{}",
                        tail(&log, LOG_TAIL_LINES)
                    );
                }
            }
        }
    }

    /// Starts Envoy expecting it NOT to become ready (e.g. a refused plugin
    /// configuration): returns its exit code and log once it has exited. Errors if it
    /// becomes ready (and stops it) or neither exits nor gets ready in time.
    pub fn start_expecting_failure(&self) -> Result<StartFailure> {
        match self.launch()? {
            Launch::Exited { log, status } => Ok(StartFailure {
                exit_code: status.code(),
                log,
            }),
            Launch::Ready(envoy) => {
                let log = envoy.log();
                drop(envoy);
                bail!(
                    "Envoy started and became ready although it was expected to fail; its log \
                     ends with:\n{}",
                    tail(&log, LOG_TAIL_LINES)
                )
            }
        }
    }

    fn launch(&self) -> Result<Launch> {
        let Prepared {
            config_text,
            listen_port,
            admin_port,
        } = self.prepare()?;
        let envoy = envoy_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("consentry-envoy-")
            .tempdir()
            .context("creating a temporary directory for Envoy")?;
        let config_path = dir.path().join("envoy.yaml");
        fs::write(&config_path, &config_text)?;
        let log_path = match &self.log_file {
            Some(path) => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                path.clone()
            }
            None => dir.path().join("envoy.log"),
        };
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

        let mut command = Command::new(&envoy);
        command
            .arg("-c")
            .arg(&config_path)
            .arg("--concurrency")
            .arg(self.concurrency.to_string())
            .arg("--use-dynamic-base-id")
            .arg("-l")
            .arg(&self.log_level)
            .args(&self.extra_args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            // Envoy logs to stderr; stdout and stderr share one file description, so the
            // file holds everything in the order written.
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = process::spawn_supervised(command)
            .with_context(|| format!("starting {}", envoy.display()))?;
        let mut running = RunningEnvoy {
            child,
            listen_port,
            admin_port,
            config_text,
            log_path,
            dir,
        };
        let deadline = Instant::now() + self.startup_timeout;
        loop {
            if let Some(status) = running.child.try_wait()? {
                let log = running.log();
                return Ok(Launch::Exited { log, status });
            }
            if running.is_ready() {
                return Ok(Launch::Ready(running));
            }
            if Instant::now() >= deadline {
                let log = running.log();
                drop(running);
                bail!(
                    "Envoy was not ready within {:?}; its log ends with:\n{}",
                    self.startup_timeout,
                    tail(&log, LOG_TAIL_LINES)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

enum Launch {
    Ready(RunningEnvoy),
    Exited { log: String, status: ExitStatus },
}

struct Prepared {
    config_text: String,
    listen_port: u16,
    admin_port: u16,
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A running Envoy; stopped and reaped on drop.
#[derive(Debug)]
pub struct RunningEnvoy {
    child: Child,
    listen_port: u16,
    admin_port: u16,
    config_text: String,
    log_path: PathBuf,
    // Dropped after the child is stopped (Drop runs before the fields are dropped).
    dir: TempDir,
}

impl RunningEnvoy {
    /// The port of the listener (`LISTEN_PORT`).
    pub fn listen_port(&self) -> u16 {
        self.listen_port
    }

    /// The port of the admin interface (`ADMIN_PORT`).
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// `http://127.0.0.1:LISTEN_PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.listen_port)
    }

    /// The listener's address.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.listen_port))
    }

    /// Envoy's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The configuration Envoy was started with.
    pub fn config_text(&self) -> &str {
        &self.config_text
    }

    /// The temporary directory holding the configuration and the log (unless
    /// [`EnvoyBuilder::log_file`] put the log elsewhere).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// GETs an admin path (e.g. `/stats?filter=consentry`) and returns the body;
    /// errors on a non-200 answer.
    pub fn admin_get(&self, path: &str) -> Result<String> {
        let url = format!("http://127.0.0.1:{}{}", self.admin_port, path);
        let response = send("GET", &url, &[], None)?;
        if response.status != 200 {
            bail!("GET {url}: {} {}", response.status, response.text());
        }
        Ok(response.text())
    }

    /// The admin counters and gauges whose names contain `filter`, as (name, value).
    pub fn stats(&self, filter: &str) -> Result<Vec<(String, String)>> {
        let text = self.admin_get(&format!("/stats?filter={filter}"))?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    fn is_ready(&self) -> bool {
        let url = format!("http://127.0.0.1:{}/ready", self.admin_port);
        matches!(
            send_with_timeout("GET", &url, &[], None, Duration::from_secs(2)),
            Ok(r) if r.status == 200 && r.text().trim() == "LIVE"
        )
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The file Envoy logs to (see [`EnvoyBuilder::log_file`]).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything Envoy has logged so far (its standard output and error).
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the log contains `needle`; the error holds the log's tail.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "Envoy's log did not show {needle:?} within {timeout:?}; it ends with:\n{}",
                    tail(&log, LOG_TAIL_LINES)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops Envoy now (SIGTERM, then SIGKILL) and returns its exit status and log.
    pub fn stop(mut self) -> (Option<ExitStatus>, String) {
        let status = process::terminate(&mut self.child, STOP_GRACE);
        (status, self.log())
    }
}

impl Drop for RunningEnvoy {
    fn drop(&mut self) {
        process::terminate(&mut self.child, STOP_GRACE);
        if thread::panicking() {
            // A failing test: show what Envoy said, the most useful clue there is.
            eprintln!(
                "--- Envoy's log (last {LOG_TAIL_LINES} lines) ---\n{}\n--- end of Envoy's log ---",
                tail(&self.log(), LOG_TAIL_LINES)
            );
        }
    }
}
