//! A server loads a new tokenizer with every model version it swaps in, and encodes on
//! long-lived threads. Dropping a tokenizer must give back everything it cached: no memory
//! may stay behind per tokenizer instance (tokenizers 0.23 keeps its BPE word cache in a
//! thread-local keyed by instance, which outlives the instance unless the cache is off).
//! This binary counts live heap bytes with its own global allocator.

mod common;

use common::golden_dir;
use safeloop_shared::loader::{load_causal_lm, LoadOptions};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Loads the golden model's tokenizer, encodes `words` distinct words on this thread, drops it.
fn one_version(round: usize, words: usize) {
    let loaded = load_causal_lm(&golden_dir("llama-gqa"), &LoadOptions::default()).unwrap();
    let text: String = (0..words).map(|i| format!("word{round}x{i} ")).collect();
    let ids = loaded.tokenizer.encode(&text, false).unwrap();
    assert!(ids.len() > words);
}

#[test]
fn dropping_a_tokenizer_frees_what_it_cached_on_this_thread() {
    // Warm-up: one-time statics (regexes, thread-locals) are allocated here.
    one_version(0, 2_000);
    one_version(1, 2_000);
    let before = LIVE.load(Ordering::Relaxed);
    for round in 2..14 {
        one_version(round, 2_000);
    }
    let grown = LIVE.load(Ordering::Relaxed) - before;
    // A per-instance word cache would keep ~2,000 words × 12 instances (megabytes).
    assert!(
        grown < 256 * 1024,
        "{grown} bytes stayed allocated after 12 tokenizers were loaded, used and dropped"
    );
}
