//! The `fleetward` binary: one entry point for every mode of the platform.

// No function longer than a reader can hold in their head (the threshold is in clippy.toml).
#![warn(clippy::too_many_lines)]

mod certs;
mod cli;
mod cluster;
mod control;
mod history;
mod inspect;
mod local;
mod provisioning;
mod start;
mod writer;

use std::process::ExitCode;

use clap::Parser;

/// Every mode runs on jemalloc (see the dependency's note in Cargo.toml).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: its background thread returns freed pages to the
/// system after their decay time even while the process is idle, so what a flood of clients
/// made it hold goes back once they are gone. Without it, pages are only purged on later
/// allocator activity. `_RJEM_MALLOC_CONF` still overrides these at run time.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 23] = b"background_thread:true\0";

/// Has jemalloc give freed pages back to the system at once instead of after its decay time
/// (10 s): for the operator, whose peak is a burst (its first commit resolves every object)
/// that frees about as much as it keeps. With the default decay the freed pages stayed
/// resident past that second: peak 326 MiB against 292 at 110k objects (BENCHMARKS.md). The
/// dataplane keeps the default: it allocates per message, and reuses what it frees. A decay
/// set in `_RJEM_MALLOC_CONF` is left as it is: that variable overrides these options.
pub(crate) fn free_pages_at_once() {
    let conf = std::env::var("_RJEM_MALLOC_CONF").unwrap_or_default();
    if conf.contains("decay_ms") {
        return;
    }
    let set = |name: &str| {
        let name = format!("{name}\0");
        // SAFETY: both options are jemalloc's `ssize_t` decay times, written as an `isize`;
        // the name is NUL-terminated.
        unsafe { tikv_jemalloc_ctl::raw::write(name.as_bytes(), 0isize) }
    };
    // The default of arenas made from now on, then every arena made so far (one not made
    // yet refuses the write, and takes the default when it is).
    let arenas: u32 = tikv_jemalloc_ctl::arenas::narenas::read().unwrap_or(0);
    for option in ["dirty_decay_ms", "muzzy_decay_ms"] {
        if let Err(e) = set(&format!("arenas.{option}")) {
            eprintln!("warning: jemalloc's arenas.{option} could not be set: {e}");
        }
        for i in 0..arenas {
            let _ = set(&format!("arena.{i}.{option}"));
        }
    }
}

fn main() -> ExitCode {
    cli::Cli::parse().run()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_operator_has_jemalloc_free_pages_at_once() {
        let read = |name: &[u8]| {
            // SAFETY: a NUL-terminated name of a `ssize_t` option, read as an `isize`.
            unsafe { tikv_jemalloc_ctl::raw::read::<isize>(name) }.expect("a jemalloc option")
        };
        assert_eq!(
            read(b"arenas.dirty_decay_ms\0"),
            10_000,
            "jemalloc's default"
        );
        super::free_pages_at_once();
        assert_eq!(read(b"arenas.dirty_decay_ms\0"), 0);
        assert_eq!(read(b"arenas.muzzy_decay_ms\0"), 0);
        assert_eq!(read(b"arena.0.dirty_decay_ms\0"), 0, "an arena made before");
    }
}
