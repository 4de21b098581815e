//! The bounds of every size a user can ask for, in one place: the command line's
//! flags range-check against these where they are parsed, and the library's
//! `validate` functions enforce them for values that come from files (a recipe or
//! a configuration in a checkpoint's metadata), so no product of sizes overflows
//! and no request allocates without bound.

/// Most stacked recurrent layers.
pub const MAX_LAYERS: usize = 64;
/// Largest hidden, embedding or feature width.
pub const MAX_WIDTH: usize = 65_536;
/// Most sequences per batch.
pub const MAX_BATCH: usize = 65_536;
/// Most timesteps per batch.
pub const MAX_SEQ_LEN: usize = 100_000;
/// Largest synthetic vocabulary of `rnnkit bench` (its tokens are distinct characters).
pub const MAX_BENCH_VOCAB: usize = 65_536;
/// Most passes over the data a run may ask for.
pub const MAX_EPOCHS: f64 = 1e9;
/// The longest wall-time bound accepted, so that it always converts to a duration.
pub const MAX_TIME_LIMIT_SECS: f64 = 1e9;

/// Clap's range of an integer flag from `min` to `max`, as `value_parser!(…).range` takes it.
pub const fn flag_range(min: usize, max: usize) -> std::ops::RangeInclusive<i64> {
    min as i64..=max as i64
}
