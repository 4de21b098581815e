//! The command line from untrusted bytes: one argument per line (any bytes, not only
//! UTF-8), parsed and checked as each command checks its flags before it opens a
//! file. Every input must end in `Ok` or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

fuzz_target!(|data: &[u8]| {
    // Bounded like a real command line: at most 64 arguments.
    let args = std::iter::once(OsString::from("rnnkit")).chain(
        data.split(|&b| b == b'\n')
            .take(64)
            .map(|a| OsString::from_vec(a.to_vec())),
    );
    let _ = rnnkit_cli::check_args(args);
});
