//! The redactor (against a serde_json parse-modify-serialize baseline), token
//! verification (ES256, RS256, PS256, EdDSA; cold and cached), policy decisions (1, 10
//! and 100 routes × rules; plan built and cached) and SHA-256, natively and inside the
//! `.wasm` under wasmtime: the cases of `host-tests/bench-wasm` (`consentry-bench-wasm`),
//! whose module exports them. The same module answers the same cases inside Envoy's V8
//! (`consentry-bench --in-wasm`).
//!
//! ```text
//! cargo build -p consentry-bench-wasm --target wasm32-wasip1 --release
//! cargo bench -p consentry-host --bench in_wasm [-- --budget-ms 300] [--module PATH]
//! ```
//!
//! The module runs on wasmtime with the harness's engine settings (cranelift, default
//! optimisation) and a minimal WASI: the clocks read the real time, so each case times
//! itself inside the module exactly as it does natively and in V8. The table goes to
//! `results/harness-in-wasm.md` too. Nothing asserts on time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use consentry_bench_wasm::suite::{self, Engine};
use serde_json::Value;
use wasmtime::{Caller, Config, Extern, Linker, Memory, Module, Store};

/// The benchmark module under wasmtime.
struct WasmBench {
    store: Store<()>,
    memory: Memory,
    alloc: wasmtime::TypedFunc<u32, u32>,
    run: wasmtime::TypedFunc<(u32, u32), u64>,
}

fn memory_of(caller: &mut Caller<'_, ()>) -> Memory {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => m,
        _ => panic!("the module exports no memory"),
    }
}

impl WasmBench {
    fn load(path: &PathBuf) -> Self {
        let engine = wasmtime::Engine::new(&Config::new()).unwrap();
        let module = Module::from_file(&engine, path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}\nbuild it with: cargo build -p consentry-bench-wasm --target wasm32-wasip1 --release",
                path.display()
            )
        });
        let mut linker: Linker<()> = Linker::new(&engine);
        let origin = Instant::now();
        let w = "wasi_snapshot_preview1";
        linker
            .func_wrap(
                w,
                "clock_time_get",
                move |mut c: Caller<'_, ()>, id: i32, _precision: i64, out: i32| -> i32 {
                    let nanos = if id == 0 {
                        SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .unwrap()
                            .as_nanos() as u64
                    } else {
                        origin.elapsed().as_nanos() as u64 + 1
                    };
                    let m = memory_of(&mut c);
                    m.write(&mut c, out as usize, &nanos.to_le_bytes())
                        .map_or(21, |()| 0)
                },
            )
            .unwrap();
        linker
            .func_wrap(
                w,
                "random_get",
                |mut c: Caller<'_, ()>, buf: i32, len: i32| -> i32 {
                    let mut bytes = vec![0u8; len as usize];
                    getrandom::fill(&mut bytes).unwrap();
                    let m = memory_of(&mut c);
                    m.write(&mut c, buf as usize, &bytes).map_or(21, |()| 0)
                },
            )
            .unwrap();
        linker
            .func_wrap(
                w,
                "environ_sizes_get",
                |mut c: Caller<'_, ()>, count: i32, size: i32| -> i32 {
                    let m = memory_of(&mut c);
                    let _ = m.write(&mut c, count as usize, &0u32.to_le_bytes());
                    m.write(&mut c, size as usize, &0u32.to_le_bytes())
                        .map_or(21, |()| 0)
                },
            )
            .unwrap();
        linker
            .func_wrap(
                w,
                "environ_get",
                |_: Caller<'_, ()>, _: i32, _: i32| -> i32 { 0 },
            )
            .unwrap();
        linker
            .func_wrap(
                w,
                "fd_write",
                |mut c: Caller<'_, ()>, _fd: i32, iovs: i32, n: i32, written: i32| -> i32 {
                    let m = memory_of(&mut c);
                    let mut total = 0u32;
                    for i in 0..n as usize {
                        let mut iov = [0u8; 8];
                        let _ = m.read(&c, iovs as usize + i * 8, &mut iov);
                        let ptr = u32::from_le_bytes(iov[..4].try_into().unwrap()) as usize;
                        let len = u32::from_le_bytes(iov[4..].try_into().unwrap()) as usize;
                        let mut text = vec![0u8; len];
                        let _ = m.read(&c, ptr, &mut text);
                        eprint!("{}", String::from_utf8_lossy(&text));
                        total += len as u32;
                    }
                    m.write(&mut c, written as usize, &total.to_le_bytes())
                        .map_or(21, |()| 0)
                },
            )
            .unwrap();
        linker
            .func_wrap(
                w,
                "proc_exit",
                |_: Caller<'_, ()>, code: i32| -> wasmtime::Result<()> {
                    Err(wasmtime::Error::msg(format!("proc_exit({code})")))
                },
            )
            .unwrap();
        // The proxy-wasm host calls of the module's filter face: never called here.
        linker.define_unknown_imports_as_traps(&module).unwrap();
        let mut store = Store::new(&engine, ());
        let instance = linker.instantiate(&mut store, &module).unwrap();
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            init.call(&mut store, ()).unwrap();
        }
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        let alloc = instance.get_typed_func(&mut store, "bench_alloc").unwrap();
        let run = instance.get_typed_func(&mut store, "bench_run").unwrap();
        Self {
            store,
            memory,
            alloc,
            run,
        }
    }

    fn ask(&mut self, request: &[u8]) -> Value {
        let ptr = self
            .alloc
            .call(&mut self.store, request.len() as u32)
            .unwrap();
        self.memory
            .write(&mut self.store, ptr as usize, request)
            .unwrap();
        let packed = self
            .run
            .call(&mut self.store, (ptr, request.len() as u32))
            .unwrap();
        let (at, len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
        let mut answer = vec![0u8; len];
        self.memory.read(&self.store, at, &mut answer).unwrap();
        serde_json::from_slice(&answer).unwrap()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let budget: u64 = arg("--budget-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let module = arg("--module").map(PathBuf::from).unwrap_or_else(|| {
        consentry_host::plugin::default_wasm_path().with_file_name("consentry_bench_wasm.wasm")
    });
    let cases = suite::suite(budget).unwrap();
    let mut wasm = WasmBench::load(&module);
    let mut native = Vec::new();
    let mut wasmtime = Vec::new();
    for c in &cases {
        let request = c.request.to_string();
        let n: Value =
            serde_json::from_str(&consentry_bench_wasm::run(request.as_bytes())).unwrap();
        let w = wasm.ask(request.as_bytes());
        eprintln!(
            "{:<28} native {:>14} ns   wasmtime {:>14} ns",
            c.id,
            n["ns_per_op"]
                .as_f64()
                .map_or(format!("{n}"), |v| format!("{v:.0}")),
            w["ns_per_op"]
                .as_f64()
                .map_or(format!("{w}"), |v| format!("{v:.0}")),
        );
        native.push(n);
        wasmtime.push(w);
    }
    let report = suite::report(
        &cases,
        &[
            Engine {
                name: "native",
                answers: &native,
            },
            Engine {
                name: "wasmtime",
                answers: &wasmtime,
            },
        ],
    );
    println!("\n{report}");
    let path = support::results_dir().join("harness-in-wasm.md");
    std::fs::write(&path, &report).unwrap();
    // The answers, by case, for `consentry-bench --in-wasm` to show beside V8's.
    let answers: serde_json::Map<String, Value> = cases
        .iter()
        .zip(&wasmtime)
        .map(|(c, a)| (c.id.clone(), a.clone()))
        .collect();
    let json = support::results_dir().join("harness-in-wasm.json");
    std::fs::write(&json, Value::Object(answers).to_string()).unwrap();
    println!("written: {} and {}", path.display(), json.display());
}
