//! The limits a guest runs under that are not about its requests: memory and tables over all of a
//! component's instances, CPU time by epoch ticks, and the one-line reasons for the traps that
//! resource handles cause.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{Engine, ResourceLimiter, StoreLimits, StoreLimitsBuilder};

/// How often the epoch advances: the granularity of the CPU-time limit.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Memory and table limits over the whole guest, not per memory or table (a component can hold
/// many core instances, each with its own linear memory), that remember being hit so that the
/// trap that follows can be explained.
pub(super) struct GuestLimiter {
    inner: StoreLimits,
    /// The most bytes of linear memory, all memories together.
    max_memory: usize,
    /// Bytes of linear memory granted so far, all memories together.
    memory: usize,
    /// The most table elements, all tables together.
    max_table_elements: usize,
    /// Table elements granted so far, all tables together.
    table_elements: usize,
    pub(super) memory_hit: bool,
}

impl GuestLimiter {
    pub(super) fn new(max_memory: u64) -> GuestLimiter {
        let max_memory = usize::try_from(max_memory).unwrap_or(usize::MAX);
        GuestLimiter {
            inner: StoreLimitsBuilder::new()
                .memory_size(max_memory)
                .instances(64)
                .tables(64)
                .memories(16)
                .table_elements(MAX_TABLE_ELEMENTS)
                .build(),
            max_memory,
            memory: 0,
            max_table_elements: MAX_TABLE_ELEMENTS,
            table_elements: 0,
            memory_hit: false,
        }
    }
}

/// Table elements, all tables of a guest together.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// `total` with one item grown from `current` to `desired`, if that stays within `max`.
fn grown(total: usize, current: usize, desired: usize, max: usize) -> Option<usize> {
    total
        .checked_add(desired.saturating_sub(current))
        .filter(|t| *t <= max)
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?
            && match grown(self.memory, current, desired, self.max_memory) {
                Some(total) => {
                    self.memory = total;
                    true
                }
                None => false,
            };
        self.memory_hit |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.inner.table_growing(current, desired, maximum)?
            && match grown(
                self.table_elements,
                current,
                desired,
                self.max_table_elements,
            ) {
                Some(total) => {
                    self.table_elements = total;
                    true
                }
                None => false,
            })
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }
    fn tables(&self) -> usize {
        self.inner.tables()
    }
    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub(super) struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    pub(super) fn start(engine: Engine) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("fapi-epoch".into())
            .spawn(move || {
                // Parked between ticks, so that dropping the ticker stops it at once (a plain
                // sleep would hold every process exit back by up to a tick).
                let mut next = Instant::now() + EPOCH_TICK;
                while !flag.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now < next {
                        std::thread::park_timeout(next - now);
                        continue;
                    }
                    engine.increment_epoch();
                    next = (next + EPOCH_TICK).max(now);
                }
            })
            .ok();
        Ticker { stop, thread }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Why a guest was stopped for a resource handle: one it does not hold (dropped already, or
/// invented), one of another type, or more than `[sandbox] max_handles` at once. wasmtime says
/// this in errors of its own (the component model's handle tables, and the host's
/// `ResourceTable`), with a backtrace around them; the guest gets one line.
pub(super) fn handle_misuse(e: &wasmtime::Error, max_handles: u32) -> Option<String> {
    use wasmtime::component::ResourceTableError;
    let limit = || {
        format!(
            "the guest held more than {max_handles} resource handles at once ([sandbox] \
             max_handles / --max-handles)"
        )
    };
    let misuse = |what: &str| {
        format!(
            "the guest used a resource handle it does not hold, or one of another type ({}): a \
             bug in the guest or its bindings",
            crate::policy::bounded(what, crate::policy::MAX_QUOTED_NAME)
        )
    };
    if let Some(t) = e
        .chain()
        .find_map(|c| c.downcast_ref::<ResourceTableError>())
    {
        return Some(match t {
            ResourceTableError::Full => limit(),
            other => misuse(&other.to_string()),
        });
    }
    let root = e.root_cause().to_string();
    if root.contains("handle limit exceeded") || root.contains("index overflow") {
        return Some(limit());
    }
    let misused = [
        "unknown handle index",
        "used with the wrong type",
        "is not a resource",
        "is not an own resource",
        "while borrowed",
        "handle is not",
        "of a different type",
    ];
    misused
        .iter()
        .any(|m| root.contains(m))
        .then(|| misuse(&root))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn the_memory_limit_covers_all_memories_together() {
        let mut l = GuestLimiter::new(256 << 20);
        // Two core instances, each with its own memory: together they may not pass the limit,
        // although each alone stays under it (a per-memory limit would grant all of this).
        assert!(matches!(l.memory_growing(0, 200 * MIB, None), Ok(true)));
        assert!(matches!(l.memory_growing(0, 100 * MIB, None), Ok(false)));
        assert!(l.memory_hit);
        assert!(matches!(l.memory_growing(0, 50 * MIB, None), Ok(true)));
        // Growing one memory counts only what it adds.
        assert!(matches!(
            l.memory_growing(50 * MIB, 56 * MIB, None),
            Ok(true)
        ));
        assert!(matches!(
            l.memory_growing(56 * MIB, 57 * MIB, None),
            Ok(false)
        ));
        assert_eq!(l.memory, 256 * MIB);
    }

    #[test]
    fn the_table_limit_covers_all_tables_together() {
        let mut l = GuestLimiter::new(256 << 20);
        assert!(matches!(l.table_growing(0, 600_000, None), Ok(true)));
        assert!(matches!(l.table_growing(0, 600_000, None), Ok(false)));
        assert!(matches!(
            l.table_growing(600_000, 1_000_000, None),
            Ok(true)
        ));
        assert!(matches!(l.table_growing(0, 1, None), Ok(false)));
    }
}
