//! Loading the `.wasm`: one engine, modules compiled once per process and cached
//! on disk beside the `.wasm`, so every test and CLI run starts quickly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use anyhow::{Context as _, Result, bail};
use wasmtime::{Config, Engine, Module};

use crate::world::lock;

/// A compiled plugin module.
pub struct Plugin {
    pub(crate) engine: Engine,
    pub(crate) module: Module,
    path: PathBuf,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("path", &self.path).finish()
    }
}

/// The command that builds the plugin; error messages quote it.
pub const BUILD_COMMAND: &str = "rustup target add wasm32-wasip1 && cargo build -p consentry-filter --target wasm32-wasip1 --release";

/// The workspace's release build of the plugin, or `CONSENTRY_WASM` when set.
pub fn default_wasm_path() -> PathBuf {
    if let Some(p) = std::env::var_os("CONSENTRY_WASM") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target
        .join("wasm32-wasip1")
        .join("release")
        .join("consentry_filter.wasm")
}

/// The workspace root, from this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

fn engine() -> Result<Engine> {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    if let Some(e) = ENGINE.get() {
        return Ok(e.clone());
    }
    let mut config = Config::new();
    // Profiling the plugin in the harness: with `CONSENTRY_HOST_PERFMAP` set, wasmtime
    // writes `/tmp/perf-<pid>.map`, so `perf report` names the plugin's own functions.
    if std::env::var_os("CONSENTRY_HOST_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let engine = Engine::new(&config).map_err(anyhow::Error::from)?;
    Ok(ENGINE.get_or_init(|| engine).clone())
}

type Compiled = HashMap<(PathBuf, SystemTime), Arc<Plugin>>;

impl Plugin {
    /// Loads and compiles a `.wasm` (once per file version per process).
    pub fn load(path: &Path) -> Result<Arc<Plugin>> {
        static COMPILED: OnceLock<Mutex<Compiled>> = OnceLock::new();
        let meta = std::fs::metadata(path).with_context(|| {
            format!(
                "the plugin is not built at {} — build it with: {BUILD_COMMAND}",
                path.display()
            )
        })?;
        let key = (path.to_path_buf(), meta.modified()?);
        let cache = COMPILED.get_or_init(|| Mutex::new(HashMap::new()));
        if let Some(p) = lock(cache).get(&key) {
            return Ok(p.clone());
        }
        let bytes = std::fs::read(path)?;
        if !bytes.starts_with(b"\0asm") {
            bail!("{} is not a WebAssembly module", path.display());
        }
        let engine = engine()?;
        let module = compile_cached(&engine, &bytes, path)?;
        let plugin = Arc::new(Plugin {
            engine,
            module,
            path: path.to_path_buf(),
        });
        lock(cache).insert(key, plugin.clone());
        Ok(plugin)
    }

    /// Compiles a module given whole, in binary or WebAssembly text: a filter a
    /// test writes on the spot (`name` stands for its path in messages).
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Arc<Plugin>> {
        let engine = engine()?;
        let module = Module::new(&engine, bytes)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("compiling {name}"))?;
        Ok(Arc::new(Plugin {
            engine,
            module,
            path: PathBuf::from(name),
        }))
    }

    /// The workspace's release build (see [`default_wasm_path`]).
    pub fn release_build() -> Result<Arc<Plugin>> {
        Self::load(&default_wasm_path())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Compiles with cranelift, reusing a previous compilation of the same bytes by
/// the same engine version when one is on disk. The file is named by a hash of
/// the module and the engine's compatibility key, so a stale artifact is never
/// loaded; a corrupt one fails to deserialize and is rebuilt.
fn compile_cached(engine: &Engine, bytes: &[u8], path: &Path) -> Result<Module> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    engine.precompile_compatibility_hash().hash(&mut h);
    let dir = path
        .parent()
        .unwrap_or(Path::new("."))
        .join(".consentry-host-cache");
    let file = dir.join(format!("{:016x}.cwasm", h.finish()));
    if file.exists() {
        // SAFETY: the file was written by `Module::serialize` of this same engine
        // configuration (its name includes the compatibility hash), in a directory
        // of the build output that only this tool writes.
        if let Ok(m) = unsafe { Module::deserialize_file(engine, &file) } {
            return Ok(m);
        }
    }
    let module = Module::new(engine, bytes)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("compiling {}", path.display()))?;
    if std::fs::create_dir_all(&dir).is_ok()
        && let Ok(serialized) = module.serialize()
    {
        let tmp = dir.join(format!("{}.tmp", std::process::id()));
        if std::fs::write(&tmp, serialized).is_ok() {
            let _ = std::fs::rename(&tmp, &file);
        }
    }
    Ok(module)
}
