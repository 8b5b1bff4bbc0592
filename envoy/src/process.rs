//! Child processes that never outlive the test process, and waits that never hang.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Sender};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

type SpawnJob = (Command, Sender<io::Result<Child>>);

/// Spawns `command` so that it is killed (SIGKILL) when this process dies, however it dies
/// (a panic that aborts, SIGKILL from a test timeout): Drop handlers cover the rest.
///
/// On Linux the child asks for `PR_SET_PDEATHSIG`, which fires when the *thread* that
/// forked it exits. Test harnesses run each test on its own short-lived thread, so every
/// child is forked from one spawner thread that lives as long as the process.
pub fn spawn_supervised(mut command: Command) -> Result<Child> {
    arrange_death_signal(&mut command);
    static SPAWNER: OnceLock<Option<Sender<SpawnJob>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        thread::Builder::new()
            .name("consentry-envoy-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    // The requester may have gone; the child is then dropped, not leaked:
                    // it dies with this process at the latest.
                    let _ = reply.send(command.spawn());
                }
            })
            .ok()
            .map(|_| tx)
    });
    let Some(spawner) = spawner else {
        // No spawner thread: spawn here (the death signal then follows this thread).
        return command.spawn().context("spawning a child process");
    };
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((command, reply_tx))
        .map_err(|_| anyhow!("the spawner thread is gone"))?;
    reply_rx
        .recv_timeout(Duration::from_secs(30))
        .context("the spawner thread did not answer")?
        .context("spawning a child process")
}

#[cfg(target_os = "linux")]
fn arrange_death_signal(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (prctl, getppid); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::other("parent exited before the child started"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn arrange_death_signal(_command: &mut Command) {}

/// Sends `signal` to the child (ignoring a child that is already gone).
pub fn signal(child: &Child, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet
        // (so the pid cannot have been reused).
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Waits up to `timeout` for the child to exit.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, up to `grace` to exit, then SIGKILL; always reaps the child.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    signal(child, libc::SIGTERM);
    if let Ok(Some(status)) = wait_timeout(child, grace) {
        return Some(status);
    }
    let _ = child.kill();
    child.wait().ok()
}

/// Runs `command` to completion within `timeout` (killing it if it takes longer).
/// Its standard output and error must already be redirected by the caller.
pub fn run_bounded(command: Command, timeout: Duration) -> Result<ExitStatus> {
    let mut child = spawn_supervised(command)?;
    match wait_timeout(&mut child, timeout)? {
        Some(status) => Ok(status),
        None => {
            terminate(&mut child, Duration::from_millis(500));
            Err(anyhow!("did not finish within {timeout:?}"))
        }
    }
}
