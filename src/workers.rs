//! Thread per core, as nginx runs a worker process per core: each worker is a single-threaded
//! tokio runtime with its own accept loops (see `Gateway::start_on`), so a connection and
//! everything it does stays on one thread, with no work-stealing synchronisation on every
//! wake-up, and each worker has its own upstream connection pools.

use std::future::Future;
use std::io;
use std::thread::JoinHandle;

use tokio::runtime::{Handle, Runtime};
use tokio_util::sync::CancellationToken;

/// The main thread's runtime plus one runtime thread per further worker.
pub struct Workers {
    runtime: Runtime,
    handles: Vec<Handle>,
    stop: CancellationToken,
    threads: Vec<JoinHandle<()>>,
}

/// `server.worker_threads`, with 0 meaning one per core.
pub fn count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

impl Workers {
    /// Starts `count - 1` worker threads; the caller's thread is worker 0.
    pub fn start(count: usize) -> io::Result<Workers> {
        let count = count.max(1);
        crate::proxy::set_worker_count(count);
        crate::proxy::set_worker_index(0);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stop = CancellationToken::new();
        let mut handles = vec![runtime.handle().clone()];
        let mut threads = Vec::new();
        for index in 1..count {
            let worker = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(worker.handle().clone());
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("gateway-worker-{index}"))
                .spawn(move || {
                    crate::proxy::set_worker_index(index);
                    worker.block_on(stop.cancelled());
                })?;
            threads.push(thread);
        }
        Ok(Workers {
            runtime,
            handles,
            stop,
            threads,
        })
    }

    /// Runs `main` on worker 0 with every worker's handle; when it returns, the other
    /// workers stop (their remaining tasks are dropped) and are joined.
    pub fn run<F, Fut>(self, main: F) -> Fut::Output
    where
        F: FnOnce(Vec<Handle>) -> Fut,
        Fut: Future,
    {
        let output = self.runtime.block_on(main(self.handles.clone()));
        self.stop.cancel();
        for thread in self.threads {
            let _ = thread.join();
        }
        // Not an unbounded wait for blocking work (a config read stuck on a hung mount):
        // the drain is over, the process exits.
        self.runtime
            .shutdown_timeout(std::time::Duration::from_secs(1));
        output
    }
}

/// Raises the soft open-file limit to the hard one, as Go's runtime and many servers do
/// (the usual soft default, 1024, is far below `server.max_connections`), and warns when it
/// is still short of what `max_connections` may need: each client connection can hold an
/// upstream connection (or a file) as well. nginx warns likewise when `worker_connections`
/// exceeds the limit. Returns the limit in force (`None`: unlimited or unknown).
pub fn raise_open_file_limit(max_connections: usize) -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let current = limit.current?;
    // Linux refuses an infinite maximum for open files; 2^20 is its usual ceiling.
    let wanted = limit.maximum.unwrap_or(1 << 20);
    if current < wanted {
        limit.current = Some(wanted);
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => tracing::debug!(from = current, to = wanted, "raised the open-file limit"),
            Err(e) => tracing::debug!(error = %e, "could not raise the open-file limit"),
        }
    }
    let in_force = getrlimit(Resource::Nofile).current?;
    let needed = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(64);
    if in_force < needed {
        tracing::warn!(
            limit = in_force,
            needed,
            "the open-file limit is below what server.max_connections may need (two \
             descriptors per connection): raise it (LimitNOFILE= in systemd, ulimit -n) or \
             lower max_connections; past it, new connections wait and upstream connects fail \
             with 503"
        );
    }
    Some(in_force)
}
